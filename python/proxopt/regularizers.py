"""The regularizer keywords every proxopt optimizer takes: declared once here,
with their defaults, validation, documentation and the
:class:`~proxopt.hyper.Hyper` fields each sets; the optimizers' signatures and
docstrings, the regularizer part of :class:`~proxopt.hyper.Hyper` and so the
kernels' arguments follow from this table.

Each keyword can be given to the optimizer (the default for every param
group) or overridden in one param group, exactly like ``lr``.

In one step they act after the update, in this order: L1 or L0, ridge, group
lasso, the channel budget, max-norm, the sparsity budget, bounds. ``τ = lr·λ`` with the current lr
(``prox_metric="euclidean"``, the default), or ``τᵢ = lr·λ / dᵢ`` with
``dᵢ`` the optimizer's own per-element denominator (``"adaptive"``; Adam:
``√v̂ᵢ + ε``) for the elementwise proxes; group proxes always use the
euclidean τ. Every prox is the argmin of ``½‖x − w‖² + τ·R(x)``.
"""

from __future__ import annotations

import difflib
import inspect
import math
import numbers
import re
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .arguments import ARGUMENT_DOCS

PROX_METRICS = ("euclidean", "adaptive")
# The param-group key of channel groups that span tensors (proxopt.coupled):
# in such a group, group_lasso, channel_sparsity and max_norm act on them.
COUPLED_KEY = "channel_groups"
# What the fused step leaves to proxopt.coupled in such a group (the Hyper
# fields, with their values when off): the group proxes, and the bounds
# that act after them.
COUPLED_FIELDS = (("group_lasso", 0.0), ("channel_sparsity", 0.0), ("max_norm", 0.0),
                  ("lo", -math.inf), ("hi", math.inf))
SPARSITY_SCOPES = ("tensor", "group")


# ---- value checks (one message style: "Invalid <name> value: <value>") --------


