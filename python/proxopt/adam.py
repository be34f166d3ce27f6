"""proxopt.Adam and proxopt.AdamW: torch's Adam/AdamW with fused proximal regularization."""

from __future__ import annotations

from torch import Tensor

from . import reference
from .optimizer import ProxOptimizer, _scalar, check_nonneg
from .reference import Hyper


class Adam(ProxOptimizer):
    r"""Adam, as ``torch.optim.Adam``, with proximal regularization fused into
    the same pass over memory.

    .. math::
       \begin{aligned}
       & g_t \leftarrow \pm\nabla f(w_{t-1}) / s
            && \text{(maximize: sign; AMP: unscale by } s)\\
       & g_t \leftarrow g_t + \lambda_{wd} w_{t-1}
            && \text{(weight\_decay, unless decoupled)}\\
       & m_t \leftarrow \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
         v_t \leftarrow \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
       & \hat v_t \leftarrow \max(\hat v_{t-1}, v_t) \text{ (amsgrad) else } v_t, \quad
         d_t \leftarrow \sqrt{\hat v_t}/\sqrt{1-\beta_2^t} + \epsilon \\
       & w_{t-1} \leftarrow w_{t-1}(1 - \gamma\lambda_{wd})
            && \text{(decoupled\_weight\_decay / AdamW)}\\
       & w_t \leftarrow w_{t-1} - \frac{\gamma}{1-\beta_1^t}\, m_t / d_t \\
       & w_t \leftarrow \operatorname{prox}_\tau(w_t)
            && \text{(l1 | l0, l2, bounds)}
       \end{aligned}

    with :math:`\tau = \gamma\lambda` (``prox_metric="euclidean"``, the
    decoupled analogue of AdamW's decay) or :math:`\tau_i = \gamma\lambda/d_{t,i}`
    (``prox_metric="adaptive"``). The prox step is the argmin of
    ½‖x − w‖² + τ·R(x): L1 gives exact zeros.

    Arguments are those of ``torch.optim.Adam`` plus ``l1``, ``l2``, ``l0``,
    ``bounds`` and ``prox_metric`` (see :mod:`proxopt.regularizers`).
    ``fused=None``/``True`` runs the compiled kernel; ``fused=False`` the
    pure-torch reference; ``foreach`` is accepted for compatibility.
    ``capturable`` and ``differentiable`` are not supported (an error, not
    silently ignored).
    """

    _rule = reference.ADAM
    _group_keys = ("betas", "eps", "amsgrad")
    _all_state_keys = frozenset({"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"})

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
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
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
            maximize=maximize, foreach=foreach, capturable=capturable,
            differentiable=differentiable, fused=fused,
            decoupled_weight_decay=decoupled_weight_decay,
            l1=l1, l2=l2, l0=l0, bounds=bounds, prox_metric=prox_metric,
            group_lasso=group_lasso, group_dim=group_dim, max_norm=max_norm, max_norm_dim=max_norm_dim,
        )
        super().__init__(params, defaults)

    def _check_hyper(self, group: dict) -> None:
        check_nonneg("epsilon", group["eps"])
        betas = group["betas"]
        for i in (0, 1):
            b = _scalar(betas[i])
            if not 0.0 <= b < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {betas[i]}")
        check_nonneg("weight_decay", group["weight_decay"])

    def _state_keys(self, group: dict) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if group["amsgrad"] else ("exp_avg", "exp_avg_sq")

    def _hyper(self, group: dict) -> Hyper:
        h = self._base_hyper(group, reference.ADAM)
        h.beta1, h.beta2 = (_scalar(b) for b in group["betas"])
        h.eps = float(group["eps"])
        h.amsgrad = bool(group["amsgrad"])
        h.decoupled_weight_decay = bool(group["decoupled_weight_decay"])
        return h


class AdamW(Adam):
    r"""AdamW, as ``torch.optim.AdamW`` (Adam with decoupled weight decay,
    default ``weight_decay=1e-2``), with fused proximal regularization.
    See :class:`Adam` for the algorithm and the regularizer arguments."""

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
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
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad,
            foreach=foreach, maximize=maximize, capturable=capturable,
            differentiable=differentiable, fused=fused, decoupled_weight_decay=True,
            l1=l1, l2=l2, l0=l0, bounds=bounds, prox_metric=prox_metric,
            group_lasso=group_lasso, group_dim=group_dim, max_norm=max_norm, max_norm_dim=max_norm_dim,
        )

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
