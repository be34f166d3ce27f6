"""Training runs side by side, with identical seeds, data order and
learning-rate schedules; only the regularization differs:

========================  ===================================================
run                       what
========================  ===================================================
``dense``                 ``torch.optim.AdamW`` (or the ``--optimizer``
                          chosen), no penalty
``l1-loss``               the same torch optimizer, ``λ·Σ|w|`` added to the
                          loss (``proxopt.penalties.l1_penalty``): the usual
                          recipe
``prox-l1``               ``proxopt.AdamW(l1=λ)``: fused soft threshold,
                          exact zeros (``prox_metric`` from
                          ``--prox-metric``: ``adaptive`` by default in the
                          command lines, see :mod:`examples.speech.kws`).
                          With a target, ``proxopt.SparsityTarget`` steers λ
                          to that fraction of exact zeros
``prox-group``            ``proxopt.AdamW(group_lasso=λ_g)``: fused block
                          soft threshold on output channels (rows of Linear
                          weights, output channels of Conv weights); the
                          output layer's rows are the classes / output
                          features, so it is grouped by input columns
                          instead (``group_dim=1``: the last hidden units),
                          which also leaves no layer free to grow its scale
                          to escape the penalty. With a target, the
                          controller steers λ_g to that fraction of channels
``magnitude``             the dense torch optimizer, plus gradual global
                          unstructured magnitude pruning to a fraction of
                          exact zeros (:mod:`examples.speech.magnitude`;
                          default target 0.9)
``magnitude-structured``  the dense torch optimizer, plus gradual pruning of
                          output channels by L2 norm, layer by layer, to a
                          fraction of channels (default target 0.5); the
                          output layer's rows are never pruned
========================  ===================================================

Every run regularizes the same tensors: Conv/Linear weights, selected with
:func:`proxopt.param_groups` (biases, norms and embeddings excluded), and
they all get the same ``weight_decay`` on those weights.

What a target measures, for the table, the controller and the pruners alike:

* *exact zeros* (``weight_zero_fraction``): zero entries over all those
  weights, output layer included;
* *channels removed* (``zero_channels / channels``): all-zero output
  channels (rows) of those layers *except the output layer*, whose rows are
  the classes / output features and are never removed. (``prox-group``'s
  zeroed output-layer columns are not counted: a hidden unit counts once its
  own row is zero, which is what :func:`proxopt.pruning.prune_zero_channels`
  needs to remove it.)

Both targets are reached at the same step: the end of the magnitude
schedule's pruning window (``--prune-window``, by default 10 %–70 % of the
steps), which is the controller's ``by_step``; every method then trains the
remaining 30 % at its target.

A run is a :class:`RunSpec` (its name, its label, the kind of target it
takes) whose ``build`` gives a :class:`Regime`: the optimizer, the tensors it
regularizes, and three hooks the one training loop calls — a loss term, an
``after_step`` (pruning events, the controller) and a ``finish`` (masks made
permanent). Per run this module measures the optimizer step
(``opt.step()`` alone, ``time.perf_counter`` around it), forward+backward
(including the loss penalty of ``l1-loss``), the hooks and the whole
training time; counts exact zeros and all-zero output channels; prunes the
zero channels with :func:`proxopt.pruning.prune_zero_channels` and times CPU
inference before and after. The sweep over targets and seeds, its reports
and the command-line flow are in :mod:`examples.speech.sweep`.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

import proxopt
from proxopt.penalties import l1_penalty
from proxopt.pruning import prune_zero_channels

from .magnitude import ChannelMagnitudePruning, CubicSchedule, GlobalMagnitudePruning, check_fraction, effective_weight

OPTIMIZERS = {
    # name: (torch class, proxopt class, extra kwargs)
    "adamw": (torch.optim.AdamW, "AdamW", {}),
    "adam": (torch.optim.Adam, "Adam", {}),
    "sgd": (torch.optim.SGD, "SGD", {"momentum": 0.9}),
}
_REG_KEYS = ("l1", "l2", "l0", "bounds", "prox_metric", "group_lasso", "group_dim", "max_norm", "max_norm_dim")
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

# what a target is a fraction of (see the module docstring)
ZEROS = "zeros"  # exact-zero entries of the regularized weights
CHANNELS = "channels"  # all-zero output channels of the regularized layers but the output layer
TARGET_UNITS = {ZEROS: "zeros", CHANNELS: "channels removed"}


@dataclass
class TrainConfig:
    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 1e-2
    l1: float = 1e-3  # λ of prox-l1 (the controller's starting value with a target)
    l1_loss: float | None = None  # λ of the l1-loss run (default: l1)
    prox_metric: str = "euclidean"  # of the prox-l1 run
    group_lasso: float = 1e-3  # λ of prox-group (the controller's starting value with a target)
    epochs: int = 12
    batch_size: int = 64
    warmup: float = 0.05  # fraction of the steps with a linear lr warmup, then cosine decay
    seed: int = 0
    output_group_dim: int | None = 1  # group_dim of the output layer in prox-group (None: as the others, 0)
    prune_window: tuple[float, float] = (0.1, 0.7)  # fractions of the steps: where targets are approached
    prune_every: int = 0  # steps between magnitude pruning events (0: about 20 events in the window)
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


def describe_split(groups: Any) -> str:
    """How the held-out set was chosen, given the corpus's ``groups`` (None
    when the file has none: every utterance is then its own group, i.e. a
    plain random split, and speakers may appear on both sides)."""
    return "random: the file has no groups" if groups is None else "by group (speaker-disjoint)"


@dataclass
class RunResult:
    run: str
    label: str
    target: float | None  # the fraction asked for (None: fixed λ)
    seed: int
    metrics: dict[str, float]
    history: list[dict[str, float]]
    params: int
    zeros: int
    zero_fraction: float  # over every parameter
    weight_zero_fraction: float  # over the regularized weights: what a ZEROS target measures
    zero_channels: int  # of the non-output layers: what a CHANNELS target measures
    channels: int
    step_time_s: float  # sum over all opt.step() calls
    steps: int
    fwd_bwd_time_s: float
    hook_time_s: float  # after_step hooks: pruning events, the controller
    train_time_s: float
    pruned_params: int
    pruned_max_abs_diff: float
    infer_ms: dict[str, float]  # batch latency before / after pruning
    control: dict = field(default_factory=dict)  # what the controller / the pruner did
    sparsity: dict = field(default_factory=dict)
    pruning: dict = field(default_factory=dict)
    model: nn.Module | None = None
    pruned_model: nn.Module | None = None

    @property
    def step_ms(self) -> float:
        return 1e3 * self.step_time_s / max(1, self.steps)

    @property
    def channel_fraction(self) -> float:
        return self.zero_channels / self.channels if self.channels else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("model", "pruned_model")}
        d["step_ms"] = self.step_ms
        d["channel_fraction"] = self.channel_fraction
        return d


# --------------------------------------------------------------------------
# Which tensors, which channels
# --------------------------------------------------------------------------


def _output_layer(model: nn.Module) -> nn.Module | None:
    last = None
    for m in model.modules():
        if isinstance(m, _LAYERS):
            last = m
    return last


def regularized_layers(model: nn.Module) -> list[nn.Module]:
    """The Conv/Linear layers whose weights every run regularizes: those
    :func:`proxopt.param_groups` puts in its regularized group."""
    chosen = {id(p) for p in proxopt.param_groups(model, weight_decay=1.0)[0]["params"]}
    return [m for m in model.modules() if isinstance(m, _LAYERS) and id(effective_param(m)) in chosen]


def channel_layers(model: nn.Module) -> list[nn.Module]:
    """The layers whose output channels may be removed: the regularized ones
    but the output layer (its rows are the classes / output features)."""
    out = _output_layer(model)
    return [m for m in regularized_layers(model) if m is not out]


def effective_param(m: nn.Module) -> Tensor:
    """The weight parameter object (``weight_orig`` under torch's pruning)."""
    return getattr(m, "weight_orig", None) if hasattr(m, "weight_mask") else m.weight


def count_zeros(model: nn.Module) -> dict[str, int]:
    """Exact zeros of the regularized weights and all-zero channels of the
    channel layers, as the forward pass sees them (masks applied)."""
    zeros = numel = zero_ch = ch = 0
    with torch.no_grad():
        for m in regularized_layers(model):
            w = effective_weight(m)
            zeros += int((w == 0).sum())
            numel += w.numel()
        for m in channel_layers(model):
            w = effective_weight(m)
            zero_ch += int((w.reshape(w.shape[0], -1) == 0).all(dim=1).sum())
            ch += w.shape[0]
    return {"zeros": zeros, "numel": numel, "zero_channels": zero_ch, "channels": ch}


def measured_fraction(kind: str, counts: dict[str, int]) -> float:
    """The fraction a target of ``kind`` is compared with."""
    if kind == ZEROS:
        return counts["zeros"] / max(1, counts["numel"])
    if kind == CHANNELS:
        return counts["zero_channels"] / max(1, counts["channels"])
    raise ValueError(f"Invalid kind value: {kind!r} (one of {tuple(TARGET_UNITS)})")


# --------------------------------------------------------------------------
# Runs: optimizer plus hooks
# --------------------------------------------------------------------------


@dataclass
class Regime:
    """How one run regularizes: the optimizer, the tensors it regularizes,
    and what the training loop calls besides ``opt.step()``."""

    optimizer: torch.optim.Optimizer
    regularized: list[Tensor]
    loss_term: Callable[[], Tensor] | None = None  # added to the loss (l1-loss)
    after_step: Callable[[int], None] | None = None  # after optimizer step t (1-based) and the lr step
    finish: Callable[[], dict] | None = None  # after the last step; returns what it did (JSON-able)


@dataclass(frozen=True)
class Budget:
    """What a run is asked for: a target (None: fixed λ) over ``total_steps``."""

    target: float | None
    total_steps: int


@dataclass(frozen=True)
class RunSpec:
    name: str
    label: str  # {opt}/{Opt}: the optimizer class name
    kind: str | None  # what a target is a fraction of (ZEROS / CHANNELS); None: takes no target
    default_target: float | None  # the target without a sweep (None: fixed λ)
    build: Callable[[nn.Module, "TrainConfig", Budget], Regime]


def pruning_schedule(cfg: TrainConfig, budget: Budget) -> CubicSchedule:
    """The magnitude runs' schedule; its ``end`` is also the controller's ``by_step``."""
    return CubicSchedule.over(budget.target, budget.total_steps, cfg.prune_window, cfg.prune_every)


def _torch_optimizer(model: nn.Module, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, list[Tensor]]:
    torch_cls, _, extra = OPTIMIZERS[cfg.optimizer]
    groups = proxopt.param_groups(model, weight_decay=cfg.weight_decay)
    groups = [{k: v for k, v in g.items() if k not in _REG_KEYS} for g in groups]
    return torch_cls(groups, lr=cfg.lr, **extra), list(groups[0]["params"])


def _prox_class(cfg: TrainConfig):
    return getattr(proxopt, OPTIMIZERS[cfg.optimizer][1])


# The controllers measure and adapt this often (at most; less when magnitude
# pruning prunes more often): a measurement is one read of the weights, far
# cheaper than a step, and the controller needs many looks to settle its λ.
CONTROL_EVERY = 5


def _controlled(opt: torch.optim.Optimizer, regularized: list[Tensor], key: str, cfg: TrainConfig, budget: Budget,
                controlled: Sequence[list[int] | None] = (None,), followers: dict[int, int] | None = None) -> Regime:  # fmt: skip
    """``opt`` with one ``proxopt.SparsityTarget`` per entry of ``controlled``
    (a list of param-group indices, or None: every group with ``key`` > 0)
    steering ``key`` to the target by the end of the pruning window. Their
    ramps start at step 0 (the controller's default), the magnitude ramp at
    the window's start: what both share is the step at which the target is
    due.

    ``followers`` maps a param group that is not measured to the controller
    whose factor λ/λ₀ it takes (the output layer's column groups zero the
    same hidden units as the last hidden layer's rows)."""
    followers = followers or {}
    schedule = pruning_schedule(cfg, budget)
    by_step = schedule.end
    every = max(1, min(schedule.every, CONTROL_EVERY))
    ctls = [proxopt.SparsityTarget(opt, target=budget.target, by_step=by_step, key=key, groups=g, every=every) for g in controlled]
    lead = [(c.groups[0], opt.param_groups[c.groups[0]][key]) for c in ctls]
    base = {i: opt.param_groups[i][key] for i in followers}

    def after_step(t: int) -> None:
        for c in ctls:
            c.step()
        for i, j in followers.items():
            g, g0 = lead[j]
            opt.param_groups[i][key] = base[i] * opt.param_groups[g][key] / g0

    def finish() -> dict:
        return {
            "controller": "proxopt.SparsityTarget",
            "key": key,
            "target": budget.target,
            "by_step": by_step,
            "every": every,
            "groups": [c.groups for c in ctls],
            "followers": followers,
            "measured": [float(c.measured) for c in ctls],
            "last_value": [float(g[key]) for g in opt.param_groups],
        }

    return Regime(opt, regularized, after_step=after_step, finish=finish)


def _pruned(opt: torch.optim.Optimizer, regularized: list[Tensor], pruner) -> Regime:
    def finish() -> dict:
        pruner.finish()
        s = pruner.schedule
        return {"pruner": type(pruner).__name__, "final": s.final, "start": s.start, "every": s.every,
                "events": s.events, "end": s.end, "pruning_events": pruner.events}  # fmt: skip

    return Regime(opt, regularized, after_step=pruner.step, finish=finish)


def _build_dense(model: nn.Module, cfg: TrainConfig, budget: Budget) -> Regime:
    return Regime(*_torch_optimizer(model, cfg))


def _build_l1_loss(model: nn.Module, cfg: TrainConfig, budget: Budget) -> Regime:
    opt, regularized = _torch_optimizer(model, cfg)
    lam = cfg.l1 if cfg.l1_loss is None else cfg.l1_loss
    return Regime(opt, regularized, loss_term=lambda: l1_penalty(regularized, lam))


def _build_prox_l1(model: nn.Module, cfg: TrainConfig, budget: Budget) -> Regime:
    _, _, extra = OPTIMIZERS[cfg.optimizer]
    groups = proxopt.param_groups(model, weight_decay=cfg.weight_decay, l1=cfg.l1, prox_metric=cfg.prox_metric)
    opt, regularized = _prox_class(cfg)(groups, lr=cfg.lr, **extra), list(groups[0]["params"])
    if budget.target is None:
        return Regime(opt, regularized)
    return _controlled(opt, regularized, "l1", cfg, budget)


def _build_prox_group(model: nn.Module, cfg: TrainConfig, budget: Budget) -> Regime:
    _, _, extra = OPTIMIZERS[cfg.optimizer]
    groups = proxopt.param_groups(model, weight_decay=cfg.weight_decay, group_lasso=cfg.group_lasso, names=True)
    regularized = list(groups[0]["params"])
    out = _output_layer(model)
    if cfg.output_group_dim is not None and out is not None and any(p is out.weight for p in regularized):
        # the output layer's rows are the classes / output features: never
        # zero them; its input columns (the last hidden units) are grouped
        # instead, so no layer escapes the penalty by growing its scale
        i = next(i for i, p in enumerate(groups[0]["params"]) if p is out.weight)
        name = groups[0]["param_names"].pop(i)
        groups[0]["params"].pop(i)
        groups.append({"params": [out.weight], "param_names": [name], "weight_decay": cfg.weight_decay,
                       "group_lasso": cfg.group_lasso, "group_dim": cfg.output_group_dim})  # fmt: skip
        groups = [g for g in groups if g["params"]]
    if budget.target is None:
        return Regime(_prox_class(cfg)(groups, lr=cfg.lr, **extra), regularized)
    # With a target: one param group and one controller per channel layer, so
    # that every layer keeps the target fraction of its own channels, as
    # magnitude-structured prunes each layer to it (a pooled fraction lets a
    # group lasso empty whole middle layers: measured, the run fell to
    # chance). The output layer's columns follow the last hidden layer.
    layers = channel_layers(model)
    if not layers:
        raise ValueError("Invalid model for a channel target: it has no Conv/Linear layer before the output layer")
    by_layer = [{"params": [m.weight], "weight_decay": cfg.weight_decay, "group_lasso": cfg.group_lasso} for m in layers]
    chosen = {id(m.weight) for m in layers}
    rest = [{**g, "params": [p for p in g["params"] if id(p) not in chosen]} for g in groups]
    rest = [{k: v for k, v in g.items() if k != "param_names"} for g in rest if g["params"]]
    opt = _prox_class(cfg)(by_layer + rest, lr=cfg.lr, **extra)
    followers = {len(layers) + i: len(layers) - 1 for i, g in enumerate(rest) if g.get("group_lasso", 0) > 0}
    return _controlled(opt, regularized, "group_lasso", cfg, budget, [[i] for i in range(len(layers))], followers)


def _build_magnitude(model: nn.Module, cfg: TrainConfig, budget: Budget) -> Regime:
    opt, regularized = _torch_optimizer(model, cfg)
    return _pruned(opt, regularized, GlobalMagnitudePruning(regularized_layers(model), pruning_schedule(cfg, budget)))


def _build_magnitude_structured(model: nn.Module, cfg: TrainConfig, budget: Budget) -> Regime:
    opt, regularized = _torch_optimizer(model, cfg)
    return _pruned(opt, regularized, ChannelMagnitudePruning(channel_layers(model), pruning_schedule(cfg, budget)))


RUNS: dict[str, RunSpec] = {
    s.name: s
    for s in (
        RunSpec("dense", "torch {opt} (dense)", None, None, _build_dense),
        RunSpec("l1-loss", "torch {opt} + λ·Σ|w| in loss", None, None, _build_l1_loss),
        RunSpec("prox-l1", "proxopt.{Opt}(l1=λ)", ZEROS, None, _build_prox_l1),
        RunSpec("prox-group", "proxopt.{Opt}(group_lasso=λ)", CHANNELS, None, _build_prox_group),
        RunSpec("magnitude", "torch {opt} + global magnitude pruning", ZEROS, 0.9, _build_magnitude),
        RunSpec("magnitude-structured", "torch {opt} + L2 channel pruning", CHANNELS, 0.5, _build_magnitude_structured),
    )
}
RUN_NAMES = tuple(RUNS)
DEFAULT_RUNS = ("dense", "l1-loss", "prox-l1", "prox-group")  # without a sweep
_ALIASES = {"penalty": "l1-loss", "l1": "prox-l1", "group": "prox-group", "group-lasso": "prox-group",
            "mag": "magnitude", "magnitude-channels": "magnitude-structured"}  # fmt: skip


def parse_runs(text: str) -> list[str]:
    runs = [r.strip() for r in text.split(",") if r.strip()]
    runs = [_ALIASES.get(r, r) for r in runs]
    bad = [r for r in runs if r not in RUNS]
    if bad or not runs:
        raise ValueError(f"Invalid --runs value: unknown run(s) {bad}: choose from {', '.join(RUN_NAMES)}")
    if len(set(runs)) != len(runs):
        raise ValueError(f"Invalid --runs value: {text!r} lists a run twice")
    return runs


def run_label(run: str, optimizer: str, prox_metric: str = "euclidean", target: float | None = None) -> str:
    cls = OPTIMIZERS[optimizer][1]
    label = RUNS[run].label.format(opt=cls, Opt=cls)
    if run == "prox-l1" and prox_metric != "euclidean":
        label = label[:-1] + f", {prox_metric})"
    if target is not None and run.startswith("prox-"):
        label += " + SparsityTarget"
    return label


def lr_schedule(opt: torch.optim.Optimizer, total: int, warmup: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over the first ``warmup`` fraction of ``total`` steps, then cosine decay to 0 (every run of every recipe)."""
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


def text_table(rows: Sequence[Sequence[str]]) -> str:
    """Rows of cells (the first is the header) as aligned text columns, a rule under the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "-|-".join("-" * w for w in widths))
    return "\n".join(lines)


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only), or None when matplotlib is missing."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return None
    return plt


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


