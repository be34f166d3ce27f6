"""Race proxopt's regularizers against magnitude pruning at equal sparsity,
over several seeds, and draw the accuracy–sparsity curves.

With ``--sparsity`` (fractions of exact-zero weights) and/or
``--channel-sparsity`` (fractions of channels removed), each pipeline runs,
per training seed of ``--seeds``:

* ``dense`` once (the reference line);
* at each ``--sparsity`` target: ``prox-l1`` with ``proxopt.SparsityTarget``
  steering λ to the target, and ``magnitude`` (gradual global magnitude
  pruning to the same target);
* at each ``--channel-sparsity`` target: ``prox-group`` steered to the
  target fraction of channels, and ``magnitude-structured`` (gradual L2
  channel pruning).

Both members of a pair reach their target at the same step (the end of
``--prune-window``) and train the rest of the schedule at it; seeds, data
order, learning-rate schedule and epochs are shared by every run (see
:mod:`examples.speech.runs` for what the fractions count). ``--seed`` fixes
the data (train/test split, noise, corpus); ``--seeds`` the training (the
initialization, the batch order, dropout, SpecAugment), so the spread over
seeds is the training's, on one split. Without a target list, the runs of
``--runs`` train at their fixed λ (magnitude runs at their default target).

Outputs in ``--out``: ``<name>.txt`` (the table, one row per (run, target,
seed), then the report), ``<name>.json`` (every point, the aggregated curves,
the verdicts, the data and its split, and every run with its per-epoch
history) and ``<name>.png`` (with targets: one panel per kind of target, one
curve per method, mean over seeds with min–max error bars in both
directions, the dense model as a line and band; without: accuracy vs
sparsity, step time and pruned size per run). The report says, per target,
which method wins, by how much, and the seed spread (mean ± half the
min–max range), and where each method's final sparsity landed.

Full-size sweeps (2 cores, one thread each; the corpus synthesis, ~1 min,
is cached after the first run). Estimates from the 4-run defaults (~1 min
per KWS run of 25 epochs, ~45 s per denoising run of 20 epochs), 22 runs
each: 2 seeds x (1 dense + 3 targets x 2 + 2 targets x 2)::

    # ~20-30 min
    python -m examples.speech.kws --sparsity 0.8,0.9,0.95 --channel-sparsity 0.5,0.7 --seeds 0,1 --out runs/kws_sweep
    # ~15-25 min
    python -m examples.speech.denoise --sparsity 0.8,0.9,0.95 --channel-sparsity 0.5,0.7 --seeds 0,1 --out runs/denoise_sweep

A reduced sweep, measured at 1-2 min (14 runs of 16 steps: too short to
train at 80 % zeros, a smoke test)::

    python -m examples.speech.kws --tiny-corpus --epochs 8 --sparsity 0.8,0.9 --channel-sparsity 0.5 --seeds 0,1 --out /tmp/kws_sweep

and with ~180 steps per run (``--epochs 30 --batch-size 16``), measured at ~3.5 min.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .espeak import EspeakUnavailableError
from .magnitude import check_fraction
from .runs import (
    CHANNELS,
    DEFAULT_RUNS,
    RUNS,
    TARGET_UNITS,
    ZEROS,
    RunResult,
    Task,
    TrainConfig,
    as_argparse,
    add_common_args,
    config_from_args,
    describe_split,
    environment,
    parse_runs,
    pyplot,
    run_label,
    text_table,
    train_run,
)

# the option that lists the targets of each kind
TARGET_OPTIONS = {ZEROS: "--sparsity", CHANNELS: "--channel-sparsity"}


# --------------------------------------------------------------------------
# Plan
# --------------------------------------------------------------------------


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


@dataclass(frozen=True)
class Point:
    """One run to train: a method at a target (None: fixed λ) with a seed."""

    run: str
    target: float | None
    seed: int


def plan(
    runs: Sequence[str] | None,
    sparsity: Sequence[float] = (),
    channel_sparsity: Sequence[float] = (),
    seeds: Sequence[int] = (0,),
) -> list[Point]:
    """The runs of a sweep (or, without targets, of ``runs`` at fixed λ),
    seed by seed, ``dense`` first."""
    targets = {ZEROS: tuple(check_fraction(t, "--sparsity") for t in sparsity),
               CHANNELS: tuple(check_fraction(t, "--channel-sparsity") for t in channel_sparsity)}  # fmt: skip
    seeds = tuple(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"Invalid --seeds value: {seeds!r} (distinct ints >= 0)")
    if not any(targets.values()):
        runs = list(runs or DEFAULT_RUNS)
        return [Point(r, RUNS[r].default_target, s) for s in seeds for r in runs]
    if runs is None:
        runs = ["dense"] + [n for n, s in RUNS.items() if s.kind is not None and targets[s.kind]]
    for r in runs:
        kind = RUNS[r].kind
        if r != "dense" and (kind is None or not targets[kind]):
            need = f"needs {TARGET_OPTIONS[kind]} targets" if kind else "takes no sparsity target"
            raise ValueError(f"Invalid --runs value: {r!r} {need} (in a sweep)")
    points = []
    for s in seeds:
        points += [Point("dense", None, s)] if "dense" in runs else []
        for kind, ts in targets.items():
            points += [Point(r, t, s) for t in ts for r in runs if RUNS[r].kind == kind]
    return points


def train_points(points: Sequence[Point], task: Task, cfg: TrainConfig) -> list[RunResult]:
    """Train every point; ``cfg.seed`` is replaced by each point's seed."""
    log = cfg.log or (lambda s: None)
    results = []
    for i, pt in enumerate(points):
        at = "" if pt.target is None else f" at {pt.target:.0%} {TARGET_UNITS[RUNS[pt.run].kind]}"
        log(f"[{task.name}] ({i + 1}/{len(points)}) seed {pt.seed}, {pt.run}{at}: {run_label(pt.run, cfg.optimizer, cfg.prox_metric, pt.target)}")
        results.append(train_run(pt.run, task, replace(cfg, seed=pt.seed), pt.target))
    return results


