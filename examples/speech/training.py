"""The one training loop of every recipe: the same seeds, data order and
learning-rate schedule for each run of a comparison, so that only the
regularization (the run's :class:`Regime`) differs; it times the optimizer
step apart from the rest."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn


@dataclass
class Regime:
    """How one run regularizes: the optimizer, the tensors it regularizes,
    and what the loop calls besides ``opt.step()``."""

    optimizer: torch.optim.Optimizer
    regularized: list[Tensor]
    loss_term: Callable[[Any], Tensor] | None = None  # added to the loss, given the model's output (a penalty, a KL)
    project: Callable[[], None] | None = None  # right after opt.step(), timed with it: the Python loop it stands for
    after_step: Callable[[int], None] | None = None  # after optimizer step t (1-based) and the lr step
    finish: Callable[[], dict] | None = None  # after the last step; returns what it did (JSON-able)


@dataclass
class Step:
    """One batch's forward pass, as the task computes it."""

    loss: Tensor  # the data loss: what is logged as the training loss
    output: Any = None  # the model's output, for the regime's loss term
    weight: float = 1.0  # its weight in the epoch's mean (the batch size, or 1)
    logged: dict[str, Tensor] = field(default_factory=dict)  # more values averaged over the epoch


class Trainable(Protocol):
    """What :func:`fit` trains."""

    def make_model(self) -> nn.Module: ...

    def steps_per_epoch(self, batch_size: int) -> int: ...

    def batches(self, batch_size: int, order: torch.Generator, augment: torch.Generator) -> Iterable[Any]:
        """One epoch's training batches, shuffled by ``order`` (augmented with ``augment``)."""
        ...

    def step(self, model: nn.Module, batch: Any) -> Step: ...

    def epoch_metrics(self, model: nn.Module) -> dict[str, float]:
        """The history's held-out values after an epoch (model in eval mode)."""
        ...


@dataclass
class Trained:
    model: nn.Module
    regime: Regime
    history: list[dict[str, float]]
    losses: list[float]  # every step's data loss
    steps: int
    step_time_s: float  # opt.step() and the projection
    projection_time_s: float  # the projection alone
    fwd_bwd_time_s: float
    hook_time_s: float  # after_step: pruning events, the controller
    train_time_s: float
    control: dict  # what the regime's finish returned


def lr_schedule(opt: torch.optim.Optimizer, total: int, warmup: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over the first ``warmup`` fraction of ``total`` steps, then cosine decay to 0."""
    w = max(1, int(round(warmup * total)))

    def factor(step: int) -> float:
        if step < w:
            return (step + 1) / w
        t = (step - w) / max(1, total - w)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def fit(
    task: Trainable,
    build: Callable[[nn.Module, int], Regime],
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    warmup: float = 0.05,
    loss_name: str = "train_loss",
    tag: str = "",
    log: Callable[[str], None] | None = None,
) -> Trained:
    """Train a model of ``task`` with the regime ``build(model, total_steps)``
    gives; everything random is seeded by ``seed`` (the model, the batch
    order, the augmentation, dropout)."""
    log = log or (lambda s: None)
    torch.manual_seed(seed)
    model = task.make_model()
    per_epoch = task.steps_per_epoch(batch_size)
    regime = build(model, epochs * per_epoch)
    opt = regime.optimizer
    sched = lr_schedule(opt, epochs * per_epoch, warmup)
    order = torch.Generator().manual_seed(seed)
    augment = torch.Generator().manual_seed(seed + 1)
    torch.manual_seed(seed + 2)  # dropout, a latent's noise
    step_time = projection_time = fwd_bwd_time = hook_time = 0.0
    losses: list[float] = []
    history = []
    t_start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        sums: dict[str, float] = {}
        weight = 0.0
        for batch in task.batches(batch_size, order, augment):
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            s = task.step(model, batch)
            total = s.loss + regime.loss_term(s.output) if regime.loss_term is not None else s.loss
            total.backward()
            t1 = time.perf_counter()
            opt.step()
            t2 = time.perf_counter()
            if regime.project is not None:
                regime.project()
            t3 = time.perf_counter()
            sched.step()
            t4 = time.perf_counter()
            if regime.after_step is not None:
                regime.after_step(len(losses) + 1)
            fwd_bwd_time += t1 - t0
            step_time += t3 - t1
            projection_time += t3 - t2
            hook_time += time.perf_counter() - t4
            losses.append(s.loss.item())
            for k, v in {loss_name: losses[-1], **s.logged}.items():
                sums[k] = sums.get(k, 0.0) + (v.item() if isinstance(v, Tensor) else v) * s.weight
            weight += s.weight
        model.eval()
        row = {"epoch": epoch + 1, **{k: v / max(weight, 1e-12) for k, v in sums.items()}, **task.epoch_metrics(model)}
        history.append(row)
        log(f"  [{tag}] epoch {epoch + 1:2d}/{epochs}  " + "  ".join(f"{k.replace('_', ' ')} {v:.4g}" for k, v in row.items() if k != "epoch"))
    control = regime.finish() if regime.finish is not None else {}
    train_time = time.perf_counter() - t_start
    model.eval()
    return Trained(model, regime, history, losses, len(losses), step_time, projection_time, fwd_bwd_time, hook_time, train_time, control)
