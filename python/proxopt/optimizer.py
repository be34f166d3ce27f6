"""The base class of every proxopt optimizer.

It owns what is common to all rules: hyperparameter and regularizer
validation (declared in :mod:`proxopt.regularizers`), the checks of
parameters (:mod:`proxopt.checks`) and state_dicts, and torch.optim's
conventions (param groups, lazy state, ``step`` as a tensor, AMP's
``grad_scale``/``found_inf``). The step itself is :func:`proxopt._dispatch.step`,
which gets data from here, never the optimizer. Subclasses say which rule
they are (a code of :data:`proxopt.rules.RULES`, which says what state it
keeps) and which hyperparameters it has.
"""

from __future__ import annotations

import copy
import operator
from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import _compiled, _dispatch
from .checks import check_channel_groups, check_overlap, check_params
from .hyper import Hyper
from .regularizers import (
    _number,
    check_group_keys,
    nonnegative,
    regularizer_hyper,
    split_regularizers,
    validate_regularizers,
)
from .reference import BUDGET_FIELDS, budget_select_, channel_select_
from .regularizers import COUPLED_KEY, budget_key, fraction, group_dim_of
from .rules import RULES


def check_lr(lr: Any) -> None:
    """torch's lr checks: a number, or a 1-element tensor, not negative (NaN rejected too)."""
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not lr.is_floating_point():
            raise ValueError(f"Invalid learning rate: {lr} (a tensor lr must be floating point)")
        if torch.compiler.is_compiling():
            return  # its value lives on the device: checked when it was set
    v = _number("learning rate", lr)
    if not v >= 0.0:
        raise ValueError(f"Invalid learning rate: {lr}")


