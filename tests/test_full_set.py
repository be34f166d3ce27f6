"""Group lasso and max-norm, the adaptive metric, 16-bit floats, the param-group
helper and the sparsity report. (Adagrad and RMSprop against torch run with the
other optimizers from optim_db's table: test_torch_parity.py.)"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import proxopt
from proxopt import reference

from optim_db import TOL  # noqa: E402  (the one tolerance table)


def _matrix_run(cls, steps=6, dtype=torch.float32, fused=None, seed=1, shape=(12, 9), **kw):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g, dtype=dtype).requires_grad_()
    opt = cls([w], fused=fused, **kw)
    for _ in range(steps):
        w.grad = torch.randn(shape, generator=g, dtype=dtype)
        opt.step()
    return w.detach()


OPTS = [proxopt.SGD, proxopt.AdamW, proxopt.Adagrad, proxopt.RMSprop]


# A strength that zeroes some groups of a (40, 30) matrix in 20 steps of lr 0.05, not all of
# them: RMSprop's steps, normalized by a running RMS, move the norms less than the others'.
MILD_GROUP_LASSO = {proxopt.SGD: 1.0, proxopt.AdamW: 1.0, proxopt.Adagrad: 1.0, proxopt.RMSprop: 2.0}


@pytest.mark.parametrize("cls", OPTS)
@pytest.mark.parametrize("dim", [0, 1])
def test_group_lasso_zeroes_whole_groups(cls, dim):
    w = _matrix_run(cls, lr=0.1, group_lasso=50.0, group_dim=dim)
    assert torch.count_nonzero(w) == 0  # threshold above every group norm: all rows exactly 0
    # a mild strength zeroes some groups whole and leaves no zero in the others
    w = _matrix_run(cls, lr=0.05, group_lasso=MILD_GROUP_LASSO[cls], group_dim=dim, steps=20, shape=(40, 30))
    alive = (w != 0).movedim(dim, 0).reshape(w.shape[dim], -1)
    partly_zero = alive.any(dim=1) & ~alive.all(dim=1)
    assert not partly_zero.any(), f"groups {partly_zero.nonzero().flatten().tolist()} are partly zero"
    n_alive = int(alive.any(dim=1).sum())
    assert 0 < n_alive < alive.shape[0], f"{n_alive} of {alive.shape[0]} groups alive: the check needs both kinds"


@pytest.mark.parametrize("cls", OPTS)
def test_group_lasso_row_below_threshold_is_zero_else_scaled(cls):
    """One step of SGD-free check: the kernel's group prox equals the formula."""
    torch.manual_seed(0)
    w0 = torch.randn(6, 10)
    w0[2] *= 1e-3  # a row far below the threshold
    lam, lr = 0.5, 0.1
    a = w0.clone().requires_grad_()
    b = w0.clone().requires_grad_()
    opt = cls([a], lr=lr, group_lasso=lam)
    plain = cls([b], lr=lr)
    a.grad = torch.zeros_like(a)
    b.grad = torch.zeros_like(b)
    opt.step()
    plain.step()
    v = b.detach()  # the weights after the update, before the prox
    tau = lr * lam * math.sqrt(v.shape[1])
    norms = v.norm(dim=1)
    expect = v * torch.clamp_min(1 - tau / norms, 0)[:, None]
    torch.testing.assert_close(a.detach(), expect, rtol=1e-6, atol=1e-7)
    assert torch.count_nonzero(a.detach()[2]) == 0


@pytest.mark.parametrize("cls", OPTS)
@pytest.mark.parametrize("dim", [0, 1])
def test_max_norm_bounds_every_group(cls, dim):
    c = 0.7
    g = torch.Generator().manual_seed(4)
    w = (3 * torch.randn(20, 15, generator=g)).requires_grad_()
    opt = cls([w], lr=0.05, max_norm=c, max_norm_dim=dim)
    for _ in range(5):
        w.grad = torch.randn(20, 15, generator=g)
        opt.step()
        norms = w.detach().movedim(dim, 0).reshape(w.shape[dim], -1).norm(dim=1)
        assert bool((norms <= c * (1 + 1e-5)).all())


