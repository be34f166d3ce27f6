"""A step that raises changes nothing; state that appears mid-run starts from torch's
initial values; bounded memory; the edge cases a hostile-input trial found.

* Every way found to make ``step()`` raise -- a bad grad, a parameter or state
  replaced, a parameter appended to a group, a bad hyperparameter set on a group,
  a bad ``step`` loaded -- is run on an optimizer with kernel and reference
  tensors and several groups, and everything (parameters, grads, state, groups)
  is compared bit for bit with a snapshot taken before.
* Switching on ``amsgrad`` (Adam), ``momentum`` or ``centered`` (RMSprop) or
  ``momentum`` (SGD) between steps creates the new state as a fresh optimizer
  would (zeros; SGD's buffer from the first direction), on both paths.
* A step allocates at most O(groups) beyond parameters, gradients and state
  (peak RSS around ``step()``), for every regularizer and group dim.
"""

from __future__ import annotations

import copy
import ctypes
import gc
import math

import numpy as np
import pytest
import torch

import proxopt
from optim_db import ADAM_INFO, OPTIMS, RMSPROP_INFO, SGD_INFO, assert_unchanged, snapshot

FUSED = pytest.mark.parametrize("fused", [None, False], ids=["kernel", "reference"])


# ---- a step that raises changes nothing -------------------------------------------------


