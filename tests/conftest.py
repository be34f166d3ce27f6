"""Shared fixtures for the proxopt test suite.

* every test starts from the same torch seed (``seeded`` is autouse), and
  ``rng`` hands out a dedicated ``torch.Generator`` for data a test builds;
* the process-wide SIMD level is restored after every test, and the
  ``simd_level`` fixture runs a test once per level this CPU supports;
* hypothesis runs deterministically (``derandomize``) with no deadline by
  default; ``HYPOTHESIS_PROFILE=explore`` draws fresh examples, eight times as
  many (``optim_db.examples``).
"""

from __future__ import annotations

import os
import sys

import pytest
import torch
from hypothesis import HealthCheck, settings

import proxopt

sys.path.insert(0, os.path.dirname(__file__))

_COMMON = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    print_blob=True,
)
settings.register_profile("default", derandomize=True, **_COMMON)
settings.register_profile("explore", derandomize=False, **_COMMON)  # and 8x examples: optim_db.examples
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

SIMD_LEVELS = proxopt.simd_levels()


@pytest.fixture(autouse=True)
def seeded():
    """Same torch seed and default dtype at the start of every test."""
    torch.manual_seed(0)
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """torch's own ops (the reference, the comparisons) run on one thread: on a small, busy
    machine two OpenMP threads of torch can make a step 100x slower. Tests that exercise the
    kernels' thread pool raise the count around the kernel call (``optim_db.torch_threads``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def rng() -> torch.Generator:
    """A seeded generator for the data a test builds (independent of the global seed)."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture(autouse=True)
def restore_simd_level():
    """Whatever a test does to the kernels' SIMD level is undone afterwards."""
    before = proxopt.simd_level()
    yield
    if before is not None and proxopt.simd_level() != before:
        proxopt.set_simd_level(before)


@pytest.fixture(params=SIMD_LEVELS or ["<no kernels>"])
def simd_level(request) -> str:
    """Runs the test once per SIMD level compiled in and supported here."""
    level = request.param
    if not SIMD_LEVELS:
        pytest.fail("proxopt's CPU kernels are not loaded: the kernel tests cannot run")
    proxopt.set_simd_level(level)
    assert proxopt.simd_level() == level
    return level
