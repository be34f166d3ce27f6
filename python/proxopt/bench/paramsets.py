"""The parameter sets the benchmark steps over.

A parameter set is a list of shapes (plus, for ``--model``, the tensors'
values). The built-in ones are plain tensors shaped like real models, so the
benchmark needs no model code and no downloads.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
from dataclasses import dataclass, field

import torch

Shape = tuple[int, ...]


@dataclass
class ParamSet:
    name: str
    description: str
    shapes: list[Shape]
    init: list[torch.Tensor] | None = field(default=None, repr=False)  # values from --model

    @property
    def numel(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    @property
    def tensors(self) -> int:
        return len(self.shapes)


def _linear(d_in: int, d_out: int, bias: bool = True) -> list[Shape]:
    return [(d_out, d_in)] + ([(d_out,)] if bias else [])


def _norm(d: int) -> list[Shape]:
    return [(d,), (d,)]  # weight, bias


def conformer(d_model: int = 256, blocks: int = 16, ffn: int = 1024, kernel: int = 31) -> ParamSet:
    """The parameters of torchaudio's ``Conformer(input_dim=256, num_heads=4,
    ffn_dim=1024, num_layers=16, depthwise_conv_kernel_size=31)``: macaron
    feed-forward modules, MHSA (packed q/k/v projection as nn.MultiheadAttention),
    a convolution module with a depthwise conv, LayerNorm and BatchNorm affine
    parameters. 30 tensors per block."""
    d, shapes = d_model, []
    feed_forward = _norm(d) + _linear(d, ffn) + _linear(ffn, d)
    for _ in range(blocks):
        shapes += feed_forward
        shapes += _norm(d) + [(3 * d, d), (3 * d,)] + _linear(d, d)  # MHSA
        shapes += _norm(d)  # conv module: LayerNorm
        shapes += [(2 * d, d, 1), (2 * d,)]  # pointwise conv -> GLU
        shapes += [(d, 1, kernel), (d,)]  # depthwise conv
        shapes += _norm(d)  # BatchNorm weight, bias
        shapes += [(d, d, 1), (d,)]  # pointwise conv
        shapes += feed_forward
        shapes += _norm(d)  # final LayerNorm
    return ParamSet(
        "conformer",
        f"conformer encoder, d_model {d_model}, {blocks} blocks, FFN {ffn}, conv kernel {kernel}",
        shapes,
    )


def kws_cnn(channels: int = 172, blocks: int = 5, classes: int = 12) -> ParamSet:
    """DS-CNN keyword spotting network ("Hello Edge", medium-large): a 10x4
    input conv, depthwise-separable blocks with BatchNorm, a linear classifier."""
    c = channels
    shapes: list[Shape] = [(c, 1, 10, 4), (c,)] + _norm(c)
    for _ in range(blocks):
        shapes += [(c, 1, 3, 3), (c,)] + _norm(c) + [(c, c, 1, 1), (c,)] + _norm(c)
    shapes += _linear(c, classes)
    return ParamSet("kws", f"DS-CNN keyword spotter, {c} channels, {blocks} separable blocks", shapes)


def large(numel: int = 16 * 2**20) -> ParamSet:
    side = int(math.isqrt(numel))
    return ParamSet("large", f"one {side}x{numel // side} tensor", [(side, numel // side)])


def small(count: int = 1200) -> ParamSet:
    """Many small tensors, where per-tensor overhead (Python work, argument
    passing, launches) dominates: weight matrices of 32x32 and their biases
    (the set the operator's targets are stated on)."""
    shapes: list[Shape] = [(32, 32) if i % 2 == 0 else (32,) for i in range(count)]
    return ParamSet("small", f"{count} small tensors ({count // 2} of 32x32, {count - count // 2} of 32)", shapes)


def tiny() -> ParamSet:
    """For --quick and the smoke test: seconds, not minutes."""
    shapes: list[Shape] = []
    for _ in range(4):
        shapes += _linear(64, 128) + _linear(128, 64) + _norm(64)
    return ParamSet("tiny", "4 small MLP blocks (smoke test size)", shapes)


BUILTIN = {"conformer": conformer, "kws": kws_cnn, "large": large, "small": small, "tiny": tiny}


def _load_object(spec: str):
    """``package.module:factory`` or ``path/to/file.py:factory`` (dotted attributes allowed)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not attr:
        raise ValueError(f"--model expects MODULE:FACTORY (e.g. mypkg.models:build), got {spec!r}")
    if module_name.endswith(".py") or os.sep in module_name:
        loader = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(module_name))[0], module_name)
        if loader is None or loader.loader is None:
            raise ValueError(f"--model: cannot load {module_name!r}")
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def from_model(spec: str) -> ParamSet:
    """The trainable parameters of a user's ``torch.nn.Module`` (or of a factory
    that returns one, or an iterable of tensors), with their current values."""
    obj = _load_object(spec)
    if callable(obj) and not isinstance(obj, torch.nn.Module):
        try:
            obj = obj()
        except TypeError as exc:
            raise ValueError(f"--model {spec}: the factory must be callable with no arguments ({exc})") from exc
    params = obj.parameters() if isinstance(obj, torch.nn.Module) else obj
    tensors = [p.detach() for p in params if isinstance(p, torch.Tensor) and p.requires_grad and p.is_floating_point()]
    if not tensors:
        raise ValueError(f"--model {spec}: no trainable floating point parameters found")
    return ParamSet(spec.rsplit(":", 1)[-1], f"parameters of {spec}", [tuple(t.shape) for t in tensors], tensors)


def resolve(names: list[str], model: str | None) -> list[ParamSet]:
    sets = []
    for name in names:
        if name not in BUILTIN:
            raise ValueError(f"unknown parameter set {name!r} (choose from {', '.join(BUILTIN)}, or use --model)")
        sets.append(BUILTIN[name]())
    if model:
        sets.append(from_model(model))
    return sets


def materialize(pset: ParamSet, dtype: torch.dtype, device: str, seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The master copy of parameters and gradients; variants clone it.
    Weights ~ N(0, 0.02²) (or the model's own), gradients ~ N(0, 1e-3²), fixed seed."""
    gen = torch.Generator().manual_seed(seed)
    params, grads = [], []
    for i, shape in enumerate(pset.shapes):
        if pset.init is not None:
            w = pset.init[i].to(dtype)
        else:
            w = torch.randn(shape, generator=gen) * 0.02
        g = torch.randn(shape, generator=gen) * 1e-3
        params.append(w.to(device=device, dtype=dtype).contiguous())
        grads.append(g.to(device=device, dtype=dtype))
    return params, grads
