"""One way through a step: which tensors the operator ``proxopt::step`` takes,
the flat state kept for them, the call, and the reference path for the rest.

A :class:`Plan` is built once (``_init_group``) and reused while nothing it
depends on changes; :func:`plan_is_current` checks that every step:

* the optimizer's param groups, each group's ``params`` list (by identity),
  its state layout (``amsgrad``, ``momentum``, ``centered`` change it) and its
  ``fused`` flag;
* ``optimizer.state``: the same dict, holding the same tensors (so
  ``load_state_dict`` or a state tensor replaced by hand is noticed);
* parameters that had no state and no grad: one that gains a grad needs state.

What a plan cannot see coming (``.data`` rebound to a tensor the kernel
cannot take, a non-contiguous grad) the operator finds in its checks, before
writing anything; the step then rebuilds the plan and runs again.

For the kernel tensors of one (param group, device, dtype) -- a *bucket* --
every state key is one row of an (S, N) tensor and every step counter one
element of an (n,) tensor: ``optimizer.state[p][key]`` is a view of them, so
``state_dict()`` holds per-parameter tensors exactly as torch.optim does, and
one operator call per device takes a handful of tensors whatever the number
of parameters. Everything else (non-contiguous tensors, dtypes or devices
without a kernel, ``fused=False`` groups, no extension) goes through
:mod:`proxopt.reference`, updated in place.
"""

from __future__ import annotations

import dataclasses
import itertools
import operator
import re
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor

from . import _native, reference
from .distributed import is_dtensor, local_tensor, sharded_group_prox_, split_group_prox
from .hyper import HYPER_FIELDS, Hyper, hyper_values
from .regularizers import group_dim_of

if TYPE_CHECKING:  # pragma: no cover
    from .optimizer import ProxOptimizer

if _native.C is not None and tuple(_native.C.HYPER_FIELDS) != HYPER_FIELDS:
    _native.disable(
        "proxopt._C was built from other sources than this Python package (its hyperparameter "
        f"layout {tuple(_native.C.HYPER_FIELDS)} is not {HYPER_FIELDS}); rebuild it"
    )

if _native.C is not None:

    @torch.library.register_fake("proxopt::step")
    def _step_fake(params, grads, states, steps, layout, hyper, lrs, grad_scale, found_inf, check_only=False):
        return None  # mutates its arguments in place; nothing to allocate


ALIGN = 16  # state columns of a parameter start at a multiple of this (64 bytes of float32)
_ERROR = re.compile(r"proxopt\.step: (reroute )?tensor (\d+): (.*)", re.S)
_REAL = {torch.complex64: torch.float32, torch.complex128: torch.float64}


class Bucket(NamedTuple):
    """The kernel tensors of one (param group, device, dtype)."""

    group: int                  # index in optimizer.param_groups
    index: list[int]            # each parameter's position in group["params"]
    keys: tuple[str, ...]       # state keys, one row of `state` each
    columns: list[int]          # each parameter's first column in `state`
    state: Tensor               # (len(keys), N)
    steps: Tensor               # one counter per parameter


class DeviceCall(NamedTuple):
    """One operator call: every bucket on one device."""

    device: torch.device
    buckets: list[Bucket]
    owners: list[Tensor]        # the parameters as the groups hold them (maybe DTensors)
    params: list[Tensor]        # what the kernel writes (their local shards)
    where: list[tuple[int, int]]  # (group, position) of each parameter, for error messages
    states: list[Tensor]
    steps: list[Tensor]
    layout: Tensor
    dtensor: bool


class Plan(NamedTuple):
    calls: list[DeviceCall]
    slow: list[tuple[int, int]]  # (group, position) of each parameter on the reference path
    outside: list[Tensor]        # kernel-eligible parameters with no state and no grad yet
    groups: list[dict]
    group_params: list[list[Tensor]]
    group_keys: list[tuple[str, ...]]
    group_fused: list[bool]
    state: Any
    state_values: list[Any]
    created: list[Tensor]        # parameters whose state this plan created (undone if its first step fails)


# ---- is the plan still the truth? ------------------------------------------------


def _state_values(state: dict) -> list[Any]:
    return list(itertools.chain.from_iterable(map(dict.values, state.values())))


class _PythonChecks:
    """The helpers of proxopt._C, for a plan without the extension (every tensor
    on the reference path)."""

    @staticmethod
    def same_items(a, b) -> bool:
        return isinstance(a, list) and len(a) == len(b) and all(map(operator.is_, a, b))

    @staticmethod
    def same_state_values(state, expected) -> bool:
        values = _state_values(state)
        return len(values) == len(expected) and all(map(operator.is_, values, expected))


