"""Errors users meet: each bad input raises an exception that names what is wrong,
and nothing is modified -- params, grads, optimizer state and param groups are
bit-identical before and after the failed call (a step applies to all or none).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

import proxopt
from optim_db import (
    ADAM_INFO,
    ADAMW_INFO,
    OPTIMS,
    SGD_INFO,
    assert_unchanged,
    error_inputs_with_ids,
    snapshot,
)


def _trained(info, *, n_groups: int = 2, steps: int = 2, **kwargs):
    """An optimizer with ``n_groups`` param groups that has stepped (state exists), and its params."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen).requires_grad_() for s in [(4, 3), (3,), (5,), (2, 2)][: 2 * n_groups]]
    kw = {**info.defaults, **kwargs}
    if info is SGD_INFO:
        kw.setdefault("momentum", 0.9)
    groups = [{"params": params[2 * i : 2 * i + 2]} for i in range(n_groups)]
    opt = info.cls(groups, **kw)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    for p in params:  # fresh grads for the step that must fail
        p.grad = torch.randn(p.shape, generator=gen)
    return opt, params


# ---- hyperparameters: the table's error inputs -----------------------------------------------


@pytest.mark.parametrize("info,err", error_inputs_with_ids())
def test_constructor_rejects(info, err) -> None:
    p = torch.randn(3, requires_grad=True)
    kwargs = {**info.defaults, **copy.deepcopy(err.kwargs)}
    with pytest.raises(err.error, match=err.match):
        info.cls([p], **kwargs)


@pytest.mark.parametrize("info,err", error_inputs_with_ids(group_level_only=True))
def test_add_param_group_rejects_and_changes_nothing(info, err) -> None:
    opt, params = _trained(info)
    before = snapshot(opt, params)
    new = torch.randn(6, requires_grad=True)
    with pytest.raises(err.error, match=err.match):
        opt.add_param_group({"params": [new], **copy.deepcopy(err.kwargs)})
    assert len(opt.param_groups) == 2
    assert_unchanged(opt, params, before)
    assert new not in opt.state


@pytest.mark.parametrize("info,err", error_inputs_with_ids(group_level_only=True))
def test_step_rejects_a_bad_group_and_changes_nothing(info, err) -> None:
    """The bad value is put in the *second* group after training: the step raises before the
    first group is touched."""
    opt, params = _trained(info)
    opt.param_groups[1].update(copy.deepcopy(err.kwargs))
    before = snapshot(opt, params)
    with pytest.raises(err.error, match=err.match):
        opt.step()
    assert_unchanged(opt, params, before)


def test_empty_parameter_list() -> None:
    for info in OPTIMS:
        with pytest.raises(ValueError, match="^optimizer got an empty parameter list$"):
            info.cls([], lr=0.1)


@pytest.mark.parametrize("info", OPTIMS, ids=repr)
def test_integer_parameter(info) -> None:
    with pytest.raises(ValueError, match=r"^parameter 0 of its param group: can only optimize floating point or complex tensors, got torch\.int64$"):
        info.cls([torch.zeros(3, dtype=torch.int64)], lr=0.1)


def test_error_names_a_named_parameter() -> None:
    model = torch.nn.Linear(3, 2).to(torch.complex64)
    with pytest.raises(ValueError, match=r"^parameter 'weight' is complex: proximal regularizers are not defined"):
        proxopt.AdamW(model.named_parameters(), l1=1e-3)


# ---- gradients -------------------------------------------------------------------------------


@pytest.mark.parametrize("info", OPTIMS, ids=repr)
def test_sparse_gradient(info) -> None:
    opt, params = _trained(info)
    params[3].grad = params[3].grad.to_sparse()  # in the second group
    before = snapshot(opt, params)
    with pytest.raises(RuntimeError, match=rf"proxopt\.{info.name} does not support sparse gradients \(parameter 1 of its param group\)"):
        opt.step()
    assert_unchanged(opt, params, before)


