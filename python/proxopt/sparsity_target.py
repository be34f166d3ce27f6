"""A controller of the regularization strength that reaches a sparsity target.

Users ask for a sparsity ("90 % zeros"), not for a λ. :class:`SparsityTarget`
reads the fraction of exact zeros (``l1``) or of all-zero groups
(``group_lasso``) every few steps and scales the λ of the param groups it
controls until the fraction follows a ramp to the target, then holds it::

    opt = proxopt.AdamW(proxopt.param_groups(model, l1=1e-3), lr=1e-3)
    ctl = proxopt.SparsityTarget(opt, target=0.9, by_step=2000)
    for batch in loader:
        ...
        opt.step()
        ctl.step()   # after optimizer.step(), like a scheduler

It follows :class:`proxopt.RegularizerScheduler`'s conventions (a subclass of
``LRScheduler`` for frameworks that want one; ``last_epoch`` counts ``step()``
calls; ``get_last_value()``; ``state_dict()``/``load_state_dict()``). Lightning's
``LearningRateMonitor`` logs it as a copy of the learning rate; the callbacks
of :mod:`proxopt.callbacks` log its λ, target and measured fraction.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor
from torch.optim.lr_scheduler import LRScheduler

from .checks import check_group_param
from .optimizer import ProxOptimizer
from .regularizers import _number, integer
from .schedules import cubic_ramp

__all__ = ["SparsityTarget"]

# How the step δ of log λ adapts, as Rprop's does: it halves when the error changes
# sign (never below log 1.01) and grows while the error does not shrink. Rprop grows
# by 1.2; 1.5 here, to reach a λ decades away from the initial one in fewer updates.
_GROW, _SHRINK, _MIN_STEP = 1.5, 0.5, math.log(1.01)

# What each controllable key makes zero, for messages and docs.
CONTROLLABLE = {"l1": "exact zeros", "group_lasso": "all-zero groups along group_dim"}

# The state a resumed run needs, which load_state_dict() restores.
_STATE_KEYS = ("last_epoch", "log_scale", "error", "step_size", "measured", "base_values", "_last_value", "_step_count")
# The configuration, given again to the constructor: load_state_dict() checks that it agrees.
_SETTINGS = (
    "key", "groups", "target", "by_step", "begin_step", "every",
    "initial_change", "max_change", "tolerance", "scale_range",
)  # fmt: skip


class SparsityTarget(LRScheduler):
    r"""Scale the ``l1`` (or ``group_lasso``) strength of param groups so that
    the fraction of exact zeros (or of all-zero groups) reaches ``target`` by
    step ``by_step`` and holds it.

    .. math::
       \begin{aligned}
       &\textbf{input}: \lambda_{g,0} > 0 \text{ (each controlled group's } key
           \text{ at construction)},\ s^* \text{ (target)},\ t_0 \text{ (begin\_step)},
           \ T \text{ (by\_step)},\ \Delta \text{ (every)},\\
       &\hspace{13mm} \delta_0 = \log(\text{initial\_change}),\ \delta_{max} = \log(\text{max\_change}),
           \ \epsilon \text{ (tolerance)},\ [r_{lo}, r_{hi}] \text{ (scale\_range)}\\
       &\textbf{initialize}: u \leftarrow 0,\ \delta \leftarrow \delta_0,\ e_{prev} \leftarrow \text{none}\\
       &\textbf{at each } t \ge t_0 \text{ with } \Delta \mid t:\\
       &\hspace{5mm} s(t) = s^*\big(1 - (1 - \min(1, \tfrac{t - t_0}{T - t_0}))^3\big)
           \hspace{9mm} \text{(the ramp of Zhu \& Gupta, 2017: } s^* \cdot
           \text{cubic\_ramp}(T - t_0, \text{begin}=t_0)(t))\\
       &\hspace{5mm} z(t) = \text{fraction of exact zeros (l1) or all-zero groups
           (group\_lasso) over the controlled tensors}\\
       &\hspace{5mm} e = s(t) - z(t);\ \textbf{if } |e| > \epsilon:\\
       &\hspace{10mm} \textbf{if } e_{prev} \text{ is not none}:\\
       &\hspace{15mm} \delta \leftarrow \max(\log 1.01,\ \delta/2) \ \textbf{if } e\,e_{prev} < 0
           \quad\text{(crossed the target)}\\
       &\hspace{15mm} \delta \leftarrow \min(\delta_{max},\ 1.5\,\delta) \ \textbf{elif } |e| \ge |e_{prev}|
           \quad\text{(no progress)}\\
       &\hspace{10mm} u \leftarrow \operatorname{clip}(u + \delta\operatorname{sign}(e),\ \log r_{lo},\ \log r_{hi}),
           \quad e_{prev} \leftarrow e\\
       &\hspace{5mm} \lambda_g \leftarrow \lambda_{g,0}\, e^{u}\\
       \end{aligned}

    Why this form (an integral controller in log λ whose step adapts, as
    Rprop's does, instead of a fixed gain):

    * λ acts multiplicatively (the λ that holds a sparsity spans decades
      across models, optimizers and ``prox_metric``), so the controller
      integrates in log space and one factor scales every controlled group
      (their ratios are kept).
    * The response of the zeros to λ differs by more than 10x between
      settings, and it is fast: a zero weight stays zero while its update
      direction is no larger than λ (Adam, euclidean metric:
      ``|m̂/(√v̂+ε)| ≤ λ``; SGD: the momentum buffer; groups: ``‖d_g‖ ≤ λ√|g|``),
      so halving λ can revive a third of the zeros within ten steps. Fixed
      gains (PI on the fraction or on log(1 − z)) that were fast enough for
      the slow settings made the fast ones oscillate between two values
      (measured); a step that grows while the error does not shrink and
      halves whenever the target is crossed finds the λ range quickly from a
      far initial λ and settles without knowing the plant's gain.
    * The cubic ramp rises fast while many weights are easy to remove and
      ends flat at ``by_step``, so the loop's lag behind it vanishes there.
    * ``tolerance`` is a dead band: errors within it (batch-to-batch noise
      of the zero count) leave λ and the step alone; ``scale_range`` bounds
      the integral (no wind-up against a limit).

    Before ``begin_step`` the λ stay at their initial values (the model
    trains with them); the ramp starts from 0 at ``begin_step``. After
    ``by_step`` the target is ``s*`` and the controller keeps correcting.
    The first update outside the dead band changes λ by exactly
    ``initial_change`` (up if the zeros are too few, down if too many); the
    step adapts from the second on.

    A measurement reads every controlled weight once (``count_nonzero`` for
    ``l1``; an ∞-norm of each group for ``group_lasso``), with no copy kept,
    and syncs with the device once per device; it happens every ``every``
    calls of ``step()`` and once at construction. The fraction of groups is
    pooled: all-zero groups over all groups of all controlled tensors, each
    tensor's groups taken along its param group's ``group_dim``.

    The controller is deterministic: its decisions depend only on the
    controlled weights and its own state (no randomness, no timing).

    Args:
        optimizer: a proxopt optimizer.
        target: the fraction wanted, in [0, 1).
        by_step: the step (count of ``step()`` calls) at which the ramp reaches ``target``.
        key: ``"l1"`` (fraction of exact zeros) or ``"group_lasso"`` (fraction of
            all-zero groups along each group's ``group_dim``).
        groups: indices of the param groups to control; default: every group whose
            ``key`` is > 0. Each controlled group's ``key`` must be > 0 at
            construction: it is the initial λ, which the controller scales.
        every: measure and adapt every ``every`` calls of ``step()``.
        begin_step: the step at which the ramp starts (λ is left alone before).
        initial_change: the factor by which the first update (outside the dead
            band) changes λ (> 1, <= max_change).
        max_change: the largest factor by which one update may change λ.
        tolerance: errors ``|s(t) − z(t)|`` up to this leave λ unchanged.
        scale_range: the bounds of λ/λ₀ (the initial λ sets the scale).
    """

    def __init__(
        self,
        optimizer: ProxOptimizer,
        target: float,
        by_step: int,
        key: str = "l1",
        groups: list[int] | None = None,
        every: int = 10,
        begin_step: int = 0,
        *,
        initial_change: float = 1.1,
        max_change: float = 2.0,
        tolerance: float = 0.005,
        scale_range: tuple[float, float] = (1e-4, 1e4),
    ) -> None:
        # Every check runs before anything is written.
        if not isinstance(optimizer, ProxOptimizer):
            raise TypeError(
                f"Invalid optimizer value: a {type(optimizer).__name__} (SparsityTarget needs a proxopt optimizer: "
                "only proxopt applies the l1/group_lasso it sets)"
            )
        if not isinstance(key, str) or key not in CONTROLLABLE:
            raise ValueError(f"Invalid key value: {key!r} (expected one of {tuple(CONTROLLABLE)})")
        target_v = _number("target", target)
        if not 0.0 <= target_v < 1.0:
            raise ValueError(f"Invalid target value: {target} (a fraction in [0, 1))")
        begin_step = integer("begin_step", begin_step)
        if begin_step < 0:
            raise ValueError(f"Invalid begin_step value: {begin_step} (must be >= 0)")
        by_step = integer("by_step", by_step)
        if by_step <= begin_step:
            raise ValueError(f"Invalid by_step value: {by_step} (must be > begin_step = {begin_step})")
        every = integer("every", every)
        if every < 1:
            raise ValueError(f"Invalid every value: {every} (must be >= 1)")
        max_change_v = _number("max_change", max_change)
        if not 1.0 < max_change_v < math.inf:
            raise ValueError(f"Invalid max_change value: {max_change} (a factor > 1, finite)")
        initial_change_v = _number("initial_change", initial_change)
        if not 1.0 < initial_change_v <= max_change_v:
            raise ValueError(f"Invalid initial_change value: {initial_change} (a factor > 1, <= max_change = {max_change_v})")
        tolerance_v = _number("tolerance", tolerance)
        if not 0.0 <= tolerance_v < 1.0:
            raise ValueError(f"Invalid tolerance value: {tolerance} (a fraction in [0, 1))")
        lo, hi = _scale_range(scale_range)
        controlled = _controlled_groups(optimizer, key, groups)

        self.optimizer = optimizer
        self.key = key
        self.target = target_v
        self.by_step = by_step
        self.begin_step = begin_step
        self.every = every
        self.initial_change = initial_change_v
        self.max_change = max_change_v
        self.tolerance = tolerance_v
        self.scale_range = (lo, hi)
        self.groups = controlled
        self.base_values = [float(optimizer.param_groups[i][key]) for i in controlled]
        self.last_epoch = 0
        self._step_count = 0
        self.log_scale = 0.0  # u: the integral, log(λ/λ₀)
        self.step_size = math.log(initial_change_v)  # δ: the change of log λ per update
        self.error: float | None = None  # e at the last update (none before the first): its sign and size steer δ
        self.measured = self._measure()
        self._last_value = [g[key] for g in optimizer.param_groups]

    # ---- what the controller sees ---------------------------------------------

    @property
    def current_target(self) -> float:
        """The ramped target s(t) at the current step (0 before ``begin_step``)."""
        return self.target_at(self.last_epoch)

    def target_at(self, step: int) -> float:
        """s(t): 0 up to ``begin_step``, the cubic ramp up to ``by_step``, ``target`` after."""
        return self.target * cubic_ramp(self.by_step - self.begin_step, begin=self.begin_step)(step)

    @torch.no_grad()
    def _measure(self) -> float:
        """z: exact zeros over elements (l1) or all-zero groups over groups
        (group_lasso), pooled over the controlled tensors. Counts are summed on
        each tensor's device and read once per device."""
        zeros: dict[torch.device, Tensor] = {}
        total = 0
        for i in self.groups:
            group = self.optimizer.param_groups[i]
            for j, p in enumerate(group["params"]):
                if self.key == "group_lasso":
                    # the optimizer's own check: group_dim in range (not wrapped), 2+ dims
                    check_group_param(group, j, p)
                if p.numel() == 0:
                    continue
                if self.key == "l1":
                    count, n = p.numel() - torch.count_nonzero(p), p.numel()
                else:
                    dim = group["group_dim"] % p.dim()  # checked above: only maps -1 to dim() - 1
                    others = tuple(d for d in range(p.dim()) if d != dim)
                    # a group is all zero iff its largest |w| is 0 (a reduction: no copy of p)
                    peak = torch.linalg.vector_norm(p.detach(), ord=math.inf, dim=others)
                    count, n = peak.numel() - torch.count_nonzero(peak), peak.numel()
                zeros[p.device] = zeros[p.device] + count if p.device in zeros else count
                total += n
        if total == 0:
            return 0.0
        return sum(int(c) for c in zeros.values()) / total

    # ---- the control step -----------------------------------------------------

    def step(self, epoch: int | None = None) -> None:  # type: ignore[override]
        """Advance one step; every ``every`` steps from ``begin_step`` on, measure
        and write the new λ into the controlled groups."""
        if epoch is not None:
            raise NotImplementedError("SparsityTarget.step() takes no epoch: it counts its own calls")
        t = self.last_epoch + 1
        # measure first: if it raises (a group changed under the controller), nothing has moved
        measured = self._measure() if t % self.every == 0 else None
        self._step_count += 1
        self.last_epoch = t
        if measured is None:
            return
        self.measured = measured
        if t < self.begin_step:
            return
        error = self.target_at(t) - self.measured
        if abs(error) > self.tolerance:
            previous = self.error  # None at the first update: δ stays log(initial_change)
            if previous is not None and error * previous < 0:  # crossed the target: the last step was too long
                self.step_size = max(_MIN_STEP, self.step_size * _SHRINK)
            elif previous is not None and abs(error) >= abs(previous):  # no progress: take longer steps
                self.step_size = min(math.log(self.max_change), self.step_size * _GROW)
            lo, hi = (math.log(r) for r in self.scale_range)
            self.log_scale = min(hi, max(lo, self.log_scale + math.copysign(self.step_size, error)))
            self.error = error
        scale = math.exp(self.log_scale)
        for i, base in zip(self.groups, self.base_values):
            self.optimizer.param_groups[i][self.key] = base * scale
        self._last_value = [g[self.key] for g in self.optimizer.param_groups]

    def get_last_value(self) -> list[Any]:
        """The ``key`` value of every param group after the last ``step()`` (the
        groups not controlled keep theirs)."""
        return list(self._last_value)

    def get_last_lr(self) -> list[float]:
        """The optimizer's learning rates (this controller never changes them)."""
        return [group["lr"] for group in self.optimizer.param_groups]

    def get_lr(self) -> list[float]:
        return self.get_last_lr()

    # ---- checkpoints ----------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The controller's state and configuration (not the optimizer)."""
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the state saved by :meth:`state_dict` and write the saved λ
        into the controlled groups.

        The settings come from the constructor, not from the checkpoint: each
        one the checkpoint holds (``key``, ``groups``, ``target``, ``by_step``,
        ``begin_step``, ``every``, ``initial_change``, ``max_change``,
        ``tolerance``, ``scale_range``) must equal this controller's, or a
        ValueError names the first that differs. To resume with a changed
        setting, drop it from the dict. Each state entry is checked too (a
        step size finite and > 0, each λ finite and > 0, the measured fraction
        in [0, 1], ...): a ValueError (TypeError for a non-number) names the
        entry. Nothing is modified when it raises."""
        state = dict(state_dict)
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"state_dict lacks {missing}: it does not come from SparsityTarget.state_dict()")
        unknown = sorted(k for k in state if k not in _STATE_KEYS and k not in _SETTINGS)
        if unknown:
            raise ValueError(f"state_dict has unknown entries {unknown}: it does not come from SparsityTarget.state_dict()")
        for name in _SETTINGS:
            if name not in state:
                continue
            saved, here = state[name], getattr(self, name)
            if isinstance(here, (tuple, list)):
                saved = list(saved) if isinstance(saved, (tuple, list)) else saved
                here = list(here)
            if saved != here:
                raise ValueError(
                    f"state_dict is of a SparsityTarget with {name}={state[name]!r}; this one has "
                    f"{name}={getattr(self, name)!r} (settings come from the constructor: give the same, "
                    f"or drop {name!r} from the state_dict)"
                )
        if len(state["base_values"]) != len(self.groups):
            raise ValueError(
                f"state_dict has initial values for {len(state['base_values'])} controlled groups; this one "
                f"controls {len(self.groups)}"
            )
        if len(state["_last_value"]) != len(self.optimizer.param_groups):
            raise ValueError(
                f"state_dict has values for {len(state['_last_value'])} param groups; the optimizer has "
                f"{len(self.optimizer.param_groups)}"
            )
        checked = self._checked_state(state)
        for name in _STATE_KEYS:
            setattr(self, name, checked[name])
        for i in self.groups:
            self.optimizer.param_groups[i][self.key] = self._last_value[i]


    def _checked_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """The state entries, each checked and converted (fresh lists: none shared
        with the dict); a bad one is an error naming it."""

        def number(name: str, value: Any, ok, want: str) -> float:
            v = _number(f"state_dict[{name!r}]", value)
            if not ok(v):  # the conditions are false for NaN
                raise ValueError(f"Invalid state_dict[{name!r}] value: {value!r} ({want})")
            return v

        def count(name: str) -> int:
            v = integer(f"state_dict[{name!r}]", state[name])
            if v < 0:
                raise ValueError(f"Invalid state_dict[{name!r}] value: {v} (a count of steps: must be >= 0)")
            return v

        positive = (lambda v: 0.0 < v < math.inf), "finite and > 0"
        out = {"last_epoch": count("last_epoch"), "_step_count": count("_step_count")}
        out["log_scale"] = number("log_scale", state["log_scale"], math.isfinite, "log(λ/λ₀): finite")
        out["step_size"] = number("step_size", state["step_size"], *positive)
        error = state["error"]
        out["error"] = None if error is None else number("error", error, math.isfinite, "finite, or None")
        out["measured"] = number("measured", state["measured"], lambda v: 0.0 <= v <= 1.0, "a fraction in [0, 1]")
        out["base_values"] = [number("base_values", v, *positive) for v in state["base_values"]]
        last = list(state["_last_value"])
        for i in self.groups:  # the λ written into the controlled groups
            last[i] = number("_last_value", last[i], *positive)
        out["_last_value"] = last
        return out


def _scale_range(value: Any) -> tuple[float, float]:
    try:
        lo, hi = value
    except (TypeError, ValueError):
        raise ValueError(f"Invalid scale_range value: {value!r} (expected a pair (lo, hi))") from None
    lo, hi = _number("scale_range", lo), _number("scale_range", hi)
    if not 0.0 < lo <= 1.0 <= hi < math.inf:
        raise ValueError(f"Invalid scale_range value: {value!r} (need 0 < lo <= 1 <= hi, finite)")
    return lo, hi


def _controlled_groups(optimizer: ProxOptimizer, key: str, groups: Any) -> list[int]:
    """The indices of the groups to control, each with ``key`` > 0."""
    n = len(optimizer.param_groups)
    if groups is None:
        chosen = [i for i, g in enumerate(optimizer.param_groups) if g[key] > 0]
        if not chosen:
            raise ValueError(
                f"Invalid key value: {key!r}: no param group has {key} > 0; give the groups to control an initial "
                f"{key} > 0 (the λ the controller scales), or name them in groups"
            )
        return chosen
    if isinstance(groups, (str, bytes)) or not hasattr(groups, "__iter__"):
        raise TypeError(f"Invalid groups value: {groups!r} (expected a list of param group indices, or None)")
    chosen = list(groups)
    for i in chosen:
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            raise TypeError(f"Invalid groups value: {groups!r} ({i!r} is not an int index)")
        if not 0 <= i < n:
            raise ValueError(f"Invalid groups value: {groups!r} (index {i} out of range: the optimizer has {n} param groups)")
    if not chosen:
        raise ValueError(f"Invalid groups value: {groups!r} (empty: name at least one param group, or pass None)")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"Invalid groups value: {groups!r} (a param group is named twice)")
    for i in chosen:
        if not optimizer.param_groups[i][key] > 0:
            raise ValueError(
                f"Invalid groups value: {groups!r}: param group {i} has {key} = {optimizer.param_groups[i][key]}; "
                f"a controlled group needs {key} > 0 at construction (the initial λ, which the controller scales)"
            )
    return [int(i) for i in chosen]
