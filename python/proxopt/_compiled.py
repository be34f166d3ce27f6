"""How a step traced by torch.compile reaches the operator: its
hyperparameters are read, checked and converted when the graph runs, not
when Dynamo traces it.

Eagerly, ``proxopt::step`` gets each bucket's :class:`~proxopt.hyper.Hyper`
as a list of floats the optimizer validated. A traced step cannot do that:
a float read from a param group is a constant of the graph (a new value
recompiles) until Dynamo makes it symbolic, and then nothing may branch on
it (no ``math.isinf``, no ``if``: each would specialize it again) and the
operator's ``float[]`` argument would specialize it too. So the traced step
calls ``proxopt::traced_step`` instead. The param groups' hyperparameters
travel as data -- every float in one float64 tensor, tensors as they are,
the rest (strings, bools, ints, None) in a constant description -- and when
the graph runs the operator rebuilds each group, has the optimizer validate
it exactly as in eager mode (its checks, its messages, ``check_lr`` of a
tensor lr), and calls ``proxopt::step``. A float changed every step costs one
recompilation (the first change makes it dynamic), a tensor none.
"""

from __future__ import annotations

import ast
import functools
import itertools
import weakref
from typing import Any, NamedTuple

import torch
from torch import Tensor

from . import _native
from .checks import label
from .hyper import hyper_values

_OWNERS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # key -> optimizer
_KEYS = itertools.count()


class Owner(NamedTuple):
    """The optimizer a traced step belongs to (its key in this process) and
    the param-group keys it reads (not ``capturable``: Dynamo sets it to True
    in the groups it traces, so the operator reads the group's own value)."""

    key: int
    keys: tuple[str, ...]


def register(optimizer: Any, keys: tuple[str, ...]) -> Owner:
    """A new key for ``optimizer`` (its copies and unpickled versions get their own)."""
    key = next(_KEYS)
    _OWNERS[key] = optimizer
    return Owner(key, keys)


# ---- at trace time: the groups as data -------------------------------------------


def _encode(v: Any, floats: list, tensors: list) -> tuple:
    """A group value as (kind, payload): numbers (which Dynamo may make
    symbolic) and tensors by index, the rest as itself."""
    if v is None or isinstance(v, (bool, str)):
        return ("c", v)
    if isinstance(v, Tensor):
        tensors.append(v)
        return ("t", len(tensors) - 1)
    if isinstance(v, (float, int)):
        floats.append(v)
        return ("f" if isinstance(v, float) else "i", len(floats) - 1)
    if isinstance(v, (tuple, list)):
        return ("tuple" if isinstance(v, tuple) else "list", tuple(_encode(x, floats, tensors) for x in v))
    return ("c", repr(v))  # (no other type is valid: the checks reject its text as they would reject it)


class Traced(NamedTuple):
    """The ``hyper`` of a traced operator call: what ``proxopt::traced_step`` rebuilds the groups from."""

    owner: int
    description: str
    values: Tensor      # every float hyperparameter, float64
    tensors: list[Tensor]

    def run(self, args: Any) -> None:
        """Call ``proxopt::traced_step`` with the other arguments of ``args`` (a ``_dispatch.StepArgs``)."""
        torch.ops.proxopt.traced_step.default(
            self.owner, self.description, args.params, args.grads, args.states, args.steps, args.layout,
            self.values, self.tensors, args.grad_scale, args.found_inf, args.budget, args.check_only,
        )