# --------------------------------------------------------------------------
# Curves and verdicts
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Spread:
    """Values over seeds: mean, min, max."""

    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)

    @property
    def lo(self) -> float:
        return min(self.values)

    @property
    def hi(self) -> float:
        return max(self.values)

    @property
    def half_range(self) -> float:
        return (self.hi - self.lo) / 2

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "min": self.lo, "max": self.hi, "values": list(self.values)}


def landed(r: RunResult) -> float:
    """The final sparsity of a run, as its kind of target measures it
    (exact zeros for runs without a kind)."""
    return r.channel_fraction if RUNS[r.run].kind == CHANNELS else r.weight_zero_fraction


@dataclass(frozen=True)
class CurvePoint:
    """One method at one target, over the seeds."""

    run: str
    kind: str | None
    target: float | None
    metric: Spread
    sparsity: Spread  # landed(): what the target is compared with
    zeros: Spread
    channels: Spread
    seeds: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.run, "kind": self.kind, "target": self.target, "seeds": list(self.seeds), "metric": self.metric.to_dict(),
                "sparsity": self.sparsity.to_dict(), "weight_zero_fraction": self.zeros.to_dict(), "channel_fraction": self.channels.to_dict()}  # fmt: skip


def curves(results: Sequence[RunResult], primary: str) -> list[CurvePoint]:
    """Results grouped by (run, target), in order of first appearance."""
    groups: dict[tuple[str, float | None], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.run, r.target), []).append(r)
    out = []
    for (run, target), rs in groups.items():
        out.append(CurvePoint(
            run=run, kind=RUNS[run].kind, target=target,
            metric=Spread(tuple(r.metrics[primary] for r in rs)),
            sparsity=Spread(tuple(landed(r) for r in rs)),
            zeros=Spread(tuple(r.weight_zero_fraction for r in rs)),
            channels=Spread(tuple(r.channel_fraction for r in rs)),
            seeds=tuple(r.seed for r in rs),
        ))  # fmt: skip
    return out


def _metric_text(primary: str, s: Spread) -> str:
    if primary == "accuracy":
        return f"{100 * s.mean:.2f} ± {100 * s.half_range:.2f} %"
    return f"{s.mean:.4f} ± {s.half_range:.4f}"


def _gap_text(primary: str, gap: float) -> str:
    return f"{100 * gap:.2f} points" if primary == "accuracy" else f"{gap:.4f}"


def _is_controlled(c: CurvePoint) -> bool:
    return c.target is not None and c.run.startswith("prox-")


# A method ahead at a target wins only if it is at least as sparse as the
# others, to within this (the ±1 point the controller is asked to land in):
# ahead while less sparse is not a win at equal sparsity.
EQUAL_SPARSITY = 0.01


