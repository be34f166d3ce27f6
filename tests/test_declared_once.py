"""Facts declared once: the rule table, the hyperparameter layout, the
operator's arguments and the kernel dtypes live in one C++ declaration each,
and Python derives from them or is checked against them when proxopt loads
the extension. Also the operator's structured refusal report, and the
validation of a param group only when its values change."""

from __future__ import annotations

import math
import types

import pytest
import torch

import proxopt
from proxopt import _dispatch, _native
from proxopt.hyper import HYPER_FIELDS, Hyper
from proxopt.regularizers import REGULARIZERS, regularizer_hyper, validate_regularizers
from proxopt.rules import RULES, exported_rules

needs_kernels = pytest.mark.skipif(not proxopt.has_cpu_kernels(), reason="needs the compiled operator")


@needs_kernels
def test_the_extension_declares_what_python_derives_from() -> None:
    C = _native.C
    assert tuple(C.HYPER_FIELDS) == HYPER_FIELDS
    assert tuple(C.RULES) == exported_rules()
    assert tuple(C.STEP_ARGS) == _dispatch.StepArgs._fields
    assert _dispatch._check_build() is None
    assert set(C.KERNEL_DTYPES) == {"float32", "float64", "float16", "bfloat16", "complex64", "complex128"}
    assert C.STATE_DTYPES["complex64"] == "float32" and C.STATE_DTYPES["bfloat16"] == "bfloat16"
    assert C.REFUSALS["none"] == 0 and len(set(C.REFUSALS.values())) == len(C.REFUSALS)
    assert _dispatch.ALIGN == C.STATE_ALIGN == 16


@needs_kernels
@pytest.mark.parametrize("what, attr", [("rule table", "RULES"), ("operator arguments", "STEP_ARGS"),
                                        ("hyperparameter layout", "HYPER_FIELDS")])
def test_a_build_that_disagrees_is_named(monkeypatch, what: str, attr: str) -> None:
    C = _native.C
    fake = types.SimpleNamespace(**{k: getattr(C, k) for k in ("HYPER_FIELDS", "RULES", "STEP_ARGS")})
    setattr(fake, attr, tuple(getattr(C, attr))[:-1])
    monkeypatch.setattr(_native, "C", fake)
    msg = _dispatch._check_build()
    assert msg is not None and f"its {what}" in msg and "rebuild it" in msg


def test_the_hyper_fields_of_the_regularizers_follow_the_keyword_table() -> None:
    names = [f for k in REGULARIZERS for f, _ in k.hyper_fields]
    assert list(HYPER_FIELDS[-len(names):]) == names
    defaults = {k.name: k.default for k in REGULARIZERS}
    v = validate_regularizers({**defaults, "l1": 0.5, "bounds": (-1, 2), "max_norm": 3.0, "max_norm_dim": 1},
                              adaptive_ok=True, optimizer="test")
    h = Hyper(**regularizer_hyper(v))
    assert (h.l1, h.lo, h.hi, h.max_norm, h.group_dim, h.adaptive) == (0.5, -1.0, 2.0, 3.0, 1, False)
    v = validate_regularizers({**defaults, "l2": 0.25, "prox_metric": "adaptive", "group_dim": 1},
                              adaptive_ok=True, optimizer="test")
    h = Hyper(**regularizer_hyper(v))
    assert (h.l2, h.adaptive, h.group_dim, h.max_norm, h.lo) == (0.25, True, 0, 0.0, -math.inf)
    off = Hyper(**regularizer_hyper(validate_regularizers({k.name: k.default for k in REGULARIZERS},
                                                           adaptive_ok=True, optimizer="test")))
    assert off == Hyper()