def test_sparse_gradient_from_an_embedding() -> None:
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = proxopt.Adam(emb.parameters(), lr=0.1)
    emb(torch.tensor([1, 2])).sum().backward()
    before = snapshot(opt, list(emb.parameters()))
    with pytest.raises(RuntimeError, match=r"^proxopt\.Adam does not support sparse gradients \(parameter 0 of its param group\)"):
        opt.step()
    assert_unchanged(opt, list(emb.parameters()), before)


@pytest.mark.parametrize("how", ["shape", "dtype", "dtype_via_grad_dtype"])
@pytest.mark.parametrize("info", OPTIMS, ids=repr)
def test_grad_that_does_not_match_its_param(info, how) -> None:
    """torch refuses ``p.grad = <other shape/dtype>``; ``p.grad.data = ...`` and
    ``p.grad_dtype = None`` get one through all the same."""
    opt, params = _trained(info)
    p = params[2]  # first param of the second group, shape (5,)
    if how == "shape":
        p.grad.data = torch.randn(7)
        match = r"parameter 0 of its param group: its grad has shape \(7,\), dtype torch\.float32.*the parameter has \(5,\)"
    elif how == "dtype":
        p.grad.data = torch.randn(5, dtype=torch.float64)
        match = r"its grad has shape \(5,\), dtype torch\.float64.*the parameter has \(5,\), torch\.float32"
    else:
        p.grad_dtype = None
        p.grad = torch.randn(5, dtype=torch.float64)
        match = r"dtype torch\.float64.*the parameter has \(5,\), torch\.float32"
    before = snapshot(opt, params)
    with pytest.raises(ValueError, match=match):
        opt.step()
    assert_unchanged(opt, params, before)


# ---- complex parameters ---------------------------------------------------------------------


@pytest.mark.parametrize("reg", [dict(l1=0.1), dict(l2=0.1), dict(l0=0.1), dict(bounds=(-1.0, 1.0))], ids=str)
@pytest.mark.parametrize("info", OPTIMS, ids=repr)
def test_prox_on_a_complex_parameter(info, reg) -> None:
    z = torch.randn(4, dtype=torch.complex64, requires_grad=True)
    with pytest.raises(ValueError, match=r"^parameter 0 of its param group is complex: proximal regularizers are not defined"):
        info.cls([z], **info.defaults, **reg)
    # ... through add_param_group
    opt, params = _trained(info)
    before = snapshot(opt, params)
    with pytest.raises(ValueError, match=r"^parameter 0 of its param group is complex: proximal regularizers are not defined"):
        opt.add_param_group({"params": [z], **reg})
    assert_unchanged(opt, params, before)
    # ... and when a group holding it gets the regularizer later
    opt, params = _trained(info)
    opt.add_param_group({"params": [z]})
    for _ in range(2):  # whatever the optimizer caches per parameter is cached now
        z.grad = torch.randn(4, dtype=torch.complex64)
        opt.step()
    opt.param_groups[2].update(reg)
    z.grad = torch.randn(4, dtype=torch.complex64)
    params = params + [z]
    before = snapshot(opt, params)
    with pytest.raises(ValueError, match=r"^parameter 0 of its param group is complex: proximal regularizers are not defined"):
        opt.step()
    assert_unchanged(opt, params, before)


# ---- parameters that alias -------------------------------------------------------------------


@pytest.mark.parametrize("info", OPTIMS, ids=repr)
def test_same_tensor_in_two_groups(info) -> None:
    p, q = torch.randn(3, requires_grad=True), torch.randn(2, requires_grad=True)
    with pytest.raises(ValueError, match="^some parameters appear in more than one parameter group$"):
        info.cls([{"params": [p, q]}, {"params": [p]}], **info.defaults)
    opt, params = _trained(info)
    before = snapshot(opt, params)
    with pytest.raises(ValueError, match="^some parameters appear in more than one parameter group$"):
        opt.add_param_group({"params": [params[0]]})
    assert_unchanged(opt, params, before)