def _plan_is_current_py(plan: Plan | None, opt: ProxOptimizer) -> bool:
    if plan is None or opt.state is not plan.state:
        return False
    for group, gref, params, keys, fused in zip(opt.param_groups, plan.groups, plan.group_params, plan.group_keys,
                                                plan.group_fused):
        if group is not gref or len(group["params"]) != len(params):
            return False
        for p, q in zip(group["params"], params):
            if p is not q:
                return False
        if opt._state_keys(group) != keys or (group.get("fused") is not False) != fused:
            return False
    i = 0
    for st in opt.state.values():
        for v in st.values():
            if i >= len(plan.state_values) or v is not plan.state_values[i]:
                return False
            i += 1
    if i != len(plan.state_values):
        return False
    for p in plan.outside:
        if p.grad is not None:
            return False
    return True


def plan_is_current(plan: Plan | None, opt: ProxOptimizer) -> bool:
    """Whether ``plan`` still describes ``opt`` (see the module docstring).
    A plan exists only with the extension loaded, whose helpers do the
    per-tensor identity comparisons in C."""
    if plan is None or opt.state is not plan.state:
        return False
    C = _native.C or _PythonChecks
    groups = opt.param_groups
    if not C.same_items(groups, plan.groups):
        return False
    for group, params, keys, fused in zip(groups, plan.group_params, plan.group_keys, plan.group_fused):
        if not C.same_items(group["params"], params):
            return False
        if opt._state_keys(group) != keys or (group.get("fused") is not False) != fused:
            return False
    if not C.same_state_values(opt.state, plan.state_values):
        return False
    return not any(p.grad is not None for p in plan.outside)


# ---- building a plan ----------------------------------------------------------------


def kernel_takes(t: Tensor, g: Tensor | None) -> bool:
    """Whether the operator can update ``t`` (a local tensor) in place with grad ``g``:
    a dtype and device with a kernel, strided and contiguous (the kernel never
    steps a silent ``.contiguous()`` copy of a tensor it writes)."""
    if t.dtype not in _native.KERNEL_DTYPES or t.layout is not torch.strided or not t.is_contiguous():
        return False
    if t.device.type == "cuda":
        if _native.cuda_module() is None or not _native.cuda_device_ok(t.device.index):
            return False
    elif t.device.type != "cpu":
        return False
    if g is not None:
        g = local_tensor(g)
        if g.layout is not torch.strided or not g.is_contiguous():
            return False
    return True


def _step_dtype(existing: list[Tensor]) -> torch.dtype:
    # As torch: float64 when that is the default dtype (or a loaded step is float64), else float32.
    if torch.get_default_dtype() == torch.float64 or any(s.dtype == torch.float64 for s in existing):
        return torch.float64
    return torch.float32


def _view(flat_row: Tensor, column: int, p: Tensor) -> Tensor:
    """The state tensor of parameter ``p`` (local shape) in one row of a bucket's state."""
    if p.is_complex():
        return flat_row[column : column + 2 * p.numel()].view(p.dtype).view(p.shape)
    return flat_row[column : column + p.numel()].view(p.shape)


def _wrap_like(view: Tensor, owner: Tensor) -> Tensor:
    """A DTensor parameter's state is a DTensor with its sharding, over the local view."""
    if not is_dtensor(owner):
        return view
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(view, owner.device_mesh, owner.placements, run_check=False,
                              shape=owner.shape, stride=owner.stride())


def _check_state(opt: ProxOptimizer, group: dict, i: int, p: Tensor, st: dict, keys: tuple[str, ...]) -> None:
    """An existing state of parameter i (local shape of p) fits it, before anything is built from it."""
    for key in keys:
        if key in st:
            src = local_tensor(st[key]) if torch.is_tensor(st[key]) else st[key]
            if not torch.is_tensor(src) or src.shape != p.shape:
                shape = tuple(src.shape) if torch.is_tensor(src) else type(src).__name__
                raise ValueError(
                    f"{opt._label(group, i)}: its state {key!r} has shape {shape}, the parameter "
                    f"{tuple(p.shape)}: was the parameter or its state replaced? Load a state_dict "
                    "saved for these parameters"
                )
    if opt._has_step and "step" in st:
        step = st["step"]
        if not (isinstance(step, (int, float)) or (torch.is_tensor(step) and step.numel() == 1)):
            raise ValueError(f"{opt._label(group, i)}: its state 'step' must be a number or a 1-element tensor, "
                             f"got {step!r}")


