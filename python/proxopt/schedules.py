"""Schedules for regularization strength, in the manner of ``torch.optim.lr_scheduler``.

A regularizer is a param-group hyperparameter like ``lr``, and proxopt reads it at
every step, so a schedule is a scheduler that writes ``group["l1"]`` (or ``l2``,
``l0``, ``group_lasso``, ``max_norm``, ``weight_decay``) instead of ``group["lr"]``::

    opt = proxopt.AdamW(model.parameters(), lr=1e-3, l1=1e-4)
    lr_sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=10_000)
    l1_sched = proxopt.schedules.RegularizerScheduler(opt, "l1", proxopt.schedules.linear_warmup(1_000))
    for batch in loader:
        ...
        opt.step()
        lr_sched.step()
        l1_sched.step()   # l1 ramps from 0 to 1e-4 over the first 1000 steps

It follows ``LambdaLR``'s conventions: the value of param group i at step t is
``initial_value_i * schedule_i(t)`` with ``initial_value_i`` the value the group had
when the scheduler was made (kept in ``group["initial_<key>"]``, as ``LambdaLR`` keeps
``initial_lr``); ``last_epoch`` counts ``step()`` calls; construction applies step 0;
``state_dict()``/``load_state_dict()`` save and restore ``last_epoch``, the initial
values and the state of callable objects (not of lambdas or functions, which are
not picklable: give the same ones again when resuming); ``get_last_value()`` returns
the values set by the last ``step()``.

It is a subclass of ``torch.optim.lr_scheduler.LRScheduler`` only so that training
frameworks that accept "an LRScheduler" (PyTorch Lightning's ``configure_optimizers``,
Hugging Face's ``Trainer``) take it; it never changes the learning rate, and its
``get_last_lr()`` reports the optimizer's current learning rates. So Lightning's
``LearningRateMonitor``, which logs the learning rates of every scheduler's
optimizer, logs it as one more copy of the learning rate (``lr-AdamW-1`` beside
the lr scheduler's ``lr-AdamW``; ``/pg1``, ``/pg2``... per param group), never as
the regularizer: log the regularizer with
:class:`proxopt.callbacks.LightningSparsityLogger` (or ``HFSparsityLogger``).
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["RegularizerScheduler", "linear_warmup", "cosine_ramp", "cubic_ramp"]

SCHEDULABLE = ("l1", "l2", "l0", "group_lasso", "max_norm", "weight_decay", "sparsity", "channel_sparsity")
# The budgets: their ramps end in the heal phase unless told otherwise.
_BUDGETS = ("sparsity", "channel_sparsity")


class RegularizerScheduler(LRScheduler):
    """Set the regularizer ``key`` of every param group to
    ``initial_value * schedule(last_epoch)`` at each ``step()``.

    Args:
        optimizer: a proxopt optimizer (or any optimizer whose groups have ``key``).
        key: one of ``"l1"``, ``"l2"``, ``"l0"``, ``"group_lasso"``, ``"max_norm"``,
            ``"weight_decay"``, ``"sparsity"`` (the budget: gradual magnitude pruning's
            schedule is ``RegularizerScheduler(opt, "sparsity", cubic_ramp(n))`` with
            ``sparsity=s`` given to the optimizer), ``"channel_sparsity"`` (the same
            for whole channels).
        schedule: a function of the step count (an int) returning a multiplier >= 0,
            or a list of such functions, one per param group.
        last_epoch: the index of the last step when resuming (-1: start). A value
            other than -1 needs ``initial_<key>`` in every param group (present in
            an optimizer state_dict saved while a scheduler of the same key ran).

        heal_at: the step from which the scheduled param groups train in the heal
            phase (``group["heal"] = True``: the support frozen, no shrinkage), or
            ``"end"``: the schedule's own ``steps`` (``cubic_ramp``,
            ``linear_warmup``, ``cosine_ramp``). None (the default for every key but
            the budgets ``sparsity`` and ``channel_sparsity``, whose default is
            ``"end"``): never.

    Groups whose initial value is 0 (or None for ``max_norm``) stay unregularized.
    The multiplier must be finite and >= 0; for ``max_norm`` it must be > 0 (a
    bound of 0 would zero the weights; use a large multiplier to loosen it).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        key: str,
        schedule: Callable[[int], float] | list[Callable[[int], float]],
        last_epoch: int = -1,
        heal_at: int | str | None = "default",
    ) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")
        if key not in SCHEDULABLE:
            raise ValueError(f"Invalid key {key!r}: a RegularizerScheduler schedules one of {SCHEDULABLE}")
        for i, group in enumerate(optimizer.param_groups):
            if key not in group:
                raise ValueError(f"param group {i} has no {key!r}: is this a proxopt optimizer?")
        self.optimizer = optimizer
        self.key = key
        self.initial_key = f"initial_{key}"
        n = len(optimizer.param_groups)
        if isinstance(schedule, (list, tuple)):
            if len(schedule) != n:
                raise ValueError(f"Expected {n} schedules, but got {len(schedule)}")
            self.schedules = list(schedule)
        else:
            self.schedules = [schedule] * n
        if not all(callable(f) for f in self.schedules):
            raise TypeError("schedule must be a callable (or a list of callables) of the step count")
        defaulted = heal_at == "default"
        if defaulted:
            heal_at = "end" if key in _BUDGETS else None
        if heal_at == "end":
            if all(isinstance(getattr(f, "steps", None), int) for f in self.schedules):
                heal_at = max(getattr(f, "begin", 0) + f.steps for f in self.schedules)
            elif defaulted:
                heal_at = None  # a schedule with no end: no heal unless asked for
            else:
                raise ValueError("heal_at='end' needs schedules with an end (`steps`: cubic_ramp, linear_warmup, "
                                 "cosine_ramp)")
        if heal_at is not None and (isinstance(heal_at, bool) or not isinstance(heal_at, int) or heal_at < 0):
            raise ValueError(f"Invalid heal_at value: {heal_at!r} (a step >= 0, 'end' or None)")
        if heal_at is not None:
            for i, group in enumerate(optimizer.param_groups):
                if "heal" not in group:
                    raise ValueError(f"param group {i} has no 'heal': heal_at needs a proxopt optimizer")
        self.heal_at = heal_at
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault(self.initial_key, group[key])
        else:
            for i, group in enumerate(optimizer.param_groups):
                if self.initial_key not in group:
                    raise KeyError(
                        f"param {self.initial_key!r} is not specified in param_groups[{i}] when resuming "
                        f"a RegularizerScheduler (last_epoch={last_epoch}): load the optimizer's "
                        "state_dict first, or load the scheduler's state_dict after making it with last_epoch=-1"
                    )
        self.base_values = [group[self.initial_key] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._last_value: list[Any] = []
        self._last_lr = [group["lr"] for group in optimizer.param_groups]
        self._step_count = 0
        self.step()  # applies last_epoch + 1 (0 for a fresh scheduler)

    # ---- the values --------------------------------------------------------

    def get_value(self) -> list[Any]:
        """The values for the current ``last_epoch`` (what ``step()`` sets)."""
        out = []
        for i, (base, fn) in enumerate(zip(self.base_values, self.schedules)):
            if base is None or base == 0:
                out.append(base)
                continue
            factor = float(fn(self.last_epoch))
            if not (math.isfinite(factor) and factor >= 0) or (self.key == "max_norm" and factor == 0):
                raise ValueError(
                    f"schedule for param group {i} returned {factor} at step {self.last_epoch}: "
                    f"a multiplier of {self.key} must be finite and "
                    + ("> 0" if self.key == "max_norm" else ">= 0")
                )
            out.append(base * factor)
        return out

    def step(self, epoch: int | None = None) -> None:  # type: ignore[override]
        """Advance one step (or to ``epoch``) and write the new values into the groups."""
        self._step_count += 1
        self.last_epoch = self.last_epoch + 1 if epoch is None else int(epoch)
        values = self.get_value()
        for group, base, value in zip(self.optimizer.param_groups, self.base_values, values):
            group[self.key] = value
            if self.heal_at is not None and base and self.last_epoch >= self.heal_at:
                group["heal"] = True
        self._last_value = values
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_value(self) -> list[Any]:
        """The values the last ``step()`` set, one per param group."""
        return list(self._last_value)

    def get_last_lr(self) -> list[float]:
        """The optimizer's learning rates (unchanged by this scheduler); for
        frameworks that log ``get_last_lr()`` of every scheduler."""
        return [group["lr"] for group in self.optimizer.param_groups]

    def get_lr(self) -> list[float]:
        return self.get_last_lr()

    # ---- checkpoints -------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything but the optimizer and the schedule functions; callable
        objects (not functions or lambdas) have their ``__dict__`` saved, as
        ``LambdaLR`` does."""
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "schedules")}
        state["schedules"] = [
            None if isinstance(fn, types.FunctionType) else dict(fn.__dict__) for fn in self.schedules
        ]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        if state.get("key", self.key) != self.key:
            raise ValueError(f"state_dict is of a RegularizerScheduler for {state['key']!r}, this one schedules {self.key!r}")
        saved = state.pop("schedules", None) or []
        self.__dict__.update(state)
        for fn, fn_state in zip(self.schedules, saved):
            if fn_state is not None:
                fn.__dict__.update(fn_state)
        for group, base in zip(self.optimizer.param_groups, self.base_values):
            group[self.initial_key] = base
        for group, value in zip(self.optimizer.param_groups, self._last_value):
            group[self.key] = value


class linear_warmup:
    """Multiplier rising linearly from ``start`` (default 0) at step 0 to 1 at
    step ``steps``, then 1. A picklable callable object, so that
    ``RegularizerScheduler.state_dict()`` saves it."""

    def __init__(self, steps: int, start: float = 0.0) -> None:
        if steps <= 0:
            raise ValueError(f"Invalid steps value: {steps} (must be > 0)")
        self.steps = int(steps)
        self.start = float(start)

    def __call__(self, step: int) -> float:
        if step >= self.steps:
            return 1.0
        return self.start + (1.0 - self.start) * step / self.steps

    def __repr__(self) -> str:
        return f"linear_warmup(steps={self.steps}, start={self.start})"


class cosine_ramp:
    """Multiplier rising from ``start`` to 1 along a half cosine over ``steps``
    (then 1): a smooth warm-up for a sparsity penalty."""

    def __init__(self, steps: int, start: float = 0.0) -> None:
        if steps <= 0:
            raise ValueError(f"Invalid steps value: {steps} (must be > 0)")
        self.steps = int(steps)
        self.start = float(start)

    def __call__(self, step: int) -> float:
        if step >= self.steps:
            return 1.0
        return self.start + (1.0 - self.start) * 0.5 * (1 - math.cos(math.pi * step / self.steps))

    def __repr__(self) -> str:
        return f"cosine_ramp(steps={self.steps}, start={self.start})"


class cubic_ramp:
    """Multiplier rising from ``start`` at step ``begin`` to 1 at step
    ``begin + steps`` along Zhu & Gupta's cubic (2017, "To prune, or not to
    prune"), ``start`` before ``begin`` and 1 after::

        m(t) = start + (1 − start)·(1 − (1 − p)³),   p = clip((t − begin) / steps, 0, 1)

    It rises fast at first and ends flat. As a sparsity ramp it is
    ``target · cubic_ramp(T − t₀, begin=t₀)(t)`` (0 up to t₀, ``target`` from T
    on), which :class:`proxopt.SparsityTarget` follows; as a
    :class:`RegularizerScheduler` schedule it is a warm-up of the penalty. A
    picklable callable object, so that ``RegularizerScheduler.state_dict()``
    saves it."""

    def __init__(self, steps: int, start: float = 0.0, begin: int = 0) -> None:
        if steps <= 0:
            raise ValueError(f"Invalid steps value: {steps} (must be > 0)")
        if begin < 0:
            raise ValueError(f"Invalid begin value: {begin} (must be >= 0)")
        self.steps = int(steps)
        self.start = float(start)
        self.begin = int(begin)

    def __call__(self, step: int) -> float:
        if step <= self.begin:
            return self.start
        if step >= self.begin + self.steps:
            return 1.0
        return self.start + (1.0 - self.start) * (1.0 - (1.0 - (step - self.begin) / self.steps) ** 3)

    def __repr__(self) -> str:
        return f"cubic_ramp(steps={self.steps}, start={self.start}, begin={self.begin})"
