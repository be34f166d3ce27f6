"""The hyperparameters of one param group for one step, as the reference and
the kernels read them.

:class:`Hyper` is derived from a param group by the optimizer (its own
hyperparameters) and :mod:`proxopt.regularizers` (the regularizer keywords).
Its fields, in order, are also the layout of the operator's ``hyper``
argument: ``csrc/proxopt/hyper.h`` declares the same list, and proxopt
compares the two when it loads the extension. The regularizers' fields are
derived from the keyword table of :mod:`proxopt.regularizers`.
"""

from __future__ import annotations

import dataclasses
import math

from .regularizers import REGULARIZER_FIELDS

SGD, ADAM, ADAGRAD, RMSPROP = 0, 1, 2, 3

# The rule's fields, with their values when unused (booleans last).
RULE_FIELDS: tuple[tuple[str, object], ...] = (
    ("rule", SGD), ("lr", 0.0), ("beta1", 0.0), ("beta2", 0.0), ("eps", 0.0), ("weight_decay", 0.0),
    ("momentum", 0.0), ("dampening", 0.0), ("alpha", 0.0), ("lr_decay", 0.0),
    ("initial_accumulator_value", 0.0),
    ("maximize", False), ("decoupled_weight_decay", False), ("amsgrad", False), ("nesterov", False),
    ("centered", False),
)


def _has_group(self) -> bool:
    return self.group_lasso != 0 or self.max_norm != 0 or self.channel_sparsity != 0


def _has_budget(self) -> bool:
    return self.sparsity != 0 or self.channel_sparsity != 0


def _budget(self) -> float:
    """The budget's fraction: of zero weights (sparsity) or of zero groups (channel_sparsity)."""
    return self.sparsity if self.sparsity != 0 else self.channel_sparsity


def _has_bounds(self) -> bool:
    return math.isfinite(self.lo) or math.isfinite(self.hi)


# One param group's hyperparameters for one step (names as in C++): the
# rule's fields, then the regularizers' (proxopt.regularizers.REGULARIZERS).
Hyper = dataclasses.make_dataclass(
    "Hyper",
    [(name, type(default), dataclasses.field(default=default)) for name, default in RULE_FIELDS + REGULARIZER_FIELDS],
    namespace={"has_group": property(_has_group), "has_bounds": property(_has_bounds),
               "has_budget": property(_has_budget), "budget": property(_budget)},
)
Hyper.__module__ = __name__

HYPER_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Hyper))


def hyper_values(h: Hyper) -> list[float]:
    """The operator's ``hyper`` values of one bucket (booleans as 0/1)."""
    return [float(getattr(h, name)) for name in HYPER_FIELDS]
