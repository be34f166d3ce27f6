"""The command line of the keyword-spotting and denoising recipes: their
options, the configuration they make, and the flow both follow (threads,
corpus, task, the planned runs, the reports)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from . import cli
from . import data as D
from .cli import as_argparse
from .espeak import EspeakUnavailableError
from .magnitude import check_fraction
from .optimizers import OPTIMIZERS
from .runs import DEFAULT_RUNS, RUN_NAMES, RUNS, TARGET_UNITS, TrainConfig, parse_runs
from .reports import results_table
from .sweep import plan, train_points
from .sweep_report import columns, report


def parse_fractions(text: str, name: str = "--sparsity") -> tuple[float, ...]:
    """``"0.8,0.9"`` -> ``(0.8, 0.9)``: distinct fractions in [0, 1)."""
    values = []
    for item in (s.strip() for s in text.split(",")):
        try:
            v = float(item)
        except ValueError:
            raise ValueError(f"Invalid {name} value: {item!r} (a fraction in [0, 1))") from None
        values.append(check_fraction(v, name))
    if len(set(values)) != len(values):
        raise ValueError(f"Invalid {name} value: {text!r} lists a target twice")
    return tuple(values)


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0,1"`` -> ``(0, 1)``: distinct seeds >= 0."""
    try:
        seeds = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise ValueError(f"Invalid --seeds value: {text!r} (a comma list of ints >= 0)") from None
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"Invalid --seeds value: {text!r} (distinct ints >= 0)")
    return seeds


def add_args(p, defaults: dict[str, Any]) -> None:
    """The pipelines' shared options and the sweep's."""
    add_common_args(p, defaults)
    p.add_argument("--sparsity", type=as_argparse(lambda t: parse_fractions(t, "--sparsity")), default=(),
                   help="comma list of exact-zero fractions: prox-l1 (controlled) vs magnitude at each, e.g. 0.8,0.9,0.95")  # fmt: skip
    p.add_argument("--channel-sparsity", type=as_argparse(lambda t: parse_fractions(t, "--channel-sparsity")), default=(),
                   help="comma list of fractions of channels removed: prox-group (controlled) vs magnitude-structured, e.g. 0.5,0.7")  # fmt: skip
    p.add_argument("--seeds", type=as_argparse(parse_seeds),
                   help="comma list of training seeds, e.g. 0,1 (default: --seed); every run trains once per seed")  # fmt: skip


def _window(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"Invalid --prune-window value: {text!r} (two fractions START,END)") from None
    if not (0.0 <= lo < hi <= 1.0):
        raise ValueError(f"Invalid --prune-window value: {text!r} (0 <= START < END <= 1)")
    return lo, hi


