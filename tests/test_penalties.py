"""proxopt.penalties: the loss-side penalties check their strengths (a negative
λ would reward large weights) before building any graph."""

from __future__ import annotations

import pytest
import torch

import proxopt


@pytest.mark.parametrize(
    "fn,kw,exc,match",
    [(proxopt.l1_penalty, dict(lam=-0.1), ValueError, r"Invalid lam value: -0.1 \(must be finite and >= 0\)"),
     (proxopt.l1_penalty, dict(lam=float("nan")), ValueError, "Invalid lam value: nan"),
     (proxopt.l1_penalty, dict(lam="0.1"), TypeError, r"Invalid lam value: '0.1' \(a str; expected a number\)"),
     (proxopt.l2_penalty, dict(lam=float("inf")), ValueError, "Invalid lam value: inf"),
     (proxopt.elastic_net_penalty, dict(l1=-1.0, l2=0.1), ValueError, "Invalid l1 value: -1.0"),
     (proxopt.elastic_net_penalty, dict(l1=0.1, l2=-1.0), ValueError, "Invalid l2 value: -1.0")],
)  # fmt: skip
def test_penalties_reject_bad_strengths(fn, kw, exc, match):
    w = torch.ones(3, requires_grad=True)
    with pytest.raises(exc, match=match):
        fn([w], **kw)


def test_penalties_values():
    w = torch.tensor([1.0, -2.0, 0.0])
    assert proxopt.l1_penalty([w], 0.5).item() == 1.5
    assert proxopt.l2_penalty([w], 0.5).item() == 1.25
    assert proxopt.elastic_net_penalty([w], 0.5, 0.5).item() == 2.75
    assert proxopt.l1_penalty([w], 0).item() == 0.0
    # a tensor strength is taken as it is (checking it would sync with its device)
    assert proxopt.l1_penalty([w], torch.tensor(0.5)).item() == 1.5