@pytest.mark.parametrize("make, keys", [
    (lambda ps: proxopt.SGD(ps, lr=0.1), ()),
    (lambda ps: proxopt.SGD(ps, lr=0.1, momentum=0.9), ("momentum_buffer",)),
    (lambda ps: proxopt.Adam(ps, amsgrad=True), ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")),
    (lambda ps: proxopt.AdamW(ps), ("step", "exp_avg", "exp_avg_sq")),
    (lambda ps: proxopt.Adagrad(ps, initial_accumulator_value=0.5), ("step", "sum")),
    (lambda ps: proxopt.RMSprop(ps, momentum=0.5, centered=True),
     ("step", "square_avg", "momentum_buffer", "grad_avg")),
])
@pytest.mark.parametrize("fused", [None, False])
def test_state_follows_the_rule_table(make, keys: tuple[str, ...], fused) -> None:
    p = torch.nn.Parameter(torch.randn(5, 3))
    opt = make([p])
    opt.param_groups[0]["fused"] = fused
    p.grad = torch.randn_like(p)
    opt.step()
    assert tuple(opt.state[p]) == keys  # torch's key order: step first, then the table's
    rule = RULES[opt._rule]
    assert rule.all_state_keys >= set(keys)
    if "sum" in keys:
        fresh = torch.nn.Parameter(torch.zeros(2))
        assert rule.new_state(fresh, "sum", opt.param_groups[0]).eq(0.5).all()


@needs_kernels
def test_the_operator_reports_a_refused_tensor_by_code_and_index() -> None:
    a = torch.nn.Parameter(torch.randn(4, 6))
    b = torch.nn.Parameter(torch.randn(4, 6))
    opt = proxopt.Adam([a, b], lr=0.1)
    a.grad, b.grad = torch.randn(4, 6), torch.randn(4, 6)
    opt.step()
    call = opt._plan.calls[0]
    before = [t.clone() for t in (a, b, *call.states, *call.steps)]
    grads = [a.grad, torch.randn(6, 4).t()]  # b's grad is not contiguous: the reference path takes it
    args = _dispatch._call_args(call, opt.param_groups, [opt._hyper(g) for g in opt.param_groups], None, None,
                                compiling=False)._replace(grads=grads)
    assert _dispatch._run(opt._spec, call, args) is False
    assert args.refusal.tolist() == [_native.C.REFUSALS["grad_not_contiguous"], 1]
    for t, t0 in zip((a, b, *call.states, *call.steps), before):  # nothing written (padding columns: any bits)
        torch.testing.assert_close(t, t0, rtol=0, atol=0, equal_nan=True)
    with pytest.raises(ValueError, match=r"^proxopt\.step: tensor 1: its grad is not contiguous"):
        torch.ops.proxopt.step.default(*args._replace(refusal=None))
    # A wrong tensor is named by the optimizer, not by the operator's index.
    args = args._replace(grads=[a.grad, torch.randn(4, 6, dtype=torch.float64)])
    with pytest.raises(ValueError, match=r"^parameter 1 of its param group: its grad has shape \(4, 6\), dtype "
                                         r"torch\.float64"):
        _dispatch._run(opt._spec, call, args)
    assert args.refusal.tolist() == [_native.C.REFUSALS["tensor_error"], 1]


def test_a_param_group_is_validated_when_its_values_change(monkeypatch) -> None:
    p = torch.nn.Parameter(torch.randn(3, 3))
    opt = proxopt.AdamW([p], lr=0.1, l1=0.01)
    calls = []
    validate = opt._validate
    monkeypatch.setattr(opt, "_validate", lambda g: calls.append(1) or validate(g))
    for i in range(3):
        p.grad = torch.randn_like(p)
        opt.param_groups[0]["lr"] = 0.1 / (i + 1)  # a scheduler: checked every step, no revalidation
        opt.step()
    assert len(calls) == 0
    assert opt._hyper(opt.param_groups[0]).lr == pytest.approx(0.1 / 3)
    opt.param_groups[0]["l1"] = -1.0
    w = p.detach().clone()
    with pytest.raises(ValueError, match=r"^Invalid l1 value: -1\.0$"):
        opt.step()
    assert torch.equal(p, w)
    opt.param_groups[0]["l1"] = 0.02
    opt.step()
    assert len(calls) == 2 and opt._hyper(opt.param_groups[0]).l1 == 0.02
    opt.param_groups[0]["lr"] = -0.5
    with pytest.raises(ValueError, match=r"^Invalid learning rate: -0\.5$"):
        opt.step()
