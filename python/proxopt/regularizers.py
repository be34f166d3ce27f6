"""The regularizer keywords every proxopt optimizer takes, and their validation.

Each keyword can be given to the optimizer (the default for every param
group) or overridden in one param group, exactly like ``lr``.

============  =====================================  ====================================
keyword       penalty / constraint R(w)              applied after the step as
============  =====================================  ====================================
``l1``        λ‖w‖₁                                  soft threshold sign(w)·max(|w| − τ, 0)
``l2``        λ/2‖w‖²                                ridge prox w / (1 + τ)
``l1``+``l2`` elastic net                            soft threshold, then ridge
``l0``        λ‖w‖₀                                  hard threshold: w if |w| > √(2τ) else 0
``bounds``    lo ≤ w ≤ hi                            clamp
============  =====================================  ====================================

τ = lr·λ with the current lr (``prox_metric="euclidean"``, the default), or
τᵢ = lr·λ / dᵢ with dᵢ the optimizer's own per-element denominator
(``prox_metric="adaptive"``; Adam: √v̂ᵢ + ε). ``l1`` and ``l0`` cannot be
combined.
"""

from __future__ import annotations

import math
from typing import Any

REGULARIZER_DEFAULTS: dict[str, Any] = {
    "l1": 0.0,
    "l2": 0.0,
    "l0": 0.0,
    "bounds": None,
    "prox_metric": "euclidean",
}

PROX_METRICS = ("euclidean", "adaptive")


def _number(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"Invalid {name} value: {value!r} (expected a number)") from None
    return v


def check_nonnegative(name: str, value: Any) -> float:
    """A finite or infinite number >= 0; NaN and negatives are rejected."""
    v = _number(name, value)
    if not v >= 0.0:  # also catches NaN
        raise ValueError(f"Invalid {name} value: {value}")
    return v


def validate_regularizers(group: dict, *, adaptive_ok: bool, optimizer: str) -> None:
    """Check the regularizer keys of one param group; raise ValueError naming the argument."""
    l1 = check_nonnegative("l1", group["l1"])
    l2 = check_nonnegative("l2", group["l2"])
    l0 = check_nonnegative("l0", group["l0"])
    for name, v in (("l1", l1), ("l2", l2), ("l0", l0)):
        if math.isinf(v):
            raise ValueError(f"Invalid {name} value: {v} (must be finite)")
    if l1 and l0:
        raise ValueError(
            f"l1={l1} and l0={l0} cannot be combined: the L1 soft threshold and the L0 hard "
            "threshold are alternative elementwise proxes; choose one"
        )
    bounds = group["bounds"]
    if bounds is not None:
        try:
            lo, hi = bounds
        except (TypeError, ValueError):
            raise ValueError(f"Invalid bounds value: {bounds!r} (expected a pair (lo, hi))") from None
        lo = _number("bounds", lo)
        hi = _number("bounds", hi)
        if math.isnan(lo) or math.isnan(hi) or lo > hi:
            raise ValueError(f"Invalid bounds value: {bounds!r} (need lo <= hi)")
    metric = group["prox_metric"]
    if metric not in PROX_METRICS:
        raise ValueError(f"Invalid prox_metric value: {metric!r} (expected one of {PROX_METRICS})")
    if metric == "adaptive" and not adaptive_ok:
        raise ValueError(
            f"prox_metric='adaptive' is not defined for {optimizer}: it has no per-element "
            "preconditioner; use prox_metric='euclidean'"
        )


def has_prox(group: dict) -> bool:
    """True when the group asks for any proximal step or projection."""
    return bool(group["l1"] or group["l2"] or group["l0"] or group["bounds"] is not None)


def bounds_of(group: dict) -> tuple[float, float]:
    """The (lo, hi) pair of a group, (-inf, inf) when unconstrained."""
    b = group["bounds"]
    return (-math.inf, math.inf) if b is None else (float(b[0]), float(b[1]))