class ProxOptimizer(Optimizer):
    """A ``torch.optim.Optimizer`` whose step is one call of the operator
    ``torch.ops.proxopt.step`` per device (and the reference for tensors the
    kernels cannot take).

    Subclasses set ``_rule`` (a rule code of :data:`proxopt.rules.RULES`) and
    implement ``_rule_hyper``.
    """

    _rule: int
    _group_keys: tuple[str, ...] = ()  # hyperparameters a saved param group of this type has
    # Keys of one's own that look like a setting (a key like "l1_target" is taken
    # for a misspelled "l1" otherwise; see regularizers.check_group_keys).
    extra_group_keys: frozenset[str] = frozenset()
    # GradScaler hands grad_scale/found_inf to step(); the kernel unscales as it reads the
    # gradient, and the step then leaves .grad unscaled, as torch's fused optimizers do.
    # A class attribute, so copies and unpickled optimizers keep it.
    _step_supports_amp_scaling = True

    # ---- subclass interface ----------------------------------------------

    def _rule_hyper(self, group: dict) -> dict[str, Any]:  # pragma: no cover - abstract
        """The rule's validated hyperparameters, as :class:`Hyper` fields."""
        raise NotImplementedError

    # ---- construction and param groups -----------------------------------

    def __init__(self, params, defaults: dict, regularizers: dict[str, Any]) -> None:
        if defaults.get("fused") and defaults.get("foreach"):
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
        self._plan = None
        self._hypers: dict[int, _Validated] = {}  # id(group) -> what it was last validated with
        self._healed: dict[int, bool] = {}  # id(group) -> its heal value at the last step
        regs = split_regularizers(f"proxopt.{type(self).__name__}", regularizers, known=defaults)
        super().__init__(params, {**defaults, **regs})
        check_channel_groups(self.param_groups)  # (now that every group is there)
        self._traced_init()

    def _traced_init(self) -> None:
        # What a compiled step's operator needs when it runs (proxopt._compiled): this
        # optimizer's key, and one dict per param group that holds the values it traced.
        self._owner = _compiled.register(self, tuple(k for k in self.defaults if k != "capturable"))
        self._traced_groups: dict[int, dict] = {}

    @property
    def _spec(self) -> _dispatch.StepSpec:
        return _dispatch.StepSpec(RULES[self._rule], f"proxopt.{type(self).__name__}", self._owner)

    def add_param_group(self, param_group: dict) -> None:
        if isinstance(param_group, dict):  # (torch says what else is wrong, and fills in the defaults)
            check_group_keys(f"proxopt.{type(self).__name__}", len(self.param_groups), param_group,
                             self.defaults, type(self).extra_group_keys)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._hyper(group)
            check_params(group)
            check_overlap(self.param_groups)
            check_channel_groups(self.param_groups, partial=True)
        except Exception:
            self.param_groups.pop()
            raise

    def _hyper(self, group: dict) -> Hyper:
        """The validated :class:`Hyper` of one param group. A group's entries
        may be edited at any time (schedulers set ``lr`` every step): the
        group is validated again when a value other than ``lr`` changed, and
        ``lr`` is checked every step. (A compiled step validates its groups
        when it runs: :meth:`_traced_hyper`.)"""
        if torch.compiler.is_compiling():
            return self._validate(group)  # the plan's state keys, and the traced reference path
        lr = group["lr"]
        keys, values = list(group), list(group.values())
        cached = self._hypers.get(id(group))
        if cached is None or not _unchanged(keys, values, cached):
            cached = _Validated(keys, values, self._validate(group), {})
            self._hypers[id(group)] = cached
        else:
            if isinstance(lr, Tensor) or lr is not cached.values[keys.index("lr")]:
                check_lr(lr)  # (a tensor lr may have been changed in place)
            cached.values[:] = values
        if isinstance(lr, Tensor):
            return cached.hyper  # the kernel reads the tensor
        out = cached.with_lr.get(lr)
        if out is None:  # a new lr (a scheduler's): one copy, kept for the last few values
            if len(cached.with_lr) >= 4:
                cached.with_lr.clear()
            out = cached.with_lr[lr] = copy.copy(cached.hyper)
            out.lr = float(lr)
        return out

    def _validate(self, group: dict) -> Hyper:
        """Validate one param group and derive its :class:`Hyper`."""
        name = f"proxopt.{type(self).__name__}"
        lr = group["lr"]
        check_lr(lr)
        for key in ("differentiable",):
            if group.get(key):
                raise NotImplementedError(f"{name} does not support {key}=True")
        # (Dynamo sets capturable=True in the param groups it traces: skip the check there, as torch does.)
        if group.get("capturable") and not torch.compiler.is_compiling() and not all(p.is_cuda for p in group["params"]):
            raise ValueError(f"{name}: capturable=True needs every parameter of its param group on a CUDA device")
        reg = validate_regularizers(group, adaptive_ok=RULES[self._rule].has_denom, optimizer=name)
        maximize = group.get("maximize", False)
        if not isinstance(maximize, bool):
            raise TypeError(f"Invalid maximize value: {maximize!r} (expected a bool)")
        return Hyper(
            rule=self._rule,
            lr=0.0 if isinstance(lr, Tensor) else float(lr),  # a tensor lr goes to the kernel as a tensor
            maximize=maximize,
            **self._rule_hyper(group),
            **regularizer_hyper(reg, coupled=group.get(COUPLED_KEY) is not None),
        )

    def _traced_hyper(self, gi: int, values: dict[str, Any]) -> tuple[Hyper, Tensor | None]:
        """When a compiled step runs: the :class:`Hyper` of param group ``gi``
        from the hyperparameter values the step read (``values``, a value for
        key of ``defaults`` but ``capturable``), validated as in eager mode, and
        its tensor lr (or None)."""
        live = self.param_groups[gi]
        group = self._traced_groups.setdefault(gi, {})  # one dict per group: _hyper's cache follows it
        group.clear()
        group.update(values)
        group.update(capturable=live.get("capturable", False), params=live["params"])
        lr = group["lr"]
        return self._hyper(group), (lr if isinstance(lr, Tensor) else None)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._traced_init()
        self._plan = None
        self._hypers = {}
        self._healed = {}
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    # ---- state_dict checks -------------------------------------------------

    def load_state_dict(self, state_dict: dict) -> None:
        self._check_loadable(state_dict)
        # torch casts every state tensor to its parameter's dtype: the budget's
        # statistics (counts and thresholds, float64) are set aside and kept exact.
        key = _dispatch.BUDGET_KEY
        saved = state_dict["state"]
        stats = {pid: st[key] for pid, st in saved.items() if isinstance(st, dict) and key in st}
        if stats:
            state_dict = {**state_dict,
                          "state": {pid: ({k: v for k, v in st.items() if k != key} if pid in stats else st)
                                    for pid, st in saved.items()}}
        super().load_state_dict(state_dict)
        if stats:
            ids = [pid for g in state_dict["param_groups"] for pid in g["params"]]
            params = [p for g in self.param_groups for p in g["params"]]
            for pid, p in zip(ids, params):
                if pid in stats:
                    self.state[p][key] = torch.as_tensor(stats[pid]).detach().to("cpu", torch.float64).clone()
        self._plan = None  # the state is new tensors: the next step copies them into its buffers
        self._healed = {}

    def _check_loadable(self, state_dict: dict) -> None:
        """Reject a state_dict from another optimizer type, or with missing or
        misshapen state, before anything is modified."""
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError("state_dict must be a dict with 'state' and 'param_groups' (from Optimizer.state_dict())")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        name = type(self).__name__
        for gi, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            missing = [k for k in self._group_keys if k not in saved]
            if missing:
                raise ValueError(
                    f"state_dict param group {gi} lacks {missing} (it has {sorted(k for k in saved if k != 'params')}): "
                    f"it comes from another optimizer type; {name} needs {list(self._group_keys)}"
                )
            if len(group["params"]) != len(saved["params"]):
                raise ValueError(
                    "loaded state dict contains a parameter group that doesn't match the size of optimizer's group"
                )
            rule = RULES[self._rule]
            merged = {**self.defaults, **{k: v for k, v in saved.items() if k != "params"}}
            try:
                keys = rule.state_keys(self._validate({**merged, "params": []}))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"state_dict param group {gi} has invalid hyperparameters: {exc}") from None
            required = set(keys) | ({"step"} if rule.has_step else set())
            for p, pid in zip(group["params"], saved["params"]):
                st = state_dict["state"].get(pid)
                if not st:
                    continue
                budget = st.get(_dispatch.BUDGET_KEY)
                size = _dispatch.budget_row_length(merged, p) if _dispatch.has_budget(merged) else len(BUDGET_FIELDS)
                if budget is not None and not (torch.is_tensor(budget) and budget.numel() == size):
                    raise ValueError(f"state_dict entry {_dispatch.BUDGET_KEY!r} of parameter {pid} must be a "
                                     f"tensor of {size} values (with channel_sparsity: {len(BUDGET_FIELDS)} fields, "
                                     "then one norm per group)")
                foreign = sorted(set(st) - rule.all_state_keys - {_dispatch.BUDGET_KEY})
                if foreign:
                    raise ValueError(
                        f"state_dict entry for parameter {pid} has {foreign}, which {name} does not keep: "
                        "it comes from another optimizer type"
                    )
                missing = sorted(required - set(st))
                if missing:
                    raise ValueError(
                        f"state_dict entry for parameter {pid} lacks {missing} (it has {sorted(st)}): "
                        f"it does not come from a {name} optimizer with these settings; "
                        "load a state_dict saved by the same optimizer type"
                    )
                for key in required - {"step"}:
                    t = st[key]
                    if not torch.is_tensor(t) or t.shape != p.shape:
                        shape = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
                        raise ValueError(
                            f"state_dict entry {key!r} of parameter {pid} has shape {shape}, "
                            f"its parameter {tuple(p.shape)}"
                        )
                if "step" in st:
                    t = st["step"]
                    if not (isinstance(t, (int, float)) or (torch.is_tensor(t) and t.numel() == 1)):
                        raise ValueError(
                            f"state_dict entry 'step' of parameter {pid} must be a number or a 1-element "
                            f"tensor (torch keeps a 0-dim one), got {tuple(t.shape) if torch.is_tensor(t) else t!r}"
                        )

    # ---- the step ------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        """Perform a single optimization step.

        Args:
            closure (Callable, optional): A closure that reevaluates the model
                and returns the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        groups = self.param_groups
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        compiling = torch.compiler.is_compiling()
        for _ in range(2):
            self._init_group()
            plan = self._plan
            if compiling:
                # Dynamo ran _init_group eagerly; tracing the comparison makes its
                # guards watch every object it compares (a replaced state retraces).
                # (Nothing traced branches on a float hyperparameter: that would specialize it.)
                if not plan.matches(groups, self.state, plan.group_keys, values=False):
                    raise RuntimeError("proxopt: the plan built for torch.compile does not describe the optimizer")  # pragma: no cover
                hypers = self._traced_hypers(plan)
            else:
                hypers = [self._hyper(group) for group in groups]
                self._freeze_on_heal(groups, hypers)
            try:
                self._plan, done = _dispatch.step(self._spec, plan, groups, self.state, hypers, grad_scale, found_inf)
            except BaseException:
                if plan.created:
                    self._plan = None  # its state was removed: build it again
                raise
            if done:
                if grad_scale is not None:
                    _unscale_grads(groups, grad_scale, found_inf)
                return loss
            # The operator refused a tensor that stopped being one the kernels
            # take, and wrote nothing: sort again (it goes to the reference path).
        raise RuntimeError("proxopt: the operator refused a tensor twice")  # pragma: no cover - the new plan routes it away

    def _freeze_on_heal(self, groups: list[dict], hypers: list[Hyper]) -> None:
        """Where a budgeted param group turns ``heal`` on, the support is
        frozen at exactly its target: the one exact selection of the budget
        (reference.budget_select_ or, for channel_sparsity, channel_select_;
        ties to the earlier weight or group), with the
        states of the weights it zeroes reset, before the step."""
        for group, h in zip(groups, hypers):
            was = self._healed.get(id(group))
            self._healed[id(group)] = bool(h.heal)
            if not h.heal or was is not False or not _dispatch.has_budget(group):
                continue
            key = budget_key(group)
            s = fraction(key, group[key])
            scoped = group["sparsity_scope"] == "group" and key == "sparsity"
            units = [group["params"]] if scoped else [[p] for p in group["params"]]
            rule = RULES[self._rule]
            for unit in units:
                ws = [_dispatch.local_tensor(p) for p in unit]
                masks = (budget_select_(ws, s) if key == "sparsity"
                         else [channel_select_(w, s, group_dim_of(group)) for w in ws])
                for p, mask in zip(unit, masks):
                    st = self.state.get(p) or {}
                    for q, key in enumerate(rule.state_keys(h)):
                        if key in st:
                            real = _dispatch.local_tensor(st[key])
                            real = torch.view_as_real(real) if real.is_complex() else real
                            real.masked_fill_(mask, rule.initial_value(key, group) if q == 0 else 0.0)

    def _traced_hypers(self, plan: _dispatch.Plan) -> list[Hyper | None]:
        """A traced step's hyperparameters: traced (as constants) for the groups
        with tensors on the reference path or DTensors, None for the others,
        whose operator call reads and checks them when it runs."""
        traced = {gi for gi, _ in plan.slow}
        if any(g.get(COUPLED_KEY) is not None for g in self.param_groups):
            traced = set(range(len(self.param_groups)))  # proxopt.coupled reads them after the call
        return [self._hyper(g) if gi in traced or plan.dtensor_groups[gi] else None for gi, g in enumerate(self.param_groups)]

    def _state_keys(self) -> list[tuple[str, ...]]:
        """Each param group's state keys, in kernel order."""
        rule = RULES[self._rule]
        return [rule.state_keys(self._keys_hyper(group)) for group in self.param_groups]

    def _keys_hyper(self, group: dict) -> Hyper:
        if not torch.compiler.is_compiling():
            return self._hyper(group)
        try:
            return self._hyper(group)
        except (TypeError, ValueError):
            # Dynamo builds the plan while it traces: an invalid value raises the
            # eager error when the compiled step runs (its operator validates first).
            return Hyper(rule=self._rule)

    def _init_group(self) -> None:
        """(Re)build the plan of the step: which tensors the kernels take, and
        their state as views of flat buffers. torch.compile runs this eagerly
        (as for torch.optim's own ``_init_group``) and guards on what it built."""
        keys = self._state_keys()
        if self._plan is not None and self._plan.matches(self.param_groups, self.state, keys):
            if not (torch.compiler.is_compiling() and self._kernel_refuses()):
                return
        for group in self.param_groups:
            check_params(group)
        check_overlap(self.param_groups)
        check_channel_groups(self.param_groups)
        self._plan = _dispatch.build_plan(self._spec, self.param_groups, self.state, keys)


    def _kernel_refuses(self) -> bool:
        """Whether a tensor the plan sends to the kernels no longer fits them (a
        non-contiguous grad or ``.data``): eagerly the operator refuses it and the
        step plans again; a traced step plans again before it traces the call."""
        return any(not _dispatch.kernel_takes(p, owner.grad)
                   for call in self._plan.calls for p, owner in zip(call.params, call.owners))


