"""Structured pruning export: cut the all-zero output channels a group lasso
left (``proxopt.AdamW(..., group_lasso=λ)``) out of a model, together with
the matching inputs of the next layer, and get a smaller model that computes
the same function.

:func:`prune_zero_channels` works on ``nn.Sequential`` chains (nested
``nn.Sequential`` containers are fine; they are walked in order as one
chain). Supported patterns
==========================

A *producer* is an ``nn.Linear`` or an ``nn.Conv1d``/``Conv2d``/``Conv3d``
with ``groups=1``. Between a producer and the next producer (its
*consumer*) these modules may appear, in any number and order:

* ``BatchNorm1d/2d/3d`` (sliced: weight, bias, running mean and variance);
* element-wise modules: ``ReLU``, ``ReLU6``, ``LeakyReLU``, ``ELU``, ``SELU``,
  ``CELU``, ``GELU``, ``SiLU``, ``Mish``, ``Sigmoid``, ``Tanh``, ``Hardtanh``,
  ``Hardswish``, ``Hardsigmoid``, ``Softplus``, ``Softsign``, ``Tanhshrink``,
  ``Identity``, ``Dropout*`` (identity in eval mode), and ``PReLU`` (a
  per-channel ``PReLU`` is sliced);
* per-channel pooling: ``MaxPool*``, ``AdaptiveMaxPool*``,
  ``AdaptiveAvgPool*``, ``AvgPool*``;
* after a convolution, one ``Flatten`` when the consumer is an
  ``nn.Linear`` (each channel is then a block of ``in_features / C``
  consecutive inputs).

What is removed, and why it is exact
====================================

Output channel ``j`` of a producer is removable when its weight slice
``W[j]`` is exactly zero. Its output is then a constant, ``b_j`` (its bias,
or 0), and stays one through the modules above: BatchNorm maps it to
``(b_j - mean_j) / sqrt(var_j + eps) * gamma_j + beta_j`` (running
statistics, i.e. eval mode), an activation to ``act(c)``, a pool to itself.
A zero constant is simply dropped; a nonzero constant ``c`` is folded into
the consumer's bias (``bias += c * W_next[:, j].sum()`` over the kernel, or
over the flattened block), creating the bias if the consumer had none. So a
zero-weight channel whose BatchNorm shift or bias is nonzero is *not*
dropped silently: its contribution moves into the next layer.

Channels are kept (and listed in the report with the reason) where this
would not be exact:

* the producer is the last one in the chain (its outputs are the model's);
* the consumer is a convolution with zero padding and the constant is
  nonzero: at the borders the padded zeros replace the constant, so no bias
  reproduces it (a constant of exactly 0 is still removed; ``reflect``,
  ``replicate`` and ``circular`` padding keep constants constant and are
  folded);
* an ``AvgPool`` with zero padding counted in the average
  (``count_include_pad=True``) and a nonzero constant (same reason);
* a ``LayerNorm`` (it normalizes across channels: a removed channel changes
  the statistics of the others), a grouped convolution, or a ``Flatten``
  that is not followed by an ``nn.Linear``;
* every channel of a layer is zero: one channel is kept so that no layer
  has width 0.

Any other module between a producer that has zero channels and its consumer
(a custom block, an attention layer, a ``Softmax``, a container other than
``nn.Sequential``...) raises :class:`PruningError` naming it (or, with
``strict=False``, keeps those channels). A module whose class overrides
``nn.Sequential.forward`` is not treated as a chain and raises too.

Tied weights (one parameter or buffer held by two modules, ``b.weight =
a.weight``) raise :class:`PruningError` naming both when a pruning would
slice one of them (``strict=False``: those channels are kept and the tie
stays). Slicing one user would leave the other with the old tensor, and the
two users generally need different slices (output rows in one, input
columns or nothing in the other), so no pruning keeps the tie in general; a
tie is a constraint the model's author chose, so it is reported, not broken.
Ties that no pruning touches are kept in the copy.

The comparison is in **eval mode**: BatchNorm uses its running statistics
and Dropout is the identity. The pruned model is meant for inference; it is
returned in the same train/eval mode as the input. The input model is not
modified (the result is a pruned deep copy).

Example::

    model = proxopt.pruning.prune_zero_channels(sparse_model)
    small, report = proxopt.pruning.prune_zero_channels(sparse_model, report=True)
    print(report.table())
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["prune_zero_channels", "PruningError", "PruneReport", "LayerPruning"]


class PruningError(ValueError):
    """The model has a structure :func:`prune_zero_channels` does not support."""


_ELEMENTWISE = tuple(
    t
    for t in (
        nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
        getattr(nn, "Mish", None), nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish,
        nn.Hardsigmoid, nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.Identity,
        nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
    )
    if t is not None
)  # fmt: skip
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
_MAXPOOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_ADAPTIVE_AVG = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_AVGPOOL = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = nn.modules.batchnorm._BatchNorm


@dataclass
class LayerPruning:
    """What happened to one producer layer's output channels."""

    name: str
    kind: str
    channels_before: int
    channels_after: int
    removed: list[int] = field(default_factory=list)
    folded: list[int] = field(default_factory=list)  # removed channels whose nonzero constant went into the next bias
    kept_zero: dict[int, str] = field(default_factory=dict)  # zero-weight channels kept, with the reason