def resolve_target(run: str, target: float | None) -> float | None:
    """The target a run trains to: the one given, or the run's default
    (magnitude runs); checked against what the run accepts."""
    spec = RUNS[run]
    if target is None:
        return spec.default_target
    if spec.kind is None:
        raise ValueError(f"Invalid target value: {target!r} (run {run!r} takes no sparsity target)")
    return check_fraction(target)


def train_run(run: str, task: Task, cfg: TrainConfig, target: float | None = None) -> RunResult:
    """Train one run of ``task`` (to ``target``, a fraction of the run's
    kind, when given); everything random is seeded by ``cfg.seed``."""
    if run not in RUNS:
        raise ValueError(f"Invalid run value: {run!r} (choose from {', '.join(RUN_NAMES)})")
    target = resolve_target(run, target)
    log = cfg.log or (lambda s: None)
    torch.manual_seed(cfg.seed)
    model = task.make_model()
    n = len(task.train_x)
    steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
    total_steps = cfg.epochs * steps_per_epoch
    regime = RUNS[run].build(model, cfg, Budget(target, total_steps))
    opt = regime.optimizer
    sched = lr_schedule(opt, total_steps, cfg.warmup)
    order_gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator().manual_seed(cfg.seed + 1)
    torch.manual_seed(cfg.seed + 2)  # dropout
    step_time = fwd_bwd_time = hook_time = 0.0
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
            total = loss + regime.loss_term() if regime.loss_term is not None else loss
            total.backward()
            t1 = time.perf_counter()
            opt.step()
            t2 = time.perf_counter()
            sched.step()
            steps += 1
            t3 = time.perf_counter()
            if regime.after_step is not None:
                regime.after_step(steps)
            fwd_bwd_time += t1 - t0
            step_time += t2 - t1
            hook_time += time.perf_counter() - t3
            total_loss += loss.item() * len(idx)
        model.eval()
        metrics = task.evaluate(model)
        c = count_zeros(model)
        zeros, chans = measured_fraction(ZEROS, c), measured_fraction(CHANNELS, c)
        history.append({"epoch": epoch + 1, "train_loss": total_loss / n, **metrics, "weight_zero_fraction": zeros, "channel_fraction": chans})
        log(
            f"  [{run}] epoch {epoch + 1:2d}/{cfg.epochs}  train loss {total_loss / n:.4f}  "
            + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            + f"  zeros {zeros:.1%}  channels {chans:.1%}"
        )
    control = regime.finish() if regime.finish is not None else {}
    train_time = time.perf_counter() - t_start
    model.eval()
    metrics = task.evaluate(model)
    sp = proxopt.sparsity(model)
    c = count_zeros(model)

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
        label=run_label(run, cfg.optimizer, cfg.prox_metric, target),
        target=target,
        seed=cfg.seed,
        metrics=metrics,
        history=history,
        params=sp.numel,
        zeros=sp.zeros,
        zero_fraction=sp.fraction,
        weight_zero_fraction=measured_fraction(ZEROS, c),
        zero_channels=c["zero_channels"],
        channels=c["channels"],
        step_time_s=step_time,
        steps=steps,
        fwd_bwd_time_s=fwd_bwd_time,
        hook_time_s=hook_time,
        train_time_s=train_time,
        pruned_params=prep.params_after,
        pruned_max_abs_diff=diff,
        infer_ms=infer,
        control=control,
        sparsity=sp.to_dict(),
        pruning=prep.to_dict(),
        model=model,
        pruned_model=pruned,
    )


# --------------------------------------------------------------------------
# Command lines
# --------------------------------------------------------------------------


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
    :func:`examples.speech.sweep.add_args`."""
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
    p.add_argument("--seed", type=int, default=0, help="data seed (split, noise, corpus) and the training seed unless --seeds")
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
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a small machine shared with other work, more threads oversubscribe; "
        "0 keeps torch's default)",
    )
    p.add_argument("--cache", help="corpus cache directory (default $PROXOPT_CACHE or ~/.cache/proxopt)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")


def as_argparse(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse`` for argparse: its ValueError message becomes the usage error."""
    import argparse  # noqa: PLC0415

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = parse.__name__.lstrip("_")
    return convert


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


# --------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------


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
