"""proxopt.Adagrad: torch.optim.Adagrad with fused proximal regularization."""

from __future__ import annotations

import torch
from torch import Tensor

from . import reference
from .optimizer import ProxOptimizer, _default_step_dtype, check_nonneg
from .reference import Hyper


class Adagrad(ProxOptimizer):
    r"""Adagrad, as ``torch.optim.Adagrad``, with proximal regularization fused
    into the same pass over memory.

    .. math::
       \begin{aligned}
       & g_t \leftarrow \pm\nabla f(w_{t-1}) / s + \lambda_{wd} w_{t-1}
            && \text{(maximize, AMP unscale, weight\_decay)}\\
       & \tilde\gamma \leftarrow \gamma / (1 + (t-1)\eta) && (\eta = \text{lr\_decay})\\
       & S_t \leftarrow S_{t-1} + g_t^2, \quad d_t \leftarrow \sqrt{S_t} + \epsilon \\
       & w_t \leftarrow w_{t-1} - \tilde\gamma\, g_t / d_t \\
       & w_t \leftarrow \operatorname{prox}_\tau(w_t) && \text{(l1 | l0, l2, bounds)}
       \end{aligned}

    with :math:`\tau = \tilde\gamma\lambda` (``prox_metric="euclidean"``) or
    :math:`\tau_i = \tilde\gamma\lambda / d_{t,i}` (``"adaptive"``: the
    classic proximal Adagrad). Arguments are those of ``torch.optim.Adagrad``
    plus the regularizers of :mod:`proxopt.regularizers`. As in torch, the
    state (``step``, ``sum``) is created in the constructor.
    """

    _rule = reference.ADAGRAD
    _group_keys = ("lr_decay", "initial_accumulator_value", "eps")
    _all_state_keys = frozenset({"step", "sum"})

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
        l1: float = 0.0,
        l2: float = 0.0,
        l0: float = 0.0,
        bounds: tuple[float, float] | None = None,
        prox_metric: str = "euclidean",
        group_lasso: float = 0.0,
        group_dim: int = 0,
        max_norm: float | None = None,
        max_norm_dim: int = 0,
    ) -> None:
        defaults = dict(
            lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value, foreach=foreach,
            maximize=maximize, differentiable=differentiable, fused=fused,
            l1=l1, l2=l2, l0=l0, bounds=bounds, prox_metric=prox_metric,
            group_lasso=group_lasso, group_dim=group_dim, max_norm=max_norm, max_norm_dim=max_norm_dim,
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                state["step"] = torch.tensor(0.0, dtype=_default_step_dtype())
                state["sum"] = self._new_state(p, "sum", group)

    def _check_hyper(self, group: dict) -> None:
        check_nonneg("lr_decay", group["lr_decay"])
        check_nonneg("weight_decay", group["weight_decay"])
        check_nonneg("initial_accumulator_value", group["initial_accumulator_value"])
        check_nonneg("epsilon", group["eps"])

    def _state_keys(self, group: dict) -> tuple[str, ...]:
        return ("sum",)

    def _new_state(self, p: Tensor, key: str, group: dict) -> Tensor:
        v = group["initial_accumulator_value"]
        return torch.full_like(p, complex(v, v) if p.is_complex() else v, memory_format=torch.preserve_format)

    def _hyper(self, group: dict) -> Hyper:
        h = self._base_hyper(group, reference.ADAGRAD)
        h.lr_decay = float(group["lr_decay"])
        h.eps = float(group["eps"])
        return h
