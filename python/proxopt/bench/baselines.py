"""What people write today instead of proxopt: a penalty in the loss, or a
proximal pass in Python after ``optimizer.step()``. These are the baselines
the benchmark races; each is written the plain way a user would write it."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .. import penalties

ProxPass = Callable[[list[Tensor]], None]


def _rows(p: Tensor) -> Tensor:
    # Groups are slices along dim 0 (output rows / channels), as proxopt's group_dim=0.
    return p.reshape(p.shape[0], -1) if p.dim() else p.reshape(1, 1)


def group_lasso_penalty(params: list[Tensor], lam: float) -> Tensor:
    """λ Σ_g √|g| ‖w_g‖₂ over the rows of every tensor."""
    total = None
    for p in params:
        rows = _rows(p)
        term = math.sqrt(rows.shape[1]) * torch.linalg.vector_norm(rows, dim=1).sum()
        total = term if total is None else total + term
    return lam * total


def penalty_fn(reg: str, kwargs: dict) -> Callable[[list[Tensor]], Tensor] | None:
    """The differentiable loss term for a regularizer, or None when it has no
    usual loss form (l0, bounds, max_norm are not differentiable penalties)."""
    if reg == "l1":
        return lambda ps: penalties.l1_penalty(ps, kwargs["l1"])
    if reg == "l2":
        return lambda ps: penalties.l2_penalty(ps, kwargs["l2"])
    if reg == "elastic":
        return lambda ps: penalties.elastic_net_penalty(ps, kwargs["l1"], kwargs["l2"])
    if reg == "group_lasso":
        fn = getattr(penalties, "group_lasso_penalty", group_lasso_penalty)
        return lambda ps: fn(ps, kwargs["group_lasso"])
    return None


# ---- proximal passes after the step (τ = lr·λ) ------------------------------


def _loop_soft_threshold(ps: list[Tensor], t: float) -> None:
    for p in ps:
        p.copy_(torch.sign(p) * (p.abs() - t).clamp_min(0))


def _foreach_soft_threshold(ps: list[Tensor], t: float) -> None:
    mag = torch._foreach_abs(ps)
    torch._foreach_sub_(mag, t)
    torch._foreach_clamp_min_(mag, 0.0)
    sign = torch._foreach_sign(ps)
    torch._foreach_mul_(sign, mag)
    torch._foreach_copy_(ps, sign)


def _loop_scale(ps: list[Tensor], s: float) -> None:
    for p in ps:
        p.mul_(s)


def _loop_hard_threshold(ps: list[Tensor], thr: float) -> None:
    for p in ps:
        p.mul_(p.abs() > thr)


def _loop_clamp(ps: list[Tensor], bounds: tuple[float, float]) -> None:
    for p in ps:
        p.clamp_(*bounds)


def _foreach_clamp(ps: list[Tensor], bounds: tuple[float, float]) -> None:
    torch._foreach_clamp_min_(ps, bounds[0])
    torch._foreach_clamp_max_(ps, bounds[1])


def _loop_group_shrink(ps: list[Tensor], t: float) -> None:
    for p in ps:
        rows = _rows(p)
        norms = torch.linalg.vector_norm(rows, dim=1, keepdim=True)
        rows.mul_((1 - t * math.sqrt(rows.shape[1]) / norms).clamp_min(0))  # 0-norm rows: -inf -> 0


def _loop_max_norm(ps: list[Tensor], c: float) -> None:
    for p in ps:
        rows = _rows(p)
        rows.mul_((c / torch.linalg.vector_norm(rows, dim=1, keepdim=True)).clamp_max(1))


def _loop_magnitude_prune(ps: list[Tensor], s: float) -> None:
    """Magnitude pruning per tensor after the step, as torch.nn.utils.prune's
    l1_unstructured selects: the ⌈s·n⌉ smallest |w| of each tensor become 0."""
    for p in ps:
        k = math.ceil(s * p.numel() - 1e-6)
        if k > 0:
            idx = torch.topk(p.abs().reshape(-1), k, largest=False).indices
            p.view(-1)[idx] = 0


def _loop_channel_prune(ps: list[Tensor], s: float) -> None:
    """Structured magnitude pruning after the step (torch.nn.utils.prune.ln_structured's
    selection, n=2, dim=0): the ⌈s·G⌉ rows of smallest L2 norm of each tensor become 0."""
    for p in ps:
        rows = _rows(p)
        k = math.ceil(s * rows.shape[0] - 1e-6)
        if k > 0:
            idx = torch.topk(torch.linalg.vector_norm(rows, dim=1), k, largest=False).indices
            rows[idx] = 0


def _global_magnitude_prune(ps: list[Tensor], s: float) -> None:
    """Global magnitude pruning after the step (torch.nn.utils.prune.global_unstructured's
    selection): the ⌈s·n⌉ smallest |w| over all tensors together become 0."""
    flat = torch.cat([p.abs().reshape(-1) for p in ps])
    k = math.ceil(s * flat.numel() - 1e-6)
    if k <= 0:
        return
    thr = torch.kthvalue(flat, k).values
    for p in ps:
        p.mul_(p.abs() > thr)


def prox_pass(reg: str, kw: dict, lr: float, style: str) -> ProxPass | None:
    """The proximal step as a Python pass over the parameters after the step:
    ``style`` is "for-loop" (ops per tensor) or "foreach" (torch._foreach_*).
    None where that style has no natural form (masks and row norms have no
    _foreach op)."""
    if reg == "elastic":  # soft threshold, then ridge: two passes
        shrink, ridge = prox_pass("l1", kw, lr, style), prox_pass("l2", kw, lr, style)
        return lambda ps: (shrink(ps), ridge(ps))
    passes = {
        ("l1", "for-loop"): lambda ps: _loop_soft_threshold(ps, lr * kw["l1"]),
        ("l1", "foreach"): lambda ps: _foreach_soft_threshold(ps, lr * kw["l1"]),
        ("l2", "for-loop"): lambda ps: _loop_scale(ps, 1 / (1 + lr * kw["l2"])),
        ("l2", "foreach"): lambda ps: torch._foreach_mul_(ps, 1 / (1 + lr * kw["l2"])),
        ("l0", "for-loop"): lambda ps: _loop_hard_threshold(ps, math.sqrt(2 * lr * kw["l0"])),
        ("bounds", "for-loop"): lambda ps: _loop_clamp(ps, kw["bounds"]),
        ("bounds", "foreach"): lambda ps: _foreach_clamp(ps, kw["bounds"]),
        ("group_lasso", "for-loop"): lambda ps: _loop_group_shrink(ps, lr * kw["group_lasso"]),
        ("max_norm", "for-loop"): lambda ps: _loop_max_norm(ps, kw["max_norm"]),
        ("sparsity", "for-loop"): lambda ps: _loop_magnitude_prune(ps, kw["sparsity"]),
        ("sparsity_global", "for-loop"): lambda ps: _global_magnitude_prune(ps, kw["sparsity"]),
        ("channel_sparsity", "for-loop"): lambda ps: _loop_channel_prune(ps, kw["channel_sparsity"]),
    }
    fn = passes.get((reg, style))
    return None if fn is None else torch.no_grad()(fn)