# Two parameters that share elements, each named by its index in its own param group.
_OVERLAP = r"^parameter {} of its param group and parameter {} of its param group overlap in memory: "


@pytest.mark.parametrize("info", OPTIMS, ids=repr)
def test_same_tensor_twice_in_one_group(info) -> None:
    p = torch.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match=_OVERLAP.format(0, 1)):
        info.cls([p, p], **info.defaults)


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.requires_grad_()


OVERLAPS = {
    # contiguous slices sharing elements 4 and 5
    "slices": lambda b: (_leaf(b[0:6]), _leaf(b[4:10])),
    # a strided view (elements 0, 2, 4, 6) and a slice (4, 5): they share element 4
    "strided_and_slice": lambda b: (_leaf(b[0:8:2]), _leaf(b[4:6])),
    # a transposed view and a row of the same matrix
    "transposed_and_row": lambda b: (_leaf(b[:12].view(3, 4).t()), _leaf(b[8:12])),
}


@pytest.mark.parametrize("layout", list(OVERLAPS))
@pytest.mark.parametrize("info", OPTIMS, ids=repr)
def test_overlapping_views_in_one_group(info, layout) -> None:
    a, b = OVERLAPS[layout](torch.zeros(16))
    with pytest.raises(ValueError, match=_OVERLAP.format(0, 1)):
        info.cls([a, b], **info.defaults)


@pytest.mark.parametrize("layout", list(OVERLAPS))
@pytest.mark.parametrize("info", OPTIMS, ids=repr)
def test_overlapping_views_in_two_groups(info, layout) -> None:
    """Two groups updating the same elements are as wrong as one group doing it twice."""
    a, b = OVERLAPS[layout](torch.zeros(16))
    with pytest.raises(ValueError, match=_OVERLAP.format(0, 0)):
        info.cls([{"params": [a]}, {"params": [b]}], **info.defaults)
    opt = info.cls([a], **info.defaults)
    before = snapshot(opt, [a])
    with pytest.raises(ValueError, match=_OVERLAP.format(0, 0)):
        opt.add_param_group({"params": [b]})
    assert len(opt.param_groups) == 1
    assert_unchanged(opt, [a], before)


@pytest.mark.parametrize("info", OPTIMS, ids=repr)
def test_interleaved_views_that_do_not_overlap_are_accepted(info) -> None:
    """The even and the odd columns of one buffer share a storage and a span of memory but not
    a single element: views of one buffer that do not overlap are allowed."""
    buf = torch.randn(6, 2)
    even, odd = _leaf(buf[:, 0]), _leaf(buf[:, 1])
    clones = [even.detach().clone().requires_grad_(), odd.detach().clone().requires_grad_()]
    opt = info.cls([even, odd], **info.defaults, l1=0.1)
    ref = info.cls(clones, **info.defaults, l1=0.1)
    for _ in range(2):
        for p, c in zip((even, odd), clones):
            g = torch.randn(6)
            p.grad, c.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    torch.testing.assert_close(buf, torch.stack([c.detach() for c in clones], dim=1))


# ---- state_dict ---------------------------------------------------------------------------------


def _load_fails(opt, params, state_dict, match) -> None:
    before = snapshot(opt, params)
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(state_dict)
    assert_unchanged(opt, params, before)


def _still_steps_like_a_twin(info, opt, params, **kwargs) -> None:
    """After a rejected load the optimizer goes on exactly as one that never saw it."""
    twin, twin_params = _trained(info, **kwargs)
    for p, q in zip(params, twin_params):
        q.grad = p.grad.clone()
    opt.step()
    twin.step()
    for p, q in zip(params, twin_params):
        assert torch.equal(p, q)


def _another_type(needs: str, name: str) -> str:
    """The message of a checkpoint whose param groups lack the keys ``name``'s groups need."""
    return rf"^state_dict param group 0 lacks {needs} \(it has .*\): it comes from another optimizer type; {name} needs {needs}$"


_SGD_KEYS = r"\['momentum', 'dampening', 'nesterov'\]"
_ADAM_KEYS = r"\['betas', 'eps', 'amsgrad'\]"


