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
``budget-heal``           ``proxopt.AdamW(sparsity=s, sparsity_scope="group")``
                          (the ``--optimizer``'s proxopt class): the budget
                          follows the ``magnitude`` run's cubic ramp (same
                          window, ``proxopt.schedules.RegularizerScheduler``
                          with ``cubic_ramp``, every step rather than every
                          Δt), then ``heal=True`` (support frozen, no
                          shrinkage) from the end of the window to the end
                          of training (default target 0.9)
``l1-heal``               ``prox-l1`` steered by ``proxopt.SparsityTarget``
                          to the end of the window, then the controller
                          stops and ``heal=True`` freezes the support L1
                          chose and trains the survivors unpenalized
``channel-budget-heal``   ``proxopt.AdamW(channel_sparsity=s)`` on each
                          channel layer's weight (its own budget, as
                          ``magnitude-structured`` prunes each layer), on
                          the magnitude runs' cubic ramp, then
                          ``heal=True`` from the end of the window (default
                          target 0.5)
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
takes) whose ``build`` gives a :class:`examples.speech.training.Regime`: the
optimizer, the tensors it regularizes, and the hooks the one training loop
(:func:`examples.speech.training.fit`) calls — a loss term, an
``after_step`` (pruning events, the controller) and a ``finish`` (masks made
permanent). :func:`train_run` trains one, counts exact zeros and all-zero
output channels (:mod:`examples.speech.zeros`), prunes the zero channels with
:func:`proxopt.pruning.prune_zero_channels` and times CPU inference before
and after. The sweep over targets and seeds, its reports and the
command-line flow are in :mod:`examples.speech.sweep`, :mod:`examples.speech.sweep_report`
and :mod:`examples.speech.sweep_command`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import proxopt
from proxopt.penalties import l1_penalty
from proxopt.pruning import prune_zero_channels
from proxopt.schedules import RegularizerScheduler, cubic_ramp

from . import cli
from .inference import compare_inference
from .layers import channel_layers, effective_param, output_layer, regularized_layers
from .magnitude import ChannelMagnitudePruning, CubicSchedule, GlobalMagnitudePruning, check_fraction
from .optimizers import OPTIMIZERS, torch_groups
from .results import RunResult, run_result
from .training import Regime, Step, fit
from .zeros import ZeroCounts, count_zeros

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

    # what examples.speech.training.fit asks of a task
    def steps_per_epoch(self, batch_size: int) -> int:
        return max(1, math.ceil(len(self.train_x) / batch_size))

    def batches(self, batch_size: int, order: torch.Generator, augment: torch.Generator):
        perm = torch.randperm(len(self.train_x), generator=order)
        for b in range(self.steps_per_epoch(batch_size)):
            idx = perm[b * batch_size : (b + 1) * batch_size]
            x = self.train_x[idx]
            yield (self.augment(x, augment) if self.augment is not None else x), self.train_y[idx]

    def step(self, model: nn.Module, batch) -> Step:
        x, y = batch
        return Step(self.loss(model(x), y), weight=len(x))

    def epoch_metrics(self, model: nn.Module) -> dict[str, float]:
        c = counts(model)
        return {**self.evaluate(model), "weight_zero_fraction": c.weight_zero_fraction, "channel_fraction": c.channel_fraction}


def counts(model: nn.Module) -> ZeroCounts:
    """Exact zeros of the regularized weights and all-zero channels of the
    channel layers, as the forward pass sees them (masks applied): what
    targets, controllers and pruners measure."""
    weights = [effective_param(m) for m in regularized_layers(model)]
    return count_zeros(model, weights, [effective_param(m) for m in channel_layers(model)])


# --------------------------------------------------------------------------
# Runs: optimizer plus hooks
# --------------------------------------------------------------------------


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
    in_sweep: bool = True  # in a sweep without --runs (the others: name them in --runs)


def pruning_schedule(cfg: TrainConfig, budget: Budget) -> CubicSchedule:
    """The magnitude runs' schedule; its ``end`` is also the controller's ``by_step``."""
    return CubicSchedule.over(budget.target, budget.total_steps, cfg.prune_window, cfg.prune_every)


