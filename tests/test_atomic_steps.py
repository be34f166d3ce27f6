"""Every check of a step runs before its first write, and every parameter's state is
checked against the parameter on every step.

* A step that mixes the kernel and the reference path (a contiguous and a non-contiguous
  parameter) checks both paths before either writes: a reference-path state of another
  dtype or device, or a bad ``step``, raises with parameters, state, counters and grads
  left as they were (compared with clones) -- as for the kernel path, where a counter
  edited in place is read before the operator writes (on the CPU).
* A failed step leaves no new state keys behind (``amsgrad``, RMSprop's ``centered`` and
  ``momentum``, SGD's ``momentum`` switched on in the step that fails).
* ``.data`` rebound to a tensor of another size, or another shape of the same size, no
  longer fits its state: the step names that parameter (eager and compiled).
* A state tensor deleted or of an integer dtype is an error, as in torch, not silently
  re-initialised or cast; an lr or weight_decay that overflows float32 (where the step
  computes in float32) is an error, as in torch, not inf/NaN weights.
* ``proxopt.reference.step_tensor`` checks its inputs before it counts the step.
"""

from __future__ import annotations

import pytest
import torch

import proxopt
from optim_db import ADAM_INFO, OPTIMS, RMSPROP_INFO, SGD_INFO, assert_unchanged, snapshot

STEPPED = [info for info in OPTIMS if info is not SGD_INFO]  # the rules that keep a step counter
KERNEL, REFERENCE = 0, 1  # the parameter of each path in _mixed


def _mixed(info, **kw):
    """A kernel parameter (contiguous) and a reference one (non-contiguous) in one group,
    stepped twice, with grads for a third step in place."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(4, 6, generator=gen).requires_grad_()
    b = torch.randn(6, 4, generator=gen).t().requires_grad_()
    kw = {**info.defaults, **({"momentum": 0.9} if info is SGD_INFO else {}), **kw}
    opt = info.cls([a, b], **kw)
    for step in range(3):
        a.grad, b.grad = torch.randn(4, 6, generator=gen), torch.randn(4, 6, generator=gen)
        if step < 2:
            opt.step()
    return opt, [a, b]


def _single(info, fused, **kw):
    """One parameter on the kernel path (fused=None) or the reference path (fused=False),
    stepped once, with a grad for a second step in place."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(4, 6, generator=gen).requires_grad_()
    opt = info.cls([a], **{**info.defaults, **kw}, fused=fused)
    a.grad = torch.randn(4, 6, generator=gen)
    opt.step()
    a.grad = torch.randn(4, 6, generator=gen)
    return opt, [a]


def _first_key(opt, p) -> str:
    return next(k for k in opt.state[p] if k != "step")


def _raises_and_changes_nothing(opt, params, error, match, restore=None):
    """``step()`` raises ``error`` matching ``match`` and changes nothing. ``restore`` puts back
    what the sabotage replaced by tensors that cannot be compared (meta): the snapshot is
    then taken before it."""
    before = snapshot(opt, params) if restore is None else restore.before
    with pytest.raises(error, match=match):
        opt.step()
    if restore is not None:
        restore()
    assert_unchanged(opt, params, before)


# ---- both paths checked before either writes ------------------------------------------------


def _state_float64(opt, p, params):
    key = _first_key(opt, p)
    opt.state[p][key] = opt.state[p][key].double()
    return rf"its state '{key}' has dtype torch\.float64, the parameter torch\.float32: was the parameter"


def _state_int64(opt, p, params):
    key = _first_key(opt, p)
    opt.state[p][key] = opt.state[p][key].long()
    return rf"its state '{key}' has dtype torch\.int64, the parameter torch\.float32: was the parameter"


class _Restore:
    """Puts back a state tensor that was replaced (``before``: the snapshot before that)."""

    def __init__(self, opt, params, p, key):
        self.before, self.state, self.key, self.tensor = snapshot(opt, params), opt.state[p], key, opt.state[p][key]

    def __call__(self):
        self.state[self.key] = self.tensor


def _state_on_another_device(opt, p, params):
    key = _first_key(opt, p)
    restore = _Restore(opt, params, p, key)
    opt.state[p][key] = opt.state[p][key].to("meta")
    return rf"its state '{key}' has device meta, the parameter cpu: was the parameter", restore


def _state_deleted(opt, p, params):
    key = _first_key(opt, p)
    del opt.state[p][key]
    return rf"its state lacks \['{key}'\] \(it has \[.*\]\): was it edited\?"


STATE_SABOTAGE = [_state_float64, _state_int64, _state_on_another_device, _state_deleted]


def _step_replaced_by_minus_one(opt, p, params):
    opt.state[p]["step"] = torch.tensor(-1.0)
    return r"its state 'step' is -1: a step count must be finite and >= 0$"


