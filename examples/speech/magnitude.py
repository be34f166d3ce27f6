"""Gradual magnitude pruning, the baseline a speech engineer would race a
sparsity regularizer against, built on ``torch.nn.utils.prune``.

Schedule (Zhu & Gupta 2017, "To prune, or not to prune"): the sparsity
after optimizer step ``t`` is

    s_t = s_f · (1 − (1 − (t − t₀) / (n·Δt))³)    for t₀ ≤ t ≤ t₀ + n·Δt,

0 before ``t₀`` and ``s_f`` after; the weights are pruned every ``Δt`` steps
in that window (fast at first, when many small weights are redundant, slower
near the end), then trained on with the masks fixed ("fine-tuning") until the
last step, then the masks are made permanent (``prune.remove``) so the model
holds exact zeros and no pruning hooks.

Two pruners share that schedule:

* :class:`GlobalMagnitudePruning`, unstructured: the ``s_t`` fraction of all
  the given weights with the smallest ``|w|``, ranked globally across layers
  (``prune.global_unstructured`` with ``prune.L1Unstructured``);
* :class:`ChannelMagnitudePruning`, structured: in each given layer, the
  ``s_t`` fraction of its output channels (rows, dim 0) with the smallest L2
  norm (``prune.ln_structured(n=2, dim=0)``). Each layer keeps at least one
  channel.

Counts, not fractions, are passed to torch: repeated pruning calls compose
through ``PruningContainer``, which applies a new ``amount`` to the entries
(or channels) *not yet pruned*, so a fraction ``s_t`` passed as is would
compound. Each event prunes ``round(s_t · N) − (already pruned)`` more, and
the final count is exactly ``round(s_f · N)`` (per layer for channels:
``min(round(s_f · C), C − 1)``).

The pruners rank the weights the forward pass uses now (``weight_orig ·
weight_mask``), not the ``weight`` attribute torch's hook last computed,
which is one optimizer step stale during training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

import proxopt
from proxopt.schedules import cubic_ramp

__all__ = [
    "CubicSchedule",
    "GlobalMagnitudePruning",
    "ChannelMagnitudePruning",
    "effective_weight",
    "check_fraction",
]


def check_fraction(value: float, name: str = "target") -> float:
    """``value`` as a float in [0, 1), or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"Invalid {name} value: {value!r} (a fraction in [0, 1))")
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise ValueError(f"Invalid {name} value: {value!r} (a fraction in [0, 1))")
    return float(value)


