"""Timing, memory bandwidth and peak memory: the measurements, nothing else.

Timing: every variant is warmed up, then each repeat runs every variant once
(round-robin, the starting variant rotating), so drift of the machine (turbo,
other tenants, thermal) hits all variants alike. A sample is k consecutive
steps, k chosen so a sample lasts at least ``min_sample_s``; time per step is
the sample time divided by k. The garbage collector is off while timing.

Extra peak memory during one step, on the CPU: Linux tracks the peak resident
set size (VmHWM) itself, so nothing is sampled and no short-lived temporary is
missed. Before the step we hand freed heap memory back to the OS
(``malloc_trim``, so a temporary cannot hide in memory the allocator already
holds), reset the peak to the current RSS (``/proc/self/clear_refs``), run the
step and read VmHWM: extra = peak - RSS before. Granularity is a 4 KiB page.
On CUDA: ``torch.cuda.max_memory_allocated`` minus the allocated bytes before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

Step = Callable[[], None]
PEAK_TRIALS = 2  # peak memory: the least of this many steps


@dataclass
class Timed:
    name: str
    step: Step


def synchronizer(device: str) -> Callable[[], None]:
    if device.startswith("cuda"):
        return torch.cuda.synchronize
    return lambda: None


def _time_steps(step: Step, k: int, sync: Callable[[], None]) -> float:
    sync()
    t0 = time.perf_counter()
    for _ in range(k):
        step()
    sync()
    return (time.perf_counter() - t0) / k


def warm_up(step: Step, warmup: int, sync: Callable[[], None]) -> float:
    """Run the warmup steps (the first allocates state); return the fastest one's seconds."""
    return min(_time_steps(step, 1, sync) for _ in range(max(1, warmup)))


def steps_per_sample(step_s: float, min_sample_s: float) -> int:
    return max(1, min(100_000, math.ceil(min_sample_s / max(step_s, 1e-9))))


def interleaved(
    items: list[Timed],
    k: dict[str, int],
    sync: Callable[[], None],
    more: Callable[[int, list[float], dict[str, list[float]]], bool],
) -> dict[str, list[float]]:
    """Seconds per step, one sample (of k[name] steps) per repeat per item,
    round-robin; repeats go on while ``more(repeats done, their durations,
    the samples so far)``."""
    samples: dict[str, list[float]] = {t.name: [] for t in items}
    durations: list[float] = []
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        while more(len(durations), durations, samples):
            t0 = time.perf_counter()
            shift = len(durations) % len(items)
            for t in items[shift:] + items[:shift]:
                samples[t.name].append(_time_steps(t.step, k[t.name], sync))
            durations.append(time.perf_counter() - t0)
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


# ---- memory bandwidth -------------------------------------------------------


@dataclass
class StreamKernel:
    name: str
    bytes: int  # bytes moved per call, STREAM convention (reads + writes)
    step: Step


def stream_kernels(numel: int, dtype: torch.dtype, device: str) -> list[StreamKernel]:
    """STREAM copy (a = b) and triad (a = b + s·c), and an in-place axpy
    (a += s·b), over arrays as large as the parameter set, in its dtype, on its
    device; timed in the same round-robin as the optimizers.

    Copy and triad write an array they do not read: without streaming stores
    the CPU reads it first (write-allocate), traffic the STREAM convention does
    not count. An optimizer updates in place like axpy, which pays no such
    read; so the roofline is the best of the three."""
    numel = max(numel, 1)
    es = torch.empty((), dtype=dtype).element_size()
    a = torch.zeros(numel, dtype=dtype, device=device)
    b = torch.rand(numel, dtype=dtype, device=device)
    c = torch.rand(numel, dtype=dtype, device=device)
    return [
        StreamKernel("stream copy", 2 * numel * es, lambda: a.copy_(b)),
        StreamKernel("stream triad", 3 * numel * es, lambda: torch.add(b, c, alpha=3.0, out=a)),
        StreamKernel("stream axpy", 3 * numel * es, lambda: c.add_(b, alpha=1e-3)),  # grows slowly: no overflow
    ]


# ---- extra peak memory during a step ---------------------------------------


def _libc_trim() -> Callable[[], None]:
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        trim = None
    return (lambda: trim(0)) if trim else (lambda: None)


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise OSError(f"{key} not in /proc/self/status")


class PeakMemory:
    """Measures the extra memory one call of a step needs (see module doc)."""

    def __init__(self, device: str):
        self.device = device
        self._trim = _libc_trim()
        if device.startswith("cuda"):
            self.method = "torch.cuda.max_memory_allocated - memory_allocated before the step"
        elif self._cpu_supported():
            self.method = "Linux peak RSS (VmHWM reset via /proc/self/clear_refs, after malloc_trim) - RSS before the step"
        else:
            self.method = None  # no honest way here: reported as unavailable

    @staticmethod
    def _cpu_supported() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            _status_bytes("VmHWM:")
            _status_bytes("VmRSS:")
            return True
        except OSError:
            return False

    def _once(self, step: Step) -> int:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            step()
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - before
        self._trim()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # peak RSS := current RSS
        before = _status_bytes("VmRSS:")
        step()
        return max(0, _status_bytes("VmHWM:") - before)

    def extra_bytes(self, step: Step, trials: int = PEAK_TRIALS) -> int | None:
        """The least extra peak over a few calls: unrelated activity only adds."""
        if self.method is None:
            return None
        gc_was_enabled = gc.isenabled()
        gc.disable()  # a collection inside the step would only blur the reading
        try:
            return min(self._once(step) for _ in range(trials))
        finally:
            if gc_was_enabled:
                gc.enable()
