"""proxopt.RMSprop: torch.optim.RMSprop with fused proximal regularization."""

from __future__ import annotations

from torch import Tensor

from . import reference
from .optimizer import ProxOptimizer, check_nonneg
from .reference import Hyper


class RMSprop(ProxOptimizer):
    r"""RMSprop, as ``torch.optim.RMSprop``, with proximal regularization fused
    into the same pass over memory.

    .. math::
       \begin{aligned}
       & g_t \leftarrow \pm\nabla f(w_{t-1}) / s + \lambda_{wd} w_{t-1}
            && \text{(maximize, AMP unscale, weight\_decay)}\\
       & v_t \leftarrow \alpha v_{t-1} + (1-\alpha) g_t^2 \\
       & \bar g_t \leftarrow \alpha \bar g_{t-1} + (1-\alpha) g_t,\;
         d_t \leftarrow \sqrt{v_t - \bar g_t^2} + \epsilon \text{ (centered) else }
         \sqrt{v_t} + \epsilon \\
       & b_t \leftarrow \mu b_{t-1} + g_t/d_t,\; w_t \leftarrow w_{t-1} - \gamma b_t
         \text{ (momentum) else } w_t \leftarrow w_{t-1} - \gamma g_t/d_t \\
       & w_t \leftarrow \operatorname{prox}_\tau(w_t) && \text{(l1 | l0, l2, bounds)}
       \end{aligned}

    with :math:`\tau = \gamma\lambda` (``prox_metric="euclidean"``) or
    :math:`\tau_i = \gamma\lambda / d_{t,i}` (``"adaptive"``). Arguments are
    those of ``torch.optim.RMSprop`` (same positions) plus keyword-only
    ``fused`` (``False`` runs the pure-torch reference) and the regularizers
    of :mod:`proxopt.regularizers`.
    """

    _rule = reference.RMSPROP
    _group_keys = ("alpha", "eps", "centered", "momentum")
    _all_state_keys = frozenset({"step", "square_avg", "momentum_buffer", "grad_avg"})

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
            lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered,
            weight_decay=weight_decay, capturable=capturable, foreach=foreach,
            maximize=maximize, differentiable=differentiable, fused=fused,
            l1=l1, l2=l2, l0=l0, bounds=bounds, prox_metric=prox_metric,
            group_lasso=group_lasso, group_dim=group_dim, max_norm=max_norm, max_norm_dim=max_norm_dim,
        )
        super().__init__(params, defaults)

    def _check_hyper(self, group: dict) -> None:
        check_nonneg("epsilon", group["eps"])
        check_nonneg("momentum", group["momentum"])
        check_nonneg("weight_decay", group["weight_decay"])
        check_nonneg("alpha", group["alpha"])

    def _state_keys(self, group: dict) -> tuple[str, ...]:
        keys = ("square_avg",)
        if group["momentum"] > 0:
            keys += ("momentum_buffer",)
        if group["centered"]:
            keys += ("grad_avg",)
        return keys

    def _hyper(self, group: dict) -> Hyper:
        h = self._base_hyper(group, reference.RMSPROP)
        h.alpha = float(group["alpha"])
        h.eps = float(group["eps"])
        h.momentum = float(group["momentum"])
        h.centered = bool(group["centered"])
        return h