def add_common_args(p, defaults: dict[str, Any]) -> None:
    """The options both pipelines share (runs, schedule, output); the sweep's
    own (``--sparsity``, ``--channel-sparsity``, ``--seeds``) are added by
    :func:`add_args`."""
    p.add_argument("--data", help="corpus .npz (default: synthesize the espeak-ng corpus, cached)")
    p.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default="adamw", help="optimizer family of every run (default adamw)")
    p.add_argument("--lr", type=float, default=defaults["lr"], help="peak learning rate (linear warmup, cosine decay)")
    p.add_argument("--weight-decay", type=float, default=defaults["weight_decay"], help="on Conv/Linear weights, every run")
    p.add_argument("--l1", type=float, default=defaults["l1"], help="λ of the l1-loss and prox-l1 runs (with --sparsity: the controller's start)")
    p.add_argument("--l1-loss", type=float, help="λ of the l1-loss run only (default: --l1)")
    p.add_argument(
        "--prox-metric",
        choices=("adaptive", "euclidean"),
        default="adaptive",
        help="prox_metric of the prox-l1 run; 'adaptive' (default) scales the threshold by Adam's 1/sqrt(v) like the "
        "gradient of a loss penalty, so the same λ means the same thing in l1-loss and prox-l1 (SGD: euclidean)",
    )
    p.add_argument("--group-lasso", type=float, default=defaults["group_lasso"], help="λ of the prox-group run (with --channel-sparsity: the controller's start)")
    p.add_argument("--epochs", type=int, default=defaults["epochs"])
    p.add_argument("--batch-size", type=int, default=defaults["batch_size"])
    p.add_argument("--out", default=defaults["out"], help="output directory (default %(default)s)")
    p.add_argument(
        "--runs",
        help=f"comma list of {', '.join(RUN_NAMES)} (default without a sweep: {','.join(DEFAULT_RUNS)}; "
        "magnitude runs then prune to " + ", ".join(f"{s.default_target:g} {TARGET_UNITS[s.kind]}" for s in RUNS.values() if s.default_target is not None)
        + "; with --sparsity/--channel-sparsity: dense and the runs that take those targets)",
    )
    p.add_argument(
        "--prune-window",
        type=as_argparse(_window),
        default=(0.1, 0.7),
        help="START,END fractions of the steps over which magnitude pruning ramps to its target; END is also the "
        "controller's by_step (default 0.1,0.7)",
    )
    p.add_argument("--prune-every", type=int, default=0, help="steps between magnitude pruning events (default 0: ~20 events)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="fraction of speakers (groups) held out")
    cli.add_run_args(p)


def config_from_args(args, log) -> TrainConfig:
    metric = args.prox_metric
    if args.optimizer == "sgd" and metric == "adaptive":
        metric = "euclidean"  # SGD has no preconditioner
    if args.prune_every < 0:
        raise ValueError(f"Invalid --prune-every value: {args.prune_every} (steps, >= 0)")
    return TrainConfig(
        optimizer=args.optimizer,
        lr=args.lr,
        weight_decay=args.weight_decay,
        l1=args.l1,
        l1_loss=args.l1_loss,
        prox_metric=metric,
        group_lasso=args.group_lasso,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        prune_window=tuple(args.prune_window),
        prune_every=args.prune_every,
        log=log,
    )


def load_corpus(args, spec: D.SynthSpec, name: str, log) -> D.Corpus:
    """The corpus of ``--data``, else the espeak-ng corpus of ``spec`` (a
    small one with ``--tiny-corpus``), synthesized once and cached."""
    if args.data:
        corpus = D.load_corpus(args.data)
    else:
        if args.tiny_corpus:
            spec = spec.with_(keywords=D.DEFAULT_KEYWORDS[:4], unknown_words=(), silence=False, variants=D.DEFAULT_VARIANTS[:8])
        t0 = time.perf_counter()
        path = D.synthesize_corpus(spec, cache_dir=args.cache, verbose=not args.quiet)
        corpus = D.load_corpus(path)
        log(f"[{name}] corpus {path} ({time.perf_counter() - t0:.1f}s)")
    log(f"[{name}] {corpus.summary()}")
    return corpus


def run_command(args, load, make_task, name: str, title) -> tuple | None:
    """The flow both commands share: threads, corpus, task, the planned runs,
    the reports. ``load(args, log)`` gives the corpus, ``make_task(corpus,
    args, log)`` the (Task, info) pair, ``title(info)`` the plot's title.
    Returns (results, info, paths, total seconds), or None (after printing
    why) when espeak-ng is missing."""
    log = cli.start(args)
    t_all = time.perf_counter()
    runs = parse_runs(args.runs) if args.runs else None
    seeds = args.seeds or (args.seed,)
    points = plan(runs, args.sparsity, args.channel_sparsity, seeds)
    cfg = config_from_args(args, log)
    try:
        corpus = load(args, log)
    except EspeakUnavailableError as e:
        print(f"error: {e}", file=sys.stderr)
        return None
    task, info = make_task(corpus, args, log)
    info["split"] = D.describe_split(corpus.groups)
    results = train_points(points, task, cfg)
    total = time.perf_counter() - t_all
    config = dict(vars(args))
    config["prox_metric_used"] = cfg.prox_metric
    config["seeds"] = list(seeds)
    config["sweep"] = bool(args.sparsity or args.channel_sparsity)
    config["title"] = title(info)
    paths, lines = report(results, task, Path(args.out), name, config, info, {"wall_time_s": total})
    print(results_table(results, columns(task.primary)))
    print("\n" + "\n".join(lines))
    return results, info, paths, total
