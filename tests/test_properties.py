"""Properties that need no oracle.

A threshold above |w| gives exact zeros; a projection respects its bound after
every step; elastic net with l1=0 is the L2 path bit for bit; L0 keeps large
weights exactly as the unregularized step left them; the adaptive metric
thresholds each element by its own denominator. Each runs on the kernel and on
the reference.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import proxopt
from optim_db import ADAM_INFO, ADAMW_INFO, OPTIMS, SGD_INFO, TOL, assert_close_scaled, configs_with_ids, examples

FUSED = pytest.mark.parametrize("fused", [None, False], ids=["kernel", "reference"])


def _lr(kwargs: dict, step: int = 4) -> float:
    """The lr the proxes of step ``step`` scale with (Adagrad's decayed one; _pair's
    regularized step is the 4th)."""
    lr = kwargs["lr"]
    lr = float(lr) if torch.is_tensor(lr) else lr
    return lr / (1 + (step - 1) * kwargs.get("lr_decay", 0.0))


def _pair(info, cfg, fused, *, shape=(40, 25), warmup=3, seed=0, dtype=torch.float32, **reg_b):
    """Two identical optimizers warmed up for a few steps without regularizer; the second then
    gets ``reg_b`` in its param group. Returns (params_a, opt_a, params_b, opt_b, kwargs)."""
    kwargs = info.full_kwargs(cfg)
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen, dtype=dtype)
    p_a, p_b = w.clone().requires_grad_(), w.clone().requires_grad_()
    o_a, o_b = info.cls([p_a], **kwargs, fused=fused), info.cls([p_b], **kwargs, fused=fused)
    for _ in range(warmup):
        g = torch.randn(shape, generator=gen, dtype=dtype)
        for p, o in ((p_a, o_a), (p_b, o_b)):
            p.grad = g.clone()
            o.step()
    assert torch.equal(p_a, p_b)
    o_b.param_groups[0].update(reg_b)
    g = torch.randn(shape, generator=gen, dtype=dtype)
    p_a.grad, p_b.grad = g.clone(), g.clone()
    return p_a, o_a, p_b, o_b, kwargs


# ---- L1: soft threshold ------------------------------------------------------------------


@FUSED
@pytest.mark.parametrize("info,cfg", configs_with_ids())
def test_l1_threshold_above_every_weight_gives_exact_zeros(info, cfg, fused) -> None:
    p_a, o_a, p_b, o_b, kwargs = _pair(info, cfg, fused)
    o_a.step()  # the unregularized step: w_plain
    tau = 1.5 * float(p_a.detach().abs().max())
    o_b.param_groups[0]["l1"] = tau / _lr(kwargs)
    o_b.step()
    assert (p_b == 0).all(), f"{int((p_b != 0).sum())} weights not exactly zero"


@FUSED
@pytest.mark.parametrize("info,cfg", configs_with_ids())
def test_l1_is_the_soft_threshold_of_the_plain_step(info, cfg, fused) -> None:
    """Threshold at the median |w_plain|: small weights become exactly 0, large ones shrink by tau."""
    p_a, o_a, p_b, o_b, kwargs = _pair(info, cfg, fused)
    o_a.step()
    w = p_a.detach()
    tau = float(w.abs().median())
    o_b.param_groups[0]["l1"] = tau / _lr(kwargs)
    o_b.step()
    small, large = w.abs() < tau * (1 - 1e-5), w.abs() > tau * (1 + 1e-5)
    assert small.sum() > 100 and large.sum() > 100
    assert (p_b[small] == 0).all()
    assert (p_b[large] != 0).all() and torch.equal(torch.sign(p_b[large]), torch.sign(w[large]))
    expected = torch.sign(w) * (w.abs() - tau)
    assert_close_scaled(p_b[large], expected[large], **TOL[torch.float32])
    # the state is the unregularized optimizer's: the prox acts on weights only
    for k, v in o_a.state[p_a].items():
        assert torch.equal(o_b.state[p_b][k], v), k


@FUSED
def test_l1_with_zero_gradient_reaches_zero_and_stays(fused) -> None:
    """SGD, g = 0: each step shrinks |w| by lr*l1 until it is exactly 0, then it stays 0."""
    w0 = torch.tensor([0.05, -0.25, 1.0, -0.0, 0.0, 3e-4])
    p = w0.clone().requires_grad_()
    lr, l1 = 0.1, 1.0  # tau = 0.1
    o = proxopt.SGD([p], lr=lr, l1=l1, fused=fused)
    for step in range(1, 12):
        p.grad = torch.zeros(6)
        o.step()
        expected = torch.sign(w0) * torch.clamp_min(w0.abs() - step * lr * l1, 0)
        torch.testing.assert_close(p.detach(), expected, atol=1e-6, rtol=0)
        assert ((p == 0) == (expected == 0)).all(), f"step {step}: {p.detach()} vs {expected}"
    assert (p == 0).all()


# ---- bounds: projection ------------------------------------------------------------------------


@st.composite
def bounds_cases(draw):
    info = draw(st.sampled_from(OPTIMS))
    lo = draw(st.floats(-2.0, 0.5) | st.just(0.0) | st.just(-math.inf))
    hi = draw(st.floats(-0.5, 2.0) | st.just(math.inf))
    if lo > hi:
        lo, hi = hi, lo
    if math.isinf(lo) and math.isinf(hi):
        hi = 0.25
    reg = dict(bounds=(lo, hi))
    extra = draw(st.sampled_from([{}, {"l1": 0.3}, {"l2": 2.0}, {"l1": 0.3, "l2": 2.0}, {"l0": 0.5}]))
    reg.update(extra)
    if info.adaptive_ok and draw(st.booleans()):
        reg["prox_metric"] = "adaptive"
    return dict(
        info=info,
        cfg=draw(st.sampled_from(info.configs)),
        reg=reg,
        dtype=draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16])),
        lr_scale=draw(st.sampled_from([1.0, 10.0, 100.0])),
        shape=draw(st.sampled_from([(7,), (257,), (40, 30), (33000,)])),
        fused=draw(st.sampled_from([None, False])),
        seed=draw(st.integers(0, 1000)),
    )


@settings(max_examples=examples(40))
@given(case=bounds_cases())
def test_bounds_hold_after_every_step(case) -> None:
    info, dtype = case["info"], case["dtype"]
    kwargs = {**info.full_kwargs(case["cfg"]), **case["reg"]}
    kwargs["lr"] = kwargs["lr"] * case["lr_scale"]
    gen = torch.Generator().manual_seed(case["seed"])
    p = (torch.randn(case["shape"], generator=gen) * 3).to(dtype).requires_grad_()
    o = info.cls([p], **kwargs, fused=case["fused"])
    lo, hi = case["reg"]["bounds"]
    # The clamp runs in the math dtype; rounding to storage is monotone, so the stored value lies
    # within the bounds rounded to storage.
    lo_s = torch.tensor(lo, dtype=torch.float64).to(dtype)
    hi_s = torch.tensor(hi, dtype=torch.float64).to(dtype)
    for step in range(6):
        p.grad = (torch.randn(case["shape"], generator=gen) * 5).to(dtype)
        o.step()
        w = p.detach()
        assert not torch.isnan(w).any()
        assert (w >= lo_s).all() and (w <= hi_s).all(), (
            f"step {step}: min {float(w.min())} max {float(w.max())} outside [{lo}, {hi}]"
        )


@FUSED
def test_nonnegativity_constraint(fused) -> None:
    p = torch.randn(1000).requires_grad_()
    o = proxopt.AdamW([p], lr=0.5, bounds=(0.0, math.inf), fused=fused)
    for _ in range(5):
        p.grad = torch.randn(1000)
        o.step()
        assert (p >= 0).all()
    assert (p == 0).sum() > 100 and (p > 0).sum() > 100


# ---- L2 and elastic net ----------------------------------------------------------------------


@FUSED
@pytest.mark.parametrize("info,cfg", configs_with_ids())
def test_elastic_net_with_zero_l1_is_the_l2_path_exactly(info, cfg, fused) -> None:
    """l2=λ; l1=0 with l2=λ; and a group override {l1: 0, l2: λ} under an optimizer-wide l1:
    bit-identical trajectories and states."""
    kwargs = info.full_kwargs(cfg)
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(300, generator=gen)
    ps = [w.clone().requires_grad_() for _ in range(4)]
    opts = [
        info.cls([ps[0]], **kwargs, l2=3.0, fused=fused),
        info.cls([ps[1]], **kwargs, l1=0.0, l2=3.0, fused=fused),
        info.cls([{"params": [ps[2]], "l1": 0.0, "l2": 3.0}], **kwargs, l1=0.7, fused=fused),
        info.cls([ps[3]], **kwargs, l1=0, l2=3, fused=fused),  # ints
    ]
    for _ in range(6):
        g = torch.randn(300, generator=gen)
        for p, o in zip(ps, opts):
            p.grad = g.clone()
            o.step()
    for p, o in zip(ps[1:], opts[1:]):
        assert torch.equal(p, ps[0])
        for k, v in opts[0].state[ps[0]].items():
            assert torch.equal(o.state[p][k], v), k
    assert (ps[0] != 0).all()  # l2 alone makes no zeros


@FUSED
@pytest.mark.parametrize("info,cfg", configs_with_ids())
def test_l2_is_the_ridge_of_the_plain_step(info, cfg, fused) -> None:
    p_a, o_a, p_b, o_b, kwargs = _pair(info, cfg, fused, l2=4.0)
    o_a.step()
    o_b.step()
    expected = p_a.detach() / (1 + _lr(kwargs) * 4.0)
    assert_close_scaled(p_b, expected, rtol=2e-6, atol=1e-7)
    assert not torch.equal(p_b, p_a)


@FUSED
@pytest.mark.parametrize("info,cfg", configs_with_ids())
def test_elastic_net_is_soft_threshold_then_ridge(info, cfg, fused) -> None:
    p_a, o_a, p_b, o_b, kwargs = _pair(info, cfg, fused)
    o_a.step()
    lr = _lr(kwargs)
    w = p_a.detach()
    tau1 = float(w.abs().quantile(0.3))
    o_b.param_groups[0].update(l1=tau1 / lr, l2=2.0)
    o_b.step()
    expected = torch.sign(w) * torch.clamp_min(w.abs() - tau1, 0) / (1 + lr * 2.0)
    far = (w.abs() - tau1).abs() > 1e-5 * tau1
    assert_close_scaled(p_b[far], expected[far], rtol=2e-6, atol=1e-7)
    assert (p_b[w.abs() < tau1 * (1 - 1e-5)] == 0).all()


# ---- L0: hard threshold -------------------------------------------------------------------------


@FUSED
@pytest.mark.parametrize("info,cfg", configs_with_ids())
def test_l0_zeroes_small_weights_and_keeps_large_ones_exactly(info, cfg, fused) -> None:
    p_a, o_a, p_b, o_b, kwargs = _pair(info, cfg, fused)
    o_a.step()
    w = p_a.detach()
    thr = float(w.abs().median())  # keep w where |w| > sqrt(2 tau)  =>  tau = thr^2 / 2
    o_b.param_groups[0]["l0"] = thr**2 / 2 / _lr(kwargs)
    o_b.step()
    small, large = w.abs() < thr * (1 - 1e-5), w.abs() > thr * (1 + 1e-5)
    assert small.sum() > 100 and large.sum() > 100
    assert (p_b[small] == 0).all()
    assert torch.equal(p_b[large], w[large]), "a hard threshold must not move the weights it keeps"


# ---- the adaptive metric ----------------------------------------------------------------------


def _adam_denom(opt, p, kwargs) -> torch.Tensor:
    st = opt.state[p]
    step = float(st["step"])
    beta2 = float(kwargs.get("betas", (0.9, 0.999))[1])
    v = st["max_exp_avg_sq"] if kwargs.get("amsgrad") else st["exp_avg_sq"]
    return v.double().sqrt() / math.sqrt(1 - beta2**step) + kwargs.get("eps", 1e-8)


@FUSED
@pytest.mark.parametrize("info,cfg", configs_with_ids([ADAM_INFO, ADAMW_INFO]))
def test_adaptive_l1_thresholds_each_element_by_its_denominator(info, cfg, fused) -> None:
    p_a, o_a, p_b, o_b, kwargs = _pair(info, cfg, fused, prox_metric="adaptive")
    # widen the spread of the denominators
    with torch.no_grad():
        for o, p in ((o_a, p_a), (o_b, p_b)):
            o.state[p]["exp_avg_sq"].mul_(torch.logspace(-3, 3, p.numel()).reshape(p.shape))
            if "max_exp_avg_sq" in o.state[p]:
                o.state[p]["max_exp_avg_sq"].copy_(o.state[p]["exp_avg_sq"])
    o_a.step()
    w = p_a.detach().double()
    denom = _adam_denom(o_a, p_a, kwargs)
    lr = _lr(kwargs)
    # lambda such that tau_i = lr*lam/denom_i splits the weights
    lam = float((w.abs() * denom).median()) / lr
    o_b.param_groups[0]["l1"] = lam
    o_b.step()
    tau = lr * lam / denom
    small, large = w.abs() < tau * (1 - 1e-4), w.abs() > tau * (1 + 1e-4)
    assert small.sum() > 100 and large.sum() > 100
    assert (p_b[small] == 0).all()
    expected = torch.sign(w) * (w.abs() - tau)
    assert_close_scaled(p_b.double()[large], expected[large], rtol=1e-4, atol=1e-6)
    # and it is not the euclidean threshold: elements the euclidean tau would keep are zeroed, and vice versa
    eucl = lr * lam
    assert ((w.abs() > eucl * 1.01) & small).any() and ((w.abs() < eucl * 0.99) & large).any()


def test_adaptive_metric_with_prox_on_sgd_raises() -> None:
    p = torch.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match=r"prox_metric='adaptive' is not defined for proxopt\.SGD"):
        proxopt.SGD([p], lr=0.1, l1=0.1, prox_metric="adaptive")
    o = proxopt.SGD([p], lr=0.1, l1=0.1)
    with pytest.raises(ValueError, match=r"^prox_metric='adaptive' is not defined for proxopt\.SGD: it has no per-element preconditioner"):
        o.add_param_group({"params": [torch.randn(2, requires_grad=True)], "prox_metric": "adaptive"})


# ---- invariances ----------------------------------------------------------------------------------


@FUSED
@pytest.mark.parametrize("info,cfg", configs_with_ids())
def test_maximize_is_descent_on_the_negated_gradient(info, cfg, fused) -> None:
    kwargs = info.full_kwargs(cfg)
    kw_max = {**kwargs, "maximize": not kwargs.get("maximize", False)}
    gen = torch.Generator().manual_seed(9)
    w = torch.randn(257, generator=gen)
    p_a, p_b = w.clone().requires_grad_(), w.clone().requires_grad_()
    reg = dict(l1=0.2, l2=0.5, bounds=(-1.0, 1.0))
    o_a, o_b = info.cls([p_a], **kwargs, **reg, fused=fused), info.cls([p_b], **kw_max, **reg, fused=fused)
    for _ in range(5):
        g = torch.randn(257, generator=gen)
        p_a.grad, p_b.grad = g.clone(), -g
        o_a.step()
        o_b.step()
    assert torch.equal(p_a, p_b)
    for k, v in o_a.state[p_a].items():
        assert torch.equal(o_b.state[p_b][k].abs(), v.abs()), k  # momentum buffers are negated


@FUSED
@pytest.mark.parametrize("info", OPTIMS, ids=repr)
def test_grad_scale_power_of_two_is_exact(info, fused) -> None:
    """Grads scaled by 2^k with grad_scale=2^k step exactly as the unscaled grads."""
    gen = torch.Generator().manual_seed(10)
    w = torch.randn(300, generator=gen)
    p_a, p_b = w.clone().requires_grad_(), w.clone().requires_grad_()
    kw = dict(lr=0.01, l1=0.3, momentum=0.9) if info is SGD_INFO else dict(lr=0.01, l1=0.3)
    o_a, o_b = info.cls([p_a], **kw, fused=fused), info.cls([p_b], **kw, fused=fused)
    for _ in range(4):
        g = torch.randn(300, generator=gen)
        p_a.grad, p_b.grad = g.clone(), g * 2.0**16
        o_b.grad_scale, o_b.found_inf = torch.tensor([2.0**16]), torch.tensor([0.0])
        o_a.step()
        o_b.step()
    assert torch.equal(p_a, p_b)
    for k, v in o_a.state[p_a].items():
        assert torch.equal(o_b.state[p_b][k], v), k


@FUSED
@pytest.mark.parametrize("info,cfg", configs_with_ids())
def test_zero_lr_leaves_weights_unchanged_under_every_prox(info, cfg, fused) -> None:
    """tau = lr*lambda = 0: the soft/hard thresholds and the ridge are the identity."""
    kwargs = {**info.full_kwargs(cfg), "lr": 0.0}
    gen = torch.Generator().manual_seed(11)
    w = torch.randn(300, generator=gen)
    w[:3] = torch.tensor([0.0, 1e-30, -1e-30])
    for reg in (dict(l1=5.0), dict(l0=5.0), dict(l2=5.0), dict(l1=5.0, l2=5.0)):
        p = w.clone().requires_grad_()
        o = info.cls([p], **kwargs, **reg, fused=fused)
        for _ in range(3):
            p.grad = torch.randn(300, generator=gen)
            o.step()
        assert torch.equal(p.detach(), w), reg
