"""torch.optim.lr_scheduler drives proxopt exactly as it drives torch.optim, and
proxopt.schedules.RegularizerScheduler schedules the regularization strength."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch.optim import lr_scheduler as lrs

import proxopt
from proxopt.schedules import RegularizerScheduler, cosine_ramp, cubic_ramp, linear_warmup

STEPS = 12


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2)).double()


def _data(steps: int = STEPS):
    g = torch.Generator().manual_seed(7)
    return [(torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 2, generator=g, dtype=torch.float64))
            for _ in range(steps)]


def _loss(model, x, y):
    return torch.nn.functional.mse_loss(model(x), y)


# Each entry: (make the scheduler, how to step it: None or a function of (sched, step index, loss)).
SCHEDULERS = {
    "StepLR": (lambda o: lrs.StepLR(o, step_size=3, gamma=0.5), None),
    "OneCycleLR": (lambda o: lrs.OneCycleLR(o, max_lr=0.05, total_steps=STEPS, cycle_momentum=True,
                                            base_momentum=0.8, max_momentum=0.95), None),
    "CosineAnnealingWarmRestarts": (
        lambda o: lrs.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2, eta_min=1e-4),
        lambda s, i, loss: s.step(i / 2),  # fractional epochs, as its docs show
    ),
    "SequentialLR": (
        lambda o: lrs.SequentialLR(
            o, [lrs.LinearLR(o, start_factor=0.1, total_iters=3), lrs.CosineAnnealingLR(o, T_max=STEPS - 3)],
            milestones=[3]),
        None,
    ),
    "ReduceLROnPlateau": (
        lambda o: lrs.ReduceLROnPlateau(o, mode="min", factor=0.5, patience=1, threshold=0.0),
        lambda s, i, loss: s.step([1.0, 0.9, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8, 0.7, 0.7][i]),
    ),
}


def _run(opt_cls, name: str, **kw):
    model = _model()
    opt = opt_cls(model.parameters(), lr=0.02, weight_decay=0.01, **kw)
    make, stepper = SCHEDULERS[name]
    sched = make(opt)
    trace = []
    for i, (x, y) in enumerate(_data()):
        opt.zero_grad()
        loss = _loss(model, x, y)
        loss.backward()
        opt.step()
        if stepper is None:
            sched.step()
        else:
            stepper(sched, i, loss)
        trace.append(([g["lr"] for g in opt.param_groups], [tuple(g["betas"]) for g in opt.param_groups],
                      [p.detach().clone() for p in model.parameters()]))
    return trace, opt


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_lr_scheduler_trajectory_matches_torch_adamw(name):
    ours, opt = _run(proxopt.AdamW, name)
    theirs, _ = _run(torch.optim.AdamW, name)
    lrs_seen = {lr for lr_list, _, _ in ours for lr in lr_list}
    assert len(lrs_seen) > 2, "the scheduler did not change the lr"
    for step, ((lr_a, betas_a, pa), (lr_b, betas_b, pb)) in enumerate(zip(ours, theirs)):
        assert lr_a == lr_b, f"step {step}"
        assert betas_a == betas_b, f"step {step}"
        for a, b in zip(pa, pb):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda m: f"step {step}: {m}")
    if name == "OneCycleLR":  # beta1 cycled through the momentum range
        beta1 = {b[0][0] for _, b, _ in ours}
        assert min(beta1) < 0.81 and max(beta1) == pytest.approx(0.95)


@pytest.mark.parametrize("name", ["StepLR", "OneCycleLR", "SequentialLR"])
def test_lr_scheduler_state_dict_resume(name):
    """Save optimizer + scheduler mid-run, restore into new objects, continue: same as uninterrupted."""
    full, _ = _run(proxopt.AdamW, name, l1=1e-3)
    make, _ = SCHEDULERS[name]
    model = _model()
    opt = proxopt.AdamW(model.parameters(), lr=0.02, weight_decay=0.01, l1=1e-3)
    sched = make(opt)
    data = _data()
    for x, y in data[:5]:
        opt.zero_grad(); _loss(model, x, y).backward(); opt.step(); sched.step()
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model2 = _model(seed=1)
    model2.load_state_dict(ckpt["model"])
    opt2 = proxopt.AdamW(model2.parameters(), lr=0.02, weight_decay=0.01, l1=1e-3)
    sched2 = make(opt2)
    opt2.load_state_dict(ckpt["opt"])
    sched2.load_state_dict(ckpt["sched"])
    for x, y in data[5:]:
        opt2.zero_grad(); _loss(model2, x, y).backward(); opt2.step(); sched2.step()
    for a, b in zip(model2.parameters(), full[-1][2]):
        assert torch.equal(a.detach(), b)


def test_scheduled_lr_sets_the_l1_threshold():
    """With a zero gradient, SGD + l1 moves each weight toward 0 by exactly lr_t * l1."""
    w = torch.nn.Parameter(torch.full((4,), 10.0, dtype=torch.float64))
    opt = proxopt.SGD([w], lr=0.5, l1=0.1)
    sched = lrs.StepLR(opt, step_size=2, gamma=0.1)
    expected = 10.0
    for _ in range(6):
        lr = opt.param_groups[0]["lr"]
        w.grad = torch.zeros_like(w)
        opt.step()
        sched.step()
        expected -= lr * 0.1
        torch.testing.assert_close(w.detach(), torch.full((4,), expected, dtype=torch.float64))


# ---- RegularizerScheduler ------------------------------------------------------------


def _train(opt, model, data, scheds=()):
    for x, y in data:
        opt.zero_grad()
        _loss(model, x, y).backward()
        opt.step()
        for s in scheds:
            s.step()


def test_regularizer_warmup_follows_schedule_and_matches_manual_setting():
    n, l1 = 6, 0.05
    model = _model()
    opt = proxopt.AdamW(model.parameters(), lr=0.05, l1=l1)
    sched = RegularizerScheduler(opt, "l1", lambda t: min(1.0, t / n))
    assert opt.param_groups[0]["l1"] == 0.0 and opt.param_groups[0]["initial_l1"] == l1
    seen = []
    for x, y in _data():
        seen.append(opt.param_groups[0]["l1"])
        opt.zero_grad(); _loss(model, x, y).backward(); opt.step(); sched.step()
    assert seen == pytest.approx([l1 * min(1.0, t / n) for t in range(STEPS)])
    assert sched.last_epoch == STEPS and sched.get_last_value() == [l1]

    manual = _model()
    mopt = proxopt.AdamW(manual.parameters(), lr=0.05, l1=l1)
    for t, (x, y) in enumerate(_data()):
        mopt.param_groups[0]["l1"] = l1 * min(1.0, t / n)
        mopt.zero_grad(); _loss(manual, x, y).backward(); mopt.step()
    for a, b in zip(model.parameters(), manual.parameters()):
        assert torch.equal(a, b)
    # and it matters: no warm-up gives other weights
    plain = _model()
    popt = proxopt.AdamW(plain.parameters(), lr=0.05, l1=l1)
    _train(popt, plain, _data())
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), plain.parameters()))


def test_regularizer_warmup_delays_sparsity():
    """l1 = 0 at step 0: the first step makes no exact zeros; later steps do."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(200, dtype=torch.float64) * 0.05)
    opt = proxopt.SGD([w], lr=0.1, l1=0.5)
    RegularizerScheduler(opt, "l1", linear_warmup(1))
    sched = opt.param_groups[0]
    w.grad = torch.zeros_like(w)
    opt.step()
    assert int((w == 0).sum()) == 0 and sched["l1"] == 0.0


