"""What the sparsity budget costs in the step: AdamW on one tensor, the plain
step against the same step with ``sparsity`` (per tensor), ``l1``, and the
general prox shape, timed interleaved in one process (medians of pairs).

    PYTHONPATH=python python bench/budget_cost.py [--numel 16777216] [--threads 1] [--repeats 9]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import proxopt

CONFIGS = {
    "plain": {},
    "l1": {"l1": 1e-6},
    "general (l1 + bounds)": {"l1": 1e-6, "bounds": (-10.0, 10.0)},
    "sparsity=0.9": {"sparsity": 0.9},
    "sparsity=0.9 group scope": {"sparsity": 0.9, "sparsity_scope": "group"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--numel", type=int, default=1 << 24)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    opts = {}
    for name, kw in CONFIGS.items():
        w = torch.nn.Parameter(torch.randn(args.numel) * 0.05)
        w.grad = torch.randn(args.numel) * 0.01
        opts[name] = proxopt.AdamW([w], lr=1e-3, **kw)
        for _ in range(3):  # warm up (the budget's first step only counts)
            opts[name].step()
    times: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for _ in range(args.repeats):
        for name, opt in opts.items():
            t0 = time.perf_counter()
            opt.step()
            opt.step()
            times[name].append((time.perf_counter() - t0) / 2)
    plain = times["plain"]
    print(f"AdamW, {args.numel} float32 elements, {args.threads} thread(s), {args.repeats} interleaved repeats")
    for name, ts in times.items():
        ratio = statistics.median(t / p for t, p in zip(ts, plain))
        print(f"  {name:28s} {statistics.median(ts) * 1e3:8.2f} ms   x{ratio:.3f} the plain step")


if __name__ == "__main__":
    main()
