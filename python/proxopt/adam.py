"""proxopt.Adam and proxopt.AdamW: torch's Adam/AdamW with fused proximal regularization."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .hyper import ADAM
from .optimizer import ProxOptimizer, check_nonneg
from .regularizers import _number, with_regularizers


def _betas(betas: Any) -> tuple[float, float]:
    """torch's betas checks, with a ValueError for a malformed pair."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"Invalid betas value: {betas!r} (expected a pair (beta1, beta2))")
    if isinstance(betas[0], Tensor) != isinstance(betas[1], Tensor):
        raise ValueError("betas must be either both floats or both Tensors")
    out = []
    for i, b in enumerate(betas):
        if isinstance(b, Tensor) and b.numel() != 1:
            raise ValueError("Tensor betas[{}] must be 1-element".format(i))
        v = _number(f"beta parameter at index {i}", b)
        if not 0.0 <= v < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {b}")
        out.append(v)
    return out[0], out[1]


@with_regularizers
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

    Arguments are those of ``torch.optim.Adam`` plus the regularizers below.
    ``fused=None``/``True`` runs the compiled kernel; ``fused=False`` the
    pure-torch reference; ``foreach`` is accepted for compatibility.
    ``capturable=True`` needs CUDA parameters (a step can then be captured in
    a CUDA graph); ``differentiable`` is not supported (an error, not
    silently ignored).
    """

    _rule = ADAM
    _group_keys = ("betas", "eps", "amsgrad")

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
        **regularizers: Any,
    ) -> None:
        _betas(betas)
        defaults = dict(
            lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas, eps=eps,
            weight_decay=weight_decay, amsgrad=amsgrad,
            maximize=maximize, foreach=foreach, capturable=capturable,
            differentiable=differentiable, fused=fused,
            decoupled_weight_decay=decoupled_weight_decay,
        )
        super().__init__(params, defaults, regularizers)

    def _rule_hyper(self, group: dict) -> dict[str, Any]:
        beta1, beta2 = _betas(group["betas"])
        return dict(
            beta1=beta1, beta2=beta2,
            eps=check_nonneg("epsilon", group["eps"]),
            weight_decay=check_nonneg("weight_decay", group["weight_decay"]),
            amsgrad=bool(group["amsgrad"]),
            decoupled_weight_decay=bool(group["decoupled_weight_decay"]),
        )


@with_regularizers
class AdamW(Adam):
    r"""AdamW, as ``torch.optim.AdamW`` (Adam with decoupled weight decay,
    default ``weight_decay=1e-2``), with fused proximal regularization.

    .. math::
       \begin{aligned}
       & g_t \leftarrow \pm\nabla f(w_{t-1}) / s \\
       & m_t \leftarrow \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
         v_t \leftarrow \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
       & d_t \leftarrow \sqrt{\hat v_t}/\sqrt{1-\beta_2^t} + \epsilon
            && (\hat v_t = \max(\hat v_{t-1}, v_t) \text{ with amsgrad}) \\
       & w_{t-1} \leftarrow w_{t-1}(1 - \gamma\lambda_{wd}) && \text{(decoupled weight decay)}\\
       & w_t \leftarrow w_{t-1} - \frac{\gamma}{1-\beta_1^t}\, m_t / d_t \\
       & w_t \leftarrow \operatorname{prox}_\tau(w_t) && \text{(l1 | l0, l2, bounds, group proxes)}
       \end{aligned}

    Arguments are those of ``torch.optim.AdamW`` plus the regularizers below
    (see :class:`Adam` for ``fused``, ``capturable`` and the prox metric).
    """

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
        **regularizers: Any,
    ) -> None:
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad,
            foreach=foreach, maximize=maximize, capturable=capturable,
            differentiable=differentiable, fused=fused, decoupled_weight_decay=True,
            **regularizers,
        )

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