def _torch_optimizer(model: nn.Module, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, list[Tensor]]:
    torch_cls, _, extra = OPTIMIZERS[cfg.optimizer]
    groups = torch_groups(proxopt.param_groups(model, weight_decay=cfg.weight_decay), torch_cls)
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
    return Regime(opt, regularized, loss_term=lambda out: l1_penalty(regularized, lam))


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
    out = output_layer(model)
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


def _build_budget_heal(model: nn.Module, cfg: TrainConfig, budget: Budget) -> Regime:
    """The budget on the same tensors as every run, ramped on the magnitude
    run's schedule (``s_t = s_f · cubic_ramp(end − start, begin=start)(t)``,
    the same function as :meth:`CubicSchedule.sparsity`), healed from its end.

    ``after_step(t)`` advances the scheduler to ``t``: the value for step
    ``t + 1`` is set after step ``t``, as the magnitude pruner's masks after
    step ``t`` act from step ``t + 1``; heal turns on for the steps after
    ``end``, when the magnitude run's last event has pruned to ``s_f``."""
    _, _, extra = OPTIMIZERS[cfg.optimizer]
    schedule = pruning_schedule(cfg, budget)
    groups = proxopt.param_groups(model, weight_decay=cfg.weight_decay, sparsity=budget.target, sparsity_scope="group")
    opt, regularized = _prox_class(cfg)(groups, lr=cfg.lr, **extra), list(groups[0]["params"])
    ramp = cubic_ramp(schedule.end - schedule.start, begin=schedule.start)
    sched = RegularizerScheduler(opt, "sparsity", ramp, heal_at="end")
    if sched.heal_at != schedule.end:
        raise AssertionError(f"heal_at {sched.heal_at} != the magnitude schedule's end {schedule.end}")
    healed_at: list[int] = []

    def after_step(t: int) -> None:
        sched.step()  # last_epoch = t: the budget (and heal) of step t + 1
        if not healed_at and opt.param_groups[0]["heal"]:
            healed_at.append(t + 1)

    def finish() -> dict:
        return {"budget": "proxopt sparsity (scope group) + RegularizerScheduler(cubic_ramp)", "final": budget.target,
                "start": schedule.start, "end": schedule.end, "every": schedule.every, "events": schedule.events,
                "heal_from_step": healed_at[0] if healed_at else None,
                "last_value": [float(g["sparsity"]) for g in opt.param_groups],
                "heal": [bool(g["heal"]) for g in opt.param_groups]}  # fmt: skip

    return Regime(opt, regularized, after_step=after_step, finish=finish)


def _build_channel_budget_heal(model: nn.Module, cfg: TrainConfig, budget: Budget) -> Regime:
    """The channel budget on each channel layer's weight (output channels,
    ``group_dim=0``; the output layer's rows are never pruned), ramped on the
    magnitude runs' schedule and healed from its end, as ``budget-heal``."""
    _, _, extra = OPTIMIZERS[cfg.optimizer]
    schedule = pruning_schedule(cfg, budget)
    groups = proxopt.param_groups(model, weight_decay=cfg.weight_decay)
    regularized = list(groups[0]["params"])
    chosen = {id(m.weight) for m in channel_layers(model)}
    if not chosen:
        raise ValueError("Invalid model for a channel target: it has no Conv/Linear layer before the output layer")
    budgeted = [p for p in groups[0]["params"] if id(p) in chosen]
    rest = [{**g, "params": [p for p in g["params"] if id(p) not in chosen]} for g in groups]
    groups = [{"params": budgeted, "weight_decay": cfg.weight_decay, "channel_sparsity": budget.target}]
    groups += [g for g in rest if g["params"]]
    opt = _prox_class(cfg)(groups, lr=cfg.lr, **extra)
    ramp = cubic_ramp(schedule.end - schedule.start, begin=schedule.start)
    sched = RegularizerScheduler(opt, "channel_sparsity", ramp, heal_at="end")
    healed_at: list[int] = []

    def after_step(t: int) -> None:
        sched.step()
        if not healed_at and opt.param_groups[0]["heal"]:
            healed_at.append(t + 1)

    def finish() -> dict:
        return {"budget": "proxopt channel_sparsity per layer + RegularizerScheduler(cubic_ramp)",
                "final": budget.target, "start": schedule.start, "end": schedule.end,
                "heal_from_step": healed_at[0] if healed_at else None}  # fmt: skip

    return Regime(opt, regularized, after_step=after_step, finish=finish)