def _setup(info, seed=0):
    """Two groups with kernel tensors, a non-contiguous tensor (reference path) and a
    parameter without a grad; three steps taken, grads for a fourth in place."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(6, 5, generator=gen).requires_grad_()
    b = torch.randn(7, generator=gen).requires_grad_()
    nc = torch.randn(5, 6, generator=gen).t().requires_grad_()  # non-contiguous: the reference
    c = torch.randn(4, 4, generator=gen).requires_grad_()
    idle = torch.randn(3, generator=gen).requires_grad_()  # never gets a grad
    kw = {**info.defaults, **({"momentum": 0.9} if info is SGD_INFO else {})}
    opt = info.cls([{"params": [a, b, nc], "l1": 0.01}, {"params": [c, idle], "bounds": (-1.0, 1.0)}], **kw)
    params = [a, b, nc, c, idle]
    for _ in range(4):
        for p in params[:4]:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    for p in params[:4]:
        p.grad = torch.randn(p.shape, generator=gen)
    return opt, params


# (torch refuses ``p.grad = <other shape/dtype>``; ``p.grad.data = ...`` gets one through.)
def _bad_grad_shape(opt, params):
    params[0].grad.data = torch.randn(5, 6)


def _bad_grad_dtype_on_reference_path(opt, params):
    params[2].grad.data = params[2].grad.double()


def _bad_grad_dtype_in_second_group(opt, params):
    params[3].grad.data = params[3].grad.double()


def _sparse_grad(opt, params):
    params[1].grad = params[1].grad.to_sparse()


def _state_of_another_shape(opt, params):
    key = next(k for k in opt.state[params[0]] if k != "step")
    opt.state[params[0]][key] = torch.zeros(3)


def _step_of_shape_2(opt, params):  # not for SGD: it keeps no step counter
    opt.state[params[3]]["step"] = torch.zeros(2)


def _integer_tensor_appended(opt, params):
    opt.param_groups[1]["params"].append(torch.zeros(3, dtype=torch.int64))


def _duplicate_appended(opt, params):
    opt.param_groups[1]["params"].append(params[0])


def _expanded_tensor_appended(opt, params):
    e = torch.zeros(3).expand(4, 3).requires_grad_()
    e.grad = torch.ones(4, 3)
    opt.param_groups[1]["params"].append(e)


def _bad_lr_set_on_a_group(opt, params):
    opt.param_groups[1]["lr"] = -1.0


def _string_l1_set_on_a_group(opt, params):
    opt.param_groups[0]["l1"] = "1e-3"


def _group_lasso_on_a_vector(opt, params):
    opt.param_groups[0]["group_lasso"] = 0.1  # params[1] is 1-D


def _param_data_of_another_size(opt, params):
    params[0].data = torch.randn(8, 5)
    params[0].grad = torch.randn(8, 5)


# Each sabotage with the one exception and message its check raises. Parameters 0-2 are group 0
# (a, b, nc), 3-4 group 1 (c, idle): messages count within the group.
SABOTAGE = [
    (_bad_grad_shape, ValueError,
     r"^parameter 0 of its param group: its grad has shape \(5, 6\), dtype torch\.float32, device cpu; "
     r"the parameter has \(6, 5\), torch\.float32, cpu$", None),
    (_bad_grad_dtype_on_reference_path, ValueError,
     r"^parameter 2 of its param group: its grad has shape \(6, 5\), dtype torch\.float64, device cpu; "
     r"the parameter has \(6, 5\), torch\.float32, cpu$", None),
    (_bad_grad_dtype_in_second_group, ValueError,
     r"^parameter 0 of its param group: its grad has shape \(4, 4\), dtype torch\.float64, device cpu; "
     r"the parameter has \(4, 4\), torch\.float32, cpu$", None),
    (_sparse_grad, RuntimeError, r"^proxopt\.\w+ does not support sparse gradients \(parameter 1 of its param group\)", None),
    (_state_of_another_shape, ValueError,
     r"^parameter 0 of its param group: its state '\w+' has shape \(3,\), the parameter \(6, 5\): "
     r"was the parameter or its state replaced\?", None),
    (_step_of_shape_2, ValueError,
     r"^parameter 0 of its param group: its state 'step' must be a number or a 1-element tensor, got tensor\(\[0\., 0\.\]\)$",
     None),
    (_integer_tensor_appended, ValueError,
     r"^parameter 2 of its param group: can only optimize floating point or complex tensors, got torch\.int64$", None),
    (_duplicate_appended, ValueError,
     r"^parameter 0 of its param group and parameter 2 of its param group overlap in memory", None),
    (_expanded_tensor_appended, ValueError,
     r"^parameter 2 of its param group has elements that share memory \(an expanded or stride-0 tensor\)", None),
    (_bad_lr_set_on_a_group, ValueError, r"^Invalid learning rate: -1\.0$", None),
    (_string_l1_set_on_a_group, TypeError, r"^Invalid l1 value: '1e-3' \(a str; expected a number\)$", None),
    (_group_lasso_on_a_vector, ValueError,
     r"^parameter 1 of its param group: group_lasso/max_norm/channel_sparsity need at least 2 dimensions and group_dim in range, "
     r"got shape \(7,\) and group_dim 0$", None),
    (_param_data_of_another_size, ValueError, r"^parameter 0 of its param group: .*\(8, 5\)", None),
]


def _sabotage_cases():
    cases = []
    for info in OPTIMS:
        for fn, error, match, broken in SABOTAGE:
            if info is SGD_INFO and fn is _step_of_shape_2:
                continue
            marks = [pytest.mark.xfail(strict=True, raises=AssertionError, reason=broken)] if broken else []
            cases.append(pytest.param(info, fn, error, match, marks=marks, id=f"{info.name}-{fn.__name__.strip('_')}"))
    return cases


@pytest.mark.parametrize("info,sabotage,error,match", _sabotage_cases())
def test_a_step_that_raises_changes_nothing(info, sabotage, error, match):
    opt, params = _setup(info)
    sabotage(opt, params)
    everything = params + [p for g in opt.param_groups for p in g["params"] if not any(p is q for q in params)]
    before = snapshot(opt, everything)
    with pytest.raises(error, match=match):
        opt.step()
    assert_unchanged(opt, everything, before)


@pytest.mark.parametrize("info", OPTIMS, ids=repr)
def test_a_failed_first_step_creates_no_state(info):
    """The first step builds the flat state; when it fails the optimizer has no state at all."""
    p, q = torch.randn(4, 3, requires_grad=True), torch.randn(5, requires_grad=True)
    opt = info.cls([p, q], **info.defaults, **({"momentum": 0.9} if info is SGD_INFO else {}))
    before = {k: dict(v) for k, v in opt.state.items()}  # Adagrad creates state in __init__
    p.grad, q.grad = torch.randn(4, 3), torch.randn(5)
    q.grad.data = torch.randn(6)  # q's grad has the wrong shape
    with pytest.raises(ValueError, match=r"^parameter 1 of its param group: its grad has shape \(6,\)"):
        opt.step()
    assert {k: set(v) for k, v in opt.state.items()} == {k: set(v) for k, v in before.items()}
    q.grad = torch.randn(5)
    opt.step()  # and it recovers
    assert p in opt.state


# ---- state that appears mid-run ------------------------------------------------------------


TOGGLES = [
    (ADAM_INFO, {}, {"amsgrad": True}, "max_exp_avg_sq"),
    (RMSPROP_INFO, {}, {"momentum": 0.9}, "momentum_buffer"),
    (RMSPROP_INFO, {}, {"centered": True}, "grad_avg"),
    (SGD_INFO, {}, {"momentum": 0.9}, "momentum_buffer"),
]


@FUSED
@pytest.mark.parametrize("info,before,after,key", TOGGLES, ids=[f"{t[0].name}-{t[3]}" for t in TOGGLES])
def test_switched_on_state_starts_from_its_initial_value(info, before, after, key, fused):
    """The new state is what a fresh optimizer of that setting would start from: zeros, or
    for SGD's momentum buffer the first direction itself (torch clones the grad). So the
    switched step equals a step of the new setting whose new state was freshly made."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(50, generator=gen)
    grads = [torch.randn(50, generator=gen) for _ in range(4)]
    p = w.clone().requires_grad_()
    o = info.cls([p], **info.defaults, **before, fused=fused)
    for g in grads[:3]:
        p.grad = g.clone()
        o.step()
    # the expected step: the reference, by hand, from the state it had plus the fresh new entry
    q = p.detach().clone().requires_grad_()
    o_ref = info.cls([q], **info.defaults, **before, **after, fused=False)
    state = {k: v.clone() for k, v in o.state[p].items()}
    if key != "momentum_buffer" or info is not SGD_INFO:
        state[key] = torch.zeros(50)
    o_ref.load_state_dict({"state": {0: state}, "param_groups": [{**o_ref.state_dict()["param_groups"][0]}]})
    o.param_groups[0].update(after)
    p.grad, q.grad = grads[3].clone(), grads[3].clone()
    o.step()
    o_ref.step()
    assert key in o.state[p]
    torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(o.state[p][key], o_ref.state[q][key], rtol=1e-6, atol=1e-7)
    assert torch.isfinite(o.state[p][key]).all()


