"""pytest-benchmark suites over the same comparisons as ``proxopt-bench``.

Run with ``pytest bench/ --benchmark-only`` (they are outside the default
test run). Choose what is raced with:

  --bench-params conformer,kws     parameter sets (see ``proxopt-bench --list``)
  --bench-optimizers adamw,sgd     optimizers
  --bench-regs l1,l2,group_lasso   regularizers ("none" always runs)
  --bench-dtype float32 / --bench-device cpu

pytest-benchmark times one variant after another; for numbers taken side by
side (interleaved, with the bandwidth roofline and peak memory) use
``python -m proxopt.bench``.
"""

from __future__ import annotations

import gc

import pytest
import torch

from proxopt.bench import paramsets, variants
from proxopt.bench.specs import DEFAULT_REGULARIZERS, OPTIMIZERS, REGULARIZERS

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pytest_addoption(parser):
    group = parser.getgroup("proxopt-bench")
    group.addoption("--bench-params", default="kws,conformer", help="parameter sets, comma separated")
    group.addoption("--bench-optimizers", default="adamw,sgd", help="optimizers, comma separated")
    group.addoption("--bench-regs", default=",".join(DEFAULT_REGULARIZERS), help="regularizers, comma separated")
    group.addoption("--bench-dtype", default="float32", choices=list(DTYPES))
    group.addoption("--bench-device", default="cpu")


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _regs(config) -> list:
    return [REGULARIZERS["none"]] + [REGULARIZERS[r] for r in _split(config.getoption("--bench-regs")) if r != "none"]


def pytest_generate_tests(metafunc):
    """One test per (parameter set, optimizer, variant). Variant names depend
    only on what proxopt and torch accept, so a tiny set is enough to list them."""
    config = metafunc.config
    sets = _split(config.getoption("--bench-params"))
    if "variant" in metafunc.fixturenames:
        dtype, device = DTYPES[config.getoption("--bench-dtype")], config.getoption("--bench-device")
        tiny = paramsets.materialize(paramsets.tiny(), dtype, device, 0)
        cases = []
        for opt in _split(config.getoption("--bench-optimizers")):
            names = [v.name for v in variants.build(OPTIMIZERS[opt], _regs(config), tiny, device, dtype)[0]]
            cases += [(s, opt, n) for s in sets for n in names]
        cases.sort(key=lambda c: (sets.index(c[0]),))  # one parameter set at a time keeps memory bounded
        metafunc.parametrize("pset,opt,variant", cases, ids=[f"{s}-{o}-{n.replace(' ', '_')}" for s, o, n in cases])
    elif "pset" in metafunc.fixturenames:
        metafunc.parametrize("pset", sets)


class _Groups:
    """Builds the variants of one (parameter set, optimizer) when first asked,
    and drops the previous group's tensors then."""

    def __init__(self, config):
        self.config, self.key, self.variants = config, None, {}

    def get(self, pset: str, opt: str) -> dict:
        if (pset, opt) != self.key:
            self.variants = {}
            gc.collect()
            dtype, device = DTYPES[self.config.getoption("--bench-dtype")], self.config.getoption("--bench-device")
            master = paramsets.materialize(paramsets.BUILTIN[pset](), dtype, device, 0)
            built, _ = variants.build(OPTIMIZERS[opt], _regs(self.config), master, device, dtype)
            self.variants = {v.name: v for v in built}
            self.key = (pset, opt)
        return self.variants


@pytest.fixture(scope="session")
def groups(request):
    return _Groups(request.config)


@pytest.fixture
def device(request):
    return request.config.getoption("--bench-device")


@pytest.fixture
def dtype(request):
    return DTYPES[request.config.getoption("--bench-dtype")]
