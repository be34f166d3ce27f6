"""The sweep's table, figures (accuracy–sparsity curves, or per-run marks
without targets) and ``<name>.txt`` / ``.json`` / ``.png``, written by the
shared writer of :mod:`examples.speech.reports`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .reports import Column, bars, pyplot, results_table, save_figure, write_reports
from .results import RunResult
from .runs import CHANNELS, CONTROLLED, RUNS, TARGET_UNITS, ZEROS, Task
from .sweep import curves, landed, report_lines, verdicts


def fmt_metric(name: str, v: float) -> str:
    return f"{v:.2%}" if name == "accuracy" else f"{v:.4f}"


def columns(primary: str) -> list[Column]:
    """The table: one row per run (per target and seed)."""
    return [
        ("run", lambda r: r.run),
        ("target", lambda r: "-" if r.target is None else f"{r.target:.0%} {TARGET_UNITS[RUNS[r.run].kind]}"),
        ("seed", lambda r: str(r.seed)),
        ("optimizer / regularizer", lambda r: r.label),
        (primary.replace("_", " "), lambda r: fmt_metric(primary, r.metrics[primary])),
        ("exact zeros", lambda r: f"{r.zero_fraction:.2%}"),
        ("weight zeros", lambda r: f"{r.weight_zero_fraction:.2%}"),
        ("zero channels", lambda r: f"{r.zero_channels}/{r.channels}"),
        ("step ms", lambda r: f"{r.step_ms:.2f}"),
        ("fwd+bwd ms", lambda r: f"{1e3 * r.fwd_bwd_time_s / max(1, r.steps):.1f}"),
        ("train s", lambda r: f"{r.train_time_s:.1f}"),
        ("params → pruned", lambda r: f"{r.params} → {r.pruned_params}"),
        ("infer ms (batch) before → after", lambda r: f"{r.infer_ms['before_batch_ms']:.2f} → {r.infer_ms['after_batch_ms']:.2f}"),
    ]


RUN_COLORS = {"dense": "#555555", "l1-loss": "#d95f02", "prox-l1": "#1b9e77", "prox-group": "#7570b3",
              "magnitude": "#e7298a", "magnitude-structured": "#e6ab02",
              "budget-heal": "#1f78b4", "l1-heal": "#66a61e", "channel-budget-heal": "#a6761d"}  # fmt: skip


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
            label = run + (" (SparsityTarget)" if run in CONTROLLED else "")
            ax.errorbar(x, y, xerr=xerr, yerr=yerr, marker="o", ms=6, capsize=4, lw=1.6, color=RUN_COLORS.get(run, "k"), label=label)
        for t in sorted({c.target for c in points if c.kind == kind and c.target is not None}):
            ax.axvline(100 * t, color="#999999", ls=":", lw=0.8)
        ax.set_xlabel("exact-zero weights (%)" if kind == ZEROS else "channels removed (%), all layers but the output")
        ax.set_ylabel(_ylabel(primary))
        ax.set_title(("unstructured: " if kind == ZEROS else "structured: ") + f"{primary.replace('_', ' ')} vs {TARGET_UNITS[kind]}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(plt, fig, path, title + "  (mean over seeds, bars: min–max; dotted: targets)")


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
    colors = [RUN_COLORS.get(r.run, "k") for r in results]
    bars(axes[1], names, [([r.step_ms for r in results], None, colors)], ylabel="ms per opt.step()",
         title="optimizer step time (opt.step() only)", annotate=True)  # fmt: skip
    bars(axes[2], names, [([r.params / 1e3 for r in results], "params (k)", "#bbbbbb"),
                          ([r.pruned_params / 1e3 for r in results], "after pruning (k)", "#7570b3")],
         ylabel="parameters (thousands)", title="size after prune_zero_channels")  # fmt: skip
    return save_figure(plt, fig, path, title)


def point_dict(r: RunResult, primary: str) -> dict[str, Any]:
    """One trained point, compact (the full run is in ``runs``)."""
    return {
        "run": r.run, "kind": RUNS[r.run].kind, "target": r.target, "seed": r.seed, primary: r.metrics[primary],
        "metrics": r.metrics, "landed": landed(r), "weight_zero_fraction": r.weight_zero_fraction,
        "zero_fraction": r.zero_fraction, "zero_channels": r.zero_channels, "channels": r.channels,
        "channel_fraction": r.channel_fraction, "params": r.params, "pruned_params": r.pruned_params,
        "step_ms": r.step_ms, "train_time_s": r.train_time_s, "control": r.control,
    }  # fmt: skip


def report(results: Sequence[RunResult], task: Task, out: Path, name: str, config: dict[str, Any],
           info: dict[str, Any], extra: dict[str, Any] | None = None) -> tuple[dict[str, Path], list[str]]:  # fmt: skip
    """``<name>.txt`` (table and report), ``<name>.json`` (everything),
    ``<name>.png`` (the curves with targets, else the per-run overview) in
    ``out``; returns the paths and the report's lines."""
    primary = task.primary
    lines = report_lines(results, task, info)
    points = curves(results, primary)
    payload = {
        "config": config,
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
    title = f"{name}: {config.get('title', '')}"
    plot = plot_curves if config.get("sweep") else plot_results
    text = results_table(results, columns(primary)) + "\n\n" + "\n".join(lines)
    return write_reports(out, name, text, payload, {"png": lambda path: plot(results, primary, path, title)}), lines