def traced(owner: Owner, groups: list[dict], buckets: list[int], where: list[tuple[int, int]]) -> Traced:
    """The traced ``hyper`` of one call: its buckets' param groups (by index in
    ``groups``) and where each parameter is (for messages)."""
    floats: list = []
    tensors: list = []
    # (the plan's indices too: Dynamo may make an int symbolic, and a symbolic int has no repr)
    places = _encode((tuple(buckets), tuple(where)), floats, tensors)
    described = tuple(
        (gi, tuple((k, _encode(groups[gi][k], floats, tensors)) for k in owner.keys)) for gi in sorted(set(buckets))
    )
    one = torch.ones((), dtype=torch.float64)
    # one * x: a symbolic float becomes a graph input (a float64 0-dim tensor); exact (ints below 2**53 too)
    values = torch.stack([one * x for x in floats]) if floats else one.new_zeros(0)
    description = repr((places, described))
    return Traced(owner.key, description, values, tensors)


# ---- when the graph runs ---------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _parse(description: str) -> tuple:
    return ast.literal_eval(description)


def _decode(e: tuple, floats: list[float], tensors: list[Tensor]) -> Any:
    kind, v = e
    if kind == "f":
        return floats[v]
    if kind == "i":
        return int(floats[v])
    if kind == "t":
        return tensors[v]
    if kind in ("tuple", "list"):
        items = [_decode(x, floats, tensors) for x in v]
        return tuple(items) if kind == "tuple" else items
    return v


def _traced_step(owner: int, description: str, params: list[Tensor], grads: list[Tensor | None],
                 states: list[Tensor], steps: list[Tensor], layout: Tensor, values: Tensor, tensors: list[Tensor],
                 grad_scale: Tensor | None, found_inf: Tensor | None, budget: Tensor | None,
                 check_only: bool) -> None:
    opt = _OWNERS.get(owner)
    if opt is None:
        raise RuntimeError("proxopt: this compiled step belongs to an optimizer that no longer exists")
    places, described = _parse(description)
    floats = values.tolist()
    buckets, where = _decode(places, floats, tensors)
    hypers = {gi: opt._traced_hyper(gi, {k: _decode(e, floats, tensors) for k, e in items})
              for gi, items in described}
    hyper, lrs = [], []
    for gi in buckets:
        h, lr = hypers[gi]
        hyper += hyper_values(h)
        lrs.append(lr)
    refusal = torch.zeros(2, dtype=torch.int64)
    codes = _native.C.REFUSALS
    try:
        torch.ops.proxopt.step.default(params, grads, states, steps, layout, hyper, lrs, grad_scale, found_inf,
                                       budget, refusal, check_only)
    except ValueError as exc:
        if int(refusal[0]) != codes["tensor_error"]:
            raise
        gi, i = where[int(refusal[1])]
        what = str(exc)
        raise ValueError(f"{label(opt.param_groups[gi], i)}{' ' if what.startswith('is ') else ': '}{what}") from None
    code = int(refusal[0])
    if code != codes["none"]:
        gi, i = where[int(refusal[1])]
        reason = next(name for name, c in codes.items() if c == code).replace("_", " ")
        raise ValueError(
            f"proxopt.{type(opt).__name__}: {label(opt.param_groups[gi], i)}: {reason} under torch.compile. "
            "An eager step sends such a tensor to the reference path; a compiled one cannot change its plan "
            "while it runs: make it contiguous before the step (p.grad = p.grad.contiguous(), or "
            "p.data = p.data.contiguous()), or step it eagerly"
        )


if _native.C is not None:
    _SCHEMA = ("(int owner, str description, Tensor(a!)[] params, Tensor?[] grads, Tensor(b!)[] states, "
               "Tensor(c!)[] steps, Tensor layout, Tensor values, Tensor[] tensors, Tensor? grad_scale, "
               "Tensor? found_inf, Tensor(e!)? budget, bool check_only) -> ()")
    # It reads Python objects when it runs: a CUDA graph must not replay it.
    torch.library.define("proxopt::traced_step", _SCHEMA, tags=(torch.Tag.cudagraph_unsafe,))
    torch.library.impl("proxopt::traced_step", "CompositeExplicitAutograd")(_traced_step)

    @torch.library.register_fake("proxopt::traced_step")
    def _traced_step_fake(*args):
        return None  # mutates its arguments in place; nothing to allocate
