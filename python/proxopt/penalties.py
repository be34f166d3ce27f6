"""Loss-side penalties: the usual way to regularize, and the baseline the
benchmarks race. Each returns a differentiable scalar to add to the loss.

Unlike the proximal step, a penalty's subgradient never lands a weight on
exactly 0, and it costs an extra autograd graph over every weight.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


def _total(terms: Iterable[Tensor]) -> Tensor:
    total = None
    for t in terms:
        total = t if total is None else total + t
    return total if total is not None else torch.zeros(())


def l1_penalty(params: Iterable[Tensor], lam: float) -> Tensor:
    """λ·Σ‖w‖₁ (the sum of absolute values; not ``torch.norm``, which is L2)."""
    return lam * _total(p.abs().sum() for p in params)


def l2_penalty(params: Iterable[Tensor], lam: float) -> Tensor:
    """λ/2·Σ‖w‖² (whose gradient λw is what coupled weight_decay adds)."""
    return (lam / 2) * _total(p.pow(2).sum() for p in params)


def elastic_net_penalty(params: Iterable[Tensor], l1: float, l2: float) -> Tensor:
    """λ₁‖w‖₁ + λ₂/2‖w‖², summed over the tensors."""
    params = list(params)
    return l1_penalty(params, l1) + l2_penalty(params, l2)
