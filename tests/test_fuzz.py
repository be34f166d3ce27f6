"""Fuzz: the kernel against the reference with special values in weights and grads.

Random optimizer x configuration x regularizer (elementwise and group proxes,
along dim 0 and others) x dtype x shapes, where some weights and grads are NaN,
+-inf, denormal, +-1e38 or signed zeros. Both paths must give the same NaN and
inf pattern and close finite values, in params and every state tensor, after
every step (``run_case`` of test_fused_vs_reference does the stepping and the
comparison).

The README's test command runs it with hypothesis' fixed seed (conftest's
"default" profile). CI runs it once more with a rotating seed and more examples,
printing the seed; to replay a failure there:
``HYPOTHESIS_PROFILE=explore python -m pytest tests/test_fuzz.py --hypothesis-seed=SEED``.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fused_vs_reference import cases, regularizers, run_case

from optim_db import GROUP_CONFIGS, OPTIMS, examples

SPECIALS = [math.nan, math.inf, -math.inf, 1e38, -1e38, 1e-40, -1e-40, 1e-310, 0.0, -0.0]


@st.composite
def special_cases(draw, info) -> dict:
    case = draw(cases(info))
    if draw(st.booleans()):  # a group prox instead of the elementwise set, on matrices and kernels
        case["reg"] = draw(st.sampled_from(GROUP_CONFIGS)).kwargs()
        dims = st.lists(st.integers(0, 24), min_size=2, max_size=3).map(tuple)
        case["shapes"] = draw(st.lists(dims | st.sampled_from([(300, 7), (2, 70000)]), min_size=1, max_size=3))
        case["grad_none"] = (case["grad_none"][0], min(case["grad_none"][1], len(case["shapes"]) - 1))
    else:
        case["reg"] = draw(regularizers(info.adaptive_ok))
    sized = [i for i, s in enumerate(case["shapes"]) if math.prod(s) > 0]
    where = st.tuples(st.sampled_from(sized), st.integers(0, 2**31 - 1), st.sampled_from(SPECIALS)) if sized else st.nothing()
    case["weight_specials"] = draw(st.lists(where, max_size=4)) if sized else []
    # per step: (param, flat position, value) written into that step's grad
    case["grad_specials"] = [draw(st.lists(where, max_size=3)) if sized else [] for _ in range(case["steps"])]
    return case


@pytest.mark.parametrize("info", OPTIMS, ids=repr)
@settings(max_examples=examples(12))
@given(data=st.data())
def test_special_values_match_reference(info, data) -> None:
    case = data.draw(special_cases(info))
    if case["grad_scale"] is not None and any(len(s) == 0 for s in case["shapes"]):
        case["grad_scale"] = None  # covered by test_grad_scale_zero_dim_on_reference_path
    run_case(info, case)