# ---- bounded memory --------------------------------------------------------------------------


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise OSError


def _peak_extra(step) -> int:
    ctypes.CDLL(None).malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # peak RSS := current RSS
    before = _rss()
    step()
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 - before
    raise OSError


MEMORY_REGS = [
    {}, {"l1": 1e-3}, {"l2": 1e-3}, {"l1": 1e-3, "l2": 1e-3, "bounds": (-1, 1)}, {"l0": 1e-6},
    {"group_lasso": 1e-3}, {"group_lasso": 1e-3, "group_dim": 1}, {"max_norm": 1.0},
    {"max_norm": 1.0, "max_norm_dim": 1}, {"l1": 1e-3, "prox_metric": "adaptive"},
]


@pytest.mark.skipif(not proxopt.has_cpu_kernels(), reason="the kernels' memory")
@pytest.mark.parametrize("shape", [(2, 1 << 21), (1 << 11, 1 << 10)], ids=["2x2M", "2048x1024"])
@pytest.mark.parametrize("reg", MEMORY_REGS, ids=lambda r: ",".join(f"{k}={v}" for k, v in r.items()) or "plain")
def test_a_step_allocates_no_tensor_sized_memory(reg, shape):
    """Peak RSS during a step beyond what existed before it: at most 4 MiB (thread-local
    scratch of a block of groups, the per-group factors; O(groups), never O(tensor) -- the
    tensor here is 16 MiB, its state 32 MiB)."""
    p = torch.randn(shape, requires_grad=True)
    p.grad = torch.randn(shape)
    opt = proxopt.Adam([p], lr=1e-3, **reg)
    opt.step()  # the first step allocates the state
    gc.collect()
    extra = min(_peak_extra(opt.step) for _ in range(2))
    assert extra <= 4 * 2**20, f"a step allocated {extra / 2**20:.1f} MiB"


@pytest.mark.parametrize("dim", [0, 1])
def test_strided_groups_take_time_in_elements_not_groups_times_chunks(dim):
    """(2, 2^22) with max_norm along dim 1: 4M groups of 2 elements. The old schedule kept
    partial sums per chunk and group (2 GiB, seconds); now a step is one visit."""
    p = torch.randn(2, 1 << 22, requires_grad=True)
    p.grad = torch.randn(2, 1 << 22)
    opt = proxopt.SGD([p], lr=0.1, max_norm=1.0, max_norm_dim=dim)
    opt.step()
    norms = torch.linalg.vector_norm(p.detach().double(), dim=1 - dim)
    assert (norms <= 1.0 + 1e-6).all()
    q = p.detach().clone()
    extra = _peak_extra(opt.step)
    assert extra <= 4 * 2**20


# ---- edge cases -----------------------------------------------------------------------------------


