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

``budget-heal`` (proxopt's sparsity budget on the magnitude schedule, then
heal) and ``l1-heal`` (``prox-l1`` then heal) also take ``--sparsity``
targets, but only when named in ``--runs`` (they are not in the default
sweep, whose timings are below), e.g.
``--runs dense,magnitude,budget-heal,l1-heal``.

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

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from .magnitude import check_fraction
from .results import RunResult
from .runs import CHANNELS, CONTROLLED, DEFAULT_RUNS, RUNS, TARGET_UNITS, ZEROS, Task, TrainConfig, run_label, train_run

# the option that lists the targets of each kind
TARGET_OPTIONS = {ZEROS: "--sparsity", CHANNELS: "--channel-sparsity"}


# --------------------------------------------------------------------------
# Plan
# --------------------------------------------------------------------------


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
        runs = ["dense"] + [n for n, s in RUNS.items() if s.kind is not None and s.in_sweep and targets[s.kind]]
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
    return c.target is not None and c.run in CONTROLLED


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
