"""proxopt.Adagrad: torch.optim.Adagrad with fused proximal regularization."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .hyper import ADAGRAD
from .optimizer import ProxOptimizer, check_nonneg
from .regularizers import with_regularizers
from .rules import RULES


@with_regularizers
class Adagrad(ProxOptimizer):
    r"""Adagrad, as ``torch.optim.Adagrad``, with proximal regularization fused
    into the same pass over memory.

    .. math::
       \begin{aligned}
       & g_t \leftarrow \pm\nabla f(w_{t-1}) / s + \lambda_{wd} w_{t-1} \\
       & \tilde\gamma \leftarrow \gamma / (1 + (t-1)\eta) && \text{(lr\_decay } \eta) \\
       & S_t \leftarrow S_{t-1} + g_t^2, \quad d_t \leftarrow \sqrt{S_t} + \epsilon \\
       & w_t \leftarrow w_{t-1} - \tilde\gamma\, g_t / d_t \\
       & w_t \leftarrow \operatorname{prox}_\tau(w_t) && (\tau = \tilde\gamma\lambda \text{ or } \tilde\gamma\lambda/d_{t,i})
       \end{aligned}

    With ``l1`` and ``prox_metric="adaptive"`` this is the classic proximal
    (composite mirror descent) Adagrad. Arguments are those of
    ``torch.optim.Adagrad`` plus the regularizers below. As in torch, the
    state (``step``, ``sum``) is created in the constructor.
    """

    _rule = ADAGRAD
    _group_keys = ("lr_decay", "initial_accumulator_value", "eps")

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        **regularizers: Any,
    ) -> None:
        defaults = dict(
            lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value, foreach=foreach,
            maximize=maximize, differentiable=differentiable, fused=fused,
        )
        super().__init__(params, defaults, regularizers)
        step_dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                state["step"] = torch.tensor(0.0, dtype=step_dtype)
                state["sum"] = RULES[ADAGRAD].new_state(p, "sum", group)

    def _rule_hyper(self, group: dict) -> dict[str, Any]:
        return dict(
            initial_accumulator_value=check_nonneg("initial_accumulator_value", group["initial_accumulator_value"]),
            lr_decay=check_nonneg("lr_decay", group["lr_decay"]),
            weight_decay=check_nonneg("weight_decay", group["weight_decay"]),
            eps=check_nonneg("epsilon", group["eps"]),
        )