@pytest.mark.parametrize("dim", [0, 1])
def test_sparse_group_lasso_is_l1_prox_then_group_prox(dim):
    torch.manual_seed(2)
    w0 = torch.randn(8, 11)
    lr, l1, gl = 0.1, 0.3, 0.2
    a = w0.clone().requires_grad_()
    b = w0.clone().requires_grad_()
    opt = proxopt.SGD([a], lr=lr, l1=l1, group_lasso=gl, group_dim=dim)
    plain = proxopt.SGD([b], lr=lr)
    grad = torch.randn(8, 11)
    a.grad, b.grad = grad.clone(), grad.clone()
    opt.step()
    plain.step()
    h = reference.Hyper(group_lasso=gl, group_dim=dim)
    expect = reference.prox_group(h, lr, reference.soft_threshold(b.detach(), lr * l1))
    torch.testing.assert_close(a.detach(), expect, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("cls", [proxopt.Adam, proxopt.AdamW, proxopt.Adagrad, proxopt.RMSprop])
@pytest.mark.parametrize("reg", ["l1", "l2", "l0"])
def test_adaptive_metric_differs_and_matches_reference(cls, reg):
    kw = {reg: 0.05, "lr": 0.01}
    ad = _matrix_run(cls, prox_metric="adaptive", **kw)
    eu = _matrix_run(cls, prox_metric="euclidean", **kw)
    ref = _matrix_run(cls, prox_metric="adaptive", fused=False, **kw)
    torch.testing.assert_close(ad, ref, rtol=1e-5, atol=1e-6)
    assert not torch.equal(ad, eu)


def test_adaptive_equals_euclidean_when_preconditioner_is_one():
    """Adagrad with sum≡0 (zero grads, no accumulator) and eps=1 has denom 1."""
    w0 = torch.randn(5, 4)
    runs = []
    for metric in ("adaptive", "euclidean"):
        w = w0.clone().requires_grad_()
        opt = proxopt.Adagrad([w], lr=0.3, eps=1.0, l1=0.5, l2=0.2, prox_metric=metric)
        for _ in range(3):
            w.grad = torch.zeros_like(w)
            opt.step()
        runs.append(w.detach())
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cls", OPTS)
@pytest.mark.parametrize("regs", [{}, {"l1": 0.01}, {"group_lasso": 0.05}, {"l1": 0.01, "l2": 0.1, "bounds": (-1, 1)}])
def test_half_precision_tracks_float32(dtype, cls, regs):
    """16-bit params (state in the param dtype, math in float32): the kernel
    equals the reference on the same 16-bit tensors after one step, and stays
    within 16-bit rounding of a float32 run over several steps."""
    g = torch.Generator().manual_seed(5)
    base = torch.randn(16, 33, generator=g)
    grads = [torch.randn(16, 33, generator=g) for _ in range(5)]
    ws = {k: base.to(dt).clone().requires_grad_() for k, dt in (("k", dtype), ("r", dtype), ("f", torch.float32))}
    opts = {k: cls([w], lr=0.01, fused=(False if k == "r" else None), **regs) for k, w in ws.items()}
    for i, grad in enumerate(grads):
        for k, w in ws.items():
            w.grad = grad.to(w.dtype)
            opts[k].step()
        if i == 0:
            torch.testing.assert_close(ws["k"].detach().float(), ws["r"].detach().float(), rtol=1e-2, atol=1e-2)
    ulp = 2.0 ** (-10 if dtype == torch.float16 else -7)
    err = (ws["k"].detach().float() - ws["f"].detach()).abs().max().item()
    assert err <= 8 * ulp * max(1.0, base.abs().max().item())


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(group_lasso=0.1, group_dim=2), r"^Invalid group_dim value: 2 for parameter 0 of its param group of shape \(4, 5\)$"),
        (dict(max_norm=0.0), r"^Invalid max_norm value: 0\.0 \(must be > 0 and finite, or None\)$"),
        (dict(max_norm=-1.0), r"^Invalid max_norm value: -1\.0 \(must be > 0 and finite, or None\)$"),
        (dict(group_lasso=0.1, prox_metric="adaptive"), r"^prox_metric='adaptive' cannot be combined with group_lasso, channel_sparsity or max_norm"),
        (dict(group_lasso=-0.1), r"^Invalid group_lasso value: -0\.1$"),
        (dict(group_lasso=0.1, max_norm=1.0, max_norm_dim=1), r"^group_dim=0 and max_norm_dim=1 differ: group_lasso or channel_sparsity and max_norm together must act on the same groups$"),
    ],
)
def test_bad_group_arguments(kw, match):
    w = torch.randn(4, 5, requires_grad=True)
    with pytest.raises(ValueError, match=match):
        proxopt.AdamW([w], **kw)


