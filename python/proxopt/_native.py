"""Loading the compiled extensions, and saying which backend is in use.

``import proxopt`` never fails because of the extensions: when ``proxopt._C``
is missing or does not load, every optimizer runs the pure-torch reference
(``proxopt.reference``) with identical semantics. Importing ``proxopt._C``
registers the operator ``torch.ops.proxopt.step`` and its CPU kernel;
``proxopt._C_cuda`` (optional, loaded on first use) adds the CUDA kernel.

This module imports nothing else from proxopt: the rest of the package asks it
what is loaded.
"""

from __future__ import annotations

import os
import threading
import warnings
from typing import Any

import torch

C: Any = None  # proxopt._C, or None
C_ERROR: str | None = None
if os.environ.get("PROXOPT_DISABLE_EXTENSION"):
    C_ERROR = "disabled by PROXOPT_DISABLE_EXTENSION"
else:
    try:
        from . import _C as C  # type: ignore[attr-defined, no-redef]
    except ImportError as exc:  # pragma: no cover - exercised by the no-extension test
        C, C_ERROR = None, f"{type(exc).__name__}: {exc}"

if C is not None:
    _forced = os.environ.get("PROXOPT_SIMD")
    if _forced and _forced not in C.supported_isas():
        warnings.warn(
            f"PROXOPT_SIMD={_forced!r} is not available on this CPU (available: "
            f"{', '.join(C.supported_isas())}); using {C.current_isa()!r}",
            RuntimeWarning,
            stacklevel=2,
        )


def disable(reason: str) -> None:
    """Stop using the compiled kernels (e.g. a build that does not match this
    Python package); backend_info() reports ``reason``."""
    global C, C_ERROR, KERNEL_DTYPES
    C, C_ERROR = None, reason
    KERNEL_DTYPES = frozenset()


def _dtypes() -> frozenset[torch.dtype]:
    return frozenset(getattr(torch, name) for name in C.KERNEL_DTYPES) if C is not None else frozenset()


KERNEL_DTYPES: frozenset[torch.dtype] = _dtypes()  # parameter dtypes the kernels step


def has_cpu_kernels() -> bool:
    """True when the compiled CPU kernels (and the operator) are loaded."""
    return C is not None


# ---- the CUDA module: loaded on first use --------------------------------------

_cuda_lock = threading.Lock()
_cuda_loaded = False
_C_cuda: Any = None
CUDA_ERROR: str | None = None
_device_errors: dict[int, str] = {}
_device_ok: dict[int, bool] = {}


def cuda_module() -> Any:
    """proxopt._C_cuda if it loads and its runtime sees a GPU, else None."""
    global _cuda_loaded, _C_cuda, CUDA_ERROR
    if _cuda_loaded:
        return _C_cuda
    with _cuda_lock:
        if _cuda_loaded:
            return _C_cuda
        module, error = None, None
        if C is None:
            error = f"the CPU extension is not loaded ({C_ERROR})"
        elif os.environ.get("PROXOPT_DISABLE_CUDA"):
            error = "disabled by PROXOPT_DISABLE_CUDA"
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
                module, error = None, f"proxopt._C_cuda cannot use the GPU: {why or 'no CUDA device'}"
        _C_cuda, CUDA_ERROR = module, error
        _cuda_loaded = True
        return _C_cuda


def cuda_device_ok(index: int) -> bool:
    """Whether the CUDA kernels run on device ``index`` (a kernel image for its
    architecture, a driver new enough); cached."""
    ok = _device_ok.get(index)
    if ok is None:
        module = cuda_module()
        why = "proxopt._C_cuda is not loaded" if module is None else module.device_error(index)
        ok = not why
        if why:
            _device_errors[index] = why
        _device_ok[index] = ok
    return ok


# ---- what users ask ---------------------------------------------------------------


def simd_levels() -> list[str]:
    """The instruction-set levels compiled in and supported by this CPU, widest last."""
    return list(C.supported_isas()) if C is not None else []


def simd_level() -> str | None:
    """The instruction-set level the CPU kernels use now (``None`` without kernels)."""
    return C.current_isa() if C is not None else None


def set_simd_level(level: str) -> None:
    """Force the CPU kernels onto one instruction-set level ('baseline', 'avx2', 'avx512').

    The environment variable ``PROXOPT_SIMD`` does the same at import time.
    """
    if C is None:
        raise RuntimeError(f"proxopt's CPU kernels are not loaded ({C_ERROR})")
    C.set_isa(level)


def backend_info() -> dict:
    """Which backend, instruction set and thread count proxopt uses, and
    whether the CUDA kernels are usable (and if not, why)."""
    cuda = cuda_module() is not None and torch.cuda.is_available()
    return {
        "backend": "cpu-kernels" if C is not None else "reference",
        "cpu_kernels": C is not None,
        "cpu_kernels_error": C_ERROR,
        "simd": simd_level(),
        "simd_available": simd_levels(),
        "threads": torch.get_num_threads(),
        "kernel_dtypes": sorted(str(d).replace("torch.", "") for d in KERNEL_DTYPES),
        "cuda_kernels": cuda,
        "cuda_kernels_error": None if cuda else (CUDA_ERROR or "no CUDA device"),
        "cuda_device_errors": dict(_device_errors),
    }
