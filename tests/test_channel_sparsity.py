"""The channel budget (``channel_sparsity``): whole groups along ``group_dim``
kept by norm, in the fused group kernels and the reference; the count it lands
on, the heal phase's exact freeze, the reset of zeroed channels, composing with
``group_lasso`` and ``max_norm``, validation."""

from __future__ import annotations

import copy

import pytest
import torch

import proxopt
from proxopt.reference import budget_keep

needs_kernels = pytest.mark.skipif(not proxopt.backend_info()["cpu_kernels"], reason="no CPU kernels")

OPTS = [("AdamW", {}), ("Adam", {"amsgrad": True}), ("SGD", {"momentum": 0.9}), ("Adagrad", {}),
        ("RMSprop", {"momentum": 0.5, "centered": True})]

# (shape, group_dim): output rows (one-visit blocks), a conv kernel, the
# columns of a tall matrix (column panels), groups larger than a block.
SHAPES = [((48, 40), 0), ((32, 6, 5), 0), ((300, 24), 1), ((3, 70000), 0)]


def ramp(t: int, steps: int, final: float) -> float:
    return final * (1 - (1 - min(1.0, t / steps)) ** 3)


def make(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(*shape, generator=g, dtype=torch.float64) * 0.05
    # channels of different scales, as trained layers have
    scale = torch.rand(shape[0], generator=g, dtype=torch.float64) + 0.25
    return torch.nn.Parameter((w * scale.reshape(-1, *([1] * (len(shape) - 1)))).to(dtype))


def grads(w, t):
    """A pull towards a fixed random target plus noise: weights that settle."""
    g = torch.Generator().manual_seed(1000 + t)
    target = torch.randn(w.shape, generator=torch.Generator().manual_seed(77), dtype=w.dtype) * 0.05
    w.grad = (w.detach() - target) + torch.randn(w.shape, generator=g, dtype=w.dtype) * 0.02


def zero_groups(w, dim):
    d = dim % w.dim()
    return (w.detach().movedim(d, 0).reshape(w.shape[d], -1) != 0).sum(1) == 0


def train(fused, name, kw, shape, dim, steps, final=0.75, dtype=torch.float32, **reg):
    w = make(shape, dtype)
    opt = getattr(proxopt, name)([w], lr=1e-3 if name != "SGD" else 0.05, fused=fused, group_dim=dim,
                                 **kw, **reg)
    for t in range(steps):
        opt.param_groups[0]["channel_sparsity"] = ramp(t, steps - 5, final)
        grads(w, t)
        opt.step()
    return w, opt


# every shape in three dtypes, but the big groups (slow in the reference) in float32 only
CASES = [(shape, dim, dtype) for shape, dim in SHAPES[:3] for dtype in (torch.float32, torch.float64, torch.bfloat16)]
CASES.append((*SHAPES[3], torch.float32))


@needs_kernels
@pytest.mark.parametrize("name,kw", OPTS)
@pytest.mark.parametrize("shape,dim,dtype", CASES)
def test_kernel_equals_reference(name, kw, shape, dim, dtype):
    """The same zero channels and statistics; values within rounding. A group
    whose norm lies within rounding of a threshold could fall on either side:
    at most one group may differ."""
    a, oa = train(True, name, kw, shape, dim, 25, dtype=dtype, channel_sparsity=0.01)
    b, ob = train(False, name, kw, shape, dim, 25, dtype=dtype, channel_sparsity=0.01)
    za, zb = zero_groups(a, dim), zero_groups(b, dim)
    assert int((za != zb).sum()) <= 1
    assert int(za.sum()) > 0  # the budget acted
    keep = ~(za | zb)
    tol = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 2e-2}[dtype]
    d = dim % a.dim()
    torch.testing.assert_close(a.detach().movedim(d, 0)[keep], b.detach().movedim(d, 0)[keep], rtol=tol, atol=tol)
    torch.testing.assert_close(oa.state[a]["sparsity_stats"][:3], ob.state[b]["sparsity_stats"][:3], rtol=0.02, atol=0)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("shape,dim", SHAPES[:3])
def test_count_lands_on_the_budget(fused, shape, dim):
    """Exactly ⌈s·G⌉ zero channels on every step of a ramp and after it (the
    threshold is chosen on the last step's group norms)."""
    w = make(shape)
    opt = proxopt.AdamW([w], lr=1e-3, fused=fused, group_dim=dim)
    G = shape[dim]
    off = []
    for t in range(120):
        s = ramp(t, 80, 0.75)
        opt.param_groups[0]["channel_sparsity"] = s
        grads(w, t)
        opt.step()
        off.append(int(zero_groups(w, dim).sum()) - (G - budget_keep(s, G)))
    assert off == [0] * len(off)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("name,kw", OPTS)
def test_heal_freezes_exact_channels_and_resets_their_state(fused, name, kw):
    w, opt = train(fused, name, kw, (48, 40), 0, 30, final=0.5)
    G = 48
    opt.param_groups[0]["heal"] = True
    grads(w, 999)
    opt.step()
    zeros = zero_groups(w, 0)
    assert int((~zeros).sum()) == min(budget_keep(0.5, G), int((~zero_groups(w, 0)).sum()))
    assert int(zeros.sum()) == G - budget_keep(0.5, G)
    for t in range(5):
        grads(w, 2000 + t)
        opt.step()
        assert torch.equal(zero_groups(w, 0), zeros)
    st = opt.state[w]
    keys = proxopt.rules.RULES[opt._rule].state_keys(opt._hyper(opt.param_groups[0]))
    for q, key in enumerate(keys):
        fresh = opt.param_groups[0].get("initial_accumulator_value", 0.0) if q == 0 else 0.0
        assert torch.all(st[key][zeros] == fresh), key