def _build_l1_heal(model: nn.Module, cfg: TrainConfig, budget: Budget) -> Regime:
    """``prox-l1`` (steered to the target by the end of the window, or at its
    fixed λ without one), then, from the end of the window, heal: the
    controller stops and the support L1 chose is frozen, its survivors
    trained unpenalized."""
    regime = _build_prox_l1(model, cfg, budget)
    opt = regime.optimizer
    by_step = CubicSchedule.over(budget.target or 0.0, budget.total_steps, cfg.prune_window, cfg.prune_every).end
    steer, control = regime.after_step, regime.finish
    healed_at: list[int] = []

    def after_step(t: int) -> None:
        if healed_at:
            return
        if steer is not None:
            steer(t)
        if t >= by_step:  # after step by_step (the controller's last look): the support is frozen
            for g in opt.param_groups:
                if g["l1"] > 0:
                    g["heal"] = True
            healed_at.append(t + 1)

    def finish() -> dict:
        done = control() if control is not None else {"by_step": by_step}
        return {**done, "heal_from_step": healed_at[0] if healed_at else None, "heal": [bool(g["heal"]) for g in opt.param_groups]}

    return Regime(opt, regime.regularized, after_step=after_step, finish=finish)


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
        RunSpec("budget-heal", "proxopt.{Opt}(sparsity=s, group) cubic + heal", ZEROS, 0.9, _build_budget_heal, in_sweep=False),
        RunSpec("l1-heal", "proxopt.{Opt}(l1=λ) + heal", ZEROS, None, _build_l1_heal, in_sweep=False),
        RunSpec("channel-budget-heal", "proxopt.{Opt}(channel_sparsity=s) cubic + heal", CHANNELS, 0.5,
                _build_channel_budget_heal, in_sweep=False),
    )
}
RUN_NAMES = tuple(RUNS)
CONTROLLED = ("prox-l1", "prox-group", "l1-heal")  # the runs a proxopt.SparsityTarget steers (with a target)
DEFAULT_RUNS = ("dense", "l1-loss", "prox-l1", "prox-group")  # without a sweep
_ALIASES = {"penalty": "l1-loss", "l1": "prox-l1", "group": "prox-group", "group-lasso": "prox-group",
            "mag": "magnitude", "magnitude-channels": "magnitude-structured"}  # fmt: skip


def parse_runs(text: str) -> list[str]:
    return cli.parse_runs(text, RUN_NAMES, aliases=_ALIASES)


def run_label(run: str, optimizer: str, prox_metric: str = "euclidean", target: float | None = None) -> str:
    cls = OPTIMIZERS[optimizer][1]
    label = RUNS[run].label.format(opt=cls, Opt=cls)
    if run in ("prox-l1", "l1-heal") and prox_metric != "euclidean":
        label = label.replace("(l1=λ)", f"(l1=λ, {prox_metric})")
    if target is not None and run in CONTROLLED:
        label = label.replace(" + heal", "") + " + SparsityTarget" + (" + heal" if run == "l1-heal" else "")
    return label


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------


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

    def build(model: nn.Module, total_steps: int) -> Regime:
        return RUNS[run].build(model, cfg, Budget(target, total_steps))

    t = fit(task, build, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed, warmup=cfg.warmup, tag=run, log=cfg.log)
    model = t.model
    metrics = task.evaluate(model)
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
    label = run_label(run, cfg.optimizer, cfg.prox_metric, target)
    return run_result(run, label, t, counts(model), pruned, metrics=metrics, target=target, seed=cfg.seed,
                      pruned_max_abs_diff=diff, infer_ms=infer, pruning=prep.to_dict())  # fmt: skip