def verdicts(points: Sequence[CurvePoint], primary: str, higher_is_better: bool) -> list[dict[str, Any]]:
    """Per target (of each kind): the methods ranked by mean metric, the gap
    from the best to each other one, whether their seed ranges overlap (None
    with one seed), and where each method's final sparsity landed against
    the target. The best method is the ``winner`` unless it tied or landed
    less sparse than another by more than :data:`EQUAL_SPARSITY`. Each
    verdict has a one-line ``line``."""
    sign = 1.0 if higher_is_better else -1.0
    out = []
    targets = [(c.kind, c.target) for c in points if c.target is not None]
    for kind, target in dict.fromkeys(targets):
        methods = sorted((c for c in points if (c.kind, c.target) == (kind, target)), key=lambda c: -sign * c.metric.mean)
        best = methods[0]
        unit = TARGET_UNITS[kind]
        parts = [f"{c.run} {_metric_text(primary, c.metric)}" for c in methods]
        line = f"at {100 * target:g} % {unit}: " + " vs ".join(parts)
        gaps = []
        for other in methods[1:]:
            gap = sign * (best.metric.mean - other.metric.mean)
            # ranges apart: the worst seed of the winner beats the best seed of the other
            apart = None
            if len(best.metric.values) > 1 and len(other.metric.values) > 1:
                apart = sign * (min(best.metric.values, key=lambda v: sign * v) - max(other.metric.values, key=lambda v: sign * v)) > 0
            gaps.append({"vs": other.run, "gap": gap, "ranges_apart": apart})
            spread = {None: " (one seed: no spread)", True: " (the seed ranges do not overlap)", False: " (within the seed spread)"}[apart]
            if gap == 0:
                line += f": {best.run} and {other.run} tied"
            else:
                line += f": {best.run} ahead of {other.run} by {_gap_text(primary, gap)}" + spread
        if len(methods) == 1:
            line += " (no other method at this target)"
        landing = []
        for c in methods:
            who = f"{c.run}'s controller" if _is_controlled(c) else c.run
            off = round(100 * (c.sparsity.mean - target), 1) + 0.0  # no "-0.0"
            landing.append(f"{who} landed at {100 * c.sparsity.mean:.1f} % ({off:+.1f} points"
                           + (f", seeds {100 * c.sparsity.lo:.1f}–{100 * c.sparsity.hi:.1f} %)" if len(c.seeds) > 1 else ")"))  # fmt: skip
        line += "; " + ", ".join(landing)
        denser = [c.run for c in methods[1:] if c.sparsity.mean > best.sparsity.mean + EQUAL_SPARSITY]
        if denser:
            line += (f"; not a win at equal sparsity: {best.run} is less sparse than {', '.join(denser)} "
                     f"by more than {100 * EQUAL_SPARSITY:g} point")  # fmt: skip
        out.append({
            "kind": kind, "target": target, "metric": primary, "higher_is_better": higher_is_better,
            "winner": best.run if gaps and gaps[0]["gap"] != 0 and not denser else None, "ranking": [c.run for c in methods], "gaps": gaps,
            "landed": {c.run: {**c.sparsity.to_dict(), "off_by": c.sparsity.mean - target} for c in methods},
            "seeds": list(best.seeds), "line": line,
        })  # fmt: skip
    return out


def report_lines(results: Sequence[RunResult], task: Task, info: dict[str, Any]) -> list[str]:
    """The report under the table: the data split, the dense reference, one verdict per target."""
    points = curves(results, task.primary)
    n_seeds = len({r.seed for r in results})
    lines = [f"data split: {info['split']}"]
    for c in points:
        if c.run == "dense":
            lines.append(f"dense: {task.primary.replace('_', ' ')} {_metric_text(task.primary, c.metric)}")
    vs = verdicts(points, task.primary, task.higher_is_better)
    if vs:
        better = "higher" if task.higher_is_better else "lower"
        lines.append(f"per target ({task.primary.replace('_', ' ')}, {better} is better; mean ± half the min–max range over {n_seeds} seed(s)):")
        lines += ["  " + v["line"] for v in vs]
    return lines


# --------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------


def fmt_metric(name: str, v: float) -> str:
    return f"{v:.2%}" if name == "accuracy" else f"{v:.4f}"


def results_table(results: Sequence[RunResult], primary: str) -> str:
    """One row per run (per target and seed)."""
    header = (
        "run",
        "target",
        "seed",
        "optimizer / regularizer",
        primary.replace("_", " "),
        "exact zeros",
        "weight zeros",
        "zero channels",
        "step ms",
        "fwd+bwd ms",
        "train s",
        "params → pruned",
        "infer ms (batch) before → after",
    )
    rows = [header]
    for r in results:
        kind = RUNS[r.run].kind
        rows.append(
            (
                r.run,
                "-" if r.target is None else f"{r.target:.0%} {TARGET_UNITS[kind]}",
                str(r.seed),
                r.label,
                fmt_metric(primary, r.metrics[primary]),
                f"{r.zero_fraction:.2%}",
                f"{r.weight_zero_fraction:.2%}",
                f"{r.zero_channels}/{r.channels}",
                f"{r.step_ms:.2f}",
                f"{1e3 * r.fwd_bwd_time_s / max(1, r.steps):.1f}",
                f"{r.train_time_s:.1f}",
                f"{r.params} → {r.pruned_params}",
                f"{r.infer_ms['before_batch_ms']:.2f} → {r.infer_ms['after_batch_ms']:.2f}",
            )
        )
    return text_table(rows)


