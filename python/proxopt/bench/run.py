"""One benchmark group: a parameter set x an optimizer, every variant and the
bandwidth kernels timed side by side, then summarized into a JSON-ready dict."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from . import measure, paramsets, variants
from .specs import OptimizerSpec, RegularizerSpec


@dataclass
class Budget:
    """How many repeats a group gets: ``fixed``, or as many as fit (between
    min and max) in its share of what is left of the run's time budget. The
    decision is taken after each repeat, from the repeats' own durations, so
    a slow warmup or a stall of the machine does not skew it."""

    seconds: float
    fixed: int | None = None
    min_repeats: int = 5
    max_repeats: int = 15
    groups_left: int = 1
    start: float = field(default_factory=time.perf_counter)

    @property
    def most(self) -> int:
        return self.fixed or self.max_repeats

    def deadline(self, reserve_s: float) -> float:
        """When this group's repeats should end; ``reserve_s`` is kept for what follows them."""
        now = time.perf_counter()
        return now + (self.seconds - (now - self.start)) / max(self.groups_left, 1) - reserve_s

    def more(self, done: int, durations: list[float], deadline: float) -> bool:
        if self.fixed is not None:
            return done < self.fixed
        if done < self.min_repeats:
            return True
        return done < self.max_repeats and time.perf_counter() + float(np.median(durations)) <= deadline


@dataclass
class Config:
    budget: Budget
    warmup: int
    min_sample_s: float
    device: str
    dtype: torch.dtype
    seed: int
    memory: bool
    compiled: bool = False
    threads: int = 1


# A ratio whose interquartile range over the repeats exceeds this fraction of
# it, or one from fewer than MIN_RELIABLE repeats, is marked unreliable.
MAX_RATIO_SPREAD = 0.10
MIN_RELIABLE = 5


def _quartiles(xs) -> tuple[float, float, float]:
    q1, med, q3 = np.percentile(np.asarray(xs, dtype=float), [25, 50, 75])
    return float(q1), float(med), float(q3)


