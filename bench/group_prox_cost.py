"""What the group proxes cost on the weight matrices of the conformer set:
proxopt.AdamW plain vs group lasso along rows (one visit per row), along
columns (a second pass), max-norm and the channel budget along rows and
columns, interleaved, medians of 11 steps.

    python bench/group_prox_cost.py
"""

import statistics
import time

import torch

import proxopt
from proxopt.bench.paramsets import conformer

VARIANTS = {
    "plain": {},
    "group_lasso dim 0": dict(group_lasso=1e-4),
    "group_lasso dim 1": dict(group_lasso=1e-4, group_dim=1),
    "max_norm dim 0": dict(max_norm=10.0),
    "channel_sparsity 0.5 dim 0": dict(channel_sparsity=0.5),
    "channel_sparsity 0.5 dim 1": dict(channel_sparsity=0.5, group_dim=1),
}


def main(repeats: int = 11) -> None:
    torch.manual_seed(0)
    shapes = [s for s in conformer().shapes if len(s) >= 2]
    print(f"{len(shapes)} weight tensors, {sum(torch.Size(s).numel() for s in shapes) / 1e6:.1f}M parameters")

    def params():
        out = [torch.randn(s, requires_grad=True) for s in shapes]
        for p in out:
            p.grad = torch.randn_like(p) * 1e-3
        return out

    opts = {name: proxopt.AdamW(params(), **kw) for name, kw in VARIANTS.items()}
    for opt in opts.values():
        opt.step()
    times = {name: [] for name in opts}
    for _ in range(repeats):
        for name, opt in opts.items():
            t = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["plain"])
    for name, v in times.items():
        m = statistics.median(v)
        print(f"{name:18s} {m * 1e3:7.2f} ms  x{m / base:.2f}")


if __name__ == "__main__":
    main()
