"""One way through a step: which tensors the operator ``proxopt::step`` takes,
the flat state kept for them, the call, and the reference path for the rest.

The optimizer hands this module data, never itself: a frozen :class:`StepSpec`
(its rule's row of :data:`proxopt.rules.RULES` and its name), its param groups,
its state dict, each group's validated :class:`~proxopt.hyper.Hyper`, and
AMP's tensors. It keeps the :class:`Plan` that :func:`build_plan` returns
and passes it back to :func:`step`.

A :class:`Plan` is reused while nothing it depends on changes;
:meth:`Plan.matches` checks that every step:

* the optimizer's param groups, each group's ``params`` list (by identity),
  its state layout (``amsgrad``, ``momentum``, ``centered`` change it) and its
  ``fused`` flag;
* ``optimizer.state``: the same dict, holding the same tensors (so
  ``load_state_dict`` or a state tensor replaced by hand is noticed);
* parameters that had no state and no grad: one that gains a grad needs state;
* the shape of each kernel parameter: ``.data`` rebound to another shape or
  size no longer fits its state, which the new plan's checks say.

What a plan cannot see coming (``.data`` rebound to a tensor the kernel
cannot take, a non-contiguous grad) the operator finds in its checks, before
writing anything, and reports as a refusal code; :func:`step` then says it
is not done and the optimizer rebuilds the plan and steps again. Every check
of both paths runs before the first write: the reference path's first (it
writes last), then the operator's, which include what can change in place
between plans (a step counter's value; on the CPU).

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
from typing import Any, NamedTuple

import torch
from torch import Tensor

from . import _compiled, _native, reference
from .checks import check_grad, check_hyper_range, label
from .coupled import coupled_prox_
from .distributed import is_dtensor, local_tensor, sharded_group_prox_, split_group_prox
from .hyper import HYPER_FIELDS, Hyper, hyper_values
from .regularizers import COUPLED_KEY, budget_key, group_dim_of, has_budget, has_group_prox
from .rules import RuleSpec, exported_rules


class StepArgs(NamedTuple):
    """The operator's arguments, in its schema's order (``proxopt._C.STEP_ARGS``)."""

    params: list[Tensor]
    grads: list[Tensor | None]
    states: list[Tensor]
    steps: list[Tensor]
    layout: Tensor
    hyper: list[float] | Any  # (a traced step: a proxopt._compiled.Traced)
    lrs: list[Tensor | None]
    grad_scale: Tensor | None
    found_inf: Tensor | None
    budget: Tensor | None
    refusal: Tensor | None
    check_only: bool


def _check_build() -> str | None:
    """Why the loaded proxopt._C does not fit this Python package, or None."""
    C = _native.C
    for what, built, here in [
        ("hyperparameter layout", tuple(C.HYPER_FIELDS), HYPER_FIELDS),
        ("rule table", tuple(C.RULES), exported_rules()),
        ("operator arguments", tuple(C.STEP_ARGS), StepArgs._fields),
    ]:
        if built != here:
            return f"proxopt._C was built from other sources than this Python package (its {what} {built} is not {here}); rebuild it"
    return None


if _native.C is not None and (_mismatch := _check_build()) is not None:
    _native.disable(_mismatch)

if _native.C is not None:

    @torch.library.register_fake("proxopt::step")
    def _step_fake(*args):
        return None  # mutates its arguments in place; nothing to allocate

    ALIGN: int = _native.C.STATE_ALIGN  # state columns of a parameter start at a multiple of this
    _REFUSALS: dict[str, int] = dict(_native.C.REFUSALS)
    # A parameter dtype -> its states' dtype (the real dtype of a complex one).
    _STATE_DTYPE = {getattr(torch, k): getattr(torch, v) for k, v in _native.C.STATE_DTYPES.items()}


class StepSpec(NamedTuple):
    """What dispatch needs to know of the optimizer: its rule and its name (for messages)."""

    rule: RuleSpec
    name: str  # "proxopt.AdamW"
    owner: Any = None  # a proxopt._compiled.Owner: how a traced step's operator call finds its optimizer


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
    shapes: list[torch.Size]    # and their shapes when their state was laid out
    params: list[Tensor]        # what the kernel writes (their local shards)
    where: list[tuple[int, int]]  # (group, position) of each parameter, for error messages
    states: list[Tensor]
    steps: list[Tensor]
    layout: Tensor
    dtensor: bool
    refusal: Tensor             # where the operator reports a tensor it does not take,
    report: Any                 # and a NumPy view of it (read without making a tensor)
    groups: list[dict]          # the param groups (where's first index), for messages
    budget: Tensor | None       # (params, 8) float64: each parameter's budget statistics


def _state_values(state: dict) -> list[Any]:
    return list(itertools.chain.from_iterable(map(dict.values, state.values())))


def _fused(group: dict) -> bool:
    return group.get("fused") is not False


class _PythonChecks:
    """The identity comparisons of proxopt._C, in Python: without the
    extension, and while torch.compile traces (its guards then watch every
    object compared)."""

    @staticmethod
    def same_items(a, b) -> bool:
        return isinstance(a, list) and len(a) == len(b) and all(map(operator.is_, a, b))

    @staticmethod
    def same_state_values(state, expected) -> bool:
        values = _state_values(state)
        return len(values) == len(expected) and all(map(operator.is_, values, expected))


class Plan(NamedTuple):
    calls: list[DeviceCall]
    slow: list[tuple[int, int]]  # (group, position) of each parameter on the reference path
    outside: list[Tensor]        # kernel-eligible parameters with no state and no grad yet
    groups: list[dict]           # what the plan was built from: the param groups,
    group_params: list[list[Tensor]]  # their params lists,
    group_keys: list[tuple[str, ...]]  # their state keys and
    group_fused: list[bool]      # fused flags, the state dict
    state: Any
    state_values: list[Any]      # and the tensors it held
    created: list[tuple[Tensor, tuple[str, ...] | None]]  # state this plan added, undone if its first step
                                 # fails: (parameter, its new keys), None for a parameter that had no state
    dtensor_groups: list[bool]   # which param groups hold DTensors (FSDP2 shards)
    group_budget: list[str | None]  # each param group's budget keyword, if any (statistics kept)

    def matches(self, groups: list[dict], state: dict, keys: list[tuple[str, ...]], values: bool = True) -> bool:
        """Whether this plan still describes param groups ``groups`` with state
        keys ``keys`` and state dict ``state`` (see the module docstring).
        ``values=False`` skips what depends on a hyperparameter's value (the
        budget's on/off): a traced step must not branch on a float."""
        if state is not self.state:
            return False
        C = _native.C if _native.C is not None and not torch.compiler.is_compiling() else _PythonChecks
        if not C.same_items(groups, self.groups):
            return False
        for group, params, k, gkeys, fused, budget in zip(groups, self.group_params, keys, self.group_keys,
                                                          self.group_fused, self.group_budget):
            if k != gkeys or _fused(group) != fused or not C.same_items(group["params"], params):
                return False
            if values and budget_key(group) != budget:
                return False
        if not C.same_state_values(state, self.state_values):
            return False
        if any(p.grad is not None for p in self.outside):
            return False
        return all([o.shape for o in call.owners] == call.shapes for call in self.calls)


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