@pytest.mark.parametrize("src,dst,needs", [(SGD_INFO, ADAM_INFO, _ADAM_KEYS), (SGD_INFO, ADAMW_INFO, _ADAM_KEYS),
                                           (ADAM_INFO, SGD_INFO, _SGD_KEYS)],
                         ids=["SGD-into-Adam", "SGD-into-AdamW", "Adam-into-SGD"])
def test_state_dict_of_another_optimizer_type(src, dst, needs) -> None:
    other, _ = _trained(src)
    opt, params = _trained(dst)
    _load_fails(opt, params, copy.deepcopy(other.state_dict()), _another_type(needs, dst.name))
    _still_steps_like_a_twin(dst, opt, params)


def test_adam_state_dict_into_sgd_without_momentum() -> None:
    """SGD(momentum=0) keeps no state, so no state key is "missing" -- but an Adam checkpoint
    (step, exp_avg, exp_avg_sq; betas, eps, amsgrad) is still not an SGD one."""
    adam, _ = _trained(ADAM_INFO)
    opt, params = _trained(SGD_INFO, momentum=0.0)
    _load_fails(opt, params, copy.deepcopy(adam.state_dict()), _another_type(_SGD_KEYS, "SGD"))
    assert all(len(opt.state[p]) == 0 for p in params)


def test_fresh_sgd_state_dict_into_adam() -> None:
    """A state_dict saved by SGD before its first step has no per-parameter state, but its
    param groups (momentum, dampening, nesterov; no betas, eps) still say it is SGD's."""
    sgd = proxopt.SGD([torch.randn(4, 3, requires_grad=True), torch.randn(3, requires_grad=True),
                       torch.randn(5, requires_grad=True), torch.randn(2, 2, requires_grad=True)], lr=0.1)
    opt, params = _trained(ADAM_INFO, n_groups=1)
    sd = sgd.state_dict()
    sd["param_groups"] = [{**sd["param_groups"][0], "params": [0, 1]}]
    _load_fails(opt, params, sd, _another_type(_ADAM_KEYS, "Adam"))


MISSING = [
    ("exp_avg_sq", ADAM_INFO, {}),
    ("exp_avg", ADAMW_INFO, {}),
    ("step", ADAM_INFO, {}),
    ("max_exp_avg_sq", ADAMW_INFO, dict(amsgrad=True)),
    # (not SGD's momentum_buffer: an SGD state entry without it is torch's "no buffer yet")
]


@pytest.mark.parametrize("key,info,kwargs", MISSING, ids=[f"{i.name}-{k}" for k, i, _ in MISSING])
def test_state_dict_with_a_missing_key(key, info, kwargs) -> None:
    opt, params = _trained(info, **kwargs)
    sd = copy.deepcopy(opt.state_dict())
    for st in sd["state"].values():
        st[key] = st[key] * 3 if torch.is_tensor(st[key]) else st[key]  # a load would be visible
    del sd["state"][2][key]
    _load_fails(opt, params, sd, rf"^state_dict entry for parameter 2 lacks \['{key}'\]")
    _still_steps_like_a_twin(info, opt, params, **kwargs)


def test_amsgrad_checkpoint_needs_max_exp_avg_sq() -> None:
    """A non-amsgrad Adam checkpoint whose group says amsgrad=True lacks max_exp_avg_sq."""
    plain, _ = _trained(ADAM_INFO)
    sd = copy.deepcopy(plain.state_dict())
    for g in sd["param_groups"]:
        g["amsgrad"] = True
    opt, params = _trained(ADAM_INFO, amsgrad=True)
    _load_fails(opt, params, sd, r"^state_dict entry for parameter 0 lacks \['max_exp_avg_sq'\]")


