"""The base class of every proxopt optimizer.

It owns what is common to all rules: hyperparameter and regularizer
validation (declared in :mod:`proxopt.regularizers`), the checks of
parameters and state_dicts, and torch.optim's conventions (param groups,
lazy state, ``step`` as a tensor, AMP's ``grad_scale``/``found_inf``). The
step itself is :func:`proxopt._dispatch.step`. Subclasses say which rule they
are, which hyperparameters it has and which state it keeps.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import _dispatch
from .hyper import Hyper
from .regularizers import (
    _number,
    group_dim_of,
    has_group_prox,
    has_prox,
    nonnegative,
    regularizer_hyper,
    split_regularizers,
    validate_regularizers,
)


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

    Subclasses set ``_rule`` (a :mod:`proxopt.hyper` rule code) and implement
    ``_rule_hyper`` and ``_state_keys``.
    """

    _rule: int
    _adaptive_ok: bool = True
    _has_step: bool = True  # keeps a ``step`` counter in its state
    _group_keys: tuple[str, ...] = ()  # hyperparameters a saved param group of this type has
    _all_state_keys: frozenset[str] = frozenset()  # every state key, in any setting
    # GradScaler hands grad_scale/found_inf to step(); unscaling happens in the kernel.
    # A class attribute, so copies and unpickled optimizers keep it.
    _step_supports_amp_scaling = True

    # ---- subclass interface ----------------------------------------------

    def _rule_hyper(self, group: dict) -> dict[str, Any]:  # pragma: no cover - abstract
        """The rule's validated hyperparameters, as :class:`Hyper` fields."""
        raise NotImplementedError

    def _state_keys(self, group: dict) -> tuple[str, ...]:  # pragma: no cover - abstract
        """The state tensors the rule reads and writes, in kernel order."""
        raise NotImplementedError

    def _initial_state(self, key: str, group: dict) -> float:
        """The value a fresh state tensor starts from (torch's)."""
        return 0.0

    def _new_state(self, p: Tensor, key: str, group: dict) -> Tensor:
        v = self._initial_state(key, group)
        return torch.full_like(p, complex(v, v) if p.is_complex() else v, memory_format=torch.preserve_format)

    # ---- construction and param groups -----------------------------------

    def __init__(self, params, defaults: dict, regularizers: dict[str, Any]) -> None:
        if defaults.get("fused") and defaults.get("foreach"):
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
        self._plan = None
        regs = split_regularizers(f"proxopt.{type(self).__name__}", regularizers)
        super().__init__(params, {**defaults, **regs})

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._hyper(group)
            self._check_params(group)
            self._check_overlap()
        except Exception:
            self.param_groups.pop()
            raise

    def _hyper(self, group: dict) -> Hyper:
        """Validate one param group and derive its :class:`Hyper` (every step:
        a group's entries may have been edited)."""
        name = f"proxopt.{type(self).__name__}"
        lr = group["lr"]
        check_lr(lr)
        for key in ("differentiable",):
            if group.get(key):
                raise NotImplementedError(f"{name} does not support {key}=True")
        # (Dynamo sets capturable=True in the param groups it traces: skip the check there, as torch does.)
        if group.get("capturable") and not torch.compiler.is_compiling() and not all(p.is_cuda for p in group["params"]):
            raise ValueError(f"{name}: capturable=True needs every parameter of its param group on a CUDA device")
        reg = validate_regularizers(group, adaptive_ok=self._adaptive_ok, optimizer=name)
        maximize = group.get("maximize", False)
        if not isinstance(maximize, bool):
            raise TypeError(f"Invalid maximize value: {maximize!r} (expected a bool)")
        return Hyper(
            rule=self._rule,
            lr=0.0 if isinstance(lr, Tensor) else float(lr),  # a tensor lr goes to the kernel as a tensor
            maximize=maximize,
            **self._rule_hyper(group),
            **regularizer_hyper(reg),
        )

    def _check_params(self, group: dict) -> None:
        prox = has_prox(group)
        grouped = has_group_prox(group)
        for i, p in enumerate(group["params"]):
            if not isinstance(p, Tensor):
                raise TypeError(f"{self._label(group, i)}: optimizer can only optimize Tensors, got {type(p).__name__}")
            if not (p.is_floating_point() or p.is_complex()):
                raise ValueError(f"{self._label(group, i)}: can only optimize floating point or complex tensors, got {p.dtype}")
            if p.layout is torch.strided and p.device.type != "meta" and torch._debug_has_internal_overlap(p) == 1:
                raise ValueError(
                    f"{self._label(group, i)} has elements that share memory (an expanded or stride-0 tensor): "
                    "a step would write them several times; pass a tensor with its own memory (e.g. .clone())"
                )
            if prox:
                self._check_not_complex(group, i, p)
            if grouped:
                self._check_group_param(group, i, p)

    def _check_grad(self, group: dict, i: int, p: Tensor, g: Tensor) -> None:
        """The checks of one parameter's grad on the reference path (the
        operator runs the same ones in C++ for the kernel's tensors)."""
        name = type(self).__name__
        if g.is_sparse:
            raise RuntimeError(
                f"proxopt.{name} does not support sparse gradients ({self._label(group, i)}); use a dense "
                "gradient or torch.optim.SparseAdam"
            )
        if g.shape != p.shape or g.dtype != p.dtype or g.device != p.device:
            raise ValueError(
                f"{self._label(group, i)}: its grad has shape {tuple(g.shape)}, dtype {g.dtype}, device "
                f"{g.device}; the parameter has {tuple(p.shape)}, {p.dtype}, {p.device}"
            )
        if p.layout is torch.strided and torch._debug_has_internal_overlap(p) == 1:
            raise ValueError(f"{self._label(group, i)} has elements that share memory (an expanded tensor)")
        if has_prox(group):
            self._check_not_complex(group, i, p)
        if has_group_prox(group):
            self._check_group_param(group, i, p)

    def _check_not_complex(self, group: dict, i: int, p: Tensor) -> None:
        if p.is_complex():
            raise ValueError(
                f"{self._label(group, i)} is complex: proximal regularizers are not defined for complex "
                "parameters (l1, l2, l0, bounds, group_lasso, max_norm); put it in a param group without them"
            )

    def _check_overlap(self) -> None:
        """Parameters may share a storage (views of one flat buffer) but no
        element: a step would update a shared element twice."""
        spans = defaultdict(list)
        for group in self.param_groups:
            for i, p in enumerate(group["params"]):
                if p.numel() == 0 or p.device.type == "meta":
                    continue
                try:
                    key = (p.device, p.untyped_storage().data_ptr())
                except (RuntimeError, NotImplementedError, TypeError):
                    continue  # tensor subclasses (DTensor shards) keep their own storage
                lo, hi = _extent(p)
                spans[key].append((lo, hi, p, self._label(group, i)))
        for pieces in spans.values():
            pieces.sort(key=lambda x: x[0])
            for j, (lo, hi, p, label) in enumerate(pieces):
                for lo2, _, q, label2 in pieces[j + 1 :]:
                    if lo2 >= hi:
                        break
                    if _share_elements(p, q):
                        raise ValueError(
                            f"{label} and {label2} overlap in memory: a step would update the shared "
                            "elements twice; pass each tensor once, or non-overlapping views"
                        )

    def _check_group_param(self, group: dict, i: int, p: Tensor) -> None:
        dim = group_dim_of(group)
        key = "group_dim" if group["group_lasso"] else "max_norm_dim"
        if p.dim() < 2:
            raise ValueError(
                f"{self._label(group, i)} has {p.dim()} dimension(s): group_lasso/max_norm need a "
                "weight matrix or conv kernel; put biases and norm weights in a param group without "
                "group regularizers (proxopt.param_groups(model, ...) does this)"
            )
        if not -p.dim() <= dim < p.dim():
            raise ValueError(f"Invalid {key} value: {dim} for {self._label(group, i)} of shape {tuple(p.shape)}")

    @staticmethod
    def _label(group: dict, i: int) -> str:
        names = group.get("param_names")
        return f"parameter {names[i]!r}" if names else f"parameter {i} of its param group"

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._plan = None
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    # ---- state_dict checks -------------------------------------------------

    def load_state_dict(self, state_dict: dict) -> None:
        self._check_loadable(state_dict)
        super().load_state_dict(state_dict)
        self._plan = None  # the state is new tensors: the next step copies them into its buffers

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
            merged = {**self.defaults, **{k: v for k, v in saved.items() if k != "params"}}
            required = set(self._state_keys(merged)) | ({"step"} if self._has_step else set())
            for p, pid in zip(group["params"], saved["params"]):
                st = state_dict["state"].get(pid)
                if not st:
                    continue
                foreign = sorted(set(st) - self._all_state_keys)
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
        _dispatch.step(self)
        return loss

    def _init_group(self) -> None:
        """(Re)build the plan of the step: which tensors the kernels take, and
        their state as views of flat buffers. torch.compile runs this eagerly
        (as for torch.optim's own ``_init_group``) and guards on what it built."""
        if _dispatch.plan_is_current(self._plan, self):
            return
        for group in self.param_groups:
            self._check_params(group)
        self._check_overlap()
        self._plan = _dispatch.build_plan(self)


def _extent(t: Tensor) -> tuple[int, int]:
    """The byte range [lo, hi) of its storage that a view can touch."""
    size = t.element_size()
    lo = t.storage_offset() * size
    last = sum((n - 1) * st for n, st in zip(t.shape, t.stride()))
    return lo, lo + (last + 1) * size


def _share_elements(a: Tensor, b: Tensor) -> bool:
    """Exact test for two views of one storage whose extents intersect."""
    if a.is_contiguous() and b.is_contiguous():
        return True
    if a.dtype != b.dtype:
        return True  # different element sizes on one storage: take it as shared
    n = a.untyped_storage().nbytes() // a.element_size()
    index = torch.arange(n, device="cpu")

    def elements(t: Tensor) -> Tensor:
        return torch.as_strided(index, t.shape, t.stride(), t.storage_offset()).reshape(-1)

    return bool(torch.isin(elements(a), elements(b)).any())


def check_nonneg(name: str, value: Any, label: str | None = None) -> float:
    """torch's style of hyperparameter check: ``Invalid <label> value: <value>``."""
    return nonnegative(label or name, value)