@FUSED
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_max_norm_scales_a_group_whose_norm_overflows(dtype, fused):
    """A finite group with ||w|| > FLT_MAX is scaled down to the bound, not zeroed: the norm
    and the factor are computed in float64."""
    w = torch.tensor([[3e38, 3e38], [1.0, 1.0]], dtype=dtype).requires_grad_()
    opt = proxopt.SGD([w], lr=0.0, max_norm=1.0, fused=fused)
    w.grad = torch.zeros_like(w)
    opt.step()
    expect = torch.tensor([[0.5**0.5, 0.5**0.5], [0.5**0.5, 0.5**0.5]], dtype=dtype)
    torch.testing.assert_close(w.detach(), expect, rtol=1e-2 if dtype == torch.bfloat16 else 1e-6, atol=0)


@FUSED
@pytest.mark.parametrize("reg", [{"group_lasso": 0.1}, {"max_norm": 1.0, "max_norm_dim": 1}])
def test_zero_size_tensor_with_a_group_prox(reg, fused):
    w = torch.zeros(0, 4, requires_grad=True)
    v = torch.randn(3, 4, requires_grad=True)
    opt = proxopt.AdamW([w, v], lr=0.1, fused=fused, **reg)
    w.grad, v.grad = torch.zeros(0, 4), torch.randn(3, 4)
    opt.step()
    assert w.shape == (0, 4) and float(opt.state[w]["step"]) == 1


@pytest.mark.parametrize("bounds", [(math.inf, math.inf), (-math.inf, -math.inf)])
def test_bounds_with_an_empty_feasible_set_are_rejected(bounds):
    with pytest.raises(ValueError, match=r"^Invalid bounds value: \(-?inf, -?inf\) \(the feasible set is empty"):
        proxopt.SGD([torch.zeros(2, requires_grad=True)], lr=0.1, bounds=bounds)


def test_one_sided_infinite_bounds_constrain_one_side():
    w = torch.tensor([-5.0, 5.0], requires_grad=True)
    opt = proxopt.SGD([w], lr=0.0, bounds=(0.0, math.inf))
    w.grad = torch.zeros(2)
    opt.step()
    assert w.tolist() == [0.0, 5.0]


@pytest.mark.parametrize("betas,match", [
    ((0.9,), r"^Invalid betas value: \(0\.9,\) \(expected a pair \(beta1, beta2\)\)$"),
    ((0.9, 0.99, 0.999), r"^Invalid betas value: \(0\.9, 0\.99, 0\.999\) \(expected a pair \(beta1, beta2\)\)$"),
    ((torch.tensor(0.9), 0.999), "^betas must be either both floats or both Tensors$"),
])
def test_malformed_betas_are_a_value_error(betas, match):
    with pytest.raises(ValueError, match=match):
        proxopt.Adam([torch.zeros(2, requires_grad=True)], betas=betas)


def test_numpy_integer_group_dim_is_accepted():
    w = torch.randn(4, 3, requires_grad=True)
    opt = proxopt.SGD([w], lr=0.1, group_lasso=0.1, group_dim=np.int64(1))
    w.grad = torch.randn(4, 3)
    opt.step()
    assert opt.param_groups[0]["group_dim"] == 1


def test_state_dict_with_a_non_scalar_step_is_rejected():
    p = torch.randn(3, requires_grad=True)
    opt = proxopt.Adam([p], lr=0.1)
    p.grad = torch.randn(3)
    opt.step()
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][0]["step"] = torch.zeros(2)
    with pytest.raises(ValueError, match="'step' of parameter 0 must be a number or a 1-element tensor"):
        opt.load_state_dict(sd)


@FUSED
def test_centered_rmsprop_keeps_torch_s_value_when_the_grad_average_squared_overflows(fused):
    """square_avg - grad_avg^2 is one rounding (torch's addcmul is an fma): with a grad of 1e38
    in float32, grad_avg^2 alone overflows and inf - inf would make the weight NaN (found by the
    special-values fuzz)."""
    results = []
    for make in (lambda p: torch.optim.RMSprop([p], lr=2e-3, centered=True),
                 lambda p: proxopt.RMSprop([p], lr=2e-3, centered=True, fused=fused)):
        gen = torch.Generator().manual_seed(0)
        p = (torch.randn(3, 7, generator=gen) * 0.05).requires_grad_()
        opt = make(p)
        for step in range(2):
            p.grad = torch.randn(3, 7, generator=gen) * 0.01
            if step == 1:
                p.grad[0, 0] = 1e38
            opt.step()
        results.append(p.detach())
    assert torch.isfinite(results[0]).all()  # torch's value: finite
    torch.testing.assert_close(results[1], results[0], rtol=1e-5, atol=1e-7)
