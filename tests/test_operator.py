"""torch.library.opcheck on torch.ops.proxopt.step with the arguments real steps pass.

The arguments of one step are captured at the seam between Python and the
operator (``_dispatch._run``) and cloned; opcheck then runs the operator on
them through its schema test (mutation annotations), the autograd-registration
test, the fake (meta) implementation and AOT dispatch with dynamic shapes.
"""

from __future__ import annotations

import pytest
import torch

import proxopt
from optim_db import OPTIMS
from proxopt import _dispatch

pytestmark = pytest.mark.skipif(not proxopt.has_cpu_kernels(), reason="needs the compiled operator")


def _clone(a):
    if isinstance(a, torch.Tensor):
        return a.clone()
    if isinstance(a, list):
        return [_clone(t) for t in a]
    return a


def _captured_args(opt, params, *, scale=None) -> tuple:
    captured = []
    run = _dispatch._run

    def spy(spec, call, args):
        if not args.check_only:
            captured.append(tuple(_clone(a) for a in args))
        return run(spec, call, args)

    _dispatch._run = spy
    try:
        for _ in range(2):
            for p in params:
                p.grad = torch.randn_like(p)
            if scale is not None:
                opt.grad_scale, opt.found_inf = torch.tensor([scale]), torch.tensor([0.0])
            opt.step()
    finally:
        _dispatch._run = run
    assert captured, "the step did not reach the operator"
    return captured[-1]


CASES = [
    pytest.param(info, reg, dtype, scale, id=f"{info.name}-{label}")
    for info in OPTIMS
    for label, reg, dtype, scale in [
        ("l1", dict(l1=0.01), torch.float32, None),
        ("group_lasso_bf16", dict(group_lasso=0.05, group_dim=1), torch.bfloat16, None),
        ("bounds_grad_scale", dict(bounds=(-0.5, 0.5)), torch.float32, 512.0),
    ]
]


@pytest.mark.parametrize("info,reg,dtype,scale", CASES)
def test_opcheck(info, reg, dtype, scale) -> None:
    params = [torch.randn(6, 5, dtype=dtype, requires_grad=True), torch.randn(4, 3, dtype=dtype, requires_grad=True)]
    opt = info.cls(params, **info.defaults, **reg)
    args = _captured_args(opt, params, scale=scale)
    assert args[7] is None if scale is None else torch.is_tensor(args[7])  # grad_scale reaches the operator
    result = torch.library.opcheck(torch.ops.proxopt.step.default, args)
    assert set(result.values()) == {"SUCCESS"}, result