@pytest.mark.parametrize("info", OPTIMS, ids=repr)
def test_state_dict_with_a_misshapen_state(info) -> None:
    opt, params = _trained(info)
    sd = copy.deepcopy(opt.state_dict())
    key = next(k for k in sd["state"][1] if k != "step")
    sd["state"][1][key] = torch.zeros(4)
    _load_fails(opt, params, sd, rf"^state_dict entry '{key}' of parameter 1 has shape \(4,\), its parameter \(3,\)")


_NOT_A_STATE_DICT = r"^state_dict must be a dict with 'state' and 'param_groups' \(from Optimizer\.state_dict\(\)\)$"


@pytest.mark.parametrize("info", OPTIMS, ids=repr)
def test_state_dict_with_other_groups(info) -> None:
    opt, params = _trained(info)
    sd = copy.deepcopy(opt.state_dict())
    _load_fails(opt, params, {"state": sd["state"], "param_groups": sd["param_groups"][:1]},
                "^loaded state dict has a different number of parameter groups$")
    groups = copy.deepcopy(sd["param_groups"])
    groups[1]["params"] = groups[1]["params"][:1]
    _load_fails(opt, params, {"state": sd["state"], "param_groups": groups}, "^loaded state dict contains a parameter group that doesn't match the size of optimizer's group$")
    _load_fails(opt, params, {"param_groups": sd["param_groups"]}, _NOT_A_STATE_DICT)
    _load_fails(opt, params, [sd], _NOT_A_STATE_DICT)


# ---- all or none -------------------------------------------------------------------------------


# What breaks the second group: each breaker returns the params to compare (the complex one
# adds a third group), and the table gives the one exception and message the step must raise.


def _set(**kw):
    def breaker(info, opt, params):
        opt.param_groups[1].update(kw)
        return params
    return breaker


def _nan_momentum_or_eps(info, opt, params):
    opt.param_groups[1]["momentum" if info is SGD_INFO else "eps"] = math.nan  # SGD has no eps
    return params


def _grad_of_another_shape(info, opt, params):
    params[3].grad.data = torch.randn(5)
    return params


def _sparse_grad(info, opt, params):
    params[3].grad = params[3].grad.to_sparse()
    return params


def _complex_with_l1(info, opt, params):
    z = torch.randn(3, dtype=torch.complex64, requires_grad=True)
    opt.add_param_group({"params": [z]})
    z.grad = torch.randn(3, dtype=torch.complex64)
    opt.param_groups[2]["l1"] = 0.1
    return params + [z]


SECOND_GROUP_FAILURES = {
    "lr": (_set(lr=-1.0), ValueError, lambda info: r"^Invalid learning rate: -1\.0$"),
    "grad_shape": (_grad_of_another_shape, ValueError, lambda info: (
        r"^parameter 1 of its param group: its grad has shape \(5,\), dtype torch\.float32, device cpu; "
        r"the parameter has \(2, 2\), torch\.float32, cpu$")),
    "sparse": (_sparse_grad, RuntimeError,
               lambda info: rf"^proxopt\.{info.name} does not support sparse gradients \(parameter 1 of its param group\)"),
    "complex_l1": (_complex_with_l1, ValueError,
                   lambda info: r"^parameter 0 of its param group is complex: proximal regularizers are not defined"),
    "nan_momentum_or_eps": (_nan_momentum_or_eps, ValueError,
                            lambda info: rf"^Invalid {'momentum' if info is SGD_INFO else 'epsilon'} value: nan$"),
    "l1_with_l0": (_set(l1=0.1, l0=0.1), ValueError, lambda info: r"^l1=0\.1 and l0=0\.1 cannot be combined"),
}


@pytest.mark.parametrize("what", list(SECOND_GROUP_FAILURES))
@pytest.mark.parametrize("info", OPTIMS, ids=repr)
def test_failure_in_the_second_group_leaves_the_first_untouched(info, what) -> None:
    opt, params = _trained(info, n_groups=2)
    breaker, error, match = SECOND_GROUP_FAILURES[what]
    params = breaker(info, opt, params)
    before = snapshot(opt, params)
    with pytest.raises(error, match=match(info)):
        opt.step()
    assert_unchanged(opt, params, before)
