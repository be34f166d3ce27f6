"""Loss-side penalties: the usual way to regularize, and the baseline the
benchmarks race. Each returns a differentiable scalar to add to the loss.

Unlike the proximal step, a penalty's subgradient never lands a weight on
exactly 0, and it costs an extra autograd graph over every weight.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

import torch
from torch import Tensor


def _strength(name: str, value: float | Tensor) -> float | Tensor:
    """A penalty weight: finite and >= 0 (a negative one rewards large weights).
    A tensor passes unread: reading it would sync with its device."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"Invalid {name} value: {value!r} (a {type(value).__name__}; expected a number)")
    if not 0.0 <= value < math.inf:  # also catches NaN
        raise ValueError(f"Invalid {name} value: {value} (must be finite and >= 0)")
    return float(value)


def _total(terms: Iterable[Tensor]) -> Tensor:
    total = None
    for t in terms:
        total = t if total is None else total + t
    return total if total is not None else torch.zeros(())


def l1_penalty(params: Iterable[Tensor], lam: float) -> Tensor:
    """λ·Σ‖w‖₁ (the sum of absolute values; not ``torch.norm``, which is L2)."""
    lam = _strength("lam", lam)
    return lam * _total(p.abs().sum() for p in params)


def l2_penalty(params: Iterable[Tensor], lam: float) -> Tensor:
    """λ/2·Σ‖w‖² (whose gradient λw is what coupled weight_decay adds)."""
    lam = _strength("lam", lam)
    return (lam / 2) * _total(p.pow(2).sum() for p in params)


def elastic_net_penalty(params: Iterable[Tensor], l1: float, l2: float) -> Tensor:
    """λ₁‖w‖₁ + λ₂/2‖w‖², summed over the tensors."""
    l1, l2 = _strength("l1", l1), _strength("l2", l2)
    params = list(params)
    return l1_penalty(params, l1) + l2_penalty(params, l2)


def gaussian_kl_penalty(mean: Tensor, log_var: Tensor, lam: float = 1.0) -> Tensor:
    """λ·KL(N(μ, σ²) ‖ N(0, I)): a penalty on a distribution the model *outputs*.

    ``mean`` and ``log_var`` (= log σ²) are ``[..., latent_dim]`` tensors of
    the same shape, e.g. the posterior of a VAE's latent (a TTS model's
    prosody latent). Per element the divergence is
    ½·(μ² + σ² − 1 − log σ²); it is summed over the last dimension (the
    latent's) and averaged over all the others (the batch, frames or
    phonemes). It acts on activations, not on weights, so it has no
    proximal form in an optimizer: it stays in the loss.
    """
    if not isinstance(mean, Tensor) or not isinstance(log_var, Tensor):
        raise TypeError(
            f"gaussian_kl_penalty: mean and log_var must be tensors, got {type(mean).__name__} and {type(log_var).__name__}"
        )
    if mean.shape != log_var.shape:
        raise ValueError(f"Invalid log_var shape: {tuple(log_var.shape)} (must match mean's {tuple(mean.shape)})")
    if mean.dim() == 0:
        raise ValueError("Invalid mean shape: () (needs a last dimension: the latent's)")
    lam = _strength("lam", lam)
    kl = 0.5 * (mean.square() + log_var.exp() - 1.0 - log_var)
    return lam * kl.sum(dim=-1).mean()