def _build_bucket(opt: ProxOptimizer, gi: int, group: dict, members: list[int], keys: tuple[str, ...],
                  register: list) -> Bucket:
    """Allocate a bucket's flat state and fill it from the parameters' existing
    state (or the rule's initial values). The state entries become views of it
    only when every bucket was built (``register``), so a plan that fails to
    build changes nothing."""
    params = group["params"]
    locals_ = [local_tensor(params[i]) for i in members]
    existing = [opt.state.get(params[i]) or {} for i in members]
    for p, st, i in zip(locals_, existing, members):
        _check_state(opt, group, i, p, st, keys)
    columns, n_cols = [], 0
    for p in locals_:
        columns.append(n_cols)
        real = p.numel() * (2 if p.is_complex() else 1)
        n_cols += -(-real // ALIGN) * ALIGN
    device = locals_[0].device
    dtype = _REAL.get(locals_[0].dtype, locals_[0].dtype)
    state = torch.empty((len(keys), n_cols), dtype=dtype, device=device)
    step_dtype = _step_dtype([st["step"] for st in existing if torch.is_tensor(st.get("step"))])
    steps_device = torch.device("cpu") if device.type == "cpu" else device
    for row, key in enumerate(keys):
        init = opt._initial_state(key, group)
        for p, col, st in zip(locals_, columns, existing):
            view = _view(state[row], col, p)
            if key in st:
                view.copy_(local_tensor(st[key]))
            else:
                view.fill_(init)
    if opt._has_step:
        counts = [float(st["step"]) if "step" in st else 0.0 for st in existing]
    else:  # SGD keeps no counter in its state: 0 marks a momentum buffer that has no value yet
        counts = [1.0 if "momentum_buffer" in st else 0.0 for st in existing]
    steps = torch.tensor(counts, dtype=step_dtype, device=steps_device)
    if keys or opt._has_step:  # (SGD without momentum keeps no state, as torch)
        for j, (p, col, i) in enumerate(zip(locals_, columns, members)):
            views = {"step": steps[j]} if opt._has_step else {}  # first, as torch.optim orders a fresh state
            views.update({key: _wrap_like(_view(state[row], col, p), params[i]) for row, key in enumerate(keys)})
            register.append((params[i], views))
    return Bucket(gi, members, keys, columns, state, steps)


def build_plan(opt: ProxOptimizer) -> Plan:
    """Sort every parameter into a bucket, the waiting list, or the reference path."""
    calls: dict[torch.device, list[Bucket]] = {}
    slow: list[tuple[int, int]] = []
    outside: list[Tensor] = []
    register: list[tuple[Tensor, dict]] = []
    for gi, group in enumerate(opt.param_groups):
        keys = opt._state_keys(group)
        use_kernel = group.get("fused") is not False and _native.C is not None
        members: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i, p in enumerate(group["params"]):
            local = local_tensor(p)
            g = p.grad
            takes = use_kernel and kernel_takes(local, g)
            if not takes:
                slow.append((gi, i))
            elif g is None and not opt.state.get(p):
                outside.append(p)  # gets state (and a bucket) once it has a grad
            else:
                members.setdefault((local.device, local.dtype), []).append(i)
        for (device, _), idx in members.items():
            calls.setdefault(device, []).append(_build_bucket(opt, gi, group, idx, keys, register))
    # Every bucket was built: now the state entries become views of the buckets.
    created: list[Tensor] = []
    for owner, views in register:
        if owner not in opt.state:
            created.append(owner)
        opt.state[owner].update(views)
    device_calls = []
    for device, buckets in calls.items():
        owners, params, where, starts, columns = [], [], [], [0], []
        for b in buckets:
            group = opt.param_groups[b.group]
            for i in b.index:
                owner = group["params"][i]
                owners.append(owner)
                params.append(local_tensor(owner))
                where.append((b.group, i))
            starts.append(len(params))
            columns += b.columns
        layout = torch.tensor(starts + columns, dtype=torch.int64)
        device_calls.append(DeviceCall(
            device, buckets, owners, params, where, [b.state for b in buckets], [b.steps for b in buckets],
            layout, any(is_dtensor(o) for o in owners),
        ))
    groups = opt.param_groups
    return Plan(
        device_calls, slow, outside, list(groups), [list(g["params"]) for g in groups],
        [opt._state_keys(g) for g in groups], [g.get("fused") is not False for g in groups],
        opt.state, _state_values(opt.state), created,
    )


# ---- one step ----------------------------------------------------------------------


class _Reroute(Exception):
    """The operator met a tensor it cannot take: rebuild the plan and step again."""


def step(opt: ProxOptimizer) -> None:
    """One step of every param group: all checks first, then the writes."""
    if torch.compiler.is_compiling():
        # Dynamo runs _init_group eagerly, as for torch.optim's own optimizers; tracing the
        # checks afterwards makes its guards watch every object they compare.
        opt._init_group()
        if not _plan_is_current_py(opt._plan, opt):  # pragma: no cover - _init_group made it current
            raise RuntimeError("proxopt: the plan built for torch.compile does not describe the optimizer")
    elif not plan_is_current(opt._plan, opt):
        opt._init_group()
    try:
        _step(opt, opt._plan)
    except _Reroute:
        # A tensor stopped being one the kernel takes: sort again (it goes to the
        # reference path) and run the step, which has written nothing yet.
        opt._plan = None
        opt._init_group()
        try:
            _step(opt, opt._plan)
        except _Reroute as exc:  # pragma: no cover - the new plan routes it away
            raise RuntimeError(f"proxopt: the operator rejected a tensor twice: {exc.__cause__}") from exc


def _undo_created(opt: ProxOptimizer, plan: Plan) -> None:
    """A plan's first step failed: the state it created for parameters that had
    none is removed, so the failed step changed nothing."""
    for p in plan.created:
        opt.state.pop(p, None)
    opt._plan = None


def _step(opt: ProxOptimizer, plan: Plan) -> None:
    groups = opt.param_groups
    grad_scale = getattr(opt, "grad_scale", None)
    found_inf = getattr(opt, "found_inf", None)
    try:
        hypers = [opt._hyper(group) for group in groups]
        # FSDP2: group proxes over groups split across shards run after the kernel, with reduced norms.
        kernel_hypers, deferred = [], []
        for group, h in zip(groups, hypers):
            kh, later = split_group_prox(h, group["params"], group_dim_of(group)) if h.has_group else (h, None)
            kernel_hypers.append(kh)
            deferred.append(later)
        slow = _prepare_slow(opt, plan) if plan.slow else []
        calls = [_call_args(opt, call, kernel_hypers, grad_scale, found_inf) for call in plan.calls]
        calls = [(c, a) for c, a in zip(plan.calls, calls) if any(g is not None for g in a[1])]  # no grad: no call
        if len(calls) > 1:  # several devices: every call checks before any writes
            for call, args in calls:
                _run(opt, call, args, check_only=True)
    except BaseException:
        if plan.created:
            _undo_created(opt, plan)
        raise
    for i, (call, args) in enumerate(calls):
        try:
            _run(opt, call, args, check_only=False)
        except BaseException:
            if i == 0 and plan.created:
                _undo_created(opt, plan)
            raise
    if plan.created:
        if found_inf is not None and float(found_inf) != 0:
            _undo_created(opt, plan)  # an overflow on a parameter's first step creates no state
        else:
            opt._plan = plan._replace(created=[])
    if slow:
        _run_slow(opt, slow, kernel_hypers, grad_scale, found_inf)
    for gi, later in enumerate(deferred):
        if later is not None:
            _deferred_group_prox(opt, plan, gi, later)


def _call_args(opt, call: DeviceCall, hypers: list[Hyper], grad_scale, found_inf) -> tuple:
    groups = opt.param_groups
    grads = [p.grad for p in call.owners]
    params = call.params
    if call.dtensor:
        grads = [None if g is None else local_tensor(g) for g in grads]
        params = [local_tensor(o) for o in call.owners]
    hyper, lrs = [], []
    for b in call.buckets:
        h = hypers[b.group]
        hyper += hyper_values(h)
        lr = groups[b.group]["lr"]
        lrs.append(lr if isinstance(lr, Tensor) else None)
    if grad_scale is not None and grad_scale.device != call.device:
        grad_scale = grad_scale.to(call.device, torch.float32)
    if found_inf is not None and found_inf.device != call.device:
        found_inf = found_inf.to(call.device, torch.float32)
    if grad_scale is not None and grad_scale.dtype != torch.float32:
        grad_scale = grad_scale.float()
    if found_inf is not None and found_inf.dtype != torch.float32:
        found_inf = found_inf.float()
    return (params, grads, call.states, call.steps, call.layout, hyper, lrs, grad_scale, found_inf)


def _run(opt, call: DeviceCall, args: tuple, *, check_only: bool) -> None:
    try:
        torch.ops.proxopt.step.default(*args, check_only)
    except ValueError as exc:
        m = _ERROR.match(str(exc))
        if m is None:
            raise
        gi, i = call.where[int(m.group(2))]
        if m.group(1):
            raise _Reroute() from exc
        what = m.group(3)  # "is ..." reads as a sentence about the parameter, anything else after a colon
        raise ValueError(f"{opt._label(opt.param_groups[gi], i)}{' ' if what.startswith('is ') else ': '}{what}") from None
    except NotImplementedError as exc:
        # The dispatcher has no kernel for a sparse (or otherwise unusual) grad.
        for (gi, i), g in zip(call.where, args[1]):
            if g is not None and g.layout is not torch.strided:
                raise RuntimeError(
                    f"proxopt.{type(opt).__name__} does not support sparse gradients "
                    f"({opt._label(opt.param_groups[gi], i)}); use a dense gradient or torch.optim.SparseAdam"
                ) from None
        raise


# ---- the reference path ----------------------------------------------------------------


class _SlowItem(NamedTuple):
    group: int
    param: Tensor
    grad: Tensor
    states: tuple[Tensor, ...]
    step: Tensor | None
    fresh: bool
    new_state: dict | None       # state created for this step, stored once it ran


def _prepare_slow(opt, plan: Plan) -> list[_SlowItem]:
    """The reference path's tensors of this step, checked, with their state
    (new state is held back until the step has run)."""
    groups = opt.param_groups
    out = []
    for gi, i in plan.slow:
        group = groups[gi]
        p = group["params"][i]
        g = p.grad
        if g is None:
            continue
        opt._check_grad(group, i, p, g)
        keys = opt._state_keys(group)
        st = opt.state.get(p)
        new = None
        if not st:
            new = {key: opt._new_state(p, key, group) for key in keys}
            if opt._has_step:
                new["step"] = torch.tensor(0.0, dtype=_step_dtype([]))
            states, step, fresh = tuple(new[k] for k in keys), new.get("step"), True
        else:
            missing = [k for k in keys if k not in st]
            if missing:  # a setting that needs more state was switched on: the rule's initial value
                new = {k: opt._new_state(p, k, group) for k in missing}
            states = tuple(st[k] if k in st else new[k] for k in keys)
            step = st.get("step")
            fresh = not opt._has_step and "momentum_buffer" in keys and "momentum_buffer" not in st
            if opt._has_step and (not torch.is_tensor(step) or step.numel() != 1):
                raise ValueError(f"{opt._label(group, i)}: its state 'step' must be a 1-element tensor, got {step!r}")
            for k, s in zip(keys, states):
                if local_tensor(s).shape != local_tensor(p).shape:
                    raise ValueError(
                        f"{opt._label(group, i)}: its state {k!r} has shape {tuple(s.shape)}, the parameter "
                        f"{tuple(p.shape)}: was the parameter or its state replaced?"
                    )
        out.append(_SlowItem(gi, p, g, states, step, fresh, new))
    return out


def _run_slow(opt, items: list[_SlowItem], hypers: list[Hyper], grad_scale, found_inf) -> None:
    if found_inf is not None and float(found_inf) != 0:
        return  # AMP overflow: nothing changes
    groups = opt.param_groups
    for it in items:
        h = hypers[it.group]
        lr = groups[it.group]["lr"]
        if isinstance(lr, Tensor):
            h = dataclasses.replace(h, lr=float(lr))
        reference.step_tensor(
            h, local_tensor(it.param), local_tensor(it.grad), [local_tensor(t) for t in it.states],
            it.step, fresh=it.fresh, grad_scale=grad_scale,
        )
        if it.new_state:
            opt.state[it.param].update(it.new_state)
    # The state the reference path created is now part of the optimizer's state.
    if opt._plan is not None:
        opt._plan = opt._plan._replace(state_values=_state_values(opt.state))


def _deferred_group_prox(opt, plan: Plan, gi: int, h: Hyper) -> None:
    group = opt.param_groups[gi]
    params = [p for p in group["params"] if p.grad is not None]
    sharded_group_prox_(h, params, group_dim_of(group), [opt.state[p].get("step") for p in params])
