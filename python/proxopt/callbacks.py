"""Training-log callbacks: sparsity, λ and the :class:`~proxopt.SparsityTarget`
controllers' state as flat scalars, every few steps, for TensorBoard, W&B or
any logger the framework has.

* :func:`training_scalars`: the scalars, framework-free;
* :class:`LightningSparsityLogger`: a PyTorch Lightning ``Callback``
  (``lightning.pytorch`` or ``pytorch_lightning``, whichever is installed);
* :class:`HFSparsityLogger`: a Hugging Face transformers ``TrainerCallback``.

``import proxopt.callbacks`` needs neither framework: each class is made on
first use from the framework's base class, and where that framework is not
installed, making an instance raises an ImportError naming it::

    trainer = lightning.pytorch.Trainer(callbacks=[proxopt.callbacks.LightningSparsityLogger(every_n_steps=50)])

    trainer = transformers.Trainer(model, args, train_dataset=ds, optimizers=(opt, sched))
    trainer.add_callback(proxopt.callbacks.HFSparsityLogger(trainer, every_n_steps=50))

Lightning's ``LearningRateMonitor`` logs, for every scheduler that
``configure_optimizers`` returns, the learning rates of that scheduler's
optimizer. A :class:`~proxopt.RegularizerScheduler` or
:class:`~proxopt.SparsityTarget` there is logged as one more copy of the
learning rate (``lr-AdamW-1`` beside ``lr-AdamW``, or under the scheduler
config's ``name``), never as the regularizer: read λ from these callbacks.
"""

from __future__ import annotations

import functools
import importlib
import math
import numbers
import types
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .sparsity import sparsity
from .sparsity_target import SparsityTarget

__all__ = ["training_scalars", "LightningSparsityLogger", "HFSparsityLogger"]

# The regularizer strengths logged per param group (the budgets: their target fractions).
LOGGED_KEYS = ("l1", "group_lasso", "l0", "l2", "sparsity", "channel_sparsity")


def training_scalars(
    model: nn.Module,
    optimizers: Iterable[Any] = (),
    controllers: Iterable[SparsityTarget] = (),
    *,
    prefix: str = "sparsity/",
    per_param: bool = False,
) -> dict[str, float]:
    """What the callbacks log, as flat ``name -> float`` pairs (one pass over
    the weights).

    After ``prefix``:

    * the totals of :meth:`SparsityReport.scalars` for ``model`` (``fraction``,
      ``regularized/fraction``, ``zero_channels``, ``zero_inputs``...; with
      ``per_param``, also one entry per parameter), parameters counted as
      regularized by the optimizers' param groups;
    * for param group ``i`` (``opt{k}/group{i}`` with several optimizers):
      ``group{i}/fraction``, the zeros of its tensors, and ``group{i}/{key}`` for
      each of ``l1``, ``group_lasso``, ``l0``, ``l2``, ``sparsity`` and
      ``channel_sparsity`` (the budgets' targets) that is nonzero, or whose
      ``initial_{key}`` (kept by :class:`~proxopt.RegularizerScheduler`) is:
      a scheduled λ still at 0 is logged as 0;
    * for each controller (``controller/``, or ``controller{k}/`` with
      several): ``target`` (the ramped target s(t)), ``measured`` (the fraction
      it measured last) and ``scale`` (λ/λ₀).

    Args:
        model: the module whose parameters are measured.
        optimizers: the optimizers whose param groups are reported (an
            optimizer wrapper that exposes ``param_groups`` works).
        controllers: :class:`~proxopt.SparsityTarget` instances.
        prefix: prepended to every name.
        per_param: include one fraction (and zero-group counts) per parameter.
    """
    optimizers, controllers = list(optimizers), list(controllers)
    groups = [(k, i, g) for k, opt in enumerate(optimizers) for i, g in enumerate(opt.param_groups)]
    # sparsity() reads only param_groups: all the optimizers' groups decide what is regularized
    every_group = types.SimpleNamespace(param_groups=[g for _, _, g in groups]) if groups else None
    report = sparsity(model, optimizer=every_group)
    out = report.scalars(prefix, per_param=per_param)
    by_id = {id(p): ps for (_, p), ps in zip(model.named_parameters(), report.params)}
    for k, i, group in groups:
        tag = f"{prefix}opt{k}/group{i}/" if len(optimizers) > 1 else f"{prefix}group{i}/"
        zeros = numel = 0
        for p in group["params"]:
            ps = by_id.get(id(p))
            if ps is None:  # not a parameter of model: counted here
                zeros, numel = zeros + p.numel() - int(torch.count_nonzero(p)), numel + p.numel()
            else:
                zeros, numel = zeros + ps.zeros, numel + ps.numel
        out[f"{tag}fraction"] = zeros / numel if numel else 0.0
        for key in LOGGED_KEYS:
            value, initial = group.get(key), group.get(f"initial_{key}")
            if value or initial:
                out[f"{tag}{key}"] = float(value or 0.0)
    for c, ctl in enumerate(controllers):
        tag = f"{prefix}controller{c}/" if len(controllers) > 1 else f"{prefix}controller/"
        out[f"{tag}target"] = float(ctl.current_target)
        out[f"{tag}measured"] = float(ctl.measured)
        out[f"{tag}scale"] = math.exp(ctl.log_scale)
    return out


