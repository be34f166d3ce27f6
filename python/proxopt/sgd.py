"""proxopt.SGD: torch.optim.SGD with fused proximal regularization."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .hyper import SGD as _SGD
from .optimizer import ProxOptimizer, check_nonneg
from .regularizers import with_regularizers


@with_regularizers
class SGD(ProxOptimizer):
    r"""Stochastic gradient descent (optionally with momentum), as ``torch.optim.SGD``,
    with proximal regularization fused into the same pass over memory.

    .. math::
       \begin{aligned}
       & g_t \leftarrow \pm\nabla f(w_{t-1}) / s
            && \text{(maximize: sign; AMP: unscale by } s)\\
       & g_t \leftarrow g_t + \lambda_{wd} w_{t-1} && \text{(weight\_decay, coupled)}\\
       & b_t \leftarrow g_t \text{ if } t = 1 \text{ else } \mu b_{t-1} + (1-\tau_d) g_t \\
       & d_t \leftarrow g_t + \mu b_t \text{ (nesterov) else } b_t \\
       & w_t \leftarrow w_{t-1} - \gamma d_t \\
       & w_t \leftarrow \operatorname{prox}(w_t) && \text{(l1 | l0, l2, bounds; } \tau = \gamma\lambda)
       \end{aligned}

    Arguments are those of ``torch.optim.SGD`` (``lr``, ``momentum``,
    ``dampening``, ``weight_decay``, ``nesterov``, ``maximize``, ``foreach``,
    ``differentiable``, ``fused``) plus the regularizers below;
    ``prox_metric`` can only be ``"euclidean"``: SGD has no per-element
    preconditioner.

    ``fused=None`` or ``True`` (default) runs the compiled kernel where it
    applies; ``fused=False`` runs the pure-torch reference. ``foreach`` is
    accepted for compatibility: the kernel is always multi-tensor.
    """

    _rule = _SGD
    _group_keys = ("momentum", "dampening", "nesterov")

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float | Tensor = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        **regularizers: Any,
    ) -> None:
        defaults = dict(
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
            nesterov=nesterov, maximize=maximize, foreach=foreach,
            differentiable=differentiable, fused=fused,
        )
        super().__init__(params, defaults, regularizers)

    def _rule_hyper(self, group: dict) -> dict[str, Any]:
        momentum = check_nonneg("momentum", group["momentum"])
        dampening = check_nonneg("dampening", group["dampening"])
        weight_decay = check_nonneg("weight_decay", group["weight_decay"])
        if group["nesterov"] and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        return dict(momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=bool(group["nesterov"]))