_ONE_DIM = r"^parameter {} of its param group has 1 dimension\(s\): group_lasso/max_norm/channel_sparsity need a weight matrix or conv kernel"


def test_group_regularizer_on_1d_tensor_rejected_and_nothing_changes():
    w = torch.randn(4, 5, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    with pytest.raises(ValueError, match=_ONE_DIM.format(1)):
        proxopt.AdamW([w, b], group_lasso=0.1)
    opt = proxopt.AdamW([{"params": [w]}, {"params": [b]}], lr=0.1)
    opt.param_groups[1]["group_lasso"] = 0.1  # set after construction: caught at step
    w.grad, b.grad = torch.ones_like(w), torch.ones_like(b)
    before = (w.detach().clone(), b.detach().clone())
    with pytest.raises(ValueError, match=_ONE_DIM.format(0)):
        opt.step()
    assert torch.equal(w.detach(), before[0]) and torch.equal(b.detach(), before[1])
    assert len(opt.state) == 0


def test_adaptive_metric_on_sgd_rejected():
    with pytest.raises(ValueError, match=r"^prox_metric='adaptive' is not defined for proxopt\.SGD: it has no per-element preconditioner"):
        proxopt.SGD([torch.randn(3, requires_grad=True)], l1=0.1, prox_metric="adaptive")


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.conv = nn.Conv1d(6, 8, 3)
        self.bn = nn.BatchNorm1d(8)
        self.proj = nn.Linear(8, 4)
        self.norm = nn.LayerNorm(4)
        self.gain = nn.Parameter(torch.ones(4))  # 1-D but not a norm: excluded only for group regs

    def forward(self, x):
        h = self.emb(x).transpose(1, 2)
        h = self.bn(self.conv(h)).relu().mean(-1)
        return self.norm(self.proj(h)) * self.gain


def test_param_groups_excludes_by_type_and_trains():
    net = _Net()
    groups = proxopt.param_groups(net, l1=1e-3, weight_decay=0.1, names=True)
    reg, plain = groups
    assert set(reg["param_names"]) == {"conv.weight", "proj.weight", "gain"}
    assert set(plain["param_names"]) == {"emb.weight", "conv.bias", "bn.weight", "bn.bias", "proj.bias", "norm.weight", "norm.bias"}
    assert plain["l1"] == 0 and plain["weight_decay"] == 0 and reg["l1"] == 1e-3
    groups = proxopt.param_groups(net, group_lasso=0.1, names=True)
    assert set(groups[0]["param_names"]) == {"conv.weight", "proj.weight"}  # "gain" is 1-D
    opt = proxopt.AdamW(groups, lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randint(0, 10, (4, 7))).sum().backward()
        opt.step()
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['lasso'\]"):
        proxopt.param_groups(net, lasso=1.0)


def test_param_groups_compose_with_add_param_group_and_per_group_options():
    """No param_names by default (torch needs all groups with names or none, so a later
    add_param_group without them works); optimizer options such as lr go to both groups."""
    net = _Net()
    frozen = nn.Linear(3, 3)
    groups = proxopt.param_groups(net, l1=1e-3, lr=0.2, betas=(0.8, 0.9))
    assert all("param_names" not in g for g in groups)
    assert [g["lr"] for g in groups] == [0.2, 0.2] and groups[0]["l1"] == 1e-3 and groups[1]["l1"] == 0
    opt = proxopt.AdamW(groups, lr=0.05)
    opt.add_param_group({"params": list(frozen.parameters()), "lr": 0.01})  # what Lightning's unfreeze does
    assert [g["lr"] for g in opt.param_groups] == [0.2, 0.2, 0.01] and opt.param_groups[0]["betas"] == (0.8, 0.9)
    net(torch.randint(0, 10, (4, 7))).sum().backward()
    opt.step()


def test_param_groups_of_an_iterable():
    """model.parameters() (a generator) and model.named_parameters() work; without modules the
    "norm" rule is "1d" and embeddings stay regularized."""
    net = _Net()
    by_module = proxopt.param_groups(net, l1=1e-3, names=True)
    named = proxopt.param_groups(net.named_parameters(), l1=1e-3, names=True)
    assert set(named[0]["param_names"]) == set(by_module[0]["param_names"]) - {"gain"} | {"emb.weight"}
    bare = proxopt.param_groups(net.parameters(), l1=1e-3)
    assert [len(g["params"]) for g in bare] == [len(named[0]["params"]), len(named[1]["params"])]
    assert all(p.dim() >= 2 for p in bare[0]["params"]) and all(p.dim() < 2 for p in bare[1]["params"])
    with pytest.raises(TypeError, match="item 0 is a str"):
        proxopt.param_groups(["weight"], l1=1e-3)


def test_param_groups_custom_rules():
    net = _Net()
    groups = proxopt.param_groups(net, exclude=(nn.Conv1d, lambda n, p, m: n == "gain", "proj"), l2=0.1, names=True)
    assert set(groups[0]["param_names"]) == {"emb.weight", "bn.weight", "bn.bias", "norm.weight", "norm.bias"}


def test_sparsity_report():
    net = nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 3))
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].weight[1, 2] = 1.0
        net[1].weight[:, 0] = 0.0
    rep = proxopt.sparsity(net)
    w0 = rep.params[0]
    assert w0.name == "0.weight" and w0.zeros == 23 and w0.zero_groups == {0: (3, 4), 1: (5, 6)}
    assert rep.params[2].zero_groups[1] == (1, 4)
    data = rep.to_dict()
    assert data["zeros"] == rep.zeros and data["params"][0]["zero_groups"]["0"] == [3, 4]
    table = rep.table()
    assert "0.weight" in table and "total" in table and "3/4" in table
    assert math.isclose(rep.fraction, rep.zeros / rep.numel)