@dataclass
class PruneReport:
    layers: list[LayerPruning]
    params_before: int
    params_after: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "params_before": self.params_before,
            "params_after": self.params_after,
            "layers": [
                {
                    "name": lp.name,
                    "kind": lp.kind,
                    "channels_before": lp.channels_before,
                    "channels_after": lp.channels_after,
                    "removed": lp.removed,
                    "folded": lp.folded,
                    "kept_zero": {str(k): v for k, v in lp.kept_zero.items()},
                }
                for lp in self.layers
            ],
        }

    def table(self) -> str:
        rows = [("layer", "type", "channels", "removed", "folded", "zero but kept")]
        for lp in self.layers:
            reasons = sorted(set(lp.kept_zero.values()))
            kept = f"{len(lp.kept_zero)} ({'; '.join(reasons)})" if lp.kept_zero else "0"
            rows.append(
                (lp.name, lp.kind, f"{lp.channels_before} -> {lp.channels_after}", str(len(lp.removed)), str(len(lp.folded)), kept)
            )
        rows.append(("total", "", f"params {self.params_before} -> {self.params_after}", "", "", ""))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


# --------------------------------------------------------------------------
# Walking the chain
# --------------------------------------------------------------------------


def _is_chain(m: nn.Module) -> bool:
    return isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward


def _leaves(seq: nn.Sequential, prefix: str = "") -> list[tuple[nn.Module, str, str, nn.Module]]:
    """(parent, key, qualified name, module) of every non-Sequential module, in order."""
    out = []
    for key, m in seq._modules.items():
        if m is None:
            continue
        name = f"{prefix}{key}"
        if isinstance(m, nn.Sequential):
            if not _is_chain(m):
                raise PruningError(
                    f"prune_zero_channels: {name} ({type(m).__name__}) subclasses nn.Sequential but overrides "
                    "forward(); only plain nn.Sequential chains are supported"
                )
            out += _leaves(m, name + ".")
        else:
            out.append((seq, key, name, m))
    return out


