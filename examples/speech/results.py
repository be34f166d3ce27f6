"""The one result type of a trained run, whatever the recipe: held-out
metrics, history, exact zeros and channels, weight ranges, timings, and the
size and speed after pruning."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor, nn

from .training import Trained
from .zeros import ZeroCounts


@dataclass
class RunResult(ZeroCounts):
    """A run's zero counts (at the end) and the rest of what it did."""

    run: str
    label: str
    metrics: dict[str, Any]  # held-out metrics (synthesis: per split)
    history: list[dict[str, float]]  # per epoch
    losses: list[float]  # every step's training loss (not in to_dict: the history has the means)
    max_row_norm: float  # of the regularized weights (rows: dim 0)
    max_abs_weight: float
    weight_norm: float  # ‖w‖₂ over the regularized weights
    step_time_s: float  # opt.step() (+ a projection loop)
    projection_time_s: float  # the loop alone
    fwd_bwd_time_s: float
    hook_time_s: float  # after_step hooks: pruning events, the controller
    steps: int
    train_time_s: float
    pruned_params: int
    pruned_max_abs_diff: float
    infer_ms: dict[str, float]  # latency before / after pruning
    seed: int = 0
    target: float | None = None  # the sparsity asked for (None: fixed λ)
    range_held: bool | None = None  # the run's weight-range limit held (None: it has none)
    control: dict = field(default_factory=dict)  # what a controller / pruner did
    pruning: dict = field(default_factory=dict)  # proxopt.pruning's report
    model: nn.Module | None = field(default=None, repr=False)
    pruned_model: nn.Module | None = field(default=None, repr=False)

    @property
    def step_ms(self) -> float:
        return 1e3 * self.step_time_s / max(1, self.steps)

    @property
    def channel_fraction(self) -> float:
        return self.zero_channels / max(1, self.channels)

    def to_dict(self) -> dict[str, Any]:
        skip = ("model", "pruned_model", "losses")  # the models are not copied (asdict would deep-copy them)
        d = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name not in skip}
        for name in ("step_ms", "zero_fraction", "weight_zero_fraction", "channel_fraction"):
            d[name] = getattr(self, name)
        return d


def weight_ranges(weights: list[Tensor]) -> tuple[float, float, float]:
    """(largest row norm, largest |w|, ‖w‖₂ over all) of ``weights``."""
    with torch.no_grad():
        rows = max(float(w.reshape(len(w), -1).norm(dim=1).max()) for w in weights)
        mx = max(float(w.abs().max()) for w in weights)
        norm = math.sqrt(sum(float(w.square().sum()) for w in weights))
    return rows, mx, norm


def run_result(run: str, label: str, trained: Trained, counts: ZeroCounts, pruned: nn.Module, **rest: Any) -> RunResult:
    """The result of ``trained``: its history and timings, ``counts``, the
    ranges of the weights its regime regularized, the size of its ``pruned`` copy;
    ``rest`` gives the other fields (metrics, the pruned model's output
    difference and speed, ...)."""
    rows, mx, norm = weight_ranges(trained.regime.regularized)
    t = trained
    return RunResult(
        **vars(counts), run=run, label=label, history=t.history, losses=t.losses, max_row_norm=rows, max_abs_weight=mx,
        weight_norm=norm, step_time_s=t.step_time_s, projection_time_s=t.projection_time_s, fwd_bwd_time_s=t.fwd_bwd_time_s,
        hook_time_s=t.hook_time_s, steps=t.steps, train_time_s=t.train_time_s, control=t.control,
        pruned_params=sum(p.numel() for p in pruned.parameters()), model=t.model, pruned_model=pruned, **rest,
    )  # fmt: skip