@pytest.mark.parametrize("shape", [(5, 7, 3), (3, 40, 700)])  # the second spans several chunks
@pytest.mark.parametrize("dim", [0, 1, 2, -1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_group_proxes_on_3d_tensors_match_reference(shape, dim, dtype):
    kw = dict(lr=0.05, group_lasso=0.02, group_dim=dim, max_norm=3.0, max_norm_dim=dim, bounds=(-0.3, 0.4))
    fused = _matrix_run(proxopt.AdamW, shape=shape, dtype=dtype, **kw)
    ref = _matrix_run(proxopt.AdamW, shape=shape, dtype=dtype, fused=False, **kw)
    torch.testing.assert_close(fused, ref, **TOL[dtype])
    assert fused.min() >= -0.3 and fused.max() <= 0.4


def test_sparsity_report_separates_regularized_parameters():
    """A fresh model's zero biases are not sparsity; with an optimizer its groups decide."""
    net = _Net()
    with torch.no_grad():
        net.conv.bias.zero_()
        net.proj.weight[:2] = 0.0  # 16 of the regularized elements
    rep = proxopt.sparsity(net, target=0.5)
    reg_names = {p.name for p in rep.params if p.regularized}
    assert reg_names == {"conv.weight", "proj.weight", "gain"}
    assert rep.regularized.zeros == 16 and rep.regularized.numel == 8 * 6 * 3 + 32 + 4
    assert rep.unregularized.zeros >= 8  # conv.bias, bn.bias, norm.bias...
    assert rep.target_met is False and "not met" in rep.table() and "(unregularized)" in rep.table()
    opt = proxopt.AdamW(proxopt.param_groups(net, group_lasso=0.1), lr=0.1)  # gain: 1-D, unregularized
    rep = proxopt.sparsity(net, optimizer=opt, target=0.05)  # 16 of 176
    assert {p.name for p in rep.params if p.regularized} == {"conv.weight", "proj.weight"}
    assert rep.target_met is True and rep.to_dict()["regularized"]["zeros"] == 16
    with pytest.raises(ValueError, match=r"^Invalid target value: 5 \(a fraction in \[0, 1\]\)$"):
        proxopt.sparsity(net, target=5)