def _is_producer(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or (isinstance(m, _CONV) and m.groups == 1)


def _describe(m: nn.Module) -> str:
    return type(m).__name__


def _zero_rows(w: torch.Tensor) -> torch.Tensor:
    return (w.flatten(1) == 0).all(dim=1)  # not reshape(n, -1): ambiguous for an empty weight


def _pad_is_zero(conv: nn.Module) -> bool:
    """True when ``conv`` pads its input with zeros (which breaks constant channels)."""
    if conv.padding_mode != "zeros":
        return False
    if isinstance(conv.padding, str):
        return conv.padding == "same" and any(k > 1 for k in conv.kernel_size)
    return any(p > 0 for p in conv.padding)


class _Walk:
    """The modules between a producer and its consumer, classified."""

    def __init__(self, leaves, start: int):
        self.between: list[tuple[int, nn.Module]] = []
        self.consumer: int | None = None
        self.barrier: str | None = None  # why no channel of the producer can be removed
        self.flatten = False
        producer = leaves[start][3]
        is_conv = isinstance(producer, _CONV)
        for i in range(start + 1, len(leaves)):
            name, m = leaves[i][2], leaves[i][3]
            if _is_producer(m):
                self.consumer = i
                if is_conv and isinstance(m, _CONV) and self.flatten:
                    self.barrier = f"{name} is a convolution after a Flatten"
                elif not is_conv and isinstance(m, _CONV):
                    self.barrier = f"{name} is a convolution after a Linear (channel dims differ)"
                elif is_conv and isinstance(m, nn.Linear) and not self.flatten:
                    self.barrier = f"{name} is a Linear after a convolution without a Flatten"
                return
            if isinstance(m, _CONV):  # grouped / depthwise convolution
                self.barrier = f"{name} is a grouped convolution"
                return
            if isinstance(m, nn.LayerNorm):
                self.barrier = f"{name} is a LayerNorm (normalizes across channels)"
                return
            if isinstance(m, nn.Flatten):
                if not is_conv or self.flatten:
                    self.barrier = f"{name}: Flatten after a Linear or a second Flatten"
                    return
                if m.start_dim != 1 or m.end_dim != -1:
                    self.barrier = f"{name}: Flatten(start_dim={m.start_dim}, end_dim={m.end_dim}) (only Flatten(1, -1))"
                    return
                self.flatten = True
            elif isinstance(m, _BN) and self.flatten:
                self.barrier = f"{name} is a BatchNorm after a Flatten"
                return
            elif isinstance(m, nn.PReLU) and m.num_parameters > 1 and self.flatten:
                self.barrier = f"{name} is a per-channel PReLU after a Flatten"
                return
            elif not isinstance(m, (_BN, nn.PReLU) + _ELEMENTWISE + _MAXPOOL + _ADAPTIVE_AVG + _AVGPOOL):
                self.barrier = (
                    f"{name} ({_describe(m)}) is not supported between two layers (supported: BatchNorm, "
                    "element-wise activations, Dropout, PReLU, pooling, Flatten before a Linear)"
                )
                self.unsupported = True
                return
            self.between.append((i, m))

    unsupported = False


def _propagate(value: float, j: int, walk: _Walk) -> float | None:
    """The constant that output channel ``j`` (value ``value``) has when it
    reaches the consumer, or None when it is not provably constant."""
    v = torch.tensor(float(value), dtype=torch.float64)
    for _, m in walk.between:
        if isinstance(m, _BN):
            if m.running_mean is not None:
                v = (v - m.running_mean[j].double()) / torch.sqrt(m.running_var[j].double() + m.eps)
            else:  # batch statistics of a constant channel: mean = value, var = 0
                v = torch.zeros((), dtype=torch.float64)
            if m.affine:
                v = v * m.weight[j].double() + m.bias[j].double()
        elif isinstance(m, nn.PReLU):
            a = m.weight[j if m.num_parameters > 1 else 0].double()
            v = torch.where(v >= 0, v, a * v)
        elif isinstance(m, _DROPOUT + (nn.Identity,) + _MAXPOOL + _ADAPTIVE_AVG):
            pass  # identity in eval mode; max pools pad with -inf
        elif isinstance(m, _AVGPOOL):
            pad = m.padding if isinstance(m.padding, (tuple, list)) else (m.padding,)
            if m.count_include_pad and any(p > 0 for p in pad) and v.item() != 0:
                return None
        elif isinstance(m, nn.Flatten):
            pass
        else:  # element-wise activation
            v = m(v.reshape(1, 1)).reshape(())
    return float(v)


# --------------------------------------------------------------------------
# Slicing
# --------------------------------------------------------------------------


def _param(t: torch.Tensor, like: nn.Parameter) -> nn.Parameter:
    return nn.Parameter(t.detach().clone().contiguous(), requires_grad=like.requires_grad)


def _slice_out(m: nn.Module, keep: torch.Tensor) -> None:
    m.weight = _param(m.weight[keep], m.weight)
    if m.bias is not None:
        m.bias = _param(m.bias[keep], m.bias)
    if isinstance(m, nn.Linear):
        m.out_features = int(keep.numel())
    else:
        m.out_channels = int(keep.numel())


def _slice_in(m: nn.Module, cols: torch.Tensor) -> None:
    m.weight = _param(m.weight[:, cols], m.weight)
    if isinstance(m, nn.Linear):
        m.in_features = int(cols.numel())
    else:
        m.in_channels = int(cols.numel())


def _slice_between(m: nn.Module, keep: torch.Tensor) -> None:
    if isinstance(m, _BN):
        m.num_features = int(keep.numel())
        if m.affine:
            m.weight = _param(m.weight[keep], m.weight)
            m.bias = _param(m.bias[keep], m.bias)
        if m.running_mean is not None:
            m.running_mean = m.running_mean[keep].clone()
            m.running_var = m.running_var[keep].clone()
    elif isinstance(m, nn.PReLU) and m.num_parameters > 1:
        m.weight = _param(m.weight[keep], m.weight)
        m.num_parameters = int(keep.numel())


def _fold(consumer: nn.Module, cols: list[int], value: float) -> None:
    """consumer.bias += value * (sum of the consumer's weights on input columns ``cols``)."""
    w = consumer.weight.detach()
    contrib = w[:, cols].double().sum(dim=tuple(range(1, w.dim()))) * value
    with torch.no_grad():
        if consumer.bias is None:
            consumer.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device), requires_grad=consumer.weight.requires_grad)
        consumer.bias.copy_((consumer.bias.double() + contrib).to(consumer.bias.dtype))


