"""The checks of parameters, their gradients and the hyperparameters' range,
and how errors name a parameter. The optimizer runs them when a plan is
built; the reference path runs the per-step ones every step (the operator
runs the same checks in C++ for the tensors the kernels take).
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor

from .coupled import check_coupled
from .regularizers import ACTING_DEFAULTS, COUPLED_KEY, group_dim_of, has_group_prox, has_prox


def label(group: dict, i: int) -> str:
    """How messages name parameter ``i`` of a param group."""
    names = group.get("param_names")
    return f"parameter {names[i]!r}" if names else f"parameter {i} of its param group"


def check_params(group: dict) -> None:
    """Every parameter of a param group is a tensor a step can update."""
    prox = has_prox(group)
    grouped = has_group_prox(group)
    for i, p in enumerate(group["params"]):
        if not isinstance(p, Tensor):
            raise TypeError(f"{label(group, i)}: optimizer can only optimize Tensors, got {type(p).__name__}")
        if not (p.is_floating_point() or p.is_complex()):
            raise ValueError(f"{label(group, i)}: can only optimize floating point or complex tensors, got {p.dtype}")
        if p.layout is torch.strided and p.device.type != "meta" and torch._debug_has_internal_overlap(p) == 1:
            raise ValueError(
                f"{label(group, i)} has elements that share memory (an expanded or stride-0 tensor): "
                "a step would write them several times; pass a tensor with its own memory (e.g. .clone())"
            )
        if prox:
            check_not_complex(group, i, p)
        if grouped:
            check_group_param(group, i, p)


def check_channel_groups(groups: list[dict], partial: bool = False) -> None:
    """The channel groups that span tensors (``channel_groups`` of a param
    group) fit the parameters they name; see :func:`proxopt.coupled.check_coupled`."""
    for gi, group in enumerate(groups):
        if group.get(COUPLED_KEY) is not None:
            check_coupled(groups, gi, label, partial)


def check_grad(optimizer: str, group: dict, i: int, p: Tensor, g: Tensor) -> None:
    """The checks of one parameter's grad on the reference path (the
    operator runs the same ones in C++ for the kernel's tensors)."""
    if g.is_sparse:
        raise RuntimeError(
            f"{optimizer} does not support sparse gradients ({label(group, i)}); use a dense "
            "gradient or torch.optim.SparseAdam"
        )
    if g.shape != p.shape or g.dtype != p.dtype or g.device != p.device:
        raise ValueError(
            f"{label(group, i)}: its grad has shape {tuple(g.shape)}, dtype {g.dtype}, device "
            f"{g.device}; the parameter has {tuple(p.shape)}, {p.dtype}, {p.device}"
        )
    # (traced: the plan checked the parameters when Dynamo built it, and the call cannot be traced)
    if p.layout is torch.strided and not torch.compiler.is_compiling() and torch._debug_has_internal_overlap(p) == 1:
        raise ValueError(f"{label(group, i)} has elements that share memory (an expanded tensor)")
    if has_prox(group):
        check_not_complex(group, i, p)
    if has_group_prox(group):
        check_group_param(group, i, p)


# The largest float32: where a step computes in float32 (every dtype but
# float64 and complex128), a larger lr or weight_decay makes the weights inf or NaN.
_FLOAT32_MAX = torch.finfo(torch.float32).max


def check_hyper_range(group: dict, i: int, p: Tensor, lr: float | None, weight_decay: float) -> None:
    """torch raises where lr or weight_decay overflows the dtype parameter ``i``'s
    step computes in (the operator runs the same check in C++ for the kernel's
    tensors). ``lr`` None: not known here (a tensor lr while torch.compile traces)."""
    if p.dtype in (torch.float64, torch.complex128):
        return
    for name, v in (("lr", lr), ("weight_decay", weight_decay)):
        if v is not None and abs(v) > _FLOAT32_MAX:
            raise ValueError(f"{label(group, i)}: {name} = {v:g} overflows float32, the dtype its step computes in")


def check_not_complex(group: dict, i: int, p: Tensor) -> None:
    if p.is_complex():
        raise ValueError(
            f"{label(group, i)} is complex: proximal regularizers are not defined for complex "
            f"parameters ({', '.join(ACTING_DEFAULTS)}); put it in a param group without them"
        )


def check_overlap(groups: list[dict]) -> None:
    """Parameters may share a storage (views of one flat buffer) but no
    element: a step would update a shared element twice."""
    spans = defaultdict(list)
    for group in groups:
        for i, p in enumerate(group["params"]):
            if p.numel() == 0 or p.device.type == "meta":
                continue
            try:
                key = (p.device, p.untyped_storage().data_ptr())
            except (RuntimeError, NotImplementedError, TypeError):
                continue  # tensor subclasses (DTensor shards) keep their own storage
            lo, hi = _extent(p)
            spans[key].append((lo, hi, p, label(group, i)))
    for pieces in spans.values():
        pieces.sort(key=lambda x: x[0])
        for j, (lo, hi, p, name) in enumerate(pieces):
            for lo2, _, q, name2 in pieces[j + 1 :]:
                if lo2 >= hi:
                    break
                if _share_elements(p, q):
                    raise ValueError(
                        f"{name} and {name2} overlap in memory: a step would update the shared "
                        "elements twice; pass each tensor once, or non-overlapping views"
                    )


def check_group_param(group: dict, i: int, p: Tensor) -> None:
    dim = group_dim_of(group)
    key = "group_dim" if group["group_lasso"] or group["channel_sparsity"] else "max_norm_dim"
    if p.dim() < 2:
        raise ValueError(
            f"{label(group, i)} has {p.dim()} dimension(s): group_lasso/max_norm/channel_sparsity need a "
            "weight matrix or conv kernel; put biases and norm weights in a param group without "
            "group regularizers (proxopt.param_groups(model, ...) does this)"
        )
    if not -p.dim() <= dim < p.dim():
        raise ValueError(f"Invalid {key} value: {dim} for {label(group, i)} of shape {tuple(p.shape)}")


def _extent(t: Tensor) -> tuple[int, int]:
    """The byte range [lo, hi) of its storage that a view can touch."""
    size = t.element_size()
    lo = t.storage_offset() * size
    last = sum((n - 1) * st for n, st in zip(t.shape, t.stride()))
    return lo, lo + (last + 1) * size


def _share_elements(a: Tensor, b: Tensor) -> bool:
    """Exact test for two views of one storage whose extents intersect."""
    if a.is_contiguous() and b.is_contiguous():
        return True
    if a.dtype != b.dtype:
        return True  # different element sizes on one storage: take it as shared
    n = a.untyped_storage().nbytes() // a.element_size()
    index = torch.arange(n, device="cpu")

    def elements(t: Tensor) -> Tensor:
        return torch.as_strided(index, t.shape, t.stride(), t.storage_offset()).reshape(-1)

    return bool(torch.isin(elements(a), elements(b)).any())