def _started(rule: RuleSpec, st: dict) -> bool:
    """Whether a parameter's state was made by a step (one that holds nothing,
    or only budget statistics, gets the rule's fresh state)."""
    return any(k in st for k in rule.all_state_keys)


def _check_state(spec: StepSpec, group: dict, i: int, p: Tensor, st: dict, keys: tuple[str, ...]) -> None:
    """The existing state of parameter i fits p (its local tensor), before
    anything is built from it or written: the tensors the rule always keeps
    are there (and ``step``), each state tensor has the parameter's shape,
    dtype and device, and ``step`` is a finite count >= 0. O(1) per tensor;
    a state a setting switched on (``amsgrad``, ...) may still be missing."""
    rule = spec.rule
    if not _started(rule, st):
        return
    required = [s.key for s in rule.states if s.when is None] + (["step"] if rule.has_step else [])
    missing = [k for k in required if k not in st]
    if missing:
        raise ValueError(f"{label(group, i)}: its state lacks {missing} (it has {sorted(st)}): was it edited? "
                         "Load a state_dict saved for these parameters")
    for key in keys:
        if key in st:
            t = st[key]
            why = reference.misfit(local_tensor(t), p) if torch.is_tensor(t) else f"is a {type(t).__name__}"
            if why is not None:
                raise ValueError(f"{label(group, i)}: its state {key!r} {why}: was the parameter or its state "
                                 "replaced? Load a state_dict saved for these parameters")
    if rule.has_step and "step" in st:
        step = st["step"]
        if not (isinstance(step, (int, float)) or (torch.is_tensor(step) and step.numel() == 1)):
            raise ValueError(f"{label(group, i)}: its state 'step' must be a number or a 1-element tensor, "
                             f"got {step!r}")
        why = reference.step_misfit(local_tensor(step) if torch.is_tensor(step) else step)
        if why is not None:
            raise ValueError(f"{label(group, i)}: its state 'step' {why}")