class _Validated(NamedTuple):
    """A param group's keys and values when it was last validated, and the result."""

    keys: list[str]
    values: list[Any]
    hyper: Hyper
    with_lr: dict[float, Hyper]


def _same_value(a: Any, b: Any) -> bool:
    """Whether a param group's value is unchanged: the same object, or an
    equal value of the same plain type (a tensor is compared by identity)."""
    return a is b or (type(a) is type(b) and not isinstance(a, Tensor) and a == b)


def _unchanged(keys: list[str], values: list[Any], cached: _Validated) -> bool:
    """Whether a group's keys and values are those it was validated with, but
    ``lr`` (checked on its own) and ``params`` (the plan's business)."""
    if keys != cached.keys:
        return False
    if all(map(operator.is_, values, cached.values)):
        return True
    return all(k in ("lr", "params") or _same_value(a, b) for k, a, b in zip(keys, values, cached.values))


def check_nonneg(name: str, value: Any, label: str | None = None) -> float:
    """torch's style of hyperparameter check: ``Invalid <label> value: <value>``."""
    return nonnegative(label or name, value)


def _unscale_grads(groups: list[dict], grad_scale: Tensor, found_inf: Tensor | None) -> None:
    """After a step given ``grad_scale``, ``.grad`` holds what torch's fused
    optimizers leave there: ``grad / grad_scale`` (a division, as theirs, so
    bit-identical for any scale), or, when ``found_inf`` is set (the step was
    skipped), the scaled gradient untouched. One extra read and write of the
    gradients, only under AMP; ``found_inf`` is not read on the host (no sync,
    nothing to branch on under torch.compile): a skipped step divides by 1."""
    by_device: dict[torch.device, list[Tensor]] = {}
    for group in groups:
        for p in group["params"]:
            if p.grad is not None:
                g = _dispatch.local_tensor(p.grad)
                by_device.setdefault(g.device, []).append(g)
    for device, grads in by_device.items():
        scale = grad_scale.to(device, torch.float32).reshape(())  # GradScaler's is of shape (1,)
        if found_inf is not None:
            scale = torch.where(found_inf.to(device).reshape(()) != 0, torch.ones_like(scale), scale)
        torch._foreach_div_(grads, scale)