@dataclass(frozen=True)
class CubicSchedule:
    """Zhu & Gupta's cubic sparsity ramp from 0 at step ``start`` to ``final``
    at step ``end = start + events · every``, pruning every ``every`` steps
    (``final · proxopt.schedules.cubic_ramp(end − start, begin=start)``, the
    ramp :class:`proxopt.SparsityTarget` follows)."""

    final: float  # s_f
    start: int  # t₀
    every: int  # Δt
    events: int  # n

    def __post_init__(self) -> None:
        check_fraction(self.final, "final")
        for name, low in (("start", 0), ("every", 1), ("events", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"Invalid {name} value: {v!r} (an int >= {low})")

    @property
    def end(self) -> int:
        """The step at which the sparsity reaches ``final``."""
        return self.start + self.events * self.every

    def sparsity(self, step: int) -> float:
        """s_t after optimizer step ``step``."""
        return self.final * cubic_ramp(self.end - self.start, begin=self.start)(step)

    def prunes_at(self, step: int) -> bool:
        """Whether a pruning event follows optimizer step ``step``."""
        return self.start < step <= self.end and (step - self.start) % self.every == 0

    @classmethod
    def over(cls, final: float, total_steps: int, window: tuple[float, float] = (0.1, 0.7), every: int = 0) -> "CubicSchedule":
        """The schedule for a run of ``total_steps``: pruning from ``window[0]``
        to ``window[1]`` of the steps (fractions), every ``every`` steps
        (0: about 20 events over the window, at least one step apart). The
        end is rounded down to a whole number of events."""
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"Invalid total_steps value: {total_steps!r} (an int >= 1)")
        lo, hi = window
        if not (0.0 <= lo < hi <= 1.0):
            raise ValueError(f"Invalid window value: {window!r} (fractions of the steps, 0 <= start < end <= 1)")
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise ValueError(f"Invalid every value: {every!r} (steps between pruning events, >= 0; 0: automatic)")
        start = min(int(lo * total_steps), total_steps - 1)
        span = max(1, round(hi * total_steps) - start)
        every = every or max(1, span // 20)
        events = max(1, span // every)
        if start + events * every > total_steps:  # Δt longer than the window: one event, as late as fits
            every, events = max(1, total_steps - start), 1
        return cls(final=check_fraction(final, "final"), start=start, every=every, events=events)


def effective_weight(module: nn.Module, name: str = "weight") -> Tensor:
    """The tensor the forward pass uses: ``<name>_orig · <name>_mask`` while
    torch's pruning reparametrization is on, else the parameter itself."""
    mask = getattr(module, name + "_mask", None)
    if mask is None:
        return getattr(module, name).detach()
    return getattr(module, name + "_orig").detach() * mask


def _check_layers(layers: Sequence[nn.Module], name: str) -> list[nn.Module]:
    layers = list(layers)
    if not layers:
        raise ValueError("Invalid layers value: [] (at least one module to prune)")
    for m in layers:
        w = getattr(m, name + "_orig", getattr(m, name, None))
        if not isinstance(w, Tensor) or w.dim() < 2:
            raise ValueError(f"Invalid layers value: {type(m).__name__} has no {name!r} of 2+ dimensions to prune")
    if len({id(m) for m in layers}) != len(layers):
        raise ValueError("Invalid layers value: a module is listed twice")
    return layers


class _GradualPruning:
    """Prune on ``schedule`` after each optimizer step; :meth:`finish` makes
    the masks permanent."""

    name = "weight"

    def __init__(self, layers: Sequence[nn.Module], schedule: CubicSchedule) -> None:
        if not isinstance(schedule, CubicSchedule):
            raise TypeError(f"Invalid schedule value: a CubicSchedule, got {type(schedule).__name__}")
        self.layers = _check_layers(layers, self.name)
        self.schedule = schedule
        self.events = 0  # pruning events that pruned something

    def step(self, step: int) -> None:
        """Call after optimizer step ``step`` (1-based)."""
        if self.schedule.prunes_at(step):
            self.prune_to(self.schedule.sparsity(step))

    def prune_to(self, fraction: float) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Make the masks permanent: exact zeros in the parameters, no
        ``weight_orig`` / ``weight_mask``, no forward pre-hooks."""
        for m in self.layers:
            if prune.is_pruned(m):
                prune.remove(m, self.name)

    def _pruned(self, m: nn.Module) -> bool:
        return hasattr(m, self.name + "_mask")


class GlobalMagnitudePruning(_GradualPruning):
    """Unstructured magnitude pruning ranked across all ``layers`` together."""

    def __init__(self, layers: Sequence[nn.Module], schedule: CubicSchedule) -> None:
        super().__init__(layers, schedule)
        self.numel = sum(effective_weight(m, self.name).numel() for m in self.layers)

    def masked(self) -> int:
        """Entries the masks zero now."""
        masks = {str(i): getattr(m, self.name + "_mask") for i, m in enumerate(self.layers) if self._pruned(m)}
        return proxopt.sparsity(masks).zeros

    def target_count(self, fraction: float) -> int:
        return round(fraction * self.numel)

    @torch.no_grad()
    def prune_to(self, fraction: float) -> None:
        more = self.target_count(fraction) - self.masked()
        if more <= 0:
            return
        pairs = [(m, self.name) for m in self.layers]
        scores = {(m, self.name): effective_weight(m, self.name) for m in self.layers}
        # an int amount is a count among the entries not yet masked
        prune.global_unstructured(pairs, pruning_method=prune.L1Unstructured, importance_scores=scores, amount=more)
        self.events += 1


class ChannelMagnitudePruning(_GradualPruning):
    """Structured pruning of each layer's output channels by their L2 norm."""

    def channels(self) -> list[int]:
        return [effective_weight(m, self.name).shape[0] for m in self.layers]

    def masked_channels(self, m: nn.Module) -> int:
        if not self._pruned(m):
            return 0
        (mask,) = proxopt.sparsity({"mask": getattr(m, self.name + "_mask")}, dims=(0,)).params
        return mask.zero_groups[0][0]

    @staticmethod
    def target_count(fraction: float, channels: int) -> int:
        """Channels to prune in a layer of ``channels``: never all of them."""
        return min(round(fraction * channels), channels - 1)

    @torch.no_grad()
    def prune_to(self, fraction: float) -> None:
        pruned = False
        for m, c in zip(self.layers, self.channels()):
            more = self.target_count(fraction, c) - self.masked_channels(m)
            if more > 0:
                # an int amount is a count among the channels not yet pruned
                prune.ln_structured(m, self.name, amount=more, n=2, dim=0, importance_scores=effective_weight(m, self.name))
                pruned = True
        self.events += pruned
