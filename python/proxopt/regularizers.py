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
``group_lasso`` λ Σ_g √|g| ‖w_g‖₂ (groups: slices     block soft threshold
              along ``group_dim``, default 0 = rows)  w_g·max(0, 1 − τ√|g|/‖w_g‖₂)
``max_norm``  ‖w_g‖₂ ≤ c (groups along                scale w_g by min(1, c/‖w_g‖₂)
              ``max_norm_dim``)
============  =====================================  ====================================

In one step they act in this order: L1 or L0, ridge, group lasso, max-norm,
bounds. ``l1`` with ``group_lasso`` is the sparse group lasso.

τ = lr·λ with the current lr (``prox_metric="euclidean"``, the default), or
τᵢ = lr·λ / dᵢ with dᵢ the optimizer's own per-element denominator
(``prox_metric="adaptive"``; Adam: √v̂ᵢ + ε) for the elementwise proxes;
group proxes always use the euclidean τ, so the adaptive metric with a group
regularizer is an error. ``l1`` and ``l0`` cannot be combined, and
``group_lasso`` with ``max_norm`` must use the same dim. Group regularizers
need parameters with at least 2 dimensions: leave biases and norm weights
out (:func:`proxopt.param_groups` does that).
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
    "group_lasso": 0.0,
    "group_dim": 0,
    "max_norm": None,
    "max_norm_dim": 0,
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
    gl = check_nonnegative("group_lasso", group["group_lasso"])
    if math.isinf(gl):
        raise ValueError(f"Invalid group_lasso value: {gl} (must be finite)")
    max_norm = group["max_norm"]
    if max_norm is not None:
        c = _number("max_norm", max_norm)
        if not 0.0 < c < math.inf:
            raise ValueError(f"Invalid max_norm value: {max_norm} (must be > 0 and finite, or None)")
    for key in ("group_dim", "max_norm_dim"):
        if isinstance(group[key], bool) or not isinstance(group[key], int):
            raise ValueError(f"Invalid {key} value: {group[key]!r} (expected an int)")
    if gl and max_norm is not None and group["group_dim"] != group["max_norm_dim"]:
        raise ValueError(
            f"group_dim={group['group_dim']} and max_norm_dim={group['max_norm_dim']} differ: "
            "group_lasso and max_norm together must act on the same groups"
        )
    if metric == "adaptive" and (gl or max_norm is not None):
        raise ValueError(
            "prox_metric='adaptive' cannot be combined with group_lasso or max_norm: group proxes "
            "use the euclidean metric; use prox_metric='euclidean' or separate param groups"
        )
    if metric == "adaptive" and not adaptive_ok:
        raise ValueError(
            f"prox_metric='adaptive' is not defined for {optimizer}: it has no per-element "
            "preconditioner; use prox_metric='euclidean'"
        )


def has_prox(group: dict) -> bool:
    """True when the group asks for any proximal step or projection."""
    return bool(group["l1"] or group["l2"] or group["l0"] or group["bounds"] is not None or has_group_prox(group))


def has_group_prox(group: dict) -> bool:
    """True when the group asks for group lasso or max-norm."""
    return bool(group["group_lasso"]) or group["max_norm"] is not None


def group_dim_of(group: dict) -> int:
    """The dim the group proxes act along (they share it when both are set)."""
    return group["group_dim"] if group["group_lasso"] else group["max_norm_dim"]


def group_shape(shape: tuple[int, ...], dim: int) -> tuple[int, int, int]:
    """(outer, groups, inner): the tensor seen as [outer, groups, inner], one
    group per index along ``dim``."""
    dim = dim % len(shape)
    return (math.prod(shape[:dim]), shape[dim], math.prod(shape[dim + 1 :]))


def bounds_of(group: dict) -> tuple[float, float]:
    """The (lo, hi) pair of a group, (-inf, inf) when unconstrained."""
    b = group["bounds"]
    return (-math.inf, math.inf) if b is None else (float(b[0]), float(b[1]))
