"""proxopt.RMSprop: torch.optim.RMSprop with fused proximal regularization."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .hyper import RMSPROP
from .optimizer import ProxOptimizer, check_nonneg
from .regularizers import with_regularizers


@with_regularizers
class RMSprop(ProxOptimizer):
    r"""RMSprop, as ``torch.optim.RMSprop``, with proximal regularization fused
    into the same pass over memory.

    .. math::
       \begin{aligned}
       & g_t \leftarrow \pm\nabla f(w_{t-1}) / s + \lambda_{wd} w_{t-1} \\
       & v_t \leftarrow \alpha v_{t-1} + (1-\alpha) g_t^2 \\
       & \bar g_t \leftarrow \alpha \bar g_{t-1} + (1-\alpha) g_t,\quad
         d_t \leftarrow \sqrt{v_t - \bar g_t^2} + \epsilon \text{ (centered) else } \sqrt{v_t} + \epsilon \\
       & b_t \leftarrow \mu b_{t-1} + g_t / d_t,\quad w_t \leftarrow w_{t-1} - \gamma b_t
            \text{ (momentum) else } w_{t-1} - \gamma g_t / d_t \\
       & w_t \leftarrow \operatorname{prox}_\tau(w_t) && (\tau = \gamma\lambda \text{ or } \gamma\lambda/d_{t,i})
       \end{aligned}

    Arguments are those of ``torch.optim.RMSprop`` (same positions) plus
    keyword-only ``fused`` (``False`` runs the pure-torch reference) and the
    regularizers below.
    """

    _rule = RMSPROP
    _group_keys = ("alpha", "eps", "centered", "momentum")

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        *,
        fused: bool | None = None,
        **regularizers: Any,
    ) -> None:
        defaults = dict(
            lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered,
            weight_decay=weight_decay, capturable=capturable, foreach=foreach,
            maximize=maximize, differentiable=differentiable, fused=fused,
        )
        super().__init__(params, defaults, regularizers)

    def _rule_hyper(self, group: dict) -> dict[str, Any]:
        return dict(
            eps=check_nonneg("epsilon", group["eps"]),
            momentum=check_nonneg("momentum", group["momentum"]),
            weight_decay=check_nonneg("weight_decay", group["weight_decay"]),
            alpha=check_nonneg("alpha", group["alpha"]),
            centered=bool(group["centered"]),
        )