def _number(name: str, value: Any) -> float:
    """A real number (int, float, numpy scalar, 0-dim tensor); strings and other
    types are a TypeError, as torch.optim's comparisons make them."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
        return float(value.item())
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"Invalid {name} value: {value!r} (a {type(value).__name__}; expected a number)")
    return float(value)


def nonnegative(name: str, value: Any) -> float:
    """A number >= 0 (infinity allowed); NaN and negatives are rejected."""
    v = _number(name, value)
    if not v >= 0.0:  # also catches NaN
        raise ValueError(f"Invalid {name} value: {value}")
    return v


def strength(name: str, value: Any) -> float:
    """A regularizer strength: finite and >= 0."""
    v = nonnegative(name, value)
    if v == math.inf:  # (v >= 0; not math.isinf, which a traced symbolic float cannot take)
        raise ValueError(f"Invalid {name} value: {v} (must be finite)")
    return v


def integer(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"Invalid {name} value: {value!r} (a {type(value).__name__}; expected an int)")
    return int(value)


def _bounds(name: str, value: Any) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        lo, hi = value
    except (TypeError, ValueError):
        raise ValueError(f"Invalid {name} value: {value!r} (expected a pair (lo, hi))") from None
    lo, hi = _number(name, lo), _number(name, hi)
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise ValueError(f"Invalid {name} value: {value!r} (need lo <= hi)")
    if lo == hi and math.isinf(lo):
        raise ValueError(f"Invalid {name} value: {value!r} (the feasible set is empty: no finite weight lies in it)")
    return (lo, hi)


def _metric(name: str, value: Any) -> str:
    if value not in PROX_METRICS:
        raise ValueError(f"Invalid {name} value: {value!r} (expected one of {PROX_METRICS})")
    return value


def fraction(name: str, value: Any) -> float:
    """A number in [0, 1]."""
    v = _number(name, value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"Invalid {name} value: {value} (a fraction of zeros: must lie in [0, 1])")
    return v


def _scope(name: str, value: Any) -> str:
    if value not in SPARSITY_SCOPES:
        raise ValueError(f"Invalid {name} value: {value!r} (expected one of {SPARSITY_SCOPES})")
    return value


def _optional_flag(name: str, value: Any) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"Invalid {name} value: {value!r} (expected a bool or None)")
    return value


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"Invalid {name} value: {value!r} (expected a bool)")
    return value


# What the heal phase turns off: the shrinking proxes and the budget (the
# support is frozen instead); max_norm and bounds still act.
HEAL_STOPS = ("l1", "l2", "l0", "group_lasso", "sparsity", "channel_sparsity")


def _max_norm(name: str, value: Any) -> float | None:
    if value is None:
        return None
    c = _number(name, value)
    if not 0.0 < c < math.inf:
        raise ValueError(f"Invalid {name} value: {value} (must be > 0 and finite, or None)")
    return c


# ---- the table -------------------------------------------------------------------


@dataclass(frozen=True)
class Keyword:
    """One regularizer keyword: its default, its check (returns the value in
    canonical form or raises), its type for signatures, its documentation,
    and the :class:`~proxopt.hyper.Hyper` fields it sets."""

    name: str
    default: Any
    check: Callable[[str, Any], Any]
    annotation: str
    doc: str
    # a modifier changes how other keywords act and regularizes nothing itself
    modifier: bool = False
    # The Hyper fields this keyword sets, each with its value when off; None:
    # one field of the keyword's own name and default.
    fields: tuple[tuple[str, Any], ...] | None = None
    # Their values, from every validated keyword value of the group; None: the keyword's own value.
    to_hyper: Callable[[dict[str, Any]], tuple[Any, ...]] | None = None

    @property
    def hyper_fields(self) -> tuple[tuple[str, Any], ...]:
        return self.fields if self.fields is not None else ((self.name, self.default),)

    def hyper_values(self, v: dict[str, Any]) -> tuple[Any, ...]:
        return self.to_hyper(v) if self.to_hyper is not None else (v[self.name],)


REGULARIZERS: tuple[Keyword, ...] = (
    Keyword("l1", 0.0, strength, "float",
            "λ of λ‖w‖₁: soft threshold ``sign(w)·max(|w| − τ, 0)`` after the step (exact zeros)."),
    Keyword("l2", 0.0, strength, "float",
            "λ of λ/2‖w‖²: ridge prox ``w / (1 + τ)`` after the step (with ``l1``: the elastic net)."),
    Keyword("l0", 0.0, strength, "float",
            "λ of λ‖w‖₀: hard threshold, ``w`` kept where ``|w| > √(2τ)``, else 0. Not with ``l1``."),
    Keyword("bounds", None, _bounds, "tuple[float, float] | None",
            "``(lo, hi)``: clamp every weight into [lo, hi] last of all (``(0, inf)``: non-negative "
            "weights; an infinite side is unconstrained).",
            fields=(("lo", -math.inf), ("hi", math.inf)),
            to_hyper=lambda v: v["bounds"] if v["bounds"] is not None else (-math.inf, math.inf)),
    Keyword("prox_metric", "euclidean", _metric, "str",
            "``'euclidean'`` (τ = lr·λ) or ``'adaptive'`` (τᵢ = lr·λ/dᵢ, the optimizer's own "
            "denominator; not for SGD, not with group proxes) for ``l1``, ``l2``, ``l0``.", modifier=True,
            fields=(("adaptive", False),), to_hyper=lambda v: (v["prox_metric"] == "adaptive",)),
    Keyword("group_lasso", 0.0, strength, "float",
            "λ of λ Σ_g √|g| ‖w_g‖₂ over the slices along ``group_dim``: block soft threshold "
            "``w_g·max(0, 1 − τ√|g|/‖w_g‖₂)`` (whole groups become 0). Needs tensors of 2+ dims."),
    Keyword("group_dim", 0, integer, "int",
            "The dim whose slices are the groups of ``group_lasso`` and ``channel_sparsity`` (0: output "
            "rows / channels).", modifier=True,
            # the one dim of the group proxes (they share it when several are set)
            to_hyper=lambda v: (v["group_dim"] if v["group_lasso"] or v["channel_sparsity"] else v["max_norm_dim"],)),
    Keyword("max_norm", None, _max_norm, "float | None",
            "c: project every group (slices along ``max_norm_dim``) onto ‖w_g‖₂ ≤ c.",
            fields=(("max_norm", 0.0),), to_hyper=lambda v: (v["max_norm"] or 0.0,)),  # 0: no constraint
    Keyword("max_norm_dim", 0, integer, "int",
            "The dim whose slices ``max_norm`` bounds (the same as ``group_dim`` with both).", modifier=True,
            fields=()),  # (group_dim's field holds it)
    Keyword("sparsity", 0.0, fraction, "float",
            "s in [0, 1]: a budget, not a penalty: after the proxes and max-norm, keep the "
            "``n − ⌈s·n⌉`` largest ``|w|`` of each tensor (or of the param group, "
            "``sparsity_scope='group'``) and set the rest to exactly 0. The threshold comes from counts "
            "the previous step gathered in its pass over the weights (no extra pass); see the docs for "
            "its accuracy."),
    Keyword("sparsity_scope", "tensor", _scope, "str",
            "``'tensor'`` (a budget per tensor) or ``'group'`` (one budget over every tensor of the "
            "param group: global magnitude pruning). ``channel_sparsity`` is always per tensor.",
            modifier=True, fields=()),
    Keyword("channel_sparsity", 0.0, fraction, "float",
            "s in [0, 1]: a budget of whole groups (the slices along ``group_dim``: output channels by "
            "default): after the group lasso, keep the ``G − ⌈s·G⌉`` groups of each tensor with the "
            "largest norm ‖w_g‖₂ and set the rest to exactly 0 (then ``prune_zero_channels`` can cut "
            "them). The threshold comes from counts of group norms the previous step gathered (no "
            "extra pass). Needs tensors of 2+ dims; not with ``sparsity``."),
    Keyword("reset_state", None, _optional_flag, "bool | None",
            "Whether a weight the step leaves at exactly 0 gets the optimizer state of a fresh entry "
            "(0; Adagrad's ``initial_accumulator_value``; a whole group the group proxes zero too): "
            "True with ``l1``, ``l0``, ``sparsity`` or ``channel_sparsity``; False never; None "
            "(default) with the budgets only. (With Adam a reset entry's next "
            "update is about 3·lr -- the bias correction of step t on one step's moments -- so reset "
            "L1 zeros revive more often: measured, L1 through SparsityTarget then misses its "
            "targets.) The heal phase always resets its frozen zeros.", modifier=True,
            fields=(("reset_state", False),),
            to_hyper=lambda v: (v["reset_state"] if v["reset_state"] is not None
                                else bool(v["sparsity"] or v["channel_sparsity"]),)),
    Keyword("heal", False, _flag, "bool",
            "The heal phase: the support is frozen (a weight that is 0 stays exactly 0, with fresh "
            "state) and the survivors train with no shrinkage: ``l1``, ``l2``, ``l0``, "
            "``group_lasso``, ``sparsity`` and ``channel_sparsity`` stop acting; ``max_norm`` and "
            "``bounds`` still apply. Turning it on with a budget first keeps exactly the ``n − ⌈s·n⌉`` "
            "largest weights (with ``channel_sparsity``: groups by norm; fewer when the budget had "
            "already cut more: a weight cut is not brought back)."),
)

REGULARIZER_DEFAULTS: dict[str, Any] = {k.name: k.default for k in REGULARIZERS}
# The keywords that regularize when off their default (not the modifiers).
ACTING_DEFAULTS: dict[str, Any] = {k.name: k.default for k in REGULARIZERS if not k.modifier}
_CHECKS = {k.name: k.check for k in REGULARIZERS}


def validate_regularizers(group: dict, *, adaptive_ok: bool, optimizer: str) -> dict[str, Any]:
    """Check the regularizer keys of one param group; raise ``ValueError`` (or
    ``TypeError`` for a value that is not a number) naming the argument.
    Returns the canonical values."""
    v = {name: check(name, group[name]) for name, check in _CHECKS.items()}
    if v["l1"] and v["l0"]:
        raise ValueError(
            f"l1={v['l1']} and l0={v['l0']} cannot be combined: the L1 soft threshold and the L0 hard "
            "threshold are alternative elementwise proxes; choose one"
        )
    gl, max_norm, channels = v["group_lasso"], v["max_norm"], v["channel_sparsity"]
    coupled = group.get(COUPLED_KEY) is not None  # (the groups' dims are theirs: group_dim does not apply)
    if (gl or channels) and max_norm is not None and v["group_dim"] != v["max_norm_dim"] and not coupled:
        raise ValueError(
            f"group_dim={v['group_dim']} and max_norm_dim={v['max_norm_dim']} differ: "
            "group_lasso or channel_sparsity and max_norm together must act on the same groups"
        )
    if v["prox_metric"] == "adaptive" and (gl or channels or max_norm is not None):
        raise ValueError(
            "prox_metric='adaptive' cannot be combined with group_lasso, channel_sparsity or max_norm: "
            "group proxes use the euclidean metric; use prox_metric='euclidean' or separate param groups"
        )
    if channels and v["sparsity"]:
        raise ValueError(
            f"channel_sparsity={channels} and sparsity={v['sparsity']} cannot be combined in one param "
            "group: each keeps its own budget statistics per tensor; put them in separate param groups"
        )
    if channels and v["sparsity_scope"] != "tensor" and not coupled:
        raise ValueError(
            f"channel_sparsity={channels} with sparsity_scope={v['sparsity_scope']!r}: the channel budget "
            "is per tensor (group norms of different layers are not comparable); use sparsity_scope='tensor'"
        )
    for name in ("sparsity", "channel_sparsity"):
        if v[name] and v["bounds"] is not None and not v["bounds"][0] <= 0.0 <= v["bounds"][1]:
            raise ValueError(
                f"{name}={v[name]} with bounds={v['bounds']}: the budget sets weights to 0, which "
                "the box excludes; use bounds that hold 0"
            )
    if v["heal"] and v["bounds"] is not None and not v["bounds"][0] <= 0.0 <= v["bounds"][1]:
        raise ValueError(
            f"heal=True with bounds={v['bounds']}: the heal phase keeps zeros at 0, which the box "
            "excludes; use bounds that hold 0"
        )
    if v["prox_metric"] == "adaptive" and not adaptive_ok:
        raise ValueError(
            f"prox_metric='adaptive' is not defined for {optimizer}: it has no per-element "
            "preconditioner; use prox_metric='euclidean'"
        )
    return v


# The regularizers' Hyper fields with their values when off, in table order.
REGULARIZER_FIELDS: tuple[tuple[str, Any], ...] = tuple(f for k in REGULARIZERS for f in k.hyper_fields)


def regularizer_hyper(v: dict[str, Any], coupled: bool = False) -> dict[str, Any]:
    """The :class:`~proxopt.hyper.Hyper` fields of validated regularizer values
    (``coupled``: of a param group with channel groups that span tensors,
    whose group proxes and bounds :mod:`proxopt.coupled` applies after the
    fused step)."""
    out: dict[str, Any] = {}
    for k in REGULARIZERS:
        out.update(zip((name for name, _ in k.hyper_fields), k.hyper_values(v)))
    if v["heal"]:
        out.update((name, 0.0) for name in HEAL_STOPS)
    if coupled:
        out.update(COUPLED_FIELDS)
    return out


def has_prox(group: dict) -> bool:
    """True when the group asks for any proximal step or projection (a
    regularizing keyword off its default)."""
    return any(group[name] != default for name, default in ACTING_DEFAULTS.items())


def budget_key(group: dict) -> str | None:
    """The budget keyword the group sets (``"sparsity"`` or ``"channel_sparsity"``), or None.
    Its statistics are kept in the heal phase too. (The channel budget of
    groups that span tensors keeps none: :mod:`proxopt.coupled` selects
    exactly on each step's norms.)"""
    for name in ("sparsity",) if group.get(COUPLED_KEY) is not None else ("sparsity", "channel_sparsity"):
        s = group[name]
        if isinstance(s, torch.Tensor) or s != 0:
            return name
    return None


def has_budget(group: dict) -> bool:
    """True when the group asks for a sparsity or channel budget."""
    return budget_key(group) is not None


def has_group_prox(group: dict) -> bool:
    """True when the group asks for group lasso, a channel budget or max-norm
    on slices of each tensor (not on channel groups that span tensors)."""
    if group.get(COUPLED_KEY) is not None:
        return False
    return bool(group["group_lasso"]) or bool(group["channel_sparsity"]) or group["max_norm"] is not None


def group_dim_of(group: dict) -> int:
    """The dim the group proxes act along (they share it when several are set)."""
    return group["group_dim"] if group["group_lasso"] or group["channel_sparsity"] else group["max_norm_dim"]


def group_shape(shape: tuple[int, ...], dim: int) -> tuple[int, int, int]:
    """(outer, groups, inner): the tensor seen as [outer, groups, inner], one
    group per index along ``dim``."""
    dim = dim % len(shape)
    return (math.prod(shape[:dim]), shape[dim], math.prod(shape[dim + 1 :]))


# ---- what the optimizers derive from the table -------------------------------------


def with_regularizers(cls: type) -> type:
    """Class decorator for the optimizers: their ``__init__`` takes the
    regularizers as ``**regularizers``; this gives it the explicit signature
    (every keyword, with its default, for ``inspect.signature`` and ``help``)
    and appends the keywords' documentation to the class docstring."""
    init = cls.__init__
    sig = inspect.signature(init)
    params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    params += [
        inspect.Parameter(k.name, inspect.Parameter.KEYWORD_ONLY, default=k.default, annotation=k.annotation)
        for k in REGULARIZERS
    ]
    init.__signature__ = sig.replace(parameters=params)
    lines = ["", "    Args:"]
    for p in params[1:]:  # after self
        if p.name in REGULARIZER_DEFAULTS:
            continue
        if p.name not in ARGUMENT_DOCS:
            raise TypeError(f"{cls.__name__}: argument {p.name!r} has no entry in arguments.ARGUMENT_DOCS")
        kind, doc = ARGUMENT_DOCS[p.name]
        default = "" if p.default is inspect.Parameter.empty else f", default {p.default!r}"
        lines.append(f"        {p.name} ({kind}{default}): {doc}")
    for k in REGULARIZERS:
        lines.append(f"        {k.name} ({k.annotation}, keyword-only, default {k.default!r}): {k.doc}")
    lines += ["", "    Every regularizer can be set per param group, like ``lr``."]
    cls.__doc__ = (cls.__doc__ or "").rstrip() + "\n" + "\n".join(lines) + "\n"
    return cls


def split_regularizers(optimizer: str, kwargs: dict[str, Any], known=()) -> dict[str, Any]:
    """The regularizer keyword arguments of a constructor call with their
    defaults filled in; an unknown keyword is a TypeError, as Python gives,
    with the nearest regularizer or ``known`` argument as a suggestion."""
    unknown = sorted(set(kwargs) - set(REGULARIZER_DEFAULTS))
    if unknown:
        guess = likely_meant(unknown[0], {*REGULARIZER_DEFAULTS, *known})
        hint = f". Did you mean {guess!r}?" if guess else ""
        raise TypeError(f"{optimizer}.__init__() got an unexpected keyword argument {unknown[0]!r}{hint}")
    return {**REGULARIZER_DEFAULTS, **kwargs}


# ---- the keys of a param-group dict ------------------------------------------------

# Keys torch puts in param groups besides the hyperparameters: named parameters'
# names, and what its LR schedulers keep (initial_lr; OneCycleLR's max_lr, min_lr,
# base_momentum, max_momentum; SWALR's swa_lr).
TORCH_GROUP_KEYS = frozenset({"params", "param_names", "max_lr", "min_lr", "base_momentum", "max_momentum", "swa_lr"})


def likely_meant(key: str, known) -> str | None:
    """The name in ``known`` that ``key`` looks like a misspelling of, or None:
    the same name in other case (``L1``), a near spelling (``weight_decy``), or
    a regularizer's name as a word of it (``l1_lamda``, ``lambda_l1``)."""
    low = key.lower()
    if low in known:
        return low
    close = difflib.get_close_matches(low, sorted(known), n=1, cutoff=0.8)
    if close:
        return close[0]
    words = re.split(r"[\W_]+", low)
    for name in sorted((k.name for k in REGULARIZERS if k.name in known), key=len, reverse=True):
        n = name.split("_")
        if any(words[i : i + len(n)] == n for i in range(len(words))):
            return name
    return None


def check_group_keys(optimizer: str, index: int, group: dict, known, allowed=frozenset()) -> None:
    """Reject a key of param group ``index`` that looks like a misspelled
    setting (one of ``known``): torch keeps any key, so ``l1_lamda`` would train
    with no L1 and no warning. Any other key passes, as in torch (torch's own,
    ``initial_<key>`` of the schedulers, other optimizers' hyperparameters,
    keys of the user's or a framework's, and ``allowed``)."""
    for key in group:
        if (not isinstance(key, str) or key in known or key in allowed or key in TORCH_GROUP_KEYS or key == COUPLED_KEY
                or key in ARGUMENT_DOCS or key.startswith("initial_")):
            continue
        guess = likely_meant(key, known)
        if guess is not None:
            raise TypeError(
                f"{optimizer}: param group {index} has the key {key!r}, which is not a setting. Did you mean "
                f"{guess!r}? (A key of your own that looks like a setting: add it to "
                "proxopt.ProxOptimizer.extra_group_keys.)"
            )
