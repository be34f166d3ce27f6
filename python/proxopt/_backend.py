"""Loading the compiled kernels, and saying which backend is in use.

``import proxopt`` never fails because of the extension: when ``proxopt._C``
is missing or does not load, every optimizer runs the pure-torch reference
(``proxopt.reference``) with identical semantics.
"""

from __future__ import annotations

import os
import warnings

import torch

try:  # the CPU kernels
    from . import _C  # type: ignore[attr-defined]

    _C_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - exercised by the no-extension test
    _C = None
    _C_ERROR = f"{type(exc).__name__}: {exc}"

if os.environ.get("PROXOPT_DISABLE_EXTENSION"):
    _C, _C_ERROR = None, "disabled by PROXOPT_DISABLE_EXTENSION"

if _C is not None:
    _forced = os.environ.get("PROXOPT_SIMD")
    if _forced and _forced not in _C.supported_isas():
        warnings.warn(
            f"PROXOPT_SIMD={_forced!r} is not available on this CPU (available: "
            f"{', '.join(_C.supported_isas())}); using {_C.current_isa()!r}",
            RuntimeWarning,
            stacklevel=2,
        )


def has_cpu_kernels() -> bool:
    """True when the compiled CPU kernels are loaded."""
    return _C is not None


def simd_levels() -> list[str]:
    """The instruction-set levels compiled in and supported by this CPU, widest last."""
    return list(_C.supported_isas()) if _C is not None else []


def simd_level() -> str | None:
    """The instruction-set level the CPU kernels use now (``None`` without kernels)."""
    return _C.current_isa() if _C is not None else None


def set_simd_level(level: str) -> None:
    """Force the CPU kernels onto one instruction-set level ('baseline', 'avx2', 'avx512').

    The environment variable ``PROXOPT_SIMD`` does the same at import time.
    """
    if _C is None:
        raise RuntimeError(f"proxopt's CPU kernels are not loaded ({_C_ERROR})")
    _C.set_isa(level)


def backend_info() -> dict:
    """Which backend, instruction set and thread count proxopt uses, and
    whether the CUDA kernels are usable (and if not, why)."""
    from . import _fused_cuda  # loads proxopt._C_cuda lazily

    return {
        "backend": "cpu-kernels" if _C is not None else "reference",
        "cpu_kernels": _C is not None,
        "cpu_kernels_error": _C_ERROR,
        "simd": simd_level(),
        "simd_available": simd_levels(),
        "threads": torch.get_num_threads(),
        **_fused_cuda._info(),
    }
