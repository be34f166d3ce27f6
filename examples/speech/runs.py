"""Four training runs side by side, with identical seeds, data order and
learning-rate schedules; only the regularization differs:

=============  ==============================================================
run            what
=============  ==============================================================
``dense``      ``torch.optim.AdamW`` (or the ``--optimizer`` chosen), no penalty
``l1-loss``    the same torch optimizer, ``λ·Σ|w|`` added to the loss
               (``proxopt.penalties.l1_penalty``): the usual recipe
``prox-l1``    ``proxopt.AdamW(l1=λ)``: fused soft threshold, exact zeros
               (``prox_metric`` from ``--prox-metric``: ``adaptive`` by
               default in the command lines, see :mod:`examples.speech.kws`)
``prox-group`` ``proxopt.AdamW(group_lasso=λ_g)``: fused block soft threshold
               on output channels (rows of Linear weights, output channels
               of Conv weights); the output layer's rows are the classes /
               output features, so it is grouped by input columns instead
               (``group_dim=1``: the last hidden units), which also leaves
               no layer free to grow its scale to escape the penalty
=============  ==============================================================

Every run regularizes the same tensors: Conv/Linear weights, selected with
:func:`proxopt.param_groups` (biases, norms and embeddings excluded), and
they all get the same ``weight_decay`` on those weights.

Per run this module measures the optimizer step (``opt.step()`` alone,
``time.perf_counter`` around it), forward+backward (including the loss
penalty of ``l1-loss``) and the whole training time; counts exact zeros and
all-zero output channels (:func:`proxopt.sparsity`); prunes the zero
channels with :func:`proxopt.pruning.prune_zero_channels` and times CPU
inference before and after. :func:`write_reports` writes a text table, a
JSON file and a PNG plot.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import proxopt
from proxopt.penalties import l1_penalty
from proxopt.pruning import prune_zero_channels

from . import data as D

RUN_NAMES = ("dense", "l1-loss", "prox-l1", "prox-group")
RUN_LABELS = {
    "dense": "torch {opt} (dense)",
    "l1-loss": "torch {opt} + λ·Σ|w| in loss",
    "prox-l1": "proxopt.{Opt}(l1=λ)",
    "prox-group": "proxopt.{Opt}(group_lasso=λ)",
}
OPTIMIZERS = {
    # name: (torch class, proxopt class, extra kwargs)
    "adamw": (torch.optim.AdamW, "AdamW", {}),
    "adam": (torch.optim.Adam, "Adam", {}),
    "sgd": (torch.optim.SGD, "SGD", {"momentum": 0.9}),
}
_REG_KEYS = ("l1", "l2", "l0", "bounds", "prox_metric", "group_lasso", "group_dim", "max_norm", "max_norm_dim")


def parse_runs(text: str) -> list[str]:
    runs = [r.strip() for r in text.split(",") if r.strip()]
    aliases = {"penalty": "l1-loss", "l1": "prox-l1", "group": "prox-group", "group-lasso": "prox-group"}
    runs = [aliases.get(r, r) for r in runs]
    bad = [r for r in runs if r not in RUN_NAMES]
    if bad or not runs:
        raise ValueError(f"unknown run(s) {bad}: choose from {', '.join(RUN_NAMES)}")
    return runs


def run_label(run: str, optimizer: str, prox_metric: str = "euclidean") -> str:
    cls = OPTIMIZERS[optimizer][1]
    label = RUN_LABELS[run].format(opt=cls, Opt=cls)
    if run == "prox-l1" and prox_metric != "euclidean":
        label = label[:-1] + f", {prox_metric})"
    return label


@dataclass
class TrainConfig:
    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 1e-2
    l1: float = 1e-3
    l1_loss: float | None = None  # λ of the l1-loss run (default: l1)
    prox_metric: str = "euclidean"  # of the prox-l1 run
    group_lasso: float = 1e-3
    epochs: int = 12
    batch_size: int = 64
    warmup: float = 0.05  # fraction of the steps with a linear lr warmup, then cosine decay
    seed: int = 0
    output_group_dim: int | None = 1  # group_dim of the output layer in prox-group (None: as the others, 0)
    log: Callable[[str], None] | None = print


@dataclass
class Task:
    """What a pipeline trains: data, model factory, loss and evaluation."""

    name: str
    make_model: Callable[[], nn.Sequential]
    train_x: Tensor
    train_y: Tensor
    loss: Callable[[Tensor, Tensor], Tensor]
    evaluate: Callable[[nn.Module], dict[str, float]]  # held-out metrics, model in eval mode
    primary: str  # the metric of the table/plot ("accuracy", "val_loss")
    higher_is_better: bool
    bench_input: Tensor  # a batch for inference timing
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None


@dataclass
class RunResult:
    run: str
    label: str
    metrics: dict[str, float]
    history: list[dict[str, float]]
    params: int
    zeros: int
    zero_fraction: float
    weight_zero_fraction: float
    zero_channels: int
    channels: int
    step_time_s: float  # sum over all opt.step() calls
    steps: int
    fwd_bwd_time_s: float
    train_time_s: float
    pruned_params: int
    pruned_max_abs_diff: float
    infer_ms: dict[str, float]  # batch latency before / after pruning
    sparsity: dict = field(default_factory=dict)
    pruning: dict = field(default_factory=dict)
    model: nn.Module | None = None
    pruned_model: nn.Module | None = None

    @property
    def step_ms(self) -> float:
        return 1e3 * self.step_time_s / max(1, self.steps)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("model", "pruned_model")}
        d["step_ms"] = self.step_ms
        return d


# --------------------------------------------------------------------------
# Optimizers
# --------------------------------------------------------------------------


def _output_layer(model: nn.Module) -> nn.Module | None:
    last = None
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            last = m
    return last


def make_optimizer(run: str, model: nn.Module, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, list[Tensor]]:
    """The optimizer of ``run`` and the tensors it regularizes."""
    torch_cls, prox_name, extra = OPTIMIZERS[cfg.optimizer]
    prox_cls = getattr(proxopt, prox_name)
    wd = cfg.weight_decay
    if run in ("dense", "l1-loss"):
        groups = proxopt.param_groups(model, weight_decay=wd)
        groups = [{k: v for k, v in g.items() if k not in _REG_KEYS} for g in groups]
        opt = torch_cls(groups, lr=cfg.lr, **extra)
        return opt, list(groups[0]["params"])
    if run == "prox-l1":
        groups = proxopt.param_groups(model, weight_decay=wd, l1=cfg.l1, prox_metric=cfg.prox_metric)
        return prox_cls(groups, lr=cfg.lr, **extra), list(groups[0]["params"])
    if run == "prox-group":
        groups = proxopt.param_groups(model, weight_decay=wd, group_lasso=cfg.group_lasso, names=True)
        regularized = list(groups[0]["params"])
        out = _output_layer(model)
        if cfg.output_group_dim is not None and out is not None and any(p is out.weight for p in regularized):
            # the output layer's rows are the classes / output features: never
            # zero them; its input columns (the last hidden units) are grouped
            # instead, so no layer escapes the penalty by growing its scale
            i = next(i for i, p in enumerate(groups[0]["params"]) if p is out.weight)
            name = groups[0]["param_names"].pop(i)
            groups[0]["params"].pop(i)
            groups.append({"params": [out.weight], "param_names": [name], "weight_decay": wd,
                           "group_lasso": cfg.group_lasso, "group_dim": cfg.output_group_dim})
            groups = [g for g in groups if g["params"]]
        return prox_cls(groups, lr=cfg.lr, **extra), regularized
    raise ValueError(f"unknown run {run!r}")


def _schedule(opt: torch.optim.Optimizer, total: int, warmup: float) -> torch.optim.lr_scheduler.LambdaLR:
    w = max(1, int(round(warmup * total)))

    def factor(step: int) -> float:
        if step < w:
            return (step + 1) / w
        t = (step - w) / max(1, total - w)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------


@torch.inference_mode()
def time_inference(model: nn.Module, x: Tensor, reps: int = 20, warmup: int = 3) -> float:
    """Median milliseconds of ``model(x)`` in eval mode on the CPU."""
    model.eval()
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


@torch.inference_mode()
def compare_inference(a: nn.Module, b: nn.Module, x: Tensor, reps: int = 30, warmup: int = 3) -> tuple[float, float]:
    """Median milliseconds of ``a(x)`` and ``b(x)``, measured alternately so
    that load changes on the machine hit both alike."""
    a.eval()
    b.eval()
    for _ in range(warmup):
        a(x)
        b(x)
    ta, tb = [], []
    for _ in range(reps):
        for m, acc in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            m(x)
            acc.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ta), 1e3 * statistics.median(tb)


def _channels(model: nn.Module, report: proxopt.SparsityReport) -> tuple[int, int]:
    zero = total = 0
    for p in report.params:
        if len(p.shape) >= 2 and 0 in p.zero_groups:
            z, n = p.zero_groups[0]
            zero += z
            total += n
    return zero, total


def train_run(run: str, task: Task, cfg: TrainConfig) -> RunResult:
    """Train one run of ``task``; everything random is seeded by ``cfg.seed``."""
    log = cfg.log or (lambda s: None)
    torch.manual_seed(cfg.seed)
    model = task.make_model()
    opt, regularized = make_optimizer(run, model, cfg)
    n = len(task.train_x)
    steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
    sched = _schedule(opt, cfg.epochs * steps_per_epoch, cfg.warmup)
    order_gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator().manual_seed(cfg.seed + 1)
    torch.manual_seed(cfg.seed + 2)  # dropout
    lam_loss = cfg.l1 if cfg.l1_loss is None else cfg.l1_loss
    step_time = fwd_bwd_time = 0.0
    steps = 0
    history = []
    t_start = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(n, generator=order_gen)
        total_loss = 0.0
        for b in range(steps_per_epoch):
            idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            x, y = task.train_x[idx], task.train_y[idx]
            if task.augment is not None:
                x = task.augment(x, aug_gen)
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = task.loss(model(x), y)
            total = loss + l1_penalty(regularized, lam_loss) if run == "l1-loss" else loss
            total.backward()
            t1 = time.perf_counter()
            opt.step()
            t2 = time.perf_counter()
            sched.step()
            fwd_bwd_time += t1 - t0
            step_time += t2 - t1
            steps += 1
            total_loss += loss.item() * len(idx)
        model.eval()
        metrics = task.evaluate(model)
        sp = proxopt.sparsity(model)
        history.append({"epoch": epoch + 1, "train_loss": total_loss / n, **metrics, "zero_fraction": sp.fraction})
        log(
            f"  [{run}] epoch {epoch + 1:2d}/{cfg.epochs}  train loss {total_loss / n:.4f}  "
            + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            + f"  zeros {sp.fraction:.1%}"
        )
    train_time = time.perf_counter() - t_start
    model.eval()
    metrics = task.evaluate(model)
    sp = proxopt.sparsity(model)
    zc, nc = _channels(model, sp)
    weights = [p for p in sp.params if len(p.shape) >= 2]
    w_numel = sum(p.numel for p in weights)
    w_zero = sum(p.zeros for p in weights)

    pruned, prep = prune_zero_channels(model, report=True)
    pruned.eval()
    with torch.inference_mode():
        diff = float((pruned(task.bench_input) - model(task.bench_input)).abs().max())
    before_b, after_b = compare_inference(model, pruned, task.bench_input)
    before_1, after_1 = compare_inference(model, pruned, task.bench_input[:1], reps=100)
    infer = {
        "batch": int(len(task.bench_input)),
        "before_batch_ms": before_b,
        "after_batch_ms": after_b,
        "before_1_ms": before_1,
        "after_1_ms": after_1,
    }
    return RunResult(
        run=run,
        label=run_label(run, cfg.optimizer, cfg.prox_metric),
        metrics=metrics,
        history=history,
        params=sp.numel,
        zeros=sp.zeros,
        zero_fraction=sp.fraction,
        weight_zero_fraction=w_zero / max(1, w_numel),
        zero_channels=zc,
        channels=nc,
        step_time_s=step_time,
        steps=steps,
        fwd_bwd_time_s=fwd_bwd_time,
        train_time_s=train_time,
        pruned_params=prep.params_after,
        pruned_max_abs_diff=diff,
        infer_ms=infer,
        sparsity=sp.to_dict(),
        pruning=prep.to_dict(),
        model=model,
        pruned_model=pruned,
    )


def train_runs(runs: Sequence[str], task: Task, cfg: TrainConfig) -> list[RunResult]:
    results = []
    log = cfg.log or (lambda s: None)
    for run in runs:
        log(f"[{task.name}] run {run}: {run_label(run, cfg.optimizer, cfg.prox_metric)}")
        results.append(train_run(run, task, cfg))
    return results


# --------------------------------------------------------------------------
# Command lines
# --------------------------------------------------------------------------


def add_common_args(p, defaults: dict[str, Any]) -> None:
    """The options both pipelines share (the four runs, schedule, output)."""
    p.add_argument("--data", help="corpus .npz (default: synthesize the espeak-ng corpus, cached)")
    p.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default="adamw", help="optimizer family of all four runs (default adamw)")
    p.add_argument("--lr", type=float, default=defaults["lr"], help="peak learning rate (linear warmup, cosine decay)")
    p.add_argument("--weight-decay", type=float, default=defaults["weight_decay"], help="on Conv/Linear weights, every run")
    p.add_argument("--l1", type=float, default=defaults["l1"], help="λ of the l1-loss and prox-l1 runs")
    p.add_argument("--l1-loss", type=float, help="λ of the l1-loss run only (default: --l1)")
    p.add_argument(
        "--prox-metric",
        choices=("adaptive", "euclidean"),
        default="adaptive",
        help="prox_metric of the prox-l1 run; 'adaptive' (default) scales the threshold by Adam's 1/sqrt(v) like the "
        "gradient of a loss penalty, so the same λ means the same thing in l1-loss and prox-l1 (SGD: euclidean)",
    )
    p.add_argument("--group-lasso", type=float, default=defaults["group_lasso"], help="λ of the prox-group run")
    p.add_argument("--epochs", type=int, default=defaults["epochs"])
    p.add_argument("--batch-size", type=int, default=defaults["batch_size"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=defaults["out"], help="output directory (default %(default)s)")
    p.add_argument("--runs", default=",".join(RUN_NAMES), help=f"comma list of {', '.join(RUN_NAMES)}")
    p.add_argument("--test-fraction", type=float, default=0.2, help="fraction of speakers (groups) held out")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a small machine shared with other work, more threads oversubscribe; "
        "0 keeps torch's default)",
    )
    p.add_argument("--cache", help="corpus cache directory (default $PROXOPT_CACHE or ~/.cache/proxopt)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")


def config_from_args(args, log) -> TrainConfig:
    metric = args.prox_metric
    if args.optimizer == "sgd" and metric == "adaptive":
        metric = "euclidean"  # SGD has no preconditioner
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
        log=log,
    )


# --------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------


def _fmt_metric(name: str, v: float) -> str:
    return f"{v:.2%}" if name == "accuracy" else f"{v:.4f}"


def results_table(results: Sequence[RunResult], primary: str) -> str:
    header = (
        "run",
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
        rows.append(
            (
                r.run,
                r.label,
                _fmt_metric(primary, r.metrics[primary]),
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
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "-|-".join("-" * w for w in widths))
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    try:
        backend = proxopt.backend_info()
    except Exception as e:  # pragma: no cover
        backend = {"error": str(e)}
    return {
        "torch": torch.__version__,
        "proxopt": getattr(proxopt, "__version__", "?"),
        "backend": backend,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def plot_results(results: Sequence[RunResult], primary: str, path: Path, title: str) -> Path | None:
    """Accuracy (or validation loss) vs sparsity, optimizer-step time, and the
    pruned size; returns the path, or None when matplotlib is missing."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return None
    colors = {"dense": "#555555", "l1-loss": "#d95f02", "prox-l1": "#1b9e77", "prox-group": "#7570b3"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    ax = axes[0]
    for r in results:
        c = colors.get(r.run, "k")
        ax.scatter([100 * r.zero_fraction], [r.metrics[primary] * (100 if primary == "accuracy" else 1)], s=70, color=c, label=f"{r.run}: exact zeros")
        ax.scatter(
            [100 * r.zero_channels / max(1, r.channels)],
            [r.metrics[primary] * (100 if primary == "accuracy" else 1)],
            s=70,
            facecolors="none",
            edgecolors=c,
            marker="s",
            label=f"{r.run}: zero channels",
        )
    ax.set_xlabel("sparsity (%): filled = exact-zero weights, hollow = all-zero channels")
    ax.set_ylabel("held-out accuracy (%)" if primary == "accuracy" else f"validation {primary.replace('_', ' ')}")
    ax.set_title(f"{primary.replace('_', ' ')} vs sparsity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax = axes[1]
    names = [r.run for r in results]
    ax.bar(names, [r.step_ms for r in results], color=[colors.get(n, "k") for n in names])
    for i, r in enumerate(results):
        ax.text(i, r.step_ms, f"{r.step_ms:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("ms per opt.step()")
    ax.set_title("optimizer step time (opt.step() only)")
    ax.grid(alpha=0.3, axis="y")
    ax = axes[2]
    x = range(len(results))
    ax.bar([i - 0.2 for i in x], [r.params / 1e3 for r in results], width=0.4, label="params (k)", color="#bbbbbb")
    ax.bar([i + 0.2 for i in x], [r.pruned_params / 1e3 for r in results], width=0.4, label="after pruning (k)", color="#7570b3")
    ax.set_xticks(list(x), names)
    ax.set_ylabel("parameters (thousands)")
    ax.set_title("size after prune_zero_channels")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_reports(
    results: Sequence[RunResult], primary: str, out: Path, name: str, config: dict[str, Any], extra: dict[str, Any] | None = None
) -> dict[str, Path]:
    """``<name>.txt`` (table), ``<name>.json`` (everything), ``<name>.png`` (plot) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    table = results_table(results, primary)
    paths = {"table": out / f"{name}.txt", "json": out / f"{name}.json"}
    paths["table"].write_text(table + "\n")
    payload = {"config": config, "environment": environment(), "runs": [r.to_dict() for r in results], **(extra or {})}
    paths["json"].write_text(json.dumps(payload, indent=2, default=float))
    png = plot_results(results, primary, out / f"{name}.png", f"{name}: {config.get('title', '')}")
    if png is not None:
        paths["png"] = png
    return paths


def run_command(args, load, make_task, metric: str, name: str, title) -> tuple | None:
    """The flow both commands share: threads, corpus, task, the four runs, the
    reports. ``load(args, log)`` gives the corpus, ``make_task(corpus, args,
    log)`` the (Task, info) pair, ``title(info)`` the plot's title. Returns
    (results, info, paths, total seconds), or None (after printing why) when
    espeak-ng is missing."""
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    if args.threads:
        torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    runs = parse_runs(args.runs)
    try:
        corpus = load(args, log)
    except D.EspeakUnavailableError as e:
        print(f"error: {e}", file=sys.stderr)
        return None
    task, info = make_task(corpus, args, log)
    cfg = config_from_args(args, log)
    results = train_runs(runs, task, cfg)
    total = time.perf_counter() - t_all
    config = dict(vars(args))
    config["prox_metric_used"] = cfg.prox_metric
    config["title"] = title(info)
    paths = write_reports(results, metric, Path(args.out), name, config, {"data": info, "wall_time_s": total})
    print(results_table(results, metric))
    return results, info, paths, total