def test_regularizer_scheduler_state_dict_resume():
    data = _data()
    full_model = _model()
    fopt = proxopt.AdamW(full_model.parameters(), lr=0.05, l1=0.02)
    fsched = RegularizerScheduler(fopt, "l1", linear_warmup(8, start=0.25))
    _train(fopt, full_model, data, [fsched])

    model = _model()
    opt = proxopt.AdamW(model.parameters(), lr=0.05, l1=0.02)
    sched = RegularizerScheduler(opt, "l1", linear_warmup(8, start=0.25))
    _train(opt, model, data[:4], [sched])
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    assert ckpt["sched"]["last_epoch"] == 4
    assert ckpt["sched"]["schedules"] == [{"steps": 8, "start": 0.25}]  # a callable object's state is saved

    model2 = _model(seed=3)
    model2.load_state_dict(ckpt["model"])
    opt2 = proxopt.AdamW(model2.parameters(), lr=0.05, l1=0.02)
    sched2 = RegularizerScheduler(opt2, "l1", linear_warmup(1))  # its state comes from the checkpoint
    opt2.load_state_dict(ckpt["opt"])
    sched2.load_state_dict(ckpt["sched"])
    assert sched2.last_epoch == 4 and sched2.schedules[0].steps == 8
    assert opt2.param_groups[0]["l1"] == pytest.approx(0.02 * linear_warmup(8, 0.25)(4))
    _train(opt2, model2, data[4:], [sched2])
    for a, b in zip(model2.parameters(), full_model.parameters()):
        assert torch.equal(a, b)
    assert sched2.get_last_value() == fsched.get_last_value()


