"""Channel groups that span tensors, inside the step.

A channel of a conv or linear layer lives in several tensors: its output
row, its bias element, the weight and bias elements of the norm layer after
it, the input columns of the next layer. A param group may declare such
groups under the key ``"channel_groups"`` (a :class:`CoupledChannels`; build
it with :meth:`proxopt.ChannelGroups.param_groups` from
:func:`proxopt.channel_groups`). Then, in that param group, ``group_lasso``,
``channel_sparsity`` and ``max_norm`` act on those groups instead of on
slices of one tensor: the norm of a group is taken over every slice of every
tensor it spans, and each slice is scaled, kept or zeroed together.

How a step runs (the order of DESIGN's step 6, for groups that span tensors):

1. the fused step of every tensor of the param group with the elementwise
   regularizers (``l1``/``l0``, ``l2``, ``sparsity``) and without the group
   proxes and the bounds (they act after the groups);
2. per family, each group's norm over all of its slices, from one
   reduction of each member tensor along the other dims (O(groups) results,
   no tensor-sized temporaries);
3. per group the factor: the block soft threshold
   ``max(0, 1 − lr·λ·√n_g / ‖w_g‖)`` (n_g the elements of all its slices),
   the channel budget (the ``G − ⌈s·G⌉`` groups of the family with the
   largest norm after the shrinkage are kept, the rest zeroed: an exact
   selection on this step's norms, ties to the lower index, NaN ranked
   first), then max-norm on the shrunk norm
   (:func:`proxopt.reference.group_factor`, the same function as for groups
   of one tensor);
4. each member tensor times its factors along its dim (one in-place pass;
   a tensor that is in two families, as the rows of one and the columns of
   another, takes both factors, each computed from the norms of step 1);
   the optimizer state of the slices of a zeroed group is reset to that of
   a fresh entry (with ``reset_state``, on by default with a budget);
5. the clamp to ``bounds``.

In the heal phase the group lasso and the channel budget stop acting; a
group whose slices in the declaring param group are 0 (frozen there by the
step itself) is set to 0 in the other param groups too, with fresh state
(a BatchNorm β of a cut channel does not come back); max-norm and bounds
still act. Under
AMP, a step skipped for an overflow skips all of this too.

A tensor of the param group that is in no family gets the elementwise
regularizers only. The channel budget is per family (as magnitude pruning
per layer). Not supported (refused with a ``ValueError``): DTensor
parameters, complex parameters, ``channel_sparsity`` with ``sparsity`` in
one param group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from . import reference
from .distributed import is_dtensor, local_tensor
from .regularizers import COUPLED_KEY, group_shape

__all__ = ["CoupledChannels", "CoupledFamily", "CoupledMember", "check_coupled", "coupled_prox_", "COUPLED_KEY"]


@dataclass(frozen=True)
class CoupledMember:
    """The slices of one tensor that a family's groups hold: tensor ``param``
    of param group ``group`` (positions; ``group`` counted from the param
    group that declares the channel groups: 0 is that group, 1 the next),
    along ``dim``, group ``g`` holding the indices ``index[g]`` (possibly
    none). A member in another param group keeps that group's other
    settings (e.g. no weight decay on a BatchNorm's γ and β)."""

    group: int
    param: int
    dim: int
    index: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class CoupledFamily:
    """The channels of one producer (or of producers tied by a residual sum):
    ``groups`` groups, each a set of slices of the ``members`` tensors."""

    name: str
    groups: int
    members: tuple[CoupledMember, ...]


@dataclass(frozen=True)
class CoupledChannels:
    """The channel groups of one param group (its value under ``"channel_groups"``).
    Positional (tensors by index in the group's ``params``), so it travels in a
    state_dict with the param group like any hyperparameter."""

    families: tuple[CoupledFamily, ...]
    # Index tensors per (device, family, member), built on first use.
    _cache: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    def __getstate__(self) -> dict:
        return {"families": self.families}

    def __setstate__(self, state: dict) -> None:
        object.__setattr__(self, "families", state["families"])
        object.__setattr__(self, "_cache", {})

    def __deepcopy__(self, memo: dict) -> CoupledChannels:
        return self  # immutable

    def _flat(self, device: torch.device, f: int, m: int) -> tuple[Tensor, Tensor]:
        """(indices along the member's dim, the group of each), long tensors on ``device``."""
        key = (device, f, m)
        out = self._cache.get(key)
        if out is None:
            member = self.families[f].members[m]
            idx = [i for ix in member.index for i in ix]
            grp = [g for g, ix in enumerate(member.index) for _ in ix]
            out = (torch.tensor(idx, dtype=torch.long, device=device), torch.tensor(grp, dtype=torch.long, device=device))
            self._cache[key] = out
        return out


def coupled_of(group: dict) -> CoupledChannels | None:
    return group.get(COUPLED_KEY)


def check_coupled(groups: list[dict], gi: int, label: Callable[[dict, int], str], partial: bool = False) -> None:
    """Param group ``gi``'s channel groups fit the parameters they name
    (ValueError naming ``channel_groups`` otherwise). ``partial``: while the
    constructor adds the groups one by one, a member in a group not added
    yet is checked later (every step's plan checks them all)."""
    group = groups[gi]
    spec = group[COUPLED_KEY]
    if not isinstance(spec, CoupledChannels):
        raise TypeError(f"Invalid {COUPLED_KEY} value: a {type(spec).__name__}; expected proxopt.coupled.CoupledChannels "
                        "(from proxopt.channel_groups(model, inputs).param_groups(model, ...))")
    if group["channel_sparsity"] and group["sparsity"]:
        raise ValueError(f"{COUPLED_KEY} with channel_sparsity and sparsity: one budget per param group")
    seen: dict[tuple[int, int, int], str] = {}
    for fam in spec.families:
        for m in fam.members:
            where = f"Invalid {COUPLED_KEY} value of param group {gi}: family {fam.name!r}"
            if partial and m.group >= len(groups) - gi:
                continue
            if not 0 <= m.group < len(groups) - gi:
                raise ValueError(f"{where} names param group {gi} + {m.group}; the optimizer has {len(groups)}")
            member_group = groups[gi + m.group]
            if m.group and member_group.get(COUPLED_KEY) is not None:
                raise ValueError(f"{where} names a tensor of param group {gi + m.group}, which declares channel groups "
                                 "of its own")
            params = member_group["params"]
            if not 0 <= m.param < len(params):
                raise ValueError(f"{where} names parameter {m.param} of param group {gi + m.group}, which has "
                                 f"{len(params)}")
            if seen.setdefault((m.group, m.param, m.dim), fam.name) != fam.name:
                raise ValueError(f"{where} and family {seen[(m.group, m.param, m.dim)]!r} both hold slices of "
                                 f"{label(member_group, m.param)} along dim {m.dim}")
            p = params[m.param]
            group = member_group
            if is_dtensor(p):
                raise ValueError(f"{where}: {label(group, m.param)} is a DTensor; channel groups that span tensors "
                                 "are not supported under FSDP2/DTensor")
            if p.is_complex():
                raise ValueError(f"{where}: {label(group, m.param)} is complex")
            if not 0 <= m.dim < max(p.dim(), 1) or len(m.index) != fam.groups:
                raise ValueError(f"{where}: member dim {m.dim} of {label(group, m.param)} of shape {tuple(p.shape)}, "
                                 f"{len(m.index)} index lists for {fam.groups} groups")
            n = p.shape[m.dim] if p.dim() else 1
            if any(not 0 <= i < n for ix in m.index for i in ix):
                raise ValueError(f"{where}: an index along dim {m.dim} is outside {label(group, m.param)} "
                                 f"of shape {tuple(p.shape)}")
            group = groups[gi]


def _math(t: Tensor) -> Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


_CHUNK = 1 << 18  # elements of the block of rows squared at a time for a column reduction (1 MiB in float32)


def _slice_sumsq(w: Tensor, dim: int) -> Tensor:
    """Sum of squares of each slice of ``w`` along ``dim`` (float64, summed in
    the math dtype), without a temporary the size of ``w``: a row reduction
    for ``dim`` 0, else blocks of rows squared and summed with a matrix
    product (torch's reduction over a leading dim runs ~10x slower)."""
    if w.dim() <= 1:
        return _math(w).double().square().reshape(-1)
    outer, groups, inner = group_shape(tuple(w.shape), dim)
    if outer == 1 and w.is_contiguous():
        return torch.linalg.vector_norm(_math(w.view(groups, inner)), dim=1).double().square()
    if not w.is_contiguous():
        dims = [d for d in range(w.dim()) if d != dim]
        return torch.linalg.vector_norm(_math(w), dim=dims).double().square()
    rows = w.view(outer, groups * inner)
    step = max(1, _CHUNK // max(1, groups * inner))
    dtype = _math(w[:0]).dtype
    acc = torch.zeros(1, groups * inner, dtype=dtype, device=w.device)
    ones = torch.ones(1, min(step, outer), dtype=dtype, device=w.device)
    for i in range(0, outer, step):
        block = _math(rows[i:i + step])
        acc.addmm_(ones[:, :block.shape[0]], block.square())
    return acc.view(groups, inner).sum(1).double()


def _per_element(v: Tensor, w: Tensor, dim: int) -> tuple[Tensor, Tensor | None]:
    """``w`` as a matrix, and ``v`` (one value per index along ``dim``) shaped
    to broadcast over it along ``dim``: ``(view, values)``."""
    if w.dim() <= 1:
        return w.reshape(-1), v
    outer, groups, inner = group_shape(tuple(w.shape), dim)
    if not w.is_contiguous():
        shape = [1] * w.dim()
        shape[dim] = -1
        return w, v.view(shape)
    if outer == 1:
        return w.view(groups, inner), v[:, None]
    return w.view(outer, groups * inner), v.repeat_interleave(inner) if inner > 1 else v


def _keep_largest(shrunk: Tensor, s: float) -> Tensor:
    """The groups the channel budget cuts: all but the ``G − ⌈s·G⌉`` largest
    (ties to the lower index, NaN ranked first)."""
    keep = reference.budget_keep(s, shrunk.numel())
    key = torch.where(torch.isnan(shrunk), torch.full_like(shrunk, math.inf), shrunk)
    order = torch.sort(key.neg(), stable=True).indices
    cut = torch.zeros(shrunk.numel(), dtype=torch.bool, device=shrunk.device)
    cut[order[keep:]] = True
    return cut


@torch.no_grad()
def coupled_prox_(rule: Any, hypers: list[Any], groups: list[dict], gi: int, state: dict,
                  found_inf: Tensor | None) -> None:
    """Steps 2-5 of the module docstring for param group ``gi``'s channel
    groups, after the fused step (``hypers``: each param group's
    :class:`~proxopt.hyper.Hyper`; ``rule``: the optimizer's
    :class:`proxopt.rules.Rule`, for the fresh values of a reset)."""
    group, h = groups[gi], hypers[gi]
    spec: CoupledChannels = group[COUPLED_KEY]

    def param(m: CoupledMember) -> Tensor:
        return groups[gi + m.group]["params"][m.param]

    gl = 0.0 if h.heal else float(group["group_lasso"])
    s = 0.0 if h.heal else float(group["channel_sparsity"])
    c = 0.0 if group["max_norm"] is None else float(group["max_norm"])
    factors: dict[tuple[int, int, int], Tensor] = {}  # (group, param, dim) -> float64 factor along dim
    if gl or s or c or h.heal:
        for fi, fam in enumerate(spec.families):
            stepped = [m for m in fam.members if param(m).grad is not None]
            if not stepped:
                continue
            device = local_tensor(param(fam.members[0])).device
            sumsq = torch.zeros(fam.groups, dtype=torch.float64, device=device)
            own = torch.zeros(fam.groups, dtype=torch.float64, device=device)  # of the slices in this param group
            size = torch.zeros(fam.groups, dtype=torch.float64, device=device)
            for mi, m in enumerate(fam.members):
                w = local_tensor(param(m))
                idx, grp = spec._flat(w.device, fi, mi)
                if idx.numel() == 0:
                    continue
                part = _slice_sumsq(w, m.dim)[idx]
                sumsq.index_add_(0, grp, part)
                if m.group == 0:
                    own.index_add_(0, grp, part)
                size.index_add_(0, grp, torch.full((grp.numel(),), float(w.numel() // (w.shape[m.dim] if w.dim() else 1)),
                                                   dtype=torch.float64, device=device))
            norm = sumsq.sqrt()
            first = stepped[0]
            lr = reference.rule_lr(h, state.get(param(first), {}).get("step"))
            tau = lr * gl * size.sqrt()
            cut = _keep_largest(norm * reference.group_factor(norm, tau, 0.0), s) if s else None
            f = reference.group_factor(norm, tau, c, cut)
            if h.heal and any(m.group == 0 for m in fam.members):  # the support is frozen: a group whose slices here the step kept at 0 is 0 in every tensor
                f = torch.where(own == 0, torch.zeros_like(f), f)
            if found_inf is not None:  # a step skipped for an overflow: no prox either
                f = torch.where(found_inf.to(device).reshape(()) != 0, torch.ones_like(f), f)
            for mi, m in enumerate(fam.members):
                w = local_tensor(param(m))
                idx, grp = spec._flat(w.device, fi, mi)
                key = (m.group, m.param, m.dim)
                if key not in factors:
                    factors[key] = torch.ones(w.shape[m.dim] if w.dim() else 1, dtype=torch.float64, device=w.device)
                factors[key][idx] *= f.to(w.device)[grp]
    reset = h.reset_state
    for (mg, pi, dim), F in factors.items():
        p = groups[gi + mg]["params"][pi]
        keys = rule.state_keys(hypers[gi + mg])
        w = local_tensor(p)
        target, factor = _per_element(F.to(_math(w[:0]).dtype), w, dim)
        target.mul_(factor)
        if reset and p in state:
            zero = F == 0
            if bool(zero.any()):
                st = state[p]
                for q, k in enumerate(keys):
                    if k in st:
                        t = local_tensor(st[k])
                        value = rule.initial_value(k, groups[gi + mg]) if q == 0 else 0.0
                        if value == 0.0:  # (a product by 0/1 runs several times faster than masked_fill_)
                            target, keep = _per_element((~zero).to(t.dtype), t, dim)
                            target.mul_(keep)
                        else:
                            target, mask = _per_element(zero, t, dim)
                            target.masked_fill_(mask, value)
    bounds = group["bounds"]
    if bounds is not None:
        for p in group["params"]:
            if p.grad is not None:
                local_tensor(p).clamp_(float(bounds[0]), float(bounds[1]))
