"""``python -m proxopt.bench`` / ``proxopt-bench``: parse the options, run every
(parameter set, optimizer) group, print the table, write JSON and the plot."""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

import torch

from . import machine, paramsets, progress, report
from .run import Budget, Config, run_group
from .specs import DEFAULT_REGULARIZERS, OPTIMIZERS, REGULARIZERS, proxopt_accepts

def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}

# The default run: about 5 minutes on a 2-core CPU (repeats fit `budget`), at one thread and at all.
DEFAULTS = dict(optimizer="adamw,sgd", reg=",".join(DEFAULT_REGULARIZERS), params="conformer,kws,small,large",
                warmup=2, min_sample_ms=20.0, budget=300.0, threads=",".join(map(str, sorted({1, _cpus()}))))
# --quick (the smoke test): a few seconds.
QUICK = dict(optimizer="adamw", reg="l1", params="tiny", repeats=3, warmup=1, min_sample_ms=2.0, budget=0.0,
             threads=str(torch.get_num_threads()))
MIN_REPEATS, MAX_REPEATS = 5, 15


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="proxopt-bench",
        description="Race proxopt's fused regularized step against torch.optim (for-loop, foreach, fused), "
                    "a penalty in the loss, and a Python proximal pass; report times, fraction of the memory "
                    "bandwidth roofline, ratios and extra peak memory.",
    )
    add = p.add_argument
    add("-o", "--optimizer", help=f"comma list of {', '.join(OPTIMIZERS)} or all (default {DEFAULTS['optimizer']})")
    add("-r", "--reg", help=f"comma list of {', '.join(r for r in REGULARIZERS if r != 'none')} or all "
                            f"(default {DEFAULTS['reg']}; 'none' is always run: it anchors the ratios)")
    add("-p", "--params", help=f"comma list of parameter sets: {', '.join(paramsets.BUILTIN)} "
                               f"(default {DEFAULTS['params']})")
    add("--model", metavar="MODULE:FACTORY",
        help="benchmark the parameters of a torch.nn.Module: package.module:factory or path/file.py:factory "
             "(alone unless --params is given too)")
    add("--dtype", choices=list(DTYPES), default="float32")
    add("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    add("--threads", help="comma list of thread counts, each run in turn (torch.set_num_threads; proxopt's "
                          f"kernels follow it), e.g. 1,2 (default {DEFAULTS['threads']})")
    add("--compiled", action="store_true",
        help="also time the compiled steps (torch.compile) of proxopt (fullgraph) and torch.optim; "
             "compilation is part of the warmup and takes a while")
    add("--repeats", type=int, help=f"interleaved samples per variant (default: as many as fit in --budget, "
                                   f"{MIN_REPEATS} to {MAX_REPEATS})")
    add("--budget", type=float, metavar="SECONDS",
        help=f"time budget of the whole run, used to pick the repeats (default {DEFAULTS['budget']:g}; "
             f"at least {MIN_REPEATS} repeats are run whatever it says)")
    add("--warmup", type=int, help=f"untimed steps per variant first (default {DEFAULTS['warmup']})")
    add("--min-sample-ms", type=float,
        help=f"a sample runs steps for at least this long (default {DEFAULTS['min_sample_ms']:g})")
    add("--seed", type=int, default=0, help="seed of the random parameters and gradients")
    add("--json", metavar="PATH", help="results file (default bench_results/proxopt-bench-<time>.json)")
    add("--plot", metavar="PATH", help="PNG plot (default: beside the JSON; needs matplotlib)")
    add("--no-plot", action="store_true", help="write no plot")
    add("--no-memory", action="store_true", help="skip the extra-peak-memory measurement")
    add("--no-progress", action="store_true",
        help="no progress bar (a stdout that is not a terminal still gets a line per finished section)")
    add("--quick", action="store_true", help="a tiny run of a few seconds (tiny set, AdamW, l1, 3 repeats)")
    add("--list", action="store_true", help="list optimizers, regularizers and parameter sets, and what proxopt supports")
    return p


def _choose(value: str, choices, what: str) -> list[str]:
    names = list(choices) if value == "all" else [v.strip() for v in value.split(",") if v.strip()]
    bad = [n for n in names if n not in choices]
    if bad:
        raise SystemExit(f"proxopt-bench: unknown {what} {', '.join(bad)} (choose from {', '.join(choices)}, or all)")
    return names


def _list() -> None:
    print("optimizers and the regularizers proxopt accepts (detected, not assumed):")
    for key, opt in OPTIMIZERS.items():
        ok = [r for r, spec in REGULARIZERS.items() if r != "none" and proxopt_accepts(opt, spec.kwargs) is None]
        have = "" if opt.proxopt_cls else "  (no proxopt class yet)"
        print(f"  {key:<8} {opt.words * 4} B/param/step (float32)  {', '.join(ok) or '-'}{have}")
    print("parameter sets:")
    for name, make in paramsets.BUILTIN.items():
        s = make()
        print(f"  {name:<10} {s.numel:>10,} params in {s.tensors:>5} tensors: {s.description}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        _list()
        return 0
    preset = QUICK if args.quick else DEFAULTS
    if args.model and args.params is None:
        args.params = ""  # --model alone benchmarks just that model
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("proxopt-bench: --device cuda but torch.cuda.is_available() is False")
    try:
        thread_counts = [int(t) for t in args.threads.split(",")]
    except ValueError:
        raise SystemExit(f"proxopt-bench: --threads takes a comma list of integers, not {args.threads!r}") from None
    if any(t < 1 for t in thread_counts):
        raise SystemExit("proxopt-bench: --threads must be >= 1")

    opt_keys = _choose(args.optimizer, OPTIMIZERS, "optimizer")
    reg_keys = ["none"] + [r for r in _choose(args.reg, [r for r in REGULARIZERS if r != "none"], "regularizer")]
    try:
        sets = paramsets.resolve(_choose(args.params, paramsets.BUILTIN, "parameter set") if args.params else [], args.model)
    except (ValueError, ImportError, AttributeError) as exc:
        raise SystemExit(f"proxopt-bench: {exc}") from exc
    if not sets:
        raise SystemExit("proxopt-bench: no parameter set selected (--params and/or --model)")
    budget = Budget(args.budget, max(1, args.repeats) if args.repeats else None, MIN_REPEATS, MAX_REPEATS)
    cfg = Config(budget=budget, warmup=max(0, args.warmup), min_sample_s=args.min_sample_ms / 1e3,
                 device=args.device, dtype=DTYPES[args.dtype], seed=args.seed, memory=not args.no_memory,
                 compiled=args.compiled)

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    json_path = args.json or os.path.join("bench_results", f"proxopt-bench-{stamp}.json")
    plot_path = None if args.no_plot else (args.plot or os.path.splitext(json_path)[0] + ".png")

    load_before = machine.load_average()
    t0 = time.perf_counter()
    groups = [(t, s, k) for t in thread_counts for s in sets for k in opt_keys]
    bar = progress.make(len(groups) * (budget.most + 2), enabled=not args.no_progress)
    lines = progress.SectionLines(len(groups))
    results = []
    try:
        for i, (t, s, k) in enumerate(groups):
            budget.groups_left = len(groups) - i
            torch.set_num_threads(t)
            cfg.threads = t
            results.append(run_group(s, k, OPTIMIZERS[k], [REGULARIZERS[r] for r in reg_keys], cfg, bar))
            lines.finished(results[-1])
    finally:
        bar.close()
    doc = {
        "schema": "proxopt-bench/1",
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "argv": sys.argv[1:] if argv is None else list(argv),
        "elapsed_s": time.perf_counter() - t0,
        "machine": {**machine.info(args.device), "load_average_before": load_before},
        "config": {"optimizers": opt_keys, "regularizers": reg_keys, "param_sets": [s.name for s in sets],
                   "dtype": args.dtype, "device": args.device, "threads": thread_counts, "compiled": args.compiled,
                   "repeats": args.repeats, "budget_s": args.budget,
                   "warmup": cfg.warmup, "min_sample_ms": args.min_sample_ms, "seed": args.seed},
        "groups": results,
    }
    report.mark_reliability(doc)
    print(report.table(doc))
    report.write_json(doc, json_path)
    print(f"\nresults: {json_path}")
    if plot_path and report.write_plot(doc, plot_path):
        print(f"plot:    {plot_path}")
    print(f"elapsed: {doc['elapsed_s']:.0f} s")
    return 0