def test_regularizer_scheduler_last_epoch_resume_needs_initial_value():
    model = _model()
    opt = proxopt.AdamW(model.parameters(), lr=0.05, l1=0.02)
    with pytest.raises(KeyError, match=r"param 'initial_l1' is not specified in param_groups\[0\] when resuming a RegularizerScheduler \(last_epoch=3\)"):
        RegularizerScheduler(opt, "l1", linear_warmup(4), last_epoch=3)
    opt.param_groups[0]["initial_l1"] = 0.04
    sched = RegularizerScheduler(opt, "l1", linear_warmup(4), last_epoch=1)
    assert sched.last_epoch == 2 and opt.param_groups[0]["l1"] == pytest.approx(0.04 * 0.5)


def test_regularizer_scheduler_per_group_and_with_lr_scheduler():
    model = _model()
    weights = [p for p in model.parameters() if p.dim() == 2]
    biases = [p for p in model.parameters() if p.dim() == 1]
    opt = proxopt.AdamW([{"params": weights, "group_lasso": 0.1}, {"params": biases}], lr=0.05)
    gl = RegularizerScheduler(opt, "group_lasso", [cosine_ramp(4), lambda t: 1.0])
    one_cycle = lrs.OneCycleLR(opt, max_lr=0.05, total_steps=STEPS)
    ref = proxopt.AdamW([{"params": _model().parameters()}], lr=0.05)
    ref_cycle = lrs.OneCycleLR(ref, max_lr=0.05, total_steps=STEPS)
    for t, (x, y) in enumerate(_data()):
        assert opt.param_groups[0]["group_lasso"] == pytest.approx(0.1 * cosine_ramp(4)(t))
        assert opt.param_groups[1]["group_lasso"] == 0.0  # an unregularized group stays so
        assert opt.param_groups[0]["lr"] == ref.param_groups[0]["lr"]  # the lr schedule is untouched
        assert gl.get_last_lr() == [g["lr"] for g in opt.param_groups]
        opt.zero_grad(); _loss(model, x, y).backward(); opt.step()
        ref.step()
        one_cycle.step(); ref_cycle.step(); gl.step()
    assert cosine_ramp(4)(2) == pytest.approx(0.5)


def test_regularizer_scheduler_max_norm_and_weight_decay():
    model = _model()
    opt = proxopt.AdamW([{"params": [model[0].weight], "max_norm": 2.0}, {"params": [model[0].bias]}], lr=0.05)
    sched = RegularizerScheduler(opt, "max_norm", lambda t: 1.0 / (1 + t))
    assert opt.param_groups[0]["max_norm"] == 2.0 and opt.param_groups[1]["max_norm"] is None
    sched.step()
    assert opt.param_groups[0]["max_norm"] == 1.0 and opt.param_groups[1]["max_norm"] is None
    wd = RegularizerScheduler(opt, "weight_decay", lambda t: 0.5 ** t)
    wd.step()
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.01 * 0.5)


