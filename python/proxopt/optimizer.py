"""The base class of every proxopt optimizer.

It owns what is common to all rules: hyperparameter and regularizer
validation, lazy state, the checks that run before anything is written, the
split between the kernel path and the reference path, AMP's
``grad_scale``/``found_inf``, and state_dict compatibility with torch.optim.
Subclasses say which rule they are and which state they keep.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import _fused, _fused_cuda, reference
from .distributed import local_tensor, sharded_group_prox_, split_group_prox
from .reference import Hyper
from .regularizers import (
    REGULARIZER_DEFAULTS,
    bounds_of,
    group_dim_of,
    group_shape,
    has_group_prox,
    has_prox,
    validate_regularizers,
)

Prepared = tuple  # (param, grad, states, step, fresh, commit)


def _scalar(v: Any) -> float:
    return float(v.item()) if isinstance(v, Tensor) else float(v)


def check_lr(lr: Any) -> None:
    """torch's lr checks: a number, or a 1-element tensor, not negative (NaN rejected too)."""
    if isinstance(lr, Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    if not _scalar(lr) >= 0.0:
        raise ValueError(f"Invalid learning rate: {lr}")


class ProxOptimizer(Optimizer):
    """A ``torch.optim.Optimizer`` whose step runs the fused kernel of one rule.

    Subclasses set ``_rule`` (a ``reference`` rule code) and ``_adaptive_ok``,
    and implement ``_check_hyper``, ``_hyper`` and ``_state_keys``.
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

    def _check_hyper(self, group: dict) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _hyper(self, group: dict) -> Hyper:  # pragma: no cover - abstract
        raise NotImplementedError

    def _state_keys(self, group: dict) -> tuple[str, ...]:  # pragma: no cover - abstract
        """The state tensors the rule reads and writes, in kernel order."""
        raise NotImplementedError

    def _new_state(self, p: Tensor, key: str, group: dict) -> Tensor:
        return torch.zeros_like(p, memory_format=torch.preserve_format)

    # ---- construction and param groups -----------------------------------

    def __init__(self, params, defaults: dict) -> None:
        # differentiable/capturable are checked per group by add_param_group.
        if defaults.get("fused") and defaults.get("foreach"):
            raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
        super().__init__(params, {**defaults, **{k: v for k, v in REGULARIZER_DEFAULTS.items() if k not in defaults}})

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._check_group(group)
            self._check_params(group)
        except Exception:
            self.param_groups.pop()
            raise

    def _check_group(self, group: dict) -> None:
        check_lr(group["lr"])
        self._check_hyper(group)
        validate_regularizers(group, adaptive_ok=self._adaptive_ok, optimizer=f"proxopt.{type(self).__name__}")
        for key in ("differentiable", "capturable"):
            if group.get(key):
                raise NotImplementedError(f"proxopt.{type(self).__name__} does not support {key}=True")

    def _check_params(self, group: dict) -> None:
        prox = has_prox(group)
        if has_group_prox(group):
            for i, p in enumerate(group["params"]):
                self._check_group_param(group, i, p)
        for i, p in enumerate(group["params"]):
            if not (p.is_floating_point() or p.is_complex()):
                raise ValueError(f"{self._label(group, i)}: can only optimize floating point or complex tensors, got {p.dtype}")
            if prox:
                self._check_not_complex(group, i, p)
        self._check_overlap()

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
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
            for p in group["params"]:
                st = self.state.get(p)
                if st and "step" in st and not (
                    torch.is_tensor(st["step"]) and st["step"].device.type == "cpu" and st["step"].dtype in _fused.STEP_DTYPE_CODES
                ):
                    # torch keeps `step` on the device for fused/capturable runs; proxopt reads it on the host.
                    st["step"] = torch.tensor(_scalar(st["step"]), dtype=torch.float32)

    # ---- state_dict checks -------------------------------------------------

    def load_state_dict(self, state_dict: dict) -> None:
        self._check_loadable(state_dict)
        super().load_state_dict(state_dict)

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

    # ---- the step ------------------------------------------------------------

    @torch.compiler.disable  # torch.compile: one graph break; the step runs eagerly
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
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        # Every check, for every group, before the first write.
        plans = [self._plan(group) for group in self.param_groups]
        if found_inf is not None:
            found_inf = found_inf.to("cpu", torch.float32)
            if found_inf.item() != 0:
                return loss  # AMP overflow: leave parameters and state untouched
        for group, items in plans:
            if items:
                self._step_group(group, items, grad_scale)
        return loss

    def _plan(self, group: dict) -> tuple[dict, list[tuple[Tensor, Tensor]]]:
        self._check_group(group)
        prox = has_prox(group)
        grouped = has_group_prox(group)
        name = type(self).__name__
        items = []
        for i, p in enumerate(group["params"]):
            g = p.grad
            if g is None:
                continue
            if g.is_sparse:
                raise RuntimeError(f"proxopt.{name} does not support sparse gradients ({self._label(group, i)})")
            if g.shape != p.shape or g.dtype != p.dtype or g.device != p.device:
                raise ValueError(
                    f"{self._label(group, i)}: its grad has shape {tuple(g.shape)}, dtype {g.dtype}, device "
                    f"{g.device}; the parameter has {tuple(p.shape)}, {p.dtype}, {p.device}"
                )
            if prox:
                self._check_not_complex(group, i, p)
            if grouped:  # every step: group_dim may have been changed in the group
                self._check_group_param(group, i, p)
            items.append((p, g))
        return group, items

    def _prepare(self, p: Tensor, group: dict, keys: tuple[str, ...]):
        """The state of one parameter for this step: (states, step, commit).
        ``commit`` holds state created this step, stored only after the step ran."""
        if not keys and not self._has_step:
            return (), None, None  # SGD without momentum keeps no state, as torch
        state = self.state.get(p)
        if state and all(k in state for k in keys) and (not self._has_step or "step" in state):
            return tuple(state[k] for k in keys), state.get("step"), None
        state = self.state[p]
        if self._has_step and "step" not in state:
            state["step"] = torch.tensor(0.0, dtype=_default_step_dtype())
            for key in keys:
                state[key] = self._new_state(p, key, group)
        commit = {}
        for key in keys:
            if key not in state:  # SGD's momentum buffer: created from the first direction
                commit[key] = torch.empty_like(p, memory_format=torch.preserve_format)
        states = tuple(commit[k] if k in commit else state[k] for k in keys)
        return states, state.get("step"), commit

    def _step_group(self, group: dict, items: list[tuple[Tensor, Tensor]], grad_scale: Tensor | None) -> None:
        h = self._hyper(group)
        # FSDP2/DTensor: group proxes over groups split across shards run after the kernel, with reduced norms
        h, deferred = split_group_prox(h, [p for p, _ in items], group_dim_of(group))
        keys = self._state_keys(group)
        use_kernel = group.get("fused") is not False and (_fused.has_cpu_kernels() or _fused_cuda.available())
        gdim = group_dim_of(group) if h.has_group else None
        buckets: dict[tuple[int, int, int], _Bucket] = {}  # one call per (device, dtype, step dtype)
        slow, commits = [], []
        # Pointers and eligibility are taken afresh every step: `.data` can rebind
        # a parameter or a state tensor to other memory without changing its identity.
        for p, g in items:
            states, step, commit = self._prepare(p, group, keys)
            if commit:  # SGD's first momentum step: the buffer is stored once the step ran
                commits.append((p, commit))
            args = _kernel_args(p, g, states, step) if use_kernel else None
            if args is not None and args.device >= 0 and gdim is not None:
                args = None  # group proxes have no CUDA kernel yet: the reference takes them
            if args is None:
                slow.append((p, g, states, step, bool(commit)))
                continue
            key = (args.device, args.dtype, args.step_dtype)
            bucket = buckets.get(key)
            if bucket is None:
                bucket = buckets[key] = _Bucket(len(keys))
            bucket.add(args, bool(commit), group_shape(tuple(local_tensor(p).shape), gdim) if gdim is not None else None)
        cpu_scale = None if grad_scale is None else grad_scale.to("cpu", torch.float32)
        for (device, dtype_code, step_code), b in buckets.items():
            steps = b.steps if self._has_step else []
            if device < 0:
                _fused.cpu_step_ptrs(
                    h, dtype_code, b.params, b.grads, b.states, steps, step_code, b.numels, b.fresh,
                    cpu_scale, b.shapes if gdim is not None else None,
                )
            else:
                _fused_cuda._step_ptrs(
                    h, dtype_code, b.params, b.grads, b.states, steps, step_code, b.numels, b.fresh,
                    grad_scale, device,
                )
        for p, g, states, step, fresh in slow:
            reference.step_tensor(
                h, local_tensor(p), local_tensor(g), [local_tensor(t) for t in states], step,
                fresh=fresh, grad_scale=grad_scale,
            )
        for p, commit in commits:
            self.state[p].update(commit)
        if deferred is not None:
            params = [p for p, _ in items]
            sharded_group_prox_(deferred, params, group_dim_of(group), [self.state[p].get("step") for p in params])

    # ---- helpers for subclasses --------------------------------------------

    @staticmethod
    def _base_hyper(group: dict, rule: int) -> Hyper:
        lo, hi = bounds_of(group)
        return Hyper(
            rule=rule,
            lr=_scalar(group["lr"]),
            weight_decay=float(group.get("weight_decay", 0.0)),
            maximize=bool(group.get("maximize", False)),
            l1=float(group["l1"]),
            l2=float(group["l2"]),
            l0=float(group["l0"]),
            lo=lo,
            hi=hi,
            adaptive=group["prox_metric"] == "adaptive",
            group_lasso=float(group["group_lasso"]),
            max_norm=float(group["max_norm"] or 0.0),
            group_dim=group_dim_of(group),
        )


class _KernelArgs(NamedTuple):
    """What one kernel call needs of one parameter (pointers as ints)."""

    param: int
    grad: int
    states: list[int]
    numel: int  # elements the kernel steps (a complex tensor: its real view)
    dtype: int  # kernel dtype code
    step: int
    step_dtype: int
    device: int  # CUDA device index, -1 for the CPU


def _kernel_args(p: Tensor, g: Tensor, states: tuple[Tensor, ...], step: Tensor | None) -> _KernelArgs | None:
    """The kernel arguments of one parameter, or None if no kernel can take it."""
    p, g = local_tensor(p), local_tensor(g)  # DTensor (FSDP2): the local shards
    states = tuple(local_tensor(t) for t in states)
    args = _fused.cpu_args(p, g, states, step)
    if args is not None:
        return _KernelArgs(*args, -1)
    args = _fused_cuda.cuda_args(p, g, states, step)
    return None if args is None else _KernelArgs(*args, p.device.index)


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


class _Bucket:
    """Pointer lists of one kernel call."""

    __slots__ = ("params", "grads", "states", "steps", "numels", "fresh", "shapes")

    def __init__(self, nstates: int) -> None:
        self.params, self.grads, self.steps, self.numels = [], [], [], []
        self.fresh, self.shapes = [], []
        self.states = [[] for _ in range(nstates)]

    def add(self, args: _KernelArgs, fresh: bool, shape: tuple | None) -> None:
        self.params.append(args.param)
        self.grads.append(args.grad)
        for lst, ptr in zip(self.states, args.states):
            lst.append(ptr)
        self.steps.append(args.step)
        self.numels.append(args.numel)
        self.fresh.append(fresh)
        self.shapes.append(shape)


def _default_step_dtype() -> torch.dtype:
    # As torch: float64 when that is the default dtype, else float32.
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def check_nonneg(name: str, value: Any, label: str | None = None) -> None:
    v = _scalar(value)
    if not v >= 0.0:
        raise ValueError(f"Invalid {label or name} value: {value}")