def _step_set_to_minus_one_in_place(opt, p, params):
    opt.state[p]["step"].fill_(-1.0)
    return r"its state 'step' is -1: a step count must be finite and >= 0$"


def _step_set_to_inf_in_place(opt, p, params):
    opt.state[p]["step"].fill_(float("inf"))
    return r"its state 'step' is inf: a step count must be finite and >= 0$"


def _step_deleted(opt, p, params):
    del opt.state[p]["step"]
    return r"its state lacks \['step'\] \(it has \[.*\]\): was it edited\?"


STEP_SABOTAGE = [_step_replaced_by_minus_one, _step_set_to_minus_one_in_place, _step_set_to_inf_in_place,
                 _step_deleted]


def _cases():
    out = []
    for info in OPTIMS:
        # (SGD's momentum buffer may be missing: torch and proxopt start it from the grad)
        state = STATE_SABOTAGE if info in STEPPED else [f for f in STATE_SABOTAGE if f is not _state_deleted]
        for fn in state + (STEP_SABOTAGE if info in STEPPED else []):
            for which, path in ((KERNEL, "kernel"), (REFERENCE, "reference")):
                out.append(pytest.param(info, fn, which, id=f"{info.name}-{fn.__name__.strip('_')}-{path}"))
    return out


@pytest.mark.parametrize("info,sabotage,which", _cases())
def test_a_state_that_does_not_fit_raises_before_either_path_writes(info, sabotage, which):
    opt, params = _mixed(info)
    match = sabotage(opt, params[which], params)
    match, restore = match if isinstance(match, tuple) else (match, None)
    _raises_and_changes_nothing(opt, params, ValueError, rf"^parameter {which} of its param group: {match}", restore)


def test_the_issue_s_float64_state_on_the_reference_path():
    """The report: a float64 exp_avg of the non-contiguous parameter moved the other one
    (the kernel ran first) and counted both steps before torch's own error."""
    opt, (a, b) = _mixed(ADAM_INFO)
    opt.state[b]["exp_avg"] = opt.state[b]["exp_avg"].double()
    a0, steps = a.detach().clone(), [opt.state[p]["step"].clone() for p in (a, b)]
    with pytest.raises(ValueError, match=r"^parameter 1 of its param group: its state 'exp_avg' has dtype "):
        opt.step()
    assert torch.equal(a, a0)
    assert [opt.state[p]["step"] for p in (a, b)] == steps


# ---- a failed step leaves no new state keys ------------------------------------------------


TOGGLES = [
    (ADAM_INFO, {"amsgrad": True}),
    (RMSPROP_INFO, {"centered": True}),
    (RMSPROP_INFO, {"momentum": 0.9}),
    (RMSPROP_INFO, {"momentum": 0.9, "centered": True}),
]


def _bad_grad_on_the_kernel_path(opt, params):
    params[KERNEL].grad.data = torch.randn(6, 4)
    return ValueError, r"^parameter 0 of its param group: its grad has shape \(6, 4\)"


def _bad_grad_on_the_reference_path(opt, params):
    params[REFERENCE].grad.data = torch.randn(6, 4)
    return ValueError, r"^parameter 1 of its param group: its grad has shape \(6, 4\)"


def _lr_that_overflows(opt, params):
    opt.param_groups[0]["lr"] = 1e300  # (the reference path's parameter is checked first)
    return ValueError, r"^parameter 1 of its param group: lr = 1e\+300 overflows float32"


def _negative_lr(opt, params):
    opt.param_groups[0]["lr"] = -1.0
    return ValueError, r"^Invalid learning rate: -1\.0$"


