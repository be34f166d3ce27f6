"""torch.amp.autocast + torch.amp.GradScaler on the CPU, end to end.

proxopt optimizers declare ``_step_supports_amp_scaling``: GradScaler hands them
``grad_scale``/``found_inf`` and the kernel unscales the gradients in the same pass.
The trajectory equals torch.optim.AdamW under the same scaler (which unscales in
Python first), and equals proxopt after ``scaler.unscale_`` (the clipping recipe).
A step with an inf/nan gradient leaves parameters, every state tensor and ``step``
untouched, and the scaler backs off. After scaler.step, .grad holds what torch's
fused Adam/AdamW/SGD/Adagrad leave: grad / scale on a taken step, the scaled grad
on a skipped one (kernel and reference path alike, eager and compiled).
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


# ---- .grad after scaler.step: unscaled, as torch's fused optimizers leave it ----------------------

FUSED = ["Adam", "AdamW", "SGD", "Adagrad"]  # the optimizers torch has a fused (CPU) form of


def _fused_kw(opt_name):
    kw = dict(lr=1e-2)
    if opt_name == "SGD":
        kw["momentum"] = 0.9
    return kw


def _amp_step_grads(model, opt, scaler, x, y, dtype):
    """One scaled step; returns the (scaled) grads scaler.step was given."""
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=dtype):
        loss = torch.nn.functional.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    scaled = [p.grad.clone() for p in model.parameters()]
    scaler.step(opt)
    scaler.update()
    return scaled


def _assert_bits_equal(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("init_scale", [2.0**16, 1000.0], ids=["scale65536", "scale1000"])
@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES, ids=str)
@pytest.mark.parametrize("opt_name", FUSED)
def test_grad_after_scaler_step_equals_torch_fused(opt_name, dtype, init_scale):
    """After scaler.step the .grad holds what torch's fused optimizer leaves there:
    grad / scale (a taken step; bit-identical, also for a scale that is no power
    of two) and the scaled grad untouched (an inf step, which changes nothing)."""
    ours_model, theirs_model = _model(), _model()
    ours = getattr(proxopt, opt_name)(ours_model.parameters(), **_fused_kw(opt_name))
    theirs = getattr(torch.optim, opt_name)(theirs_model.parameters(), fused=True, **_fused_kw(opt_name))
    s1, s2 = (torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=2) for _ in range(2))
    data = _data()
    skipped = 0
    for k, (x, y) in enumerate(data):
        if k in (2, 4):
            x = x.clone()
            x[1, 2] = float("inf") if k == 2 else float("nan")
        scale = s1.get_scale()
        assert scale == s2.get_scale()
        g_ours = _amp_step_grads(ours_model, ours, s1, x, y, dtype)
        g_theirs = _amp_step_grads(theirs_model, theirs, s2, x, y, dtype)
        inf_step = s1.get_scale() < scale
        assert inf_step == (k in (2, 4))
        skipped += inf_step
        for p, q, g, h in zip(ours_model.parameters(), theirs_model.parameters(), g_ours, g_theirs):
            _assert_bits_equal(g, h)  # the same scaled gradients went in
            _assert_bits_equal(p.grad, q.grad)
            if inf_step:
                _assert_bits_equal(p.grad, g)  # an inf step leaves .grad scaled, as torch's fused
            else:
                assert torch.equal(p.grad, g / torch.tensor(scale, dtype=torch.float32))
                assert p.grad.abs().max() < g.abs().max() / 100  # really unscaled
        for p, q in zip(ours_model.parameters(), theirs_model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
            st_ours, st_theirs = ours.state.get(p, {}), theirs.state.get(q, {})
            assert st_ours.keys() == st_theirs.keys()
            for key in st_theirs:
                torch.testing.assert_close(st_ours[key].float(), st_theirs[key].float(), rtol=1e-5, atol=1e-6)
    assert skipped == 2
    if opt_name != "SGD":  # (SGD keeps no step count)
        assert int(ours.state[ours_model[0].weight]["step"]) == STEPS - 2


def test_grad_after_step_unscaled_on_the_reference_path_and_grad_less_param_untouched():
    """A non-contiguous parameter (the reference path) gets the same unscaled .grad as a
    contiguous one (the kernel) and as torch's fused AdamW; a parameter without a grad
    keeps none; found_inf set skips the step and leaves every .grad as it was.
    (The parameters are compared with torch's non-fused AdamW given the unscaled grads:
    torch 2.13's fused CPU AdamW mis-steps a non-contiguous parameter.)"""
    torch.manual_seed(3)
    dense, strided, bare = torch.randn(6, 5), torch.randn(5, 6).t(), torch.randn(4)
    scaled = [torch.randn(6, 5) * 1000.0 for _ in range(2)]

    def params():
        ps = [torch.nn.Parameter(dense.clone()), torch.nn.Parameter(torch.empty(5, 6).t().copy_(strided)),
              torch.nn.Parameter(bare.clone())]
        assert ps[0].is_contiguous() and not ps[1].is_contiguous()
        return ps

    plain = params()
    for p, g in zip(plain, scaled):
        p.grad = g / 1000.0
    torch.optim.AdamW(plain, lr=1e-2, foreach=False).step()
    for found in (0.0, 1.0):
        results = []
        for make in (lambda ps: proxopt.AdamW(ps, lr=1e-2), lambda ps: torch.optim.AdamW(ps, lr=1e-2, fused=True)):
            ps = params()
            for p, g in zip(ps, scaled):
                p.grad = g.clone()
            opt = make(ps)
            opt.grad_scale = torch.tensor(1000.0)
            opt.found_inf = torch.tensor(found)
            opt.step()
            results.append(ps)
        ours, theirs = results
        for p, q, g in zip(ours[:2], theirs[:2], scaled):
            assert torch.equal(p.grad, q.grad)
            assert torch.equal(p.grad, g if found else g / 1000.0)
        for p, before, after in zip(ours, (dense, strided, bare), plain):
            if found or p is ours[2]:
                assert torch.equal(p, before)
            else:
                torch.testing.assert_close(p, after, rtol=1e-6, atol=1e-7)
                assert not torch.equal(p, before)
        assert ours[2].grad is None


@pytest.mark.skipif(not hasattr(torch, "compile"), reason="torch.compile is not available")
def test_compiled_step_leaves_grad_unscaled_as_eager():
    """opt.step compiled (fullgraph, inductor) with GradScaler's grad_scale/found_inf
    attributes: .grad after each step is bit-equal to the eager step's (divided on a
    taken step, untouched on a skipped one), and so are the parameters."""
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(5)
    grads = [[torch.randn(*s, generator=g) * 1000.0 for s in ((16, 8), (16,))] for _ in range(4)]
    runs = []
    for compiled in (True, False):
        torch.manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(16, 8)), torch.nn.Parameter(torch.randn(16))]
        opt = proxopt.AdamW(ps, lr=1e-2, l1=1e-3)
        # a first step without AMP, eagerly: a traced first step cannot read found_inf
        # to decide whether to keep the state it creates (_dispatch.step)
        for p in ps:
            p.grad = torch.ones_like(p)
        opt.step()
        step = torch.compile(opt.step, fullgraph=True) if compiled else opt.step
        seen = []
        for k, gs in enumerate(grads):
            for p, grad in zip(ps, gs):
                p.grad = grad.clone()
            opt.grad_scale = torch.tensor(1000.0)
            opt.found_inf = torch.tensor(1.0 if k == 2 else 0.0)
            step()
            seen.append([p.grad.clone() for p in ps])
        runs.append((seen, [p.detach().clone() for p in ps]))
    torch._dynamo.reset()
    for k, (a, b) in enumerate(zip(runs[0][0], runs[1][0])):
        for ga, gb, scaled in zip(a, b, grads[k]):
            assert torch.equal(ga, gb)
            assert torch.equal(ga, scaled if k == 2 else scaled / 1000.0)
    for pa, pb in zip(runs[0][1], runs[1][1]):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)