@pytest.mark.parametrize("fused", [True, False])
def test_zeroed_channels_get_fresh_state(fused):
    """A channel the budget zeroes has the state of a fresh entry after that
    step; ``reset_state=False`` keeps its moments."""
    for reset, expect_fresh in ((None, True), (False, False)):
        w, opt = train(fused, "Adam", {}, (48, 40), 0, 12, final=0.5, reset_state=reset)
        zeros = zero_groups(w, 0)
        assert zeros.any()
        m = opt.state[w]["exp_avg"][zeros]
        assert bool((m == 0).all()) == expect_fresh


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("reg", [{"group_lasso": 2e-2}, {"max_norm": 0.2}, {"l1": 1e-4, "bounds": (-0.1, 0.1)}])
def test_channel_budget_composes(fused, reg):
    """With group lasso (which zeroes channels of its own: the budget counts
    them), max-norm (applied to the survivors) and elementwise proxes."""
    w, opt = train(fused, "AdamW", {}, (48, 40), 0, 40, final=0.5, **reg)
    G = 48
    assert int(zero_groups(w, 0).sum()) >= G - budget_keep(0.5, G)
    if "max_norm" in reg:
        assert float(w.detach().norm(dim=1).max()) <= 0.2 * (1 + 1e-5)
    if "bounds" in reg:
        assert float(w.detach().abs().max()) <= float(torch.tensor(0.1))  # (0.1 in float32)


def test_scheduler_ramps_channels_and_heals_at_its_end():
    w = make((48, 40))
    opt = proxopt.AdamW([w], lr=1e-3, channel_sparsity=0.5)
    sched = proxopt.RegularizerScheduler(opt, "channel_sparsity", proxopt.schedules.cubic_ramp(30))
    assert sched.heal_at == 30
    for t in range(35):
        grads(w, t)
        opt.step()
        sched.step()
    assert opt.param_groups[0]["heal"] is True
    assert int(zero_groups(w, 0).sum()) == 48 - budget_keep(0.5, 48)


@pytest.mark.parametrize("kw,error,match", [
    ({"channel_sparsity": 1.5}, ValueError, r"Invalid channel_sparsity value: 1\.5"),
    ({"channel_sparsity": 0.5, "sparsity": 0.5}, ValueError, r"channel_sparsity=0\.5 and sparsity=0\.5 cannot be combined"),
    ({"channel_sparsity": 0.5, "sparsity_scope": "group"}, ValueError, r"channel_sparsity=0\.5 with sparsity_scope='group'"),
    ({"channel_sparsity": 0.5, "bounds": (0.1, 1.0)}, ValueError, r"channel_sparsity=0\.5 with bounds=\(0\.1, 1\.0\)"),
    ({"channel_sparsity": 0.5, "prox_metric": "adaptive"}, ValueError, r"prox_metric='adaptive' cannot be combined with group_lasso, channel_sparsity"),
    ({"channel_sparsity": 0.5, "max_norm": 1.0, "max_norm_dim": 1}, ValueError, r"group_dim=0 and max_norm_dim=1 differ"),
    ({"channel_sparsity": "half"}, TypeError, r"Invalid channel_sparsity value: 'half'"),
])
def test_bad_input_names_the_argument(kw, error, match):
    w = make((8, 4))
    with pytest.raises(error, match=match):
        proxopt.AdamW([w], lr=1e-3, **kw)


def test_needs_a_matrix_and_changes_nothing_when_refused():
    """A 1-D tensor is refused when its group is added; a 1-D tensor given a
    channel budget later (an edit of the group) is refused by the step before
    anything is written."""
    w, b = make((8, 4)), torch.nn.Parameter(torch.zeros(8))
    opt = proxopt.AdamW([w], lr=1e-3)
    with pytest.raises(ValueError, match=r"has 1 dimension\(s\): group_lasso/max_norm/channel_sparsity need a"):
        opt.add_param_group({"params": [b], "channel_sparsity": 0.5})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": [b]})
    opt.param_groups[1]["channel_sparsity"] = 0.5
    w.grad, b.grad = torch.ones_like(w), torch.ones_like(b)
    w0 = w.detach().clone()
    with pytest.raises(ValueError, match=r"has 1 dimension\(s\): group_lasso/max_norm/channel_sparsity need a"):
        opt.step()
    assert torch.equal(w.detach(), w0) and not opt.state


def test_resume_mid_ramp_is_bit_identical():
    a, oa = train(True, "AdamW", {}, (48, 40), 0, 15)
    b = torch.nn.Parameter(a.detach().clone())
    ob = proxopt.AdamW([b], lr=1e-3, group_dim=0)
    ob.load_state_dict(copy.deepcopy(oa.state_dict()))  # (a live state_dict shares its tensors, as torch's)
    assert ob.state[b]["sparsity_stats"].dtype == torch.float64
    for t in range(15, 25):
        for w, o in ((a, oa), (b, ob)):
            o.param_groups[0]["channel_sparsity"] = ramp(t, 20, 0.75)
            grads(w, t)
            o.step()
    assert torch.equal(a.detach(), b.detach())
