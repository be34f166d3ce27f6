"""The update rules' facts, one row per rule code: its name, whether it keeps a
``step`` counter in its state, whether it has a per-element denominator (what
``prox_metric="adaptive"`` divides by), and its state tensors in kernel order,
each with the hyperparameter that switches it on and the param-group key a
fresh state starts from.

Everything about state derives from this table: an optimizer's state keys
for a param group, the values a fresh state starts from, the keys a
state_dict may hold, the reference path's state and the kernels' layout. The
C++ kernels declare the same table (``csrc/proxopt/rules.h``); proxopt
compares the two when it loads the extension (``proxopt._C.RULES``) and
refuses a build whose table differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .hyper import ADAGRAD, ADAM, RMSPROP, SGD, Hyper


@dataclass(frozen=True)
class StateSpec:
    key: str                   # the state_dict key
    when: str | None = None    # the Hyper field whose nonzero value keeps this state (None: always)
    init: str | None = None    # the param-group key a fresh state starts from (None: 0)


@dataclass(frozen=True)
class RuleSpec:
    """One update rule's state layout (a row of :data:`RULES`)."""

    name: str
    has_step: bool
    has_denom: bool
    states: tuple[StateSpec, ...]

    def state_keys(self, h: Hyper) -> tuple[str, ...]:
        """The state tensors the rule variant of ``h`` reads and writes, in kernel order."""
        return tuple(s.key for s in self.states if s.when is None or getattr(h, s.when))

    @property
    def all_state_keys(self) -> frozenset[str]:
        """Every key a state of this rule can hold, in any setting."""
        return frozenset(s.key for s in self.states) | ({"step"} if self.has_step else set())

    def initial_value(self, key: str, group: dict) -> float:
        """The value a fresh state tensor ``key`` starts from (torch's)."""
        init = next(s.init for s in self.states if s.key == key)
        return float(group[init]) if init is not None else 0.0

    def new_state(self, p: Tensor, key: str, group: dict) -> Tensor:
        """A fresh state tensor ``key`` for parameter ``p``."""
        v = self.initial_value(key, group)
        return torch.full_like(p, complex(v, v) if p.is_complex() else v, memory_format=torch.preserve_format)

    def as_exported(self) -> tuple[Any, ...]:
        """This row as ``proxopt._C.RULES`` gives it."""
        return (self.name, self.has_step, self.has_denom, tuple((s.key, s.when, s.init) for s in self.states))


RULES: dict[int, RuleSpec] = {
    SGD: RuleSpec("sgd", has_step=False, has_denom=False,
                  states=(StateSpec("momentum_buffer", when="momentum"),)),
    ADAM: RuleSpec("adam", has_step=True, has_denom=True,
                   states=(StateSpec("exp_avg"), StateSpec("exp_avg_sq"),
                           StateSpec("max_exp_avg_sq", when="amsgrad"))),
    ADAGRAD: RuleSpec("adagrad", has_step=True, has_denom=True,
                      states=(StateSpec("sum", init="initial_accumulator_value"),)),
    RMSPROP: RuleSpec("rmsprop", has_step=True, has_denom=True,
                      states=(StateSpec("square_avg"), StateSpec("momentum_buffer", when="momentum"),
                              StateSpec("grad_avg", when="centered"))),
}


def exported_rules() -> tuple[tuple[Any, ...], ...]:
    """The table in the form ``proxopt._C.RULES`` has, by rule code."""
    return tuple(RULES[code].as_exported() for code in sorted(RULES))