@pytest.mark.parametrize("failure", [_bad_grad_on_the_kernel_path, _bad_grad_on_the_reference_path,
                                     _lr_that_overflows, _negative_lr], ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("info,toggle", TOGGLES, ids=[f"{i.name}-{'-'.join(t)}" for i, t in TOGGLES])
def test_a_failed_step_leaves_no_switched_on_state_behind(info, toggle, failure):
    opt, params = _mixed(info)
    keys = [set(opt.state[p]) for p in params]
    before = snapshot(opt, params)
    opt.param_groups[0].update(toggle)
    error, match = failure(opt, params)
    with pytest.raises(error, match=match):
        opt.step()
    assert [set(opt.state[p]) for p in params] == keys
    opt.param_groups[0].update({k: before["param_groups"][0][k] for k in (*toggle, "lr")})
    for p, g in zip(params, before["grads"]):
        p.grad = g.clone()
    assert_unchanged(opt, params, before)
    opt.step()  # and it recovers


# ---- .data rebound: the state no longer fits ------------------------------------------------


REBOUND = [((2, 6), "smaller"), ((6, 4), "same-size-other-shape"), ((8, 6), "larger")]


@pytest.mark.parametrize("shape", [s for s, _ in REBOUND], ids=[n for _, n in REBOUND])
@pytest.mark.parametrize("which", [KERNEL, REFERENCE], ids=["kernel", "reference"])
@pytest.mark.parametrize("info", OPTIMS, ids=repr)
def test_data_rebound_to_another_shape_names_its_parameter(info, which, shape):
    opt, params = _mixed(info)
    p = params[which]
    p.data = torch.randn(shape) if which == KERNEL else torch.randn(shape[::-1]).t()
    p.grad = torch.randn(shape)
    key = _first_key(opt, p)
    _raises_and_changes_nothing(
        opt, params, ValueError,
        rf"^parameter {which} of its param group: its state '{key}' has shape \(4, 6\), the parameter "
        rf"\({shape[0]}, {shape[1]}\): was the parameter or its state replaced\?")


@pytest.mark.skipif(not hasattr(torch, "compile"), reason="torch.compile is not available")
@pytest.mark.parametrize("shape", [(2, 6), (6, 4)], ids=["smaller", "same-size-other-shape"])
def test_data_rebound_to_another_shape_under_compile(shape):
    torch._dynamo.reset()
    try:
        a = torch.randn(4, 6, requires_grad=True)
        opt = proxopt.Adam([a], lr=0.1)

        @torch.compile(fullgraph=True)
        def step():
            opt.step()

        a.grad = torch.randn(4, 6)
        step()
        a.data, a.grad = torch.randn(shape), torch.randn(shape)
        _raises_and_changes_nothing(
            opt, [a], ValueError,
            rf"^parameter 0 of its param group: its state 'exp_avg' has shape \(4, 6\), the parameter "
            rf"\({shape[0]}, {shape[1]}\)")
    finally:
        torch._dynamo.reset()


# ---- hyperparameters that overflow the step's arithmetic -----------------------------------


@pytest.mark.parametrize("key", ["lr", "weight_decay"])
@pytest.mark.parametrize("fused", [None, False], ids=["kernel", "reference"])
@pytest.mark.parametrize("info", OPTIMS, ids=repr)
def test_a_hyperparameter_that_overflows_float32_raises(info, fused, key):
    opt, params = _single(info, fused)
    opt.param_groups[0][key] = 1e300
    _raises_and_changes_nothing(opt, params, ValueError,
                                rf"^parameter 0 of its param group: {key} = 1e\+300 overflows float32, "
                                "the dtype its step computes in$")


@pytest.mark.parametrize("fused", [None, False], ids=["kernel", "reference"])
def test_a_tensor_lr_that_overflows_float32_raises(fused):
    opt, params = _single(ADAM_INFO, fused, lr=torch.tensor(0.1, dtype=torch.float64))
    opt.param_groups[0]["lr"].fill_(1e300)
    _raises_and_changes_nothing(opt, params, ValueError,
                                r"^parameter 0 of its param group: lr = 1e\+300 overflows float32")


@pytest.mark.parametrize("fused", [None, False], ids=["kernel", "reference"])
def test_float64_parameters_take_an_lr_beyond_float32(fused):
    a = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    opt = proxopt.SGD([a], lr=1e39, fused=fused)  # > float32's largest, but a float64 step computes in float64
    a.grad = torch.randn(4, 6, dtype=torch.float64)
    expected = a.detach() - 1e39 * a.grad
    opt.step()
    torch.testing.assert_close(a.detach(), expected)


# ---- the reference itself ------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["state_dtype", "state_shape", "grad_device", "step"])
def test_step_tensor_checks_before_it_counts(bad):
    p, g = torch.randn(4, 6), torch.randn(4, 6)
    states = [torch.zeros(4, 6), torch.zeros(4, 6)]
    step = torch.tensor(3.0)
    match = {"state_dtype": r"^states\[1\] has dtype torch\.float64, the parameter torch\.float32$",
             "state_shape": r"^states\[0\] has shape \(24,\), the parameter \(4, 6\)$",
             "grad_device": r"^grad has device meta, the parameter cpu$",
             "step": r"^step is nan: a step count must be finite and >= 0$"}[bad]
    if bad == "state_dtype":
        states[1] = states[1].double()
    elif bad == "state_shape":
        states[0] = states[0].reshape(-1)
    elif bad == "grad_device":
        g = g.to("meta")
    else:
        step.fill_(float("nan"))
    before = [t.clone() for t in (p, *states, step)]
    with pytest.raises(ValueError, match=match):
        proxopt.reference.step_tensor(proxopt.reference.Hyper(rule=proxopt.reference.ADAM, lr=0.1, beta1=0.9,
                                                              beta2=0.999, eps=1e-8), p, g, states, step)
    for t, t0 in zip((p, *states, step), before):
        assert torch.equal(t, t0) or (t.isnan().all() and t0.isnan().all())
