"""CPU inference time of a model against its pruned copy."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn


@torch.inference_mode()
def compare_inference(a: nn.Module, b: nn.Module, x: Any, reps: int = 30, warmup: int = 3) -> tuple[float, float]:
    """Median milliseconds of ``a(x)`` and ``b(x)``, measured alternately so
    that load changes on the machine hit both alike."""
    a.eval()
    b.eval()
    for _ in range(warmup):
        a(x)
        b(x)
    ta, tb = [], []
    for _ in range(reps):
        for m, acc in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            m(x)
            acc.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ta), 1e3 * statistics.median(tb)
