"""One AdamW step on a large parameter set against the device's copy bandwidth.

    python bench/gpu_step.py                      # 256M float32 params on cuda (.ci/gpu runs this)
    python bench/gpu_step.py --device cpu --params 1M

Times proxopt.AdamW (plain and with l1) and torch.optim.AdamW(fused=True) on the same
parameter set (a few tensors), and a device-to-device copy of the same number of
elements: the copy's GB/s is the roofline an in-place optimizer step can approach. Each
sample is a few consecutive steps between two CUDA events (wall clock on the CPU); the
variants take turns, and each reports its median sample. GB/s counts what AdamW must move
per parameter (read w, g, m, v; write w, m, v: proxopt.bench.specs), the same for all three.
The last line, ``summary: ...``, is the line .ci/gpu prints for this part.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable

import torch

import proxopt
from proxopt import _dispatch
from proxopt.bench.specs import OPTIMIZERS, REGULARIZERS

ADAMW = OPTIMIZERS["adamw"]  # lr, weight_decay, and the bytes a step moves per parameter
L1 = REGULARIZERS["l1"].kwargs


def count(text: str) -> int:
    """'256M', '1.5K', '4096' -> elements (binary multiples: 256M = 2**28)."""
    scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:].upper(), 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def split(total: int, parts: int) -> list[int]:
    """Tensor sizes summing to ``total``: halves, quarters, ... and the rest (a model's mix)."""
    sizes = [total >> (i + 1) for i in range(parts - 1)]
    return sizes + [total - sum(sizes)]


def timer(device: str) -> Callable[[Callable[[], None], int], float]:
    """Seconds per call of ``fn`` over ``k`` consecutive calls."""
    if device.startswith("cuda"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def run(fn, k):
            start.record()
            for _ in range(k):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / k
    else:
        def run(fn, k):
            t0 = time.perf_counter()
            for _ in range(k):
                fn()
            return (time.perf_counter() - t0) / k
    return run


def variants(sizes: list[int], device: str) -> dict[str, tuple[Callable[[], None], int]]:
    """name -> (one call, bytes it moves). Every optimizer gets its own parameters and grads."""
    gen = torch.Generator(device=device).manual_seed(0)
    numel = sum(sizes)
    src = torch.randn(numel, device=device, generator=gen)
    dst = torch.empty_like(src)
    out = {"copy": (lambda: dst.copy_(src), 2 * numel * src.element_size())}
    step_bytes = numel * ADAMW.bytes_per_param(torch.float32)
    builds = {
        "proxopt AdamW": lambda ps: proxopt.AdamW(ps, **ADAMW.hyper),
        "proxopt AdamW l1": lambda ps: proxopt.AdamW(ps, **ADAMW.hyper, **L1),
        "torch AdamW fused": lambda ps: torch.optim.AdamW(ps, **ADAMW.hyper, fused=True),
    }
    for name, build in builds.items():
        ps = [torch.randn(n, device=device, generator=gen).requires_grad_() for n in sizes]
        for p in ps:
            p.grad = torch.randn(p.shape, device=device, generator=gen) * 1e-2
        if name.startswith("proxopt") and not all(_dispatch.kernel_takes(p, p.grad) for p in ps):
            raise SystemExit(f"proxopt's kernels do not take these {device} tensors: {proxopt.backend_info()}")
        out[name] = (build(ps).step, step_bytes)
    return out


def measure(device: str, total: int, tensors: int, repeats: int,
            steps: int) -> tuple[dict[str, float], dict[str, int]]:
    """name -> median seconds per call, and name -> bytes per call."""
    todo = variants(split(total, tensors), device)
    run = timer(device)
    for fn, _ in todo.values():
        run(fn, 3)  # the first optimizer step allocates its state
    samples: dict[str, list[float]] = {name: [] for name in todo}
    names = list(todo)
    for r in range(repeats):  # round-robin, rotating: drift hits every variant alike
        for name in names[r % len(names):] + names[: r % len(names)]:
            samples[name].append(run(todo[name][0], steps))
    return {name: statistics.median(s) for name, s in samples.items()}, {n: b for n, (_, b) in todo.items()}


def report(times: dict[str, float], nbytes: dict[str, int]) -> list[str]:
    """A line per variant and the summary line: GB/s, fraction of the copy's, time against torch's."""
    torch_s = times["torch AdamW fused"]
    copy_gbs = nbytes["copy"] / times["copy"] / 1e9
    lines, parts = [], [f"copy {copy_gbs:.0f} GB/s"]
    for name, s in times.items():
        gbs = nbytes[name] / s / 1e9
        line = f"{name:<20}{s * 1e3:10.3f} ms{gbs:10.1f} GB/s{gbs / copy_gbs:7.2f} of copy"
        if name != "copy":
            versus = f", {s / torch_s:.2f}x torch's time" if name.startswith("proxopt") else ""
            line += f"  {versus[2:]}"
            parts.append(f"{name} {gbs:.0f} GB/s ({gbs / copy_gbs:.2f} of copy{versus})")
        lines.append(line)
    return lines + ["summary: " + "; ".join(parts)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--params", default="256M", help="float32 parameters in all (256M = 2**28)")
    ap.add_argument("--tensors", type=int, default=4, help="how many tensors they are split into")
    ap.add_argument("--repeats", type=int, default=15, help="samples per variant (the median is reported)")
    ap.add_argument("--steps", type=int, default=5, help="consecutive calls per sample")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"no GPU: torch {torch.__version__} sees no CUDA device", file=sys.stderr)
        return 2
    total = count(args.params)
    times, nbytes = measure(args.device, total, args.tensors, args.repeats, args.steps)
    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    print(f"{where}, torch {torch.__version__}: {total} float32 params in {args.tensors} tensors, "
          f"median of {args.repeats} samples of {args.steps} calls")
    print("\n".join(report(times, nbytes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
