"""The fast path: one call into the compiled kernels per (param group,
device, dtype), with lists of raw pointers. Nothing here does arithmetic."""

from __future__ import annotations

import torch
from torch import Tensor

from . import _backend
from .reference import Hyper

DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
STEP_DTYPE_CODES = {torch.float32: 0, torch.float64: 1}
_REAL = {torch.complex64: torch.float32, torch.complex128: torch.float64}
# Hyper fields the kernels take (group_dim is turned into per-tensor group shapes).
_HYPER_FIELDS = tuple(f for f in Hyper.__dataclass_fields__ if f != "group_dim")


def kernel_dtype(t: Tensor) -> torch.dtype | None:
    """The real dtype a kernel would run ``t`` in, or None if no kernel takes it."""
    dt = _REAL.get(t.dtype, t.dtype)
    return dt if dt in DTYPE_CODES else None


# dtype -> (kernel dtype code, elements per tensor element): complex runs as its real view.
_CODES = {
    **{dt: (code, 1) for dt, code in DTYPE_CODES.items()},
    torch.complex64: (DTYPE_CODES[torch.float32], 2),
    torch.complex128: (DTYPE_CODES[torch.float64], 2),
}


def cpu_args(param: Tensor, grad: Tensor, states, step: Tensor | None):
    """The CPU kernel's arguments for one tensor, (param ptr, grad ptr, state
    ptrs, numel, dtype code, step ptr, step dtype code), or None when the kernel
    cannot update it in place (the reference then does, never through a
    silent ``.contiguous()`` copy). Checked every step, in one pass:
    ``.data`` may have rebound any of these tensors to other memory."""
    if _backend._C is None or not param.is_cpu:
        return None
    dtype = param.dtype
    code = _CODES.get(dtype)
    if code is None or not (param.is_contiguous() and grad.is_contiguous()):
        return None
    n = param.numel()
    ptrs = []
    for s in states:
        if s.dtype is not dtype or not s.is_cpu or not s.is_contiguous() or s.numel() != n:
            return None
        ptrs.append(s.data_ptr())
    if step is None:
        return param.data_ptr(), grad.data_ptr(), ptrs, n * code[1], code[0], 0, 0
    step_code = STEP_DTYPE_CODES.get(step.dtype)
    if step_code is None or not step.is_cpu or step.numel() != 1:
        return None
    return param.data_ptr(), grad.data_ptr(), ptrs, n * code[1], code[0], step.data_ptr(), step_code


def _ptr_numel(t: Tensor) -> tuple[int, int]:
    # A complex tensor is updated as its real view: same pointer, twice the elements.
    return t.data_ptr(), t.numel() * (2 if t.is_complex() else 1)


def to_c(h: Hyper):
    c = _backend._C.Hyper()
    for name in _HYPER_FIELDS:
        setattr(c, name, getattr(h, name))
    return c


def has_cpu_kernels() -> bool:
    return _backend._C is not None


def cpu_step_ptrs(
    h: Hyper,
    dtype_code: int,
    params: list[int],
    grads: list[int],
    states: list[list[int]],
    steps: list[int],
    step_code: int,
    numels: list[int],
    fresh: list[bool],
    grad_scale: Tensor | None,
    group_shapes: list[tuple[int, int, int]] | None,
) -> bool:
    """The kernel call on pointer lists the optimizer already gathered."""
    return _backend._C.step(
        to_c(h), dtype_code, params, grads, states, steps, step_code, numels, fresh,
        grad_scale.data_ptr() if grad_scale is not None else 0, 0, group_shapes or [],
        torch.get_num_threads(),
    )
