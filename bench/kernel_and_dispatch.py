"""Two figures the main benchmark does not isolate, proxopt.AdamW against
torch.optim.AdamW(fused=True), interleaved, on one thread:

* the kernel alone: ns per element on 1M float32 elements (in cache), at
  every SIMD level;
* the per-tensor cost of a step's Python side: 1000 tensors of 8x8, where
  the arithmetic is negligible.

    python bench/kernel_and_dispatch.py
"""

import statistics
import time

import torch

import proxopt


def _pair(shapes):
    def params():
        out = [torch.randn(s, requires_grad=True) for s in shapes]
        for p in out:
            p.grad = torch.randn_like(p) * 1e-3
        return out

    return {"proxopt": proxopt.AdamW(params()), "torch fused": torch.optim.AdamW(params(), fused=True)}


def _best(opts, repeats):
    for o in opts.values():
        o.step()
    times = {k: [] for k in opts}
    for _ in range(repeats):
        for k, o in opts.items():
            t = time.perf_counter()
            o.step()
            times[k].append(time.perf_counter() - t)
    return {k: (min(v), statistics.median(v)) for k, v in times.items()}


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    n = 1 << 20
    opts = _pair([(n,)])
    for level in proxopt.simd_levels():
        proxopt.set_simd_level(level)
        res = _best(opts, 50)
        print(f"1M elements, {level:8s}: " + ", ".join(f"{k} {m / n * 1e9:.2f} ns/element" for k, (m, _) in res.items()))
    count = 1000
    res = _best(_pair([(8, 8)] * count), 30)
    print(f"{count} tensors of 8x8: " + ", ".join(f"{k} {med / count * 1e6:.2f} us/tensor (median)" for k, (_, med) in res.items()))


if __name__ == "__main__":
    main()
