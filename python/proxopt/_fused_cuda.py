"""The CUDA fast path: one call into ``proxopt._C_cuda`` per (param group,
device, dtype), with lists of raw device pointers, launched on the stream
PyTorch is using for that device. Nothing here does arithmetic.

The compiled module is optional and loaded on first use: when it is missing,
fails to load, is disabled (``PROXOPT_DISABLE_EXTENSION`` or
``PROXOPT_DISABLE_CUDA``), or its CUDA runtime finds no usable driver,
:func:`available` is False and every CUDA tensor takes the reference path.
``import proxopt`` never depends on it.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from typing import Any

import torch
from torch import Tensor

from ._fused import DTYPE_CODES, STEP_DTYPE_CODES, _ptr_numel, kernel_dtype
from .reference import Hyper

_lock = threading.Lock()
_loaded = False
_C_cuda: Any = None
_ERROR: str | None = None  # why the module is not usable, for backend_info()
_device_ok: dict[int, bool] = {}
_device_errors: dict[int, str] = {}

# reference.Hyper fields with no counterpart in the kernel's Hyper (group_dim
# becomes per-tensor group shapes, which the CUDA backend does not take yet).
_PYTHON_ONLY_FIELDS = ("group_dim",)


def _load() -> Any:
    """The compiled module, or None; imported once, on first use."""
    global _loaded, _C_cuda, _ERROR
    if _loaded:
        return _C_cuda
    with _lock:
        if _loaded:
            return _C_cuda
        module, error = None, None
        if os.environ.get("PROXOPT_DISABLE_EXTENSION") or os.environ.get("PROXOPT_DISABLE_CUDA"):
            error = "disabled by PROXOPT_DISABLE_EXTENSION / PROXOPT_DISABLE_CUDA"
        else:
            try:
                from . import _C_cuda as module  # type: ignore[attr-defined, no-redef]
            except ImportError as exc:
                module, error = None, f"{type(exc).__name__}: {exc}"
        if module is not None:
            count, why = module.probe()
            if count == 0:
                # Built, but its CUDA runtime sees no device: no driver, or one too
                # old for the runtime the module was built with.
                error = f"proxopt._C_cuda cannot use the GPU: {why or 'no CUDA device'}"
        _C_cuda, _ERROR = module, error
        _loaded = True
        return _C_cuda


_available: bool | None = None


def available() -> bool:
    """True when the CUDA kernels are compiled in and can reach a GPU."""
    global _available
    if _available is None:
        _available = _load() is not None and _ERROR is None and torch.cuda.is_available()
    return _available


def _info() -> dict:
    """For backend_info(): whether the CUDA kernels are usable, and if not, why."""
    return {
        "cuda_kernels": available(),
        "cuda_kernels_error": _ERROR,
        "cuda_device_errors": dict(_device_errors),
    }


def _device_usable(index: int) -> bool:
    ok = _device_ok.get(index)
    if ok is None:
        why = _C_cuda.device_error(index)
        ok = not why
        if why:
            _device_errors[index] = why
        _device_ok[index] = ok
    return ok


def cuda_kernel_takes(param: Tensor, grad: Tensor, states: list[Tensor], step: Tensor | None) -> bool:
    """Whether the CUDA kernel can update this tensor in place; if not, the
    reference does (never a silent ``.contiguous()`` copy of a tensor we write)."""
    if param.device.type != "cuda" or not available() or kernel_dtype(param) is None:
        return False
    if grad.device != param.device or grad.dtype != param.dtype:
        return False
    if not (param.is_contiguous() and grad.is_contiguous()):
        return False
    if any(s.device != param.device or s.dtype != param.dtype or not s.is_contiguous() for s in states):
        return False
    if step is not None and not (step.device.type == "cpu" and step.dtype in STEP_DTYPE_CODES):
        return False
    return _device_usable(param.device.index)


def cuda_args(param: Tensor, grad: Tensor, states, step: Tensor | None):
    """The CUDA kernel's arguments for one tensor, in the form of
    ``_fused.cpu_args``, or None when the CUDA kernel cannot take it."""
    if not param.is_cuda or not cuda_kernel_takes(param, grad, list(states), step):
        return None
    ptr, numel = _ptr_numel(param)
    return (
        ptr,
        grad.data_ptr(),
        [t.data_ptr() for t in states],
        numel,
        DTYPE_CODES[kernel_dtype(param)],
        step.data_ptr() if step is not None else 0,
        STEP_DTYPE_CODES[step.dtype] if step is not None else 0,
    )


def _to_c(h: Hyper) -> Any:
    if getattr(h, "group_lasso", 0) or getattr(h, "max_norm", 0):
        raise NotImplementedError(
            "group_lasso and max_norm have no CUDA kernel yet; step this param group on the reference path"
        )
    c = _C_cuda.Hyper()
    for f in dataclasses.fields(h):
        value = getattr(h, f.name)
        if hasattr(c, f.name):
            setattr(c, f.name, value)
        elif f.name not in _PYTHON_ONLY_FIELDS and value != f.default:
            raise NotImplementedError(f"the CUDA kernels do not implement {f.name}={value!r}")
    return c


def cuda_step(
    h: Hyper,
    params: list[Tensor],
    grads: list[Tensor],
    states: list[list[Tensor]],
    steps: list[Tensor] | None,
    fresh: list[bool],
    grad_scale: Tensor | None,
) -> None:
    """One kernel call over CUDA tensors of one device and one dtype, each
    accepted by :func:`cuda_kernel_takes`.

    ``states`` holds one list per state key in kernel order; ``steps`` the CPU
    step tensors (None for SGD), incremented here on the host; ``fresh`` marks
    SGD momentum buffers created this step; ``grad_scale`` is AMP's scale, a
    float32 tensor on the device (read by the kernel, never synced). found_inf
    is the caller's business: this always steps. Gradients are only read.
    """
    if not params:
        return
    device = params[0].device
    if device.type != "cuda":
        raise ValueError(f"cuda_step got tensors on {device}")
    for t in (*params, *grads, *(s for per_key in states for s in per_key)):
        if t.device != device:
            raise ValueError(f"cuda_step got tensors on {device} and {t.device}: one call is one device")
    dtype = kernel_dtype(params[0])
    if dtype is None:
        raise ValueError(f"no CUDA kernel for dtype {params[0].dtype}")
    ptrs, numels = zip(*map(_ptr_numel, params))
    _step_ptrs(
        h,
        DTYPE_CODES[dtype],
        list(ptrs),
        [g.data_ptr() for g in grads],
        [[t.data_ptr() for t in per_key] for per_key in states],
        [s.data_ptr() for s in steps] if steps else [],
        STEP_DTYPE_CODES[steps[0].dtype] if steps else 0,
        list(numels),
        list(fresh),
        grad_scale,
        device.index,
    )


def _step_ptrs(
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
    device_index: int,
) -> None:
    """The kernel call on pointer lists the caller already gathered (the CUDA
    twin of ``_fused.cpu_step_ptrs``): every pointer on device ``device_index``
    (steps: CPU step tensors), each tensor accepted by :func:`cuda_kernel_takes`.
    Launches on ``torch.cuda.current_stream(device_index)``."""
    if not available():
        raise RuntimeError(f"proxopt's CUDA kernels are not available ({_ERROR or 'no CUDA device'})")
    if grad_scale is not None and (grad_scale.device.index != device_index or grad_scale.device.type != "cuda"
                                   or grad_scale.dtype != torch.float32):
        # One element, copied on the current stream: ordered before the kernel,
        # and kept alive by the caching allocator's stream semantics.
        grad_scale = grad_scale.to(device=torch.device("cuda", device_index), dtype=torch.float32)
    _C_cuda.step(
        _to_c(h),
        dtype_code,
        params,
        grads,
        states,
        steps,
        step_code,
        numels,
        fresh,
        grad_scale.data_ptr() if grad_scale is not None else 0,
        device_index,
        torch.cuda.current_stream(device_index).cuda_stream,
    )
