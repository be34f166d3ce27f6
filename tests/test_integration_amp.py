"""torch.amp.autocast + torch.amp.GradScaler on the CPU, end to end.

proxopt optimizers declare ``_step_supports_amp_scaling``: GradScaler hands them
``grad_scale``/``found_inf`` and the kernel unscales the gradients in the same pass.
The trajectory equals torch.optim.AdamW under the same scaler (which unscales in
Python first), and equals proxopt after ``scaler.unscale_`` (the clipping recipe).
A step with an inf/nan gradient leaves parameters, every state tensor and ``step``
untouched, and the scaler backs off.
"""

from __future__ import annotations

import copy

import pytest
import torch

import proxopt

AUTOCAST_DTYPES = [torch.bfloat16, torch.float16]
STEPS = 6


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))


def _data(n: int = STEPS):
    g = torch.Generator().manual_seed(11)
    return [(torch.randn(10, 8, generator=g), torch.randint(0, 4, (10,), generator=g)) for _ in range(n)]


def _groups(model, **reg):
    return [
        {"params": [p for p in model.parameters() if p.dim() == 2], **reg},
        {"params": [p for p in model.parameters() if p.dim() == 1]},
    ]


def _amp_step(model, opt, scaler, x, y, dtype, unscale_first=False):
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=dtype):
        out = model(x)
        assert out.dtype == dtype  # autocast really ran the linear layers in low precision
        loss = torch.nn.functional.cross_entropy(out, y)
    scaler.scale(loss).backward()
    if unscale_first:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1e6)  # the usual reason to unscale
    scaler.step(opt)
    scaler.update()
    return loss


def _scaler():
    return torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=2)


def _snapshot(model, opt):
    return (
        [p.detach().clone() for p in model.parameters()],
        {k: {kk: (vv.clone() if torch.is_tensor(vv) else vv) for kk, vv in st.items()} for k, st in
         enumerate(opt.state.values())},
    )


def _assert_snapshot_equal(a, b):
    for pa, pb in zip(a[0], b[0]):
        assert torch.equal(pa, pb)
    assert a[1].keys() == b[1].keys()
    for k in a[1]:
        assert a[1][k].keys() == b[1][k].keys()
        for key in a[1][k]:
            assert torch.equal(a[1][k][key], b[1][k][key]), (k, key)


@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES, ids=str)
def test_autocast_grad_scaler_matches_torch_adamw(dtype):
    ours_model, theirs_model = _model(), _model()
    ours = proxopt.AdamW(ours_model.parameters(), lr=1e-2)
    theirs = torch.optim.AdamW(theirs_model.parameters(), lr=1e-2)
    s1, s2 = _scaler(), _scaler()
    for x, y in _data():
        _amp_step(ours_model, ours, s1, x, y, dtype)
        _amp_step(theirs_model, theirs, s2, x, y, dtype)
    assert s1.get_scale() == s2.get_scale() > 2.0**12  # the scale grew: every step was taken
    for a, b in zip(ours_model.parameters(), theirs_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert int(ours.state[ours_model[0].weight]["step"]) == STEPS


@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES, ids=str)
@pytest.mark.parametrize("opt_name", ["AdamW", "SGD", "RMSprop", "Adagrad"])
def test_fused_unscale_equals_unscale_then_step(dtype, opt_name):
    """Scaler hands grad_scale to the kernel == scaler.unscale_ then a plain step, with regularizers."""
    kw = dict(lr=1e-2, l1=1e-3)
    if opt_name == "SGD":
        kw["momentum"] = 0.9
    reg = dict(group_lasso=1e-2, bounds=(-0.5, 0.5))
    runs = []
    for unscale_first in (False, True):
        model = _model()
        opt = getattr(proxopt, opt_name)(_groups(model, **reg), **kw)
        scaler = _scaler()
        for x, y in _data():
            _amp_step(model, opt, scaler, x, y, dtype, unscale_first=unscale_first)
        runs.append(_snapshot(model, opt))
    for pa, pb in zip(runs[0][0], runs[1][0]):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)
    plain = _model()
    assert any(not torch.allclose(a, b) for a, b in zip(runs[0][0], plain.parameters()))


@pytest.mark.parametrize("opt_name", ["AdamW", "Adam", "SGD", "RMSprop", "Adagrad"])
@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES, ids=str)
def test_overflow_step_changes_nothing(opt_name, dtype):
    kw = dict(lr=1e-2, l1=1e-3)
    if opt_name == "SGD":
        kw["momentum"] = 0.9
    if opt_name == "RMSprop":
        kw.update(momentum=0.5, centered=True)
    if opt_name == "Adam":
        kw.update(amsgrad=True, weight_decay=1e-2)
    model = _model()
    opt = getattr(proxopt, opt_name)(_groups(model, max_norm=1.0), **kw)
    scaler = _scaler()
    data = _data(4)
    # an overflow on the very first step creates no state (Adagrad makes its state in __init__, as torch)
    initial = _snapshot(model, opt)
    bad_x = data[0][0].clone()
    bad_x[0, 0] = float("inf")
    _amp_step(model, opt, scaler, bad_x, data[0][1], dtype)
    _assert_snapshot_equal(_snapshot(model, opt), initial)
    assert len(opt.state) == (4 if opt_name == "Adagrad" else 0)
    for x, y in data[:3]:
        _amp_step(model, opt, scaler, x, y, dtype)
    before = _snapshot(model, opt)
    scale = scaler.get_scale()
    for bad in (float("inf"), float("nan")):
        bad_x = data[3][0].clone()
        bad_x[1, 2] = bad
        _amp_step(model, opt, scaler, bad_x, data[3][1], dtype)
        _assert_snapshot_equal(_snapshot(model, opt), before)
        assert scaler.get_scale() < scale  # the scaler backed off
        scale = scaler.get_scale()
    # and training goes on from exactly there
    _amp_step(model, opt, scaler, *data[3], dtype)
    assert any(not torch.equal(a, b) for a, b in zip(before[0], model.parameters()))


def test_overflow_in_one_gradient_only():
    """A single inf gradient element skips the whole step (all groups, all tensors)."""
    model = _model()
    opt = proxopt.AdamW(_groups(model, l1=1e-3), lr=1e-2)
    scaler = _scaler()
    x, y = _data(1)[0]
    _amp_step(model, opt, scaler, x, y, torch.bfloat16)
    before = copy.deepcopy(_snapshot(model, opt))
    opt.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    model[2].bias.grad[0] = float("inf")
    scaler.step(opt)
    scaler.update()
    _assert_snapshot_equal(_snapshot(model, opt), before)
