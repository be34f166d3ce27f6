"""The pure-torch reference: the specification of every update rule and
regularizer, the fallback for tensors the kernels cannot take, and the oracle
the tests compare the kernels against.

It mirrors ``csrc/proxopt/math.h`` line by line, in the same order of
operations:

1. g ← grad · (1/grad_scale) (AMP, as GradScaler unscales), negated if ``maximize``;
2. g ← g + weight_decay·w where the optimizer couples weight decay;
3. the rule's state update and direction d;
4. w ← w·(1 − lr·weight_decay) where weight decay is decoupled (AdamW);
5. w ← w − step·d;
6. the prox: L1 soft threshold or L0 hard threshold, then ridge, then the
   group soft threshold, then the channel budget, then the max-norm
   projection, then the sparsity budget's hard threshold, then the clamp to
   ``bounds``;
7. the heal phase's frozen support (a weight that was 0 stays 0), and the
   state reset: a weight left at exactly 0 gets fresh states (with a prox
   that makes zeros, a budget and ``reset_state``, or in the heal phase).
   With a group prox the reset looks at the weights before the group prox
   and at the groups whose factor (in the math dtype) is 0: the kernels
   reset a zeroed group after they stored its states.

The sparsity budget keeps the largest ``|w|`` of a *unit* (a tensor, or every
budgeted tensor of a param group); the channel budget keeps the groups of a
tensor with the largest norm after the group lasso, with the same planner. Its threshold for a step is planned before
the step from counts the previous step gathered at three probes (see
:func:`budget_plan`), so no pass over the weights is spent on selecting;
:func:`budget_select_` is the exact selection, run once where the support is
frozen.

Arithmetic runs in float32 for float16/bfloat16 tensors (float64 for
float64), as torch's fused optimizers do; results are stored back once.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from .hyper import ADAGRAD, ADAM, RMSPROP, SGD, Hyper

__all__ = ["Hyper", "step_tensor", "budget_keep", "budget_plan", "budget_init", "budget_select_", "channel_budget_init", "channel_budget_plan", "channel_select_",
           "BUDGET_FIELDS", "misfit", "step_misfit", "inv_grad_scale", "rule_lr", "soft_threshold", "hard_threshold", "ridge",
           "project_bounds", "prox_elementwise", "group_tau", "group_factor", "finish_groups", "prox_group",
           "SGD", "ADAM", "ADAGRAD", "RMSPROP"]


# ---- scalars a step derives from its inputs --------------------------------
# proxopt.distributed uses these too, so that the formulas exist once here.


def inv_grad_scale(grad_scale: Tensor) -> Tensor:
    """AMP's unscaling factor, as torch's GradScaler computes it: the reciprocal
    of the scale in float64, rounded to float32 (a 0-d float32 tensor)."""
    return (1.0 / grad_scale.double().reshape(())).float()


def rule_lr(h: Hyper, step: Tensor | float | None) -> float:
    """The lr of the rule's step at step count ``step`` (after the increment),
    which the proxes scale with too: Adagrad's decayed
    ``lr / (1 + (step − 1)·lr_decay)``, ``lr`` otherwise (and without a step)."""
    if h.rule == ADAGRAD and step is not None:
        return h.lr / (1 + (float(step) - 1) * h.lr_decay)
    return h.lr


# ---- proximal operators: each is argmin_x ½‖x − w‖² + τ·R(x) --------------


def soft_threshold(w: Tensor, tau: float | Tensor) -> Tensor:
    """Prox of τ‖x‖₁: sign(w)·max(|w| − τ, 0). Exact zeros where |w| ≤ τ."""
    return torch.sign(w) * torch.clamp_min(w.abs() - tau, 0)


def hard_threshold(w: Tensor, tau: float | Tensor) -> Tensor:
    """Prox of τ‖x‖₀: keep w where |w| > √(2τ), else 0."""
    thr = torch.sqrt(2 * torch.as_tensor(tau, dtype=w.dtype, device=w.device))
    return torch.where(w.abs() <= thr, torch.zeros_like(w), w)


def ridge(w: Tensor, tau: float | Tensor) -> Tensor:
    """Prox of τ/2‖x‖²: w / (1 + τ), computed as w · (1 / (1 + τ)) in w's dtype
    (the kernels take the division once for a uniform τ)."""
    tau = torch.as_tensor(tau, dtype=w.dtype, device=w.device)
    return w * (1 / (1 + tau))


def project_bounds(w: Tensor, lo: float, hi: float) -> Tensor:
    """Projection onto the box lo ≤ x ≤ hi."""
    return torch.clamp(w, lo, hi)


def prox_elementwise(h: Hyper, lr: float, w: Tensor, denom: Tensor | None) -> Tensor:
    """Step 6 for the elementwise proxes; ``denom`` is the rule's preconditioner
    (used when ``h.adaptive``), ``lr`` the lr the thresholds scale with."""
    adaptive = h.adaptive and denom is not None

    def tau(lam: float) -> float | Tensor:
        return (lr * lam) / denom if adaptive else lr * lam

    if h.l1:
        w = soft_threshold(w, tau(h.l1))
    elif h.l0:
        w = hard_threshold(w, tau(h.l0))
    if h.l2:
        w = ridge(w, tau(h.l2))
    if h.has_bounds and not h.has_group:
        w = project_bounds(w, h.lo, h.hi)
    return w


def group_tau(h: Hyper, lr: float, size: int) -> float:
    """The block soft threshold τ_g = lr·λ·√|g| of a group of ``size`` elements
    (λ = ``h.group_lasso``), in this order of operations, as the kernels."""
    return lr * h.group_lasso * math.sqrt(size)


def group_factor(norm: Tensor, tau: float, max_norm: float, cut: Tensor | None = None,
                 shrunk: list[Tensor] | None = None) -> Tensor:
    """Per-group scale factor from the group norms ‖w_g‖₂ (float64): the block
    soft threshold max(0, 1 − τ_g/‖w_g‖) (prox of τ_g‖w_g‖₂; 0 when
    ‖w_g‖ ≤ τ_g), then the channel budget (``cut``: the groups its plan
    zeroes, :func:`channel_budget_plan`; the norms after the group lasso are
    appended to ``shrunk`` for the next plan), then the projection onto
    ‖w_g‖ ≤ c of the shrunk group. Computed in float64, so a group whose
    norm overflows float32 is still scaled, not zeroed; the caller rounds the
    factor to its math dtype."""
    f = torch.ones_like(norm)
    if isinstance(tau, Tensor) or tau:  # (a tensor: one τ per group, for groups of different sizes)
        f = torch.where(norm <= tau, torch.zeros_like(norm), 1 - tau / norm)
    if cut is not None:
        if shrunk is not None:
            shrunk.append(norm * f)
        f = torch.where(cut, torch.zeros_like(f), f)
    if max_norm:
        shrunk = norm * f
        f = torch.where(shrunk > max_norm, f * (max_norm / shrunk), f)
    return f


def finish_groups(h: Hyper, w3: Tensor, norm: Tensor, tau: float, cut: Tensor | None = None,
                  shrunk: list[Tensor] | None = None) -> Tensor:
    """The end of the group prox on ``w3``, a tensor seen as [outer, groups,
    inner], given its float64 group norms ``norm`` and threshold ``tau`` (and
    the channel budget's, see :func:`group_factor`): each group times its
    factor (rounded to ``w3``'s dtype), then the clamp to ``bounds``, which
    acts after the group proxes. Separate from the norms so that
    proxopt.distributed can pass norms all-reduced across shards."""
    return _finish_groups(h, w3, norm, tau, cut, shrunk)[0]


def _finish_groups(h: Hyper, w3: Tensor, norm: Tensor, tau: float, cut: Tensor | None,
                   shrunk: list[Tensor] | None) -> tuple[Tensor, Tensor]:
    """:func:`finish_groups`, and the factors it applied (in ``w3``'s dtype)."""
    f = group_factor(norm, tau, h.max_norm, cut, shrunk).to(w3.dtype)
    w3 = w3 * f[None, :, None]
    if h.has_bounds:
        w3 = project_bounds(w3, h.lo, h.hi)
    return w3, f


def _as_groups(w: Tensor, dim: int) -> Tensor:
    """``w`` seen as [outer, groups, inner], one group per index along ``dim``."""
    dim = dim % w.dim()
    return w.reshape(math.prod(w.shape[:dim]), w.shape[dim], math.prod(w.shape[dim + 1 :]))


def prox_group(h: Hyper, lr: float, w: Tensor, cut: Tensor | None = None,
               shrunk: list[Tensor] | None = None) -> Tensor:
    """Step 6 for the group proxes (group lasso with τ_g = lr·λ·√|g|, the
    channel budget cutting the groups ``cut``, then max-norm), groups being
    the slices along ``h.group_dim``; then bounds."""
    return _prox_group(h, lr, w, cut, shrunk)[0]


def _prox_group(h: Hyper, lr: float, w: Tensor, cut: Tensor | None,
                shrunk: list[Tensor] | None) -> tuple[Tensor, Tensor | None]:
    """:func:`prox_group`, and each group's factor in ``w``'s dtype (None for an empty tensor)."""
    if w.numel() == 0:
        if shrunk is not None:
            shrunk.append(_group_norms(w, h.group_dim))
        return w, None
    w3 = _as_groups(w, h.group_dim)
    # Norms summed in float64, as the kernels do; the factor too.
    norm = torch.linalg.vector_norm(w3.double(), dim=(0, 2))
    w3, f = _finish_groups(h, w3, norm, group_tau(h, lr, w3.shape[0] * w3.shape[2]), cut, shrunk)
    return w3.reshape(w.shape), f


# ---- the sparsity budget -------------------------------------------------------
# csrc/proxopt/math.h has the same functions (budget_keep, budget_plan): the
# same double arithmetic in the same order, so both paths plan the same
# thresholds.

# One row of budget statistics per tensor (optimizer state "sparsity_stats", float64).
BUDGET_FIELDS = ("thr", "center", "ratio", "drift", "aim", "lo", "mid", "hi")
THR, CENTER, RATIO, DRIFT, AIM, LO, MID, HI = range(len(BUDGET_FIELDS))
BUDGET_MIN_RATIO, BUDGET_MAX_RATIO = 1.2, 16.0
# The aim keeps this fraction of n more than the budget: a weight left is cut
# at the next step, one cut too many is not brought back.
BUDGET_SLACK = 0.0002
_INIT_RATIO = 1.5


def budget_keep(s: float, n: int) -> int:
    """How many of ``n`` weights a budget of sparsity ``s`` keeps: ``n − ⌈s·n⌉``
    (at least a fraction s of zeros), ignoring the rounding error of ``s·n``."""
    zeros = math.ceil(s * float(n) - 1e-6)
    if zeros <= 0:
        return n
    if zeros >= n:
        return 0
    return n - int(zeros)


def budget_plan(row: list[float], lo: float, mid: float, hi: float, keep: int, n: int) -> None:
    """The threshold of this step, written into ``row`` (the unit's fields),
    from the counts ``lo, mid, hi`` of ``|w| > c/R, c, c·R`` that the last step
    gathered before it cut (summed over the unit) and the number of weights to
    keep.

    N(x) = #{|w| > x} is interpolated linearly in log x between the probes and
    aimed at ``keep + 0.0002·n − D`` (``BUDGET_SLACK``). The drift D is how much N at the threshold moves
    between the counting and the next step (survivors near the threshold
    move, and those that fall below it are cut), learnt as the running mean
    of what each step reached minus what it aimed at (bounded by 5 % of n).
    Once a step has cut, only the survivors above c remain: the aim is capped
    at them plus the drift (a weight cut is not brought back) and the
    threshold moves along their density between c and c·R, at most one probe
    down. More to cut than the probes see moves it one probe up and doubles
    R (up to 16); an interpolated step narrows R to √R (down to 1.2)."""
    c, r, drift = row[CENTER], row[RATIO], row[DRIFT]
    cut = row[THR] > 0 and row[THR] == c
    if cut and row[AIM] == row[AIM]:
        bound = 0.05 * float(n)
        drift = 0.5 * drift + 0.5 * (mid - row[AIM])
        drift = bound if drift > bound else (-bound if drift < -bound else drift)
    row[DRIFT] = drift
    row[AIM] = math.nan
    if keep <= 0:
        row[THR] = math.inf
        return
    if keep >= n or lo < 0:  # nothing to prune, or fresh statistics (no counts yet: this step only counts)
        row[THR] = -1.0
        return
    aim = float(keep) + BUDGET_SLACK * float(n) - drift
    x = c
    if not cut and aim > mid:
        if aim > lo:
            x = c / r
            r = r * 2 if r * 2 < BUDGET_MAX_RATIO else BUDGET_MAX_RATIO
        else:
            x = (c / r) * math.pow(r, (lo - aim) / (lo - mid) if lo > mid else 1.0)
            r = math.sqrt(r) if math.sqrt(r) > BUDGET_MIN_RATIO else BUDGET_MIN_RATIO
            row[AIM] = aim
    else:
        if cut and aim > mid - drift:
            aim = mid - drift
        if aim < hi:
            x = c * r
            r = r * 2 if r * 2 < BUDGET_MAX_RATIO else BUDGET_MAX_RATIO
        else:
            f = (mid - aim) / (mid - hi) if mid > hi else 0.0
            f = -1.0 if f < -1 else f
            x = c * math.pow(r, f)
            r = math.sqrt(r) if math.sqrt(r) > BUDGET_MIN_RATIO else BUDGET_MIN_RATIO
            row[AIM] = aim
    x = (x if x < 1e30 else 1e30) if x > 1e-30 else 1e-30
    row[THR], row[CENTER], row[RATIO] = x, x, r


def budget_probes(row: Tensor | list[float]) -> tuple[float, float, float, float]:
    """The threshold and the three probes (c/R, c, c·R) a step applies and counts at."""
    thr, c, r = float(row[THR]), float(row[CENTER]), float(row[RATIO])
    return thr, c / r, c, c * r


def _magnitudes(ws: list[Tensor]) -> Tensor:
    """|w| of every weight of a unit, flat, in the math dtype (member order)."""
    if not ws:
        return torch.zeros(0, dtype=torch.float64)
    return torch.cat([_math(w.detach()).abs().reshape(-1) for w in ws])


def _group_norms(w: Tensor, dim: int) -> Tensor:
    """‖w_g‖₂ of each group along ``dim`` (float64), as the kernels sum them."""
    if w.numel() == 0:
        return torch.zeros(w.shape[dim % w.dim()] if w.dim() else 0, dtype=torch.float64)
    return torch.linalg.vector_norm(_as_groups(_math(w.detach()), dim).double(), dim=(0, 2))


def budget_init(ws: list[Tensor], s: float, dim: int | None = None) -> list[list[float]]:
    """Fresh statistics for a unit of weights ``ws`` (its members' rows): the
    probes centred on the exact ``|w|`` quantile of sparsity s (at least 1 %,
    at most 99 %: a ramp that starts at 0 finds its scale there), spaced
    wide, and no counts (-1): the first step only counts, so the first cut is
    planned from weights the rule has moved. One sort of the unit's ``|w|``
    (with ``dim``, a channel budget: of the group norms along ``dim``), when
    the statistics are created (or reloaded without them)."""
    if dim is not None:
        return [channel_budget_init(w) for w in (_group_norms(w, dim) for w in ws)]
    a = _magnitudes(ws)
    n = a.numel()
    center = 1.0
    if n:
        keep = budget_keep(min(max(s, 0.01), 0.99), n)
        ordered = torch.sort(a.double(), descending=True).values
        center = float(ordered[min(keep, n - 1)])
        if not center > 0:
            positive = ordered[ordered > 0]
            center = float(positive[-1]) if positive.numel() else 1.0
    return [[-1.0, center, _INIT_RATIO, 0.0, math.nan, -1.0, -1.0, -1.0] for _ in ws]


def budget_select_(ws: list[Tensor], s: float) -> list[Tensor]:
    """The exact projection onto the budget: keep the ``n − ⌈s·n⌉`` largest
    ``|w|`` of the unit (ties: the earlier weight, in member order then
    element order), set the rest to 0 in place. Returns each member's mask of
    the weights it zeroed (for their states). O(n log n), once, where the
    support is frozen."""
    a = _magnitudes(ws)
    n = a.numel()
    keep = budget_keep(s, n)
    order = torch.sort(a.double().neg(), stable=True).indices  # largest first, ties by position
    dropped = torch.zeros(n, dtype=torch.bool)
    dropped[order[keep:]] = True
    dropped &= a != 0  # (already zero: nothing to do)
    masks, start = [], 0
    for w in ws:
        k = w.numel() * (2 if w.is_complex() else 1)
        mask = dropped[start:start + k].reshape(_math(w).shape).to(w.device)
        start += k
        real = torch.view_as_real(w) if w.is_complex() else w
        real.masked_fill_(mask, 0)
        masks.append(mask)
    return masks


def channel_budget_init(norms: Tensor) -> list[float]:
    """A channel budget's fresh row: no threshold yet, and the group norms it
    is planned from (the weights' own, so the first step already cuts)."""
    return [-1.0, 0.0, _INIT_RATIO, 0.0, math.nan, 0.0, 0.0, 0.0] + norms.tolist()


def channel_budget_plan(row: list[float], groups: int, keep: int) -> None:
    """A channel budget's plan for this step, in ``row`` (its fields, then one
    slot per group): the slots hold the group norms (after the group lasso)
    the last step wrote; they are ranked (largest first, ties to the lower
    index, NaN as +inf) and each slot becomes its decision, 1 for the
    ``keep`` largest, 0 for the groups this step zeroes: exactly
    ``groups − keep`` every step. No norms yet (``row[LO] < 0``): all kept.
    ``row[THR]`` gets the norm halfway between the kept and the cut (-1: none
    cut; inf: all)."""
    base = len(BUDGET_FIELDS)
    row[AIM] = math.nan
    thr = math.inf if keep <= 0 else -1.0
    if 0 < keep < groups and row[LO] >= 0:
        norm = [x if x == x else math.inf for x in row[base:base + groups]]
        order = sorted(range(groups), key=lambda q: (-norm[q], q))
        last = min(norm[q] for q in order[:keep])
        nxt = max(norm[q] for q in order[keep:])
        thr = nxt + 0.5 * (last - nxt) if math.isfinite(last) else nxt
        for r, q in enumerate(order):
            row[base + q] = 1.0 if r < keep else 0.0
    else:
        row[base:base + groups] = [0.0 if keep <= 0 else 1.0] * groups
    row[THR] = thr


def channel_select_(w: Tensor, s: float, dim: int) -> Tensor:
    """The exact projection onto the channel budget: keep the ``G − ⌈s·G⌉``
    groups of ``w`` along ``dim`` with the largest norm (ties: the earlier
    group), set the rest to 0 in place. Returns the mask of the elements it
    zeroed (for their states). Once, where the support is frozen."""
    norm = _group_norms(w, dim)
    keep = budget_keep(s, norm.numel())
    order = torch.sort(norm.neg(), stable=True).indices
    dropped = torch.zeros(norm.numel(), dtype=torch.bool)
    dropped[order[keep:]] = True
    dropped &= norm != 0
    real = _math(w) if not w.is_complex() else torch.view_as_real(w)
    mask = torch.zeros(real.shape, dtype=torch.bool)
    if real.numel():
        _as_groups(mask, dim)[:, dropped, :] = True
    mask = mask.to(w.device)
    (torch.view_as_real(w) if w.is_complex() else w).masked_fill_(mask, 0)
    return mask


# ---- update rules on math-precision tensors ------------------------------
# Each moves w and the states in place and returns (w, denom, lr for the prox).


def _sgd(h: Hyper, w: Tensor, g: Tensor, s: list[Tensor], step: float, fresh: bool):
    d = g
    if h.momentum != 0:
        buf = s[0]
        if fresh:
            buf.copy_(g)
        else:
            buf.mul_(h.momentum).add_(g, alpha=1 - h.dampening)
        d = g.add(buf, alpha=h.momentum) if h.nesterov else buf
    w.add_(d, alpha=-h.lr)
    return w, None, h.lr


def _adam(h: Hyper, w: Tensor, g: Tensor, s: list[Tensor], step: float, fresh: bool):
    exp_avg, exp_avg_sq = s[0], s[1]
    bias_correction1 = 1 - h.beta1**step
    bias_correction2 = 1 - h.beta2**step
    step_size = h.lr / bias_correction1
    exp_avg.lerp_(g, 1 - h.beta1)
    exp_avg_sq.mul_(h.beta2).addcmul_(g, g, value=1 - h.beta2)
    v_hat = exp_avg_sq
    if h.amsgrad:
        torch.maximum(s[2], exp_avg_sq, out=s[2])
        v_hat = s[2]
    denom = v_hat.sqrt() * (1 / bias_correction2**0.5) + h.eps  # torch divides: this is its reciprocal, once
    if h.weight_decay != 0 and h.decoupled_weight_decay:
        w.mul_(1 - h.lr * h.weight_decay)
    w.addcdiv_(exp_avg, denom, value=-step_size)
    return w, denom, h.lr


def _adagrad(h: Hyper, w: Tensor, g: Tensor, s: list[Tensor], step: float, fresh: bool):
    clr = rule_lr(h, step)
    state_sum = s[0]
    state_sum.addcmul_(g, g, value=1)
    denom = state_sum.sqrt() + h.eps
    w.addcdiv_(g, denom, value=-clr)
    return w, denom, clr


def _rmsprop(h: Hyper, w: Tensor, g: Tensor, s: list[Tensor], step: float, fresh: bool):
    square_avg = s[0]
    square_avg.mul_(h.alpha).addcmul_(g, g, value=1 - h.alpha)
    if h.centered:
        grad_avg = s[2] if h.momentum > 0 else s[1]
        grad_avg.lerp_(g, 1 - h.alpha)
        avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
    else:
        avg = square_avg.sqrt()
    denom = avg + h.eps
    if h.momentum > 0:
        buf = s[1]
        buf.mul_(h.momentum).addcdiv_(g, denom)
        w.add_(buf, alpha=-h.lr)
    else:
        w.addcdiv_(g, denom, value=-h.lr)
    return w, denom, h.lr


_RULES = {SGD: _sgd, ADAM: _adam, ADAGRAD: _adagrad, RMSPROP: _rmsprop}


def _math(t: Tensor) -> Tensor:
    """The tensor the arithmetic runs on: a real view, upcast from 16-bit floats."""
    if t.is_complex():
        t = torch.view_as_real(t)
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


# ---- what a step checks before it writes ------------------------------------------
# O(1) per tensor; proxopt._dispatch words the same rules with the parameter's
# name and state key, and the operator checks a kernel counter's value alike.


def misfit(t: Tensor, p: Tensor) -> str | None:
    """How tensor ``t`` (a state or a grad) does not fit parameter ``p``, as
    "has shape (3,), the parameter (6, 5)" (or dtype, or device); None if it fits."""
    for what, mine, its in (("shape", tuple(t.shape), tuple(p.shape)), ("dtype", t.dtype, p.dtype),
                            ("device", t.device, p.device)):
        if mine != its:
            return f"has {what} {mine}, the parameter {its}"
    return None


def step_misfit(step: Tensor | float) -> str | None:
    """How a step counter is not a finite count >= 0, as "is -1: ..."; None if it
    is one. A counter on a CUDA device is not read (that would synchronize), nor
    one a traced step holds (its value is not known while torch.compile traces)."""
    if torch.is_tensor(step) and (step.device.type != "cpu" or torch.compiler.is_compiling()):
        return None
    v = float(step)
    if v >= 0 and math.isfinite(v):
        return None
    return f"is {v:g}: a step count must be finite and >= 0"


def _check_inputs(param: Tensor, grad: Tensor, states: list[Tensor], step: Tensor | None) -> None:
    """Everything :func:`step_tensor` can fail on, before it writes."""
    for what, t in [("grad", grad)] + [(f"states[{q}]", s) for q, s in enumerate(states)]:
        why = misfit(t, param)
        if why is not None:
            raise ValueError(f"{what} {why}")
    if step is not None:
        why = step_misfit(step)
        if why is not None:
            raise ValueError(f"step {why}")


def step_tensor(
    h: Hyper,
    param: Tensor,
    grad: Tensor,
    states: list[Tensor],
    step: Tensor | None,
    *,
    fresh: bool = False,
    grad_scale: Tensor | None = None,
    budget: tuple[float, float, float, float] | Tensor | None = None,
    fresh0: float = 0.0,
) -> tuple[int, int, int] | Tensor | None:
    """One step of one tensor, in place: ``param``, ``states`` and ``step``.

    ``states`` are the rule's state tensors in kernel order (see the optimizer
    classes); ``step`` is the tensor step counter (None for SGD); ``fresh``
    marks an SGD momentum buffer that has no value yet. With a sparsity
    budget, ``budget`` is its threshold and probes (:func:`budget_probes`)
    and the counts of ``|w|`` above the probes, before the budget acted, are
    returned; with a channel budget, ``budget`` is its plan's decisions (a
    float64 tensor, 0 for the groups to zero: :func:`channel_budget_plan`)
    and the group norms after the group lasso (float64) are returned. ``fresh0`` is what a reset first state holds (Adagrad's
    ``initial_accumulator_value``). Its inputs are checked before anything
    is written (the counter too: a ValueError leaves them all as they were).
    """
    _check_inputs(param, grad, states, step)
    w, g = _math(param), _math(grad)
    s = [_math(t) for t in states]
    w0 = w.clone() if h.heal else None
    t = 0.0
    if step is not None:
        step += 1
        t = float(step)
    if grad_scale is not None:
        g = g * inv_grad_scale(grad_scale).to(g.dtype)
    if h.maximize:
        g = -g
    if h.weight_decay != 0 and not h.decoupled_weight_decay:
        g = g.add(w, alpha=h.weight_decay)
    w, denom, lr = _RULES[h.rule](h, w, g, s, t, fresh)
    budgeted = h.sparsity != 0 and budget is not None
    channels = h.channel_sparsity != 0 and budget is not None
    w_new = prox_elementwise(dataclasses.replace(h, lo=-math.inf, hi=math.inf) if budgeted else h, lr, w, denom)
    resets = h.heal or (h.reset_state and bool(h.l1 or h.l0 or h.sparsity or h.channel_sparsity))
    counts = None
    if h.has_group:
        if h.heal:  # frozen before the group's norm is taken
            w_new = torch.where(w0 == 0, torch.zeros_like(w_new), w_new)
        # The kernels reset single zeros before the group prox in the shape
        # with elementwise proxes (l1, l0, l2 or heal) only, then every group
        # whose factor is 0.
        single = resets and bool(h.l1 or h.l0 or h.l2 or h.heal)
        zero = (w_new == 0) if single else torch.zeros_like(w_new, dtype=torch.bool)
        found: list[Tensor] | None = [] if channels else None
        w_new, f = _prox_group(dataclasses.replace(h, lo=-math.inf, hi=math.inf) if budgeted else h, lr, w_new,
                               (budget == 0).to(w_new.device) if channels else None, found)
        counts = found[0] if channels else None
        if resets and f is not None:
            zero = (_as_groups(zero, h.group_dim) | (f == 0)[None, :, None]).reshape(zero.shape)
    if budgeted:
        thr, *probes = (torch.tensor(v, dtype=torch.float64).to(w_new.dtype).item() for v in budget)
        a = w_new.abs()
        counts = tuple(int((a > p).sum()) for p in probes)
        cut = a <= thr
        w_new = torch.where(cut, torch.zeros_like(w_new), w_new)
        if h.has_group and resets:
            zero = zero | cut
        if h.has_bounds:
            w_new = project_bounds(w_new, h.lo, h.hi)
    if not h.has_group:
        if h.heal:
            w_new = torch.where(w0 == 0, torch.zeros_like(w_new), w_new)
        zero = (w_new == 0) if resets else None
    if resets:
        for q, st in enumerate(s):
            st.masked_fill_(zero, fresh0 if q == 0 else 0.0)
    # Store results where the arithmetic did not run in place.
    real_param = torch.view_as_real(param) if param.is_complex() else param
    if w_new is not real_param:
        real_param.copy_(w_new)
    for dst, src in zip(states, s):
        real = torch.view_as_real(dst) if dst.is_complex() else dst
        if src is not real:
            real.copy_(src)
    return counts
