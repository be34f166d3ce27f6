"""One optimizer step per benchmark: proxopt, torch.optim (for-loop, foreach,
fused), a penalty in the loss and a Python proximal pass, grouped so that
pytest-benchmark compares the rows that do the same job."""

from __future__ import annotations

import pytest

from proxopt.bench import measure, paramsets
from proxopt.bench.specs import OPTIMIZERS

pytest.importorskip("pytest_benchmark")


def test_step(benchmark, groups, pset, opt, variant, dtype):
    v = groups.get(pset, opt)[variant]
    spec = paramsets.BUILTIN[pset]()
    benchmark.group = f"{pset} / {opt} / {v.regularizer}"
    benchmark.extra_info.update(
        family=v.family, detail=v.detail, ref=v.ref, params=spec.numel, tensors=spec.tensors,
        bytes_per_step=spec.numel * OPTIMIZERS[opt].bytes_per_param(dtype),
    )
    v.step()  # the first step allocates optimizer state
    benchmark(v.step)


@pytest.mark.parametrize("kernel", ["stream copy", "stream triad", "stream axpy"])
def test_bandwidth(benchmark, pset, kernel, dtype, device):
    """The memory bandwidth the roofline is taken from (bytes in extra_info)."""
    numel = paramsets.BUILTIN[pset]().numel
    k = next(s for s in measure.stream_kernels(numel, dtype, device) if s.name == kernel)
    benchmark.group = f"{pset} / bandwidth"
    benchmark.extra_info["bytes"] = k.bytes
    benchmark(k.step)