def test_regularizer_scheduler_rejects_bad_input():
    model = _model()
    opt = proxopt.AdamW(model.parameters(), lr=0.05, l1=0.02)
    with pytest.raises(ValueError, match=r"^Invalid key 'lr': a RegularizerScheduler schedules one of \('l1', "):
        RegularizerScheduler(opt, "lr", lambda t: 1.0)
    with pytest.raises(ValueError, match="^Expected 1 schedules, but got 2$"):
        RegularizerScheduler(opt, "l1", [lambda t: 1.0, lambda t: 1.0])
    with pytest.raises(TypeError, match=r"^schedule must be a callable \(or a list of callables\) of the step count$"):
        RegularizerScheduler(opt, "l1", 0.5)
    sched = RegularizerScheduler(opt, "l1", lambda t: 1.0 - t)  # negative from step 2
    sched.step()
    with pytest.raises(ValueError, match=r"^schedule for param group 0 returned -1\.0 at step 2: a multiplier of l1 must be finite and >= 0$"):
        sched.step()
    with pytest.raises(ValueError, match=r"^schedule for param group 0 returned 0\.0 at step 0: a multiplier of max_norm must be finite and > 0$"):
        RegularizerScheduler(proxopt.AdamW([model[0].weight], max_norm=1.0), "max_norm", lambda t: 0.0)
    with pytest.raises(ValueError, match=r"^Invalid steps value: 0 \(must be > 0\)$"):
        linear_warmup(0)
    assert not math.isnan(cosine_ramp(3)(1))


def test_regularizer_scheduler_is_an_lr_scheduler_for_frameworks():
    opt = proxopt.AdamW(_model().parameters(), l1=0.01)
    sched = RegularizerScheduler(opt, "l1", linear_warmup(2))
    assert isinstance(sched, lrs.LRScheduler)
    assert sched.get_last_lr() == [0.001]


def test_cubic_ramp_is_zhu_and_gupta_and_a_regularizer_schedule():
    ramp = cubic_ramp(8, start=0.25, begin=2)
    assert [ramp(t) for t in (0, 2, 10, 100)] == [0.25, 0.25, 1.0, 1.0]
    assert ramp(6) == pytest.approx(0.25 + 0.75 * (1 - 0.5**3))  # half-way: 7/8 of the rise
    values = [ramp(t) for t in range(12)]
    assert values == sorted(values) and all(0.25 <= v <= 1 for v in values)
    rises = [b - a for a, b in zip(values[2:10], values[3:11])]
    assert rises == sorted(rises, reverse=True)  # fast first, flat at the end
    assert cubic_ramp(10)(0) == 0.0 and cubic_ramp(10)(5) == 1 - 0.5**3  # the sparsity ramp: start 0
    # a RegularizerScheduler schedule whose state a checkpoint keeps
    opt = proxopt.AdamW(_model().parameters(), lr=0.05, l1=0.02)
    sched = RegularizerScheduler(opt, "l1", cubic_ramp(8, start=0.25, begin=2))
    for t in range(1, 12):
        sched.step()
        assert opt.param_groups[0]["l1"] == pytest.approx(0.02 * ramp(t))
    assert sched.state_dict()["schedules"] == [{"steps": 8, "start": 0.25, "begin": 2}]
    sched2 = RegularizerScheduler(proxopt.AdamW(_model().parameters(), lr=0.05, l1=0.02), "l1", cubic_ramp(1))
    sched2.load_state_dict(sched.state_dict())
    assert (sched2.schedules[0].steps, sched2.schedules[0].start, sched2.schedules[0].begin) == (8, 0.25, 2)
    with pytest.raises(ValueError, match="Invalid steps value: 0"):
        cubic_ramp(0)
    with pytest.raises(ValueError, match="Invalid begin value: -1"):
        cubic_ramp(4, begin=-1)
