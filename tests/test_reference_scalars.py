"""The scalars the reference derives once per step and that proxopt.distributed
shares with it: AMP's inverse scale, the rule's lr (Adagrad's decay) and a
group's threshold. Each equals what torch (or the formula it documents) gives,
bit for bit."""

from __future__ import annotations

import math

import pytest
import torch

from proxopt import reference
from proxopt.reference import ADAGRAD, ADAM, RMSPROP, SGD, Hyper


@pytest.mark.parametrize("scale", [65536.0, 3.0, 7e-3, 2.0**-20, 1e30])
def test_inv_grad_scale_is_grad_scalers(scale):
    """GradScaler.unscale_ multiplies by the reciprocal taken in float64, rounded to float32."""
    s = torch.tensor(scale, dtype=torch.float32)
    inv = reference.inv_grad_scale(s)
    assert inv.dtype == torch.float32 and inv.shape == ()
    assert torch.equal(inv, s.double().reciprocal().float())
    # a 1-element tensor of another shape and dtype, as a caller may hand it
    assert torch.equal(reference.inv_grad_scale(s.double().reshape(1)), inv)


def test_inv_grad_scale_unscales_as_grad_scaler():
    scaler = torch.amp.GradScaler("cpu", init_scale=3.0)
    p = torch.nn.Parameter(torch.zeros(64))
    opt = torch.optim.SGD([p], lr=0.1)
    scaler.scale(torch.ones(()))  # creates the scale tensor
    scaled = torch.randn(64, generator=torch.Generator().manual_seed(0))
    p.grad = scaled.clone()
    scaler.unscale_(opt)
    assert torch.equal(p.grad, scaled * reference.inv_grad_scale(torch.tensor(3.0)))


def test_rule_lr_is_adagrads_decayed_lr_else_lr():
    h = Hyper(rule=ADAGRAD, lr=0.1, lr_decay=0.5)
    for step in (1, 3.0, torch.tensor(3.0), torch.tensor(7.0, dtype=torch.float64)):
        assert reference.rule_lr(h, step) == 0.1 / (1 + (float(step) - 1) * 0.5)
    assert reference.rule_lr(h, 1) == 0.1
    assert reference.rule_lr(h, None) == 0.1  # no counter: the undecayed lr
    assert reference.rule_lr(Hyper(rule=ADAGRAD, lr=0.1), 12.0) == 0.1  # no decay: exactly lr
    for rule in (SGD, ADAM, RMSPROP):
        assert reference.rule_lr(Hyper(rule=rule, lr=0.3, lr_decay=0.5), 5.0) == 0.3


def test_group_tau_in_the_kernels_order():
    h = Hyper(group_lasso=0.07)
    for lr, size in ((0.1, 1), (0.05, 7), (1e-3, 4096)):
        assert reference.group_tau(h, lr, size) == lr * 0.07 * math.sqrt(size)


def test_prox_group_is_finish_groups_with_the_whole_norms():
    torch.manual_seed(0)
    w = torch.randn(3, 5, 4, dtype=torch.float32)
    h = Hyper(group_lasso=0.4, max_norm=1.5, lo=-0.6, hi=0.5, group_dim=1)
    w3 = w.reshape(3, 5, 4)
    norm = torch.linalg.vector_norm(w3.double(), dim=(0, 2))
    want = reference.finish_groups(h, w3, norm, reference.group_tau(h, 0.2, 12))
    got = reference.prox_group(h, 0.2, w)
    assert torch.equal(got, want)
    assert got.max() <= 0.5 and got.min() >= -0.6