def _owners(model: nn.Module) -> dict[int, list[str]]:
    """id(tensor) -> the qualified names of the modules that hold it as their
    own parameter or buffer (two or more: a tied tensor)."""
    out: dict[int, list[str]] = {}
    for mname, m in model.named_modules():
        for tname, t in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]:
            if t is not None:
                out.setdefault(id(t), []).append(f"{mname}.{tname}" if mname else tname)
    return out


def _tie(modules: list[tuple[str, nn.Module]], owners: dict[int, list[str]]) -> str | None:
    """Why slicing ``modules`` would untie a tensor they share with another
    module (or with each other), or None."""
    for mname, m in modules:
        for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)]:
            names = owners.get(id(t), [])
            if len(names) > 1:
                return f"{' and '.join(names)} are one tensor (tied weights), which pruning {mname} would untie"
    return None


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def prune_zero_channels(model: nn.Module, *, report: bool = False, strict: bool = True):
    """Remove all-zero output channels of the Linear/Conv layers of an
    ``nn.Sequential`` chain and the matching inputs of the next layer.

    Returns a pruned deep copy (the input is untouched) whose outputs equal
    the original's in eval mode to float tolerance; with ``report=True``,
    ``(model, PruneReport)``. A model without removable channels comes back
    as an unchanged copy. See the module docstring for the supported
    patterns; anything else raises :class:`PruningError` (with
    ``strict=False`` the affected channels are kept instead)."""
    if not isinstance(model, nn.Sequential) or not _is_chain(model):
        raise PruningError(
            f"prune_zero_channels supports nn.Sequential models (nested nn.Sequential are fine); got "
            f"{type(model).__name__}, whose forward() is its own. Build the prunable part as an nn.Sequential "
            "and prune that."
        )
    before = _n_params(model)
    model = copy.deepcopy(model)
    leaves = _leaves(model)
    seen: dict[int, str] = {}
    for _, _, name, m in leaves:
        if id(m) in seen:
            raise PruningError(f"prune_zero_channels: module {name} is the same object as {seen[id(m)]} (shared weights)")
        seen[id(m)] = name
    owners = _owners(model)

    layers: list[LayerPruning] = []
    for idx, (_, _, name, prod) in enumerate(leaves):
        if not _is_producer(prod):
            continue
        n_out = prod.weight.shape[0]
        zero = _zero_rows(prod.weight.detach()).nonzero().flatten().tolist()
        lp = LayerPruning(name, _describe(prod), n_out, n_out)
        layers.append(lp)
        if not zero:
            continue
        walk = _Walk(leaves, idx)
        if walk.unsupported and strict:
            raise PruningError(
                f"prune_zero_channels: {name} has {len(zero)} all-zero output channels, but {walk.barrier}. "
                "Pass strict=False to keep those channels."
            )
        if walk.consumer is None and walk.barrier is None:
            walk.barrier = "last layer of the chain (its outputs are the model's)"
        if walk.barrier is not None:
            lp.kept_zero = {j: walk.barrier for j in zero}
            continue
        consumer = leaves[walk.consumer][3]
        block = 1
        if walk.flatten:
            if consumer.in_features % n_out:
                raise PruningError(
                    f"prune_zero_channels: {leaves[walk.consumer][2]} has in_features={consumer.in_features}, "
                    f"not a multiple of the {n_out} channels of {name} before the Flatten"
                )
            block = consumer.in_features // n_out
        bias = prod.bias.detach() if prod.bias is not None else None
        candidates: list[tuple[int, float]] = []  # (channel, constant at the consumer)
        for j in zero:
            const = _propagate(float(bias[j]) if bias is not None else 0.0, j, walk)
            if const is None:
                lp.kept_zero[j] = "AvgPool with zero padding counted (count_include_pad=True)"
            elif const != 0.0 and isinstance(consumer, _CONV) and _pad_is_zero(consumer):
                lp.kept_zero[j] = f"nonzero constant into the zero-padded {_describe(consumer)} {leaves[walk.consumer][2]}"
            else:
                candidates.append((j, const))
        if len(candidates) == n_out:  # keep one channel: no layer of width 0
            lp.kept_zero[candidates[0][0]] = "every channel is zero (one kept)"
            candidates = candidates[1:]
        touched = [(name, prod), *((leaves[i][2], m) for i, m in walk.between), (leaves[walk.consumer][2], consumer)]
        tie = _tie(touched, owners) if candidates else None
        if tie is not None and strict:
            raise PruningError(
                f"prune_zero_channels: {name} has {len(candidates)} removable all-zero output channels, but {tie}. "
                "Untie them (give each module its own copy), or pass strict=False to keep those channels."
            )
        if tie is not None:
            lp.kept_zero.update((j, tie) for j, _ in candidates)
            continue
        removed = [j for j, _ in candidates]
        folded = []
        for j, const in candidates:
            if const != 0.0:
                _fold(consumer, list(range(j * block, (j + 1) * block)), const)
                folded.append(j)
        if not removed:
            continue
        dev = prod.weight.device
        gone = set(removed)
        keep = torch.tensor([j for j in range(n_out) if j not in gone], dtype=torch.long, device=dev)
        _slice_out(prod, keep)
        for _, m in walk.between:
            _slice_between(m, keep)
        cols = (keep[:, None] * block + torch.arange(block, device=dev)[None, :]).flatten()
        _slice_in(consumer, cols)
        lp.channels_after = int(keep.numel())
        lp.removed, lp.folded = removed, folded
    out = model
    if report:
        return out, PruneReport(layers, before, _n_params(out))
    return out