def _build_bucket(spec: StepSpec, state: dict, gi: int, group: dict, members: list[int], keys: tuple[str, ...],
                  register: list) -> Bucket:
    """Allocate a bucket's flat state and fill it from the parameters' existing
    state (or the rule's initial values). The state entries become views of it
    only when every bucket was built (``register``), so a plan that fails to
    build changes nothing."""
    params = group["params"]
    has_step = spec.rule.has_step
    locals_ = [local_tensor(params[i]) for i in members]
    existing = [state.get(params[i]) or {} for i in members]
    for p, st, i in zip(locals_, existing, members):
        _check_state(spec, group, i, p, st, keys)
    columns, n_cols = [], 0
    for p in locals_:
        columns.append(n_cols)
        real = p.numel() * (2 if p.is_complex() else 1)
        n_cols += -(-real // ALIGN) * ALIGN
    device = locals_[0].device
    dtype = _STATE_DTYPE[locals_[0].dtype]
    flat = torch.empty((len(keys), n_cols), dtype=dtype, device=device)
    step_dtype = _step_dtype([st["step"] for st in existing if torch.is_tensor(st.get("step"))])
    steps_device = torch.device("cpu") if device.type == "cpu" else device
    for row, key in enumerate(keys):
        init = spec.rule.initial_value(key, group)
        for p, col, st in zip(locals_, columns, existing):
            view = _view(flat[row], col, p)
            if key in st:
                view.copy_(local_tensor(st[key]))
            else:
                view.fill_(init)
    if has_step:
        counts = [float(st["step"]) if "step" in st else 0.0 for st in existing]
    else:  # SGD keeps no counter in its state: 0 marks a momentum buffer that has no value yet
        counts = [1.0 if "momentum_buffer" in st else 0.0 for st in existing]
    steps = torch.tensor(counts, dtype=step_dtype, device=steps_device)
    if keys or has_step:  # (SGD without momentum keeps no state, as torch)
        for j, (p, col, i) in enumerate(zip(locals_, columns, members)):
            views = {"step": steps[j]} if has_step else {}  # first, as torch.optim orders a fresh state
            views.update({key: _wrap_like(_view(flat[row], col, p), params[i]) for row, key in enumerate(keys)})
            register.append((params[i], views))
    return Bucket(gi, members, keys, columns, flat, steps)


def build_plan(spec: StepSpec, groups: list[dict], state: dict, keys: list[tuple[str, ...]]) -> Plan:
    """Sort every parameter into a bucket, the waiting list, or the reference
    path; ``keys`` are each group's state keys."""
    calls: dict[torch.device, list[Bucket]] = {}
    slow: list[tuple[int, int]] = []
    outside: list[Tensor] = []
    register: list[tuple[Tensor, dict]] = []
    for gi, group in enumerate(groups):
        use_kernel = _fused(group) and _native.C is not None and _kernel_budget(group)
        members: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i, p in enumerate(group["params"]):
            local = local_tensor(p)
            g = p.grad
            takes = use_kernel and kernel_takes(local, g)
            if not takes:
                slow.append((gi, i))
            elif g is None and not state.get(p):
                outside.append(p)  # gets state (and a bucket) once it has a grad
            else:
                members.setdefault((local.device, local.dtype), []).append(i)
        for (device, _), idx in members.items():
            calls.setdefault(device, []).append(_build_bucket(spec, state, gi, group, idx, keys[gi], register))
    # Every bucket was built: now the state entries become views of the buckets.
    taken = [groups[b.group]["params"][i] for buckets in calls.values() for b in buckets for i in b.index]
    before = {owner: (tuple(state[owner]) if owner in state else None) for owner in taken}  # (and budget rows)
    for owner, views in register:
        state[owner].update(views)
    device_calls = []
    for device, buckets in calls.items():
        owners, params, where, starts, columns = [], [], [], [0], []
        for b in buckets:
            group = groups[b.group]
            for i in b.index:
                owner = group["params"][i]
                owners.append(owner)
                params.append(local_tensor(owner))
                where.append((b.group, i))
            starts.append(len(params))
            columns += b.columns
        units, budget = _budget_rows(groups, state, where, params)
        layout = torch.tensor(starts + columns + units, dtype=torch.int64)
        refusal = torch.zeros(2, dtype=torch.int64)
        device_calls.append(DeviceCall(
            device, buckets, owners, [o.shape for o in owners], params, where, [b.state for b in buckets],
            [b.steps for b in buckets], layout, any(is_dtensor(o) for o in owners), refusal, refusal.numpy(),
            groups, budget,
        ))
    created = [(owner, None if had is None else tuple(k for k in state[owner] if k not in had))
               for owner, had in before.items() if owner in state]
    created = [(owner, added) for owner, added in created if added != ()]
    return Plan(
        device_calls, slow, outside, list(groups), [list(g["params"]) for g in groups], list(keys),
        [_fused(g) for g in groups], state, _state_values(state), created,
        [any(map(is_dtensor, g["params"])) for g in groups], [budget_key(g) for g in groups],
    )


# ---- the sparsity budget's statistics ----------------------------------------------

BUDGET_KEY = "sparsity_stats"  # the state key of a parameter's row of budget statistics


def _kernel_budget(group: dict) -> bool:
    """Whether the kernels can take a budgeted param group: CPU tensors, no
    group prox with a weights' budget, and (one budget over the group) every
    tensor on the kernel path. Otherwise the whole group takes the reference
    path. A channel budget has no sharded (DTensor) form yet."""
    key = budget_key(group)
    if key is None:
        return True
    if key == "channel_sparsity" and any(is_dtensor(p) for p in group["params"]):
        raise ValueError(
            "channel_sparsity on DTensor (FSDP2-sharded) parameters is not supported yet: the channel "
            "budget needs each group's whole norm; use group_lasso with SparsityTarget there"
        )
    if (key == "sparsity" and has_group_prox(group)) or any(is_dtensor(p) for p in group["params"]):
        return False
    locals_ = [local_tensor(p) for p in group["params"]]
    if any(p.device.type != "cpu" for p in locals_):
        return False
    if group["sparsity_scope"] == "group":
        return all(kernel_takes(p, q.grad) for p, q in zip(locals_, group["params"]))
    return True


def _units(groups: list[dict], where: list[tuple[int, int]]) -> list[int]:
    """Each parameter's budget unit (the index of its unit's first parameter
    in ``where``'s order; -1 without a budget)."""
    first: dict[int, int] = {}
    units = []
    for j, (gi, _) in enumerate(where):
        group = groups[gi]
        if not has_budget(group):
            units.append(-1)
        elif group["sparsity_scope"] == "group" and budget_key(group) == "sparsity":
            units.append(first.setdefault(gi, j))
        else:
            units.append(j)
    return units


def budget_row_length(group: dict, p: Tensor) -> int:
    """How many values a parameter's budget statistics hold: the fields, then
    with a channel budget one norm per group."""
    if budget_key(group) != "channel_sparsity":
        return len(reference.BUDGET_FIELDS)
    return len(reference.BUDGET_FIELDS) + (p.shape[group_dim_of(group) % p.dim()] if p.dim() else 0)


def _unit_rows(group: dict, members: list[Tensor], stats: list[Tensor | None]) -> list[list[float]]:
    """The rows of one unit: its saved statistics when every member has them, else fresh ones."""
    if all(torch.is_tensor(t) and t.numel() == budget_row_length(group, p) for t, p in zip(stats, members)):
        return [t.detach().to("cpu", torch.float64).reshape(-1).tolist() for t in stats]
    key = budget_key(group)
    return reference.budget_init(members, float(group[key]), group_dim_of(group) if key == "channel_sparsity" else None)


def _budget_rows(groups: list[dict], state: dict, where: list[tuple[int, int]],
                 params: list[Tensor]) -> tuple[list[int], Tensor | None]:
    """A call's budget units and its (params, 8) statistics tensor (None
    without a budget); each budgeted parameter's state entry becomes a view
    of its row."""
    units = _units(groups, where)
    if all(u < 0 for u in units):
        return units, None
    lengths = [budget_row_length(groups[gi], params[j]) if u >= 0 else 0 for j, (u, (gi, _)) in enumerate(zip(units, where))]
    rows = torch.zeros((len(units), max(lengths)), dtype=torch.float64)
    members: dict[int, list[int]] = {}
    for j, u in enumerate(units):
        if u >= 0:
            members.setdefault(u, []).append(j)
    for head, idx in members.items():
        gi = where[head][0]
        owners = [groups[gi]["params"][where[j][1]] for j in idx]
        stats = [state.get(o, {}).get(BUDGET_KEY) for o in owners]
        for j, row in zip(idx, _unit_rows(groups[gi], [params[j] for j in idx], stats)):
            rows[j, : lengths[j]] = torch.tensor(row, dtype=torch.float64)
    for j, u in enumerate(units):
        if u >= 0:
            gi, i = where[j]
            state[groups[gi]["params"][i]][BUDGET_KEY] = rows[j, : lengths[j]]
    return units, rows


# ---- one step ----------------------------------------------------------------------


def step(spec: StepSpec, plan: Plan, groups: list[dict], state: dict, hypers: list[Hyper],
         grad_scale: Tensor | None, found_inf: Tensor | None) -> tuple[Plan | None, bool]:
    """One step of every param group with ``plan`` (current: :meth:`Plan.matches`):
    all checks first, then the writes. Returns ``(plan to keep or None, done)``;
    ``done`` is False when the operator refused a tensor the plan sent it
    (nothing was written: build a new plan and step again). When it raises,
    nothing was written and the state this plan created is removed."""
    written = False
    try:
        # FSDP2: group proxes over groups split across shards run after the kernel, with reduced norms.
        kernel_hypers, deferred = [], []
        for group, h, dt in zip(groups, hypers, plan.dtensor_groups):
            split = dt and h.has_group
            kh, later = split_group_prox(h, group["params"], group_dim_of(group)) if split else (h, None)
            kernel_hypers.append(kh)
            deferred.append(later)
        slow = _prepare_slow(spec, plan, groups, state, hypers) if plan.slow else []
        compiling = torch.compiler.is_compiling()
        calls = [(c, _call_args(c, groups, kernel_hypers, grad_scale, found_inf, compiling, spec.owner))
                 for c in plan.calls]
        calls = [(c, a) for c, a in calls if any(g is not None for g in a.grads)]  # no grad: no call
        if len(calls) > 1:  # several devices: every call checks before any writes
            for call, args in calls:
                if not _run(spec, call, args._replace(check_only=True)):
                    _undo_created(plan, state)
                    return None, False
        for call, args in calls:
            if not _run(spec, call, args):
                if not written:
                    _undo_created(plan, state)
                    return None, False
                raise RuntimeError(f"proxopt: the operator refused a tensor of device {call.device} after it had "
                                   "checked it")  # pragma: no cover - the checks above ran on the same tensors
            written = True
    except BaseException:
        if not written:
            _undo_created(plan, state)
        raise
    if plan.created:
        if found_inf is not None and float(found_inf) != 0:
            _undo_created(plan, state)  # an overflow on a parameter's first step creates no state
            plan = None
        else:
            plan = plan._replace(created=[])
    if slow:
        _run_slow(groups, state, slow, kernel_hypers, grad_scale, found_inf)
        if plan is not None:  # the state the reference path created is now part of the optimizer's state
            plan = plan._replace(state_values=_state_values(state))
    for gi, later in enumerate(deferred):
        if later is not None:
            _deferred_group_prox(groups, state, gi, later)
    for gi, group in enumerate(groups):
        if group.get(COUPLED_KEY) is not None:
            coupled_prox_(spec.rule, hypers, groups, gi, state, found_inf)
    return plan, True


def _undo_created(plan: Plan, state: dict) -> None:
    """A plan's first step failed: the state it created is removed (a
    parameter's whole entry, or the keys it added to one, such as
    ``amsgrad``'s), so the failed step changed nothing."""
    for p, added in plan.created:
        if added is None:
            state.pop(p, None)
        elif p in state:
            for key in added:
                state[p].pop(key, None)


def _call_args(call: DeviceCall, groups: list[dict], hypers: list[Hyper | None], grad_scale, found_inf,
               compiling: bool, owner: _compiled.Owner | None = None) -> StepArgs:
    grads = [p.grad for p in call.owners]
    params = call.params
    if call.dtensor:
        grads = [None if g is None else local_tensor(g) for g in grads]
        params = [local_tensor(o) for o in call.owners]
    hyper, lrs = [], []
    if compiling and not call.dtensor and owner is not None:
        # traced: the hyperparameters are data, checked and read when the graph runs
        hyper = _compiled.traced(owner, groups, [b.group for b in call.buckets], call.where)
    else:
        for b in call.buckets:
            hyper += hyper_values(hypers[b.group])
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
    # A traced step cannot branch on what the operator reports: there it raises.
    refusal = None if compiling else call.refusal
    return StepArgs(params, grads, call.states, call.steps, call.layout, hyper, lrs, grad_scale, found_inf,
                    call.budget, refusal, False)


def _run(spec: StepSpec, call: DeviceCall, args: StepArgs) -> bool:
    """One operator call. False: it refused a tensor that the reference path
    can take, and wrote nothing."""
    report = call.report if args.refusal is call.refusal else args.refusal
    try:
        if isinstance(args.hyper, _compiled.Traced):
            args.hyper.run(args)
        else:
            torch.ops.proxopt.step.default(*args)
    except ValueError as exc:
        if args.refusal is None or report[0] != _REFUSALS["tensor_error"]:
            raise
        gi, i = call.where[int(report[1])]
        what = str(exc)  # "is ..." reads as a sentence about the parameter, anything else after a colon
        raise ValueError(f"{label(call.groups[gi], i)}{' ' if what.startswith('is ') else ': '}{what}") from None
    except NotImplementedError:
        # The dispatcher has no kernel for a sparse (or otherwise unusual) grad.
        for (gi, i), g in zip(call.where, args.grads):
            if g is not None and g.layout is not torch.strided:
                raise RuntimeError(
                    f"{spec.name} does not support sparse gradients "
                    f"({label(call.groups[gi], i)}); use a dense gradient or torch.optim.SparseAdam"
                ) from None
        raise
    return args.refusal is None or bool(report[0] == _REFUSALS["none"])
# ---- the reference path ----------------------------------------------------------------


class _SlowItem(NamedTuple):
    group: int
    param: Tensor
    grad: Tensor
    states: tuple[Tensor, ...]
    step: Tensor | None
    fresh: bool
    new_state: dict | None       # state created for this step, stored once it ran
    fresh0: float                # what a reset first state holds
    budget: Tensor | None        # its row of budget statistics (float64 CPU) for this step,
    budget_home: Tensor | None   # copied into its state's row when the step ran (None: a new row)


def _prepare_slow(spec: StepSpec, plan: Plan, groups: list[dict], state: dict,
                  hypers: list[Hyper]) -> list[_SlowItem]:
    """The reference path's tensors of this step, with every check the
    reference runs (it writes after the operator, so none may fail then), and
    their state; new state is held back until the step has run."""
    rule = spec.rule
    out = []
    for gi, i in plan.slow:
        group = groups[gi]
        p = group["params"][i]
        g = p.grad
        if g is None:
            continue
        check_grad(spec.name, group, i, p, g)
        keys = plan.group_keys[gi]
        st = state.get(p) or {}
        _check_state(spec, group, i, local_tensor(p), st, keys)
        lr = group["lr"]
        if isinstance(lr, Tensor):  # (read when the step runs; a traced step cannot branch on it)
            lr = None if torch.compiler.is_compiling() else float(lr)
        else:
            lr = hypers[gi].lr
        check_hyper_range(group, i, local_tensor(p), lr, hypers[gi].weight_decay)
        new = None
        if not _started(rule, st):
            new = {"step": torch.tensor(0.0, dtype=_step_dtype([]))} if rule.has_step else {}  # first, as torch
            new.update({key: rule.new_state(p, key, group) for key in keys})
            states, step, fresh = tuple(new[k] for k in keys), new.get("step"), True
        else:
            missing = [k for k in keys if k not in st]
            if missing:  # a setting that needs more state was switched on: the rule's initial value
                new = {k: rule.new_state(p, k, group) for k in missing}
            step = st.get("step")
            if rule.has_step and not torch.is_tensor(step):  # a loaded number: counted in a tensor from now on
                new = {**(new or {}), "step": torch.tensor(float(step), dtype=_step_dtype([]))}
                step = new["step"]
            states = tuple(st[k] if k in st else new[k] for k in keys)
            fresh = not rule.has_step and "momentum_buffer" in keys and "momentum_buffer" not in st
        fresh0 = rule.initial_value(keys[0], group) if keys else 0.0
        out.append(_SlowItem(gi, p, g, states, step, fresh, new, fresh0, None, None))
    return _with_budget_rows(groups, state, out)


def _slow_units(groups: list[dict], items: list[_SlowItem], budgeted) -> dict[tuple[int, int], list[int]]:
    """The reference path's budget units: the indices into ``items`` of each
    unit (every budgeted item of a param group with the group scope, else
    each item alone), for the items ``budgeted(item)`` selects."""
    units: dict[tuple[int, int], list[int]] = {}
    for k, it in enumerate(items):
        if budgeted(it):
            whole = groups[it.group]["sparsity_scope"] == "group" and budget_key(groups[it.group]) == "sparsity"
            units.setdefault((it.group, -1 if whole else k), []).append(k)
    return units


def _with_budget_rows(groups: list[dict], state: dict, items: list[_SlowItem]) -> list[_SlowItem]:
    """The reference path's budget statistics: each budgeted item's row,
    fresh ones (held back with its new state) for a unit that lacks them."""
    items = list(items)
    for (gi, _), idx in _slow_units(groups, items, lambda it: has_budget(groups[it.group])).items():
        stats = [state.get(items[k].param, {}).get(BUDGET_KEY) for k in idx]
        rows = _unit_rows(groups[gi], [local_tensor(items[k].param) for k in idx], stats)
        for k, row, old in zip(idx, rows, stats):
            it = items[k]
            t = torch.tensor(row, dtype=torch.float64)
            if torch.is_tensor(old) and old.numel() == len(row) and old.dtype == torch.float64 and old.device.type == "cpu":
                it = it._replace(budget_home=old)
            else:
                it = it._replace(new_state={**(it.new_state or {}), BUDGET_KEY: t})
            items[k] = it._replace(budget=t)
    return items


def _run_slow(groups: list[dict], state: dict, items: list[_SlowItem], hypers: list[Hyper], grad_scale,
              found_inf) -> None:
    if found_inf is not None and float(found_inf) != 0:
        return  # AMP overflow: nothing changes
    probes = _plan_slow_budgets(groups, items, hypers)
    for k, it in enumerate(items):
        h = hypers[it.group]
        lr = groups[it.group]["lr"]
        if isinstance(lr, Tensor):
            h = dataclasses.replace(h, lr=float(lr))
        counts = reference.step_tensor(
            h, local_tensor(it.param), local_tensor(it.grad), [local_tensor(t) for t in it.states],
            it.step, fresh=it.fresh, grad_scale=grad_scale, budget=probes.get(k), fresh0=it.fresh0,
        )
        if torch.is_tensor(counts):  # a channel budget's group norms
            it.budget[reference.LO : reference.HI + 1] = 0.0
            it.budget[len(reference.BUDGET_FIELDS) :] = counts
        elif counts is not None:
            it.budget[reference.LO : reference.HI + 1] = torch.tensor(counts, dtype=torch.float64)
        if it.budget_home is not None:
            it.budget_home.copy_(it.budget.view(it.budget_home.shape))
        if it.new_state:
            state[it.param].update(it.new_state)


def _plan_slow_budgets(groups: list[dict], items: list[_SlowItem], hypers: list[Hyper]) -> dict[int, tuple]:
    """Each budgeted reference-path item's threshold and probes for this step,
    planned per unit as the operator plans them (reference.budget_plan)."""
    out = {}
    units = _slow_units(groups, items, lambda it: it.budget is not None and hypers[it.group].has_budget)
    for (gi, _), idx in units.items():
        head = items[idx[0]].budget.tolist()
        h = hypers[gi]
        if h.channel_sparsity:  # a unit of one tensor: exact on its group norms
            w = local_tensor(items[idx[0]].param)
            groups_n = w.shape[h.group_dim % w.dim()]
            reference.channel_budget_plan(head, groups_n, reference.budget_keep(h.channel_sparsity, groups_n))
            items[idx[0]].budget.copy_(torch.tensor(head, dtype=torch.float64))
            out[idx[0]] = items[idx[0]].budget[len(reference.BUDGET_FIELDS):].clone()  # the decisions
            continue
        lo = mid = hi = 0.0
        n = 0
        for k in idx:
            row = items[k].budget
            lo, mid, hi = lo + float(row[reference.LO]), mid + float(row[reference.MID]), hi + float(row[reference.HI])
            n += local_tensor(items[k].param).numel()
        reference.budget_plan(head, lo, mid, hi, reference.budget_keep(h.sparsity, n), n)
        for k in idx:
            items[k].budget[: reference.LO] = torch.tensor(head[: reference.LO], dtype=torch.float64)
            out[k] = reference.budget_probes(head)
    return out


def _deferred_group_prox(groups: list[dict], state: dict, gi: int, h: Hyper) -> None:
    group = groups[gi]
    params = [p for p in group["params"] if p.grad is not None]
    sharded_group_prox_(h, params, group_dim_of(group), [state[p].get("step") for p in params])
