"""The hyperparameters of one param group for one step, as the reference and
the kernels read them.

:class:`Hyper` is derived from a param group by the optimizer (its own
hyperparameters) and :mod:`proxopt.regularizers` (the regularizer keywords).
Its fields, in order, are also the layout of the operator's ``hyper``
argument: ``csrc/proxopt/hyper.h`` declares the same list, and proxopt
compares the two when it loads the extension.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

SGD, ADAM, ADAGRAD, RMSPROP = 0, 1, 2, 3


@dataclass
class Hyper:
    """One param group's hyperparameters for one step (names as in C++)."""

    rule: int = SGD
    lr: float = 0.0
    beta1: float = 0.0
    beta2: float = 0.0
    eps: float = 0.0
    weight_decay: float = 0.0
    momentum: float = 0.0
    dampening: float = 0.0
    alpha: float = 0.0
    lr_decay: float = 0.0
    l1: float = 0.0
    l2: float = 0.0
    l0: float = 0.0
    lo: float = -math.inf
    hi: float = math.inf
    group_lasso: float = 0.0
    max_norm: float = 0.0  # 0: no constraint
    group_dim: int = 0  # the dim group_lasso and max_norm act along
    maximize: bool = False
    decoupled_weight_decay: bool = False
    amsgrad: bool = False
    nesterov: bool = False
    centered: bool = False
    adaptive: bool = False

    @property
    def has_group(self) -> bool:
        return self.group_lasso != 0 or self.max_norm != 0

    @property
    def has_bounds(self) -> bool:
        return math.isfinite(self.lo) or math.isfinite(self.hi)


HYPER_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Hyper))


def hyper_values(h: Hyper) -> list[float]:
    """The operator's ``hyper`` values of one bucket (booleans as 0/1)."""
    return [float(getattr(h, name)) for name in HYPER_FIELDS]