RUN_COLORS = {"dense": "#555555", "l1-loss": "#d95f02", "prox-l1": "#1b9e77", "prox-group": "#7570b3",
              "magnitude": "#e7298a", "magnitude-structured": "#e6ab02"}  # fmt: skip


def run_tag(r: RunResult) -> str:
    """A short name of one run: ``magnitude@0.9 s1``."""
    return r.run + ("" if r.target is None else f"@{r.target:g}") + f" s{r.seed}"


def _ylabel(primary: str) -> str:
    if primary == "accuracy":
        return "held-out accuracy (%)"
    return f"validation {primary.replace('_', ' ')} (lower is better)"


def plot_curves(results: Sequence[RunResult], primary: str, path: Path, title: str) -> Path | None:
    """The accuracy–sparsity curves: one panel per kind of target (x = exact
    zeros, x = channels removed), one curve per method (mean over seeds,
    min–max error bars in x and y), dense as a line with its seed band.
    Returns the path, or None when matplotlib is missing."""
    plt = pyplot()
    if plt is None:
        return None
    points = curves(results, primary)
    kinds = [k for k in (ZEROS, CHANNELS) if any(c.kind == k and c.target is not None for c in points)]
    scale = 100 if primary == "accuracy" else 1
    fig, axes = plt.subplots(1, len(kinds), figsize=(6.5 * len(kinds), 4.6), squeeze=False)
    dense = [c for c in points if c.run == "dense"]
    for ax, kind in zip(axes[0], kinds):
        for d in dense:
            ax.axhline(scale * d.metric.mean, color=RUN_COLORS["dense"], ls="--", lw=1.2, label=f"dense ({len(d.seeds)} seeds)")
            ax.axhspan(scale * d.metric.lo, scale * d.metric.hi, color=RUN_COLORS["dense"], alpha=0.12)
        for run in dict.fromkeys(c.run for c in points if c.kind == kind and c.target is not None):
            cs = sorted((c for c in points if c.run == run and c.target is not None), key=lambda c: c.target)
            x = [100 * c.sparsity.mean for c in cs]
            y = [scale * c.metric.mean for c in cs]
            xerr = [[100 * (c.sparsity.mean - c.sparsity.lo) for c in cs], [100 * (c.sparsity.hi - c.sparsity.mean) for c in cs]]
            yerr = [[scale * (c.metric.mean - c.metric.lo) for c in cs], [scale * (c.metric.hi - c.metric.mean) for c in cs]]
            label = run + (" (SparsityTarget)" if run.startswith("prox-") else "")
            ax.errorbar(x, y, xerr=xerr, yerr=yerr, marker="o", ms=6, capsize=4, lw=1.6, color=RUN_COLORS.get(run, "k"), label=label)
        for t in sorted({c.target for c in points if c.kind == kind and c.target is not None}):
            ax.axvline(100 * t, color="#999999", ls=":", lw=0.8)
        ax.set_xlabel("exact-zero weights (%)" if kind == ZEROS else "channels removed (%), all layers but the output")
        ax.set_ylabel(_ylabel(primary))
        ax.set_title(("unstructured: " if kind == ZEROS else "structured: ") + f"{primary.replace('_', ' ')} vs {TARGET_UNITS[kind]}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title + "  (mean over seeds, bars: min–max; dotted: targets)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_results(results: Sequence[RunResult], primary: str, path: Path, title: str) -> Path | None:
    """Without targets: accuracy (or validation loss) vs sparsity,
    optimizer-step time and the pruned size, one mark per run; returns the
    path, or None when matplotlib is missing."""
    plt = pyplot()
    if plt is None:
        return None
    scale = 100 if primary == "accuracy" else 1
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    ax = axes[0]
    for r in results:
        c = RUN_COLORS.get(r.run, "k")
        ax.scatter([100 * r.weight_zero_fraction], [r.metrics[primary] * scale], s=70, color=c, label=f"{run_tag(r)}: exact zeros")
        ax.scatter([100 * r.channel_fraction], [r.metrics[primary] * scale], s=70, facecolors="none", edgecolors=c, marker="s",
                   label=f"{run_tag(r)}: zero channels")  # fmt: skip
    ax.set_xlabel("sparsity (%): filled = exact-zero weights, hollow = all-zero channels")
    ax.set_ylabel(_ylabel(primary))
    ax.set_title(f"{primary.replace('_', ' ')} vs sparsity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    names = [run_tag(r) for r in results]
    x = list(range(len(results)))
    ax = axes[1]
    ax.bar(x, [r.step_ms for r in results], color=[RUN_COLORS.get(r.run, "k") for r in results])
    for i, r in enumerate(results):
        ax.text(i, r.step_ms, f"{r.step_ms:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, names, rotation=20, fontsize=7)
    ax.set_ylabel("ms per opt.step()")
    ax.set_title("optimizer step time (opt.step() only)")
    ax.grid(alpha=0.3, axis="y")
    ax = axes[2]
    ax.bar([i - 0.2 for i in x], [r.params / 1e3 for r in results], width=0.4, label="params (k)", color="#bbbbbb")
    ax.bar([i + 0.2 for i in x], [r.pruned_params / 1e3 for r in results], width=0.4, label="after pruning (k)", color="#7570b3")
    ax.set_xticks(x, names, rotation=20, fontsize=7)
    ax.set_ylabel("parameters (thousands)")
    ax.set_title("size after prune_zero_channels")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def point_dict(r: RunResult, primary: str) -> dict[str, Any]:
    """One trained point, compact (the full run is in ``runs``)."""
    return {
        "run": r.run, "kind": RUNS[r.run].kind, "target": r.target, "seed": r.seed, primary: r.metrics[primary],
        "metrics": r.metrics, "landed": landed(r), "weight_zero_fraction": r.weight_zero_fraction,
        "zero_fraction": r.zero_fraction, "zero_channels": r.zero_channels, "channels": r.channels,
        "channel_fraction": r.channel_fraction, "params": r.params, "pruned_params": r.pruned_params,
        "step_ms": r.step_ms, "train_time_s": r.train_time_s, "control": r.control,
    }  # fmt: skip


def write_reports(results: Sequence[RunResult], task: Task, out: Path, name: str, config: dict[str, Any],
                  info: dict[str, Any], extra: dict[str, Any] | None = None) -> tuple[dict[str, Path], list[str]]:  # fmt: skip
    """``<name>.txt`` (table and report), ``<name>.json`` (everything),
    ``<name>.png`` (the curves with targets, else the per-run overview) in
    ``out``; returns the paths and the report's lines."""
    out.mkdir(parents=True, exist_ok=True)
    primary = task.primary
    lines = report_lines(results, task, info)
    paths = {"table": out / f"{name}.txt", "json": out / f"{name}.json"}
    paths["table"].write_text(results_table(results, primary) + "\n\n" + "\n".join(lines) + "\n")
    points = curves(results, primary)
    payload = {
        "config": config,
        "environment": environment(),
        "data": info,
        "primary": primary,
        "higher_is_better": task.higher_is_better,
        "points": [point_dict(r, primary) for r in results],
        "curves": [c.to_dict() for c in points],
        "verdicts": verdicts(points, primary, task.higher_is_better),
        "report": lines,
        "runs": [r.to_dict() for r in results],
        **(extra or {}),
    }
    paths["json"].write_text(json.dumps(payload, indent=2, default=float))
    title = f"{name}: {config.get('title', '')}"
    png = (plot_curves if config.get("sweep") else plot_results)(results, primary, out / f"{name}.png", title)
    if png is not None:
        paths["png"] = png
    return paths, lines


# --------------------------------------------------------------------------
# The command flow
# --------------------------------------------------------------------------


def run_command(args, load, make_task, name: str, title) -> tuple | None:
    """The flow both commands share: threads, corpus, task, the planned runs,
    the reports. ``load(args, log)`` gives the corpus, ``make_task(corpus,
    args, log)`` the (Task, info) pair, ``title(info)`` the plot's title.
    Returns (results, info, paths, total seconds), or None (after printing
    why) when espeak-ng is missing."""
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    if args.threads:
        torch.set_num_threads(args.threads)
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
    info["split"] = describe_split(corpus.groups)
    results = train_points(points, task, cfg)
    total = time.perf_counter() - t_all
    config = dict(vars(args))
    config["prox_metric_used"] = cfg.prox_metric
    config["seeds"] = list(seeds)
    config["sweep"] = bool(args.sparsity or args.channel_sparsity)
    config["title"] = title(info)
    paths, lines = write_reports(results, task, Path(args.out), name, config, info, {"wall_time_s": total})
    print(results_table(results, task.primary))
    print("\n" + "\n".join(lines))
    return results, info, paths, total