class _Logging:
    """The settings both callbacks share, checked before anything is kept."""

    def __init__(self, every_n_steps: int, controllers: Iterable[SparsityTarget], prefix: str, per_param: bool) -> None:
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, numbers.Integral):
            raise TypeError(
                f"Invalid every_n_steps value: {every_n_steps!r} (a {type(every_n_steps).__name__}; expected an int)"
            )
        if every_n_steps < 1:
            raise ValueError(f"Invalid every_n_steps value: {every_n_steps} (must be >= 1)")
        if isinstance(controllers, SparsityTarget) or not isinstance(controllers, Iterable):
            raise TypeError(f"Invalid controllers value: {controllers!r} (expected a list of SparsityTarget)")
        controllers = list(controllers)
        for ctl in controllers:
            if not isinstance(ctl, SparsityTarget):
                raise TypeError(
                    f"Invalid controllers value: a {type(ctl).__name__} (expected a list of SparsityTarget)"
                )
        if not isinstance(prefix, str):
            raise TypeError(f"Invalid prefix value: {prefix!r} (a {type(prefix).__name__}; expected a str)")
        if not isinstance(per_param, bool):
            raise TypeError(f"Invalid per_param value: {per_param!r} (expected a bool)")
        super().__init__()
        self.every_n_steps = int(every_n_steps)
        self.controllers = controllers
        self.prefix = prefix
        self.per_param = per_param
        self._last_step = -1  # with gradient accumulation a step ends several batches

    def _due(self, step: int) -> bool:
        if step <= 0 or step % self.every_n_steps or step == self._last_step:
            return False
        self._last_step = step
        return True

    def _scalars(self, model: nn.Module, optimizers: Iterable[Any]) -> dict[str, float]:
        return training_scalars(model, optimizers, self.controllers, prefix=self.prefix, per_param=self.per_param)


class _LightningHooks(_Logging):
    """A Lightning callback that logs :func:`training_scalars` to the
    trainer's loggers every ``every_n_steps`` optimizer steps
    (``trainer.global_step``, which is also the step it logs at), after the
    step and the step-interval schedulers, on the global-zero process.

    Measuring reads every weight once: keep ``every_n_steps`` well above 1 in
    long runs.

    Args:
        every_n_steps: log when ``trainer.global_step`` is a multiple of this.
        controllers: :class:`~proxopt.SparsityTarget` instances whose state to log.
        prefix: prepended to every metric name.
        per_param: log one fraction per parameter too.
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        controllers: Iterable[SparsityTarget] = (),
        prefix: str = "sparsity/",
        per_param: bool = False,
    ) -> None:
        super().__init__(every_n_steps, controllers, prefix, per_param)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not trainer.loggers or not trainer.is_global_zero or not self._due(step):
            return
        metrics = self._scalars(pl_module, trainer.optimizers)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)


class _HFHooks(_Logging):
    """A transformers ``TrainerCallback`` that logs :func:`training_scalars`
    through ``trainer.log`` every ``every_n_steps`` optimizer steps
    (``state.global_step``), on the world-zero process: they reach every
    reporter (``report_to``) and ``trainer.state.log_history``. The reporters
    may rename them (TensorBoard's puts ``train/`` in front).

    It needs the trainer (a callback is given no handle on it), so add it
    after making the trainer: ``trainer.add_callback(HFSparsityLogger(trainer))``.

    Args:
        trainer: the ``transformers.Trainer`` whose model and optimizer it measures.
        every_n_steps: log when ``state.global_step`` is a multiple of this.
        controllers: :class:`~proxopt.SparsityTarget` instances whose state to log.
        prefix: prepended to every metric name.
        per_param: log one fraction per parameter too.
    """

    def __init__(
        self,
        trainer: Any,
        every_n_steps: int = 50,
        controllers: Iterable[SparsityTarget] = (),
        prefix: str = "sparsity/",
        per_param: bool = False,
    ) -> None:
        if not callable(getattr(trainer, "log", None)):
            raise TypeError(
                f"Invalid trainer value: a {type(trainer).__name__} (expected the transformers.Trainer: "
                "the callback logs through trainer.log)"
            )
        super().__init__(every_n_steps, controllers, prefix, per_param)
        self.trainer = trainer

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if not state.is_world_process_zero or not self._due(state.global_step):
            return control
        metrics = self._scalars(model if model is not None else self.trainer.model,
                                [optimizer if optimizer is not None else self.trainer.optimizer])  # fmt: skip
        # trainer.log ends with on_log, which clears should_log; the Trainer logs its loss
        # after on_step_end when should_log is set, so keep the flag as the flow set it
        should_log = control.should_log
        self.trainer.log(metrics)
        control.should_log = should_log
        return control


# name -> (the hooks, what to import for the base class, the framework's name)
_CLASSES = {
    "LightningSparsityLogger": (_LightningHooks, (("lightning.pytorch", "Callback"), ("pytorch_lightning", "Callback")),
                                "PyTorch Lightning (pip install lightning, or pytorch-lightning)"),
    "HFSparsityLogger": (_HFHooks, (("transformers", "TrainerCallback"),), "transformers (pip install transformers)"),
}  # fmt: skip


def _base(candidates) -> type | None:
    for module, name in candidates:
        try:
            return getattr(importlib.import_module(module), name)
        except ImportError:
            continue
    return None


def _build(name: str) -> type:
    """The class ``name``, made from the framework's base class; where the
    framework is missing, a class whose instances cannot be made."""
    hooks, candidates, framework = _CLASSES[name]
    namespace = {"__doc__": hooks.__doc__, "__module__": __name__, "__qualname__": name}
    base = _base(candidates)
    if base is None:

        @functools.wraps(hooks.__init__)  # the documented signature
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise ImportError(f"proxopt.callbacks.{name} needs {framework}, which is not installed")

        namespace["__init__"] = __init__
        return type(name, (hooks,), namespace)
    return type(name, (hooks, base), namespace)


def __getattr__(name: str) -> type:
    # made on first use: importing a framework costs seconds, and the other one may be absent
    if name not in _CLASSES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    cls = globals()[name] = _build(name)
    return cls


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_CLASSES))