def run_group(pset: paramsets.ParamSet, opt_key: str, opt: OptimizerSpec, regs: list[RegularizerSpec],
              cfg: Config, progress) -> dict:
    label, t0 = f"{pset.name}/{opt_key}", time.perf_counter()
    progress.update(0, f"{label}: building variants")
    master = paramsets.materialize(pset, cfg.dtype, cfg.device, cfg.seed)
    vs, skipped = variants.build(opt, regs, master, cfg.device, cfg.dtype, cfg.compiled)
    del master
    streams = measure.stream_kernels(pset.numel, cfg.dtype, cfg.device)
    items = [measure.Timed(v.name, v.step) for v in vs] + [measure.Timed(s.name, s.step) for s in streams]
    sync = measure.synchronizer(cfg.device)

    progress.update(0, f"{label}: warmup")
    step_s = {t.name: measure.warm_up(t.step, cfg.warmup, sync) for t in items}
    k = {name: measure.steps_per_sample(s, cfg.min_sample_s) for name, s in step_s.items()}
    progress.update(1)
    memory_s = measure.PEAK_TRIALS * sum(step_s[v.name] for v in vs) if cfg.memory else 0.0
    deadline = cfg.budget.deadline(memory_s)

    pairs = [(v.name, v.ref or v.name) for v in vs if v.ref] + [
        (v.name, "proxopt") for v in vs if v.family == "proxopt" and v.name != "proxopt"]

    def spread_ok(samples: dict[str, list[float]]) -> bool:
        return all(_spread([a / b for a, b in zip(samples[x], samples[y])]) <= MAX_RATIO_SPREAD for x, y in pairs)

    def more(done: int, durations: list[float], samples: dict[str, list[float]]) -> bool:
        if done:
            progress.update(1, f"{label}: repeat {done + 1}")
        if cfg.budget.fixed is None and done >= cfg.budget.min_repeats and spread_ok(samples):
            return False  # the ratios have settled: spend the time on the next group
        return cfg.budget.more(done, durations, deadline)

    samples = measure.interleaved(items, k, sync, more)
    repeats = len(samples[items[0].name])

    mem = measure.PeakMemory(cfg.device)
    peaks: dict[str, int | None] = {}
    if cfg.memory:
        progress.update(0, f"{label}: peak memory")
        peaks = {v.name: mem.extra_bytes(v.step) for v in vs}
    progress.update(1 + cfg.budget.most - repeats)

    bytes_per_step = pset.numel * opt.bytes_per_param(cfg.dtype)
    bandwidth = {}
    for s in streams:
        q1, med, q3 = _quartiles([s.bytes / t / 1e9 for t in samples[s.name]])
        bandwidth[s.name.split()[-1] + "_gbs"] = {"median": med, "q1": q1, "q3": q3}
    roofline_gbs = max(b["median"] for b in bandwidth.values())
    rows = [_summarize(v, samples, k[v.name], peaks.get(v.name), bytes_per_step, roofline_gbs, repeats) for v in vs]
    del vs, items, streams
    gc.collect()
    return {
        "param_set": pset.name, "description": pset.description, "numel": pset.numel, "tensors": pset.tensors,
        "optimizer": opt_key, "optimizer_class": opt.name, "hyper": opt.hyper,
        "dtype": str(cfg.dtype).replace("torch.", ""), "device": cfg.device, "threads": cfg.threads,
        "repeats": repeats,
        "bytes_per_param": opt.bytes_per_param(cfg.dtype), "bytes_per_step": bytes_per_step,
        "bandwidth": {**bandwidth, "roofline_gbs": roofline_gbs,
                      "roofline_ms": 1e3 * bytes_per_step / roofline_gbs / 1e9},
        "memory_method": mem.method if cfg.memory else None,
        "elapsed_s": time.perf_counter() - t0,
        "variants": rows,
        "skipped": [{"name": s.name, "reason": s.reason} for s in skipped],
    }


def _spread(ratios: list[float]) -> float:
    """Interquartile range of paired ratios, relative to their median."""
    q1, med, q3 = _quartiles(ratios)
    return (q3 - q1) / med if med > 0 else float("inf")


def _summarize(v: variants.Variant, samples: dict[str, list[float]], k: int, peak: int | None,
               bytes_per_step: int, roofline_gbs: float, repeats: int) -> dict:
    ref = v.ref or v.name
    q1, med, q3 = _quartiles(samples[v.name])
    # Ratios are paired within each repeat: drift between repeats cancels.
    ratios = [a / b for a, b in zip(samples[v.name], samples[ref])]
    r1, rmed, r3 = _quartiles(ratios)
    gbs = bytes_per_step / med / 1e9
    row = {
        "name": v.name, "family": v.family, "regularizer": v.regularizer, "ref": ref, "detail": v.detail,
        "steps_per_sample": k, "samples_ms": [1e3 * t for t in samples[v.name]],
        "median_ms": 1e3 * med, "q1_ms": 1e3 * q1, "q3_ms": 1e3 * q3, "iqr_ms": 1e3 * (q3 - q1),
        "gbs": gbs, "roofline_fraction": gbs / roofline_gbs,
        "ratio": rmed, "ratio_q1": r1, "ratio_q3": r3,
        "ratio_reliable": repeats >= MIN_RELIABLE and (v.ref is None or _spread(ratios) <= MAX_RATIO_SPREAD),
        "extra_peak_bytes": peak,
    }
    if v.family == "proxopt" and "proxopt" in samples:
        # Its time over proxopt's plain step (the same tensors, see variants.py): what the regularizer costs.
        plain = [a / b for a, b in zip(samples[v.name], samples["proxopt"])]
        row["vs_plain"] = _quartiles(plain)[1]
        row["vs_plain_reliable"] = repeats >= MIN_RELIABLE and _spread(plain) <= MAX_RATIO_SPREAD
    return row
