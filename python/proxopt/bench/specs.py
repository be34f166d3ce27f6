"""What is compared: the optimizers (same hyperparameters for proxopt and
torch.optim), the regularizers, and the bytes each step must move."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch

import proxopt


@dataclass(frozen=True)
class OptimizerSpec:
    name: str  # the proxopt / torch.optim class name
    hyper: dict[str, Any]
    words: int  # float32 words read + written per parameter per step (the performance contract)

    @property
    def proxopt_cls(self):
        return getattr(proxopt, self.name, None)

    @property
    def torch_cls(self):
        return getattr(torch.optim, self.name)

    def bytes_per_param(self, dtype: torch.dtype) -> int:
        return self.words * torch.empty((), dtype=dtype).element_size()


OPTIMIZERS = {
    # SGD+momentum: read w, g, m; write w, m.  Adam: read w, g, m, v; write w, m, v.
    "sgd": OptimizerSpec("SGD", dict(lr=1e-2, momentum=0.9), 5),
    "adam": OptimizerSpec("Adam", dict(lr=1e-3), 7),
    "adamw": OptimizerSpec("AdamW", dict(lr=1e-3, weight_decay=1e-2), 7),
    # Adagrad: read w, g, sum; write w, sum.  RMSprop (no momentum): read w, g, v; write w, v.
    "adagrad": OptimizerSpec("Adagrad", dict(lr=1e-2), 5),
    "rmsprop": OptimizerSpec("RMSprop", dict(lr=1e-2), 5),
}


@dataclass(frozen=True)
class RegularizerSpec:
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def metric_matters(self) -> bool:
        """prox_metric scales τ of the elementwise proxes only (group proxes use the euclidean τ)."""
        return any(k in self.kwargs for k in ("l1", "l2", "l0"))


REGULARIZERS = {
    "none": RegularizerSpec("none"),
    "l1": RegularizerSpec("l1", {"l1": 1e-4}),
    "l2": RegularizerSpec("l2", {"l2": 1e-4}),
    "elastic": RegularizerSpec("elastic", {"l1": 1e-4, "l2": 1e-4}),
    "l0": RegularizerSpec("l0", {"l0": 1e-6}),
    "bounds": RegularizerSpec("bounds", {"bounds": (-0.5, 0.5)}),
    "group_lasso": RegularizerSpec("group_lasso", {"group_lasso": 1e-4}),
    "group_lasso_dim1": RegularizerSpec("group_lasso_dim1", {"group_lasso": 1e-4, "group_dim": 1}),
    "max_norm": RegularizerSpec("max_norm", {"max_norm": 1.0}),
    # the sparsity budget: 90 % zeros per tensor, or over all regularized tensors together
    "sparsity": RegularizerSpec("sparsity", {"sparsity": 0.9}),
    "sparsity_global": RegularizerSpec("sparsity_global", {"sparsity": 0.9, "sparsity_scope": "group"}),
    # the channel budget: half of each matrix's rows zero
    "channel_sparsity": RegularizerSpec("channel_sparsity", {"channel_sparsity": 0.5}),
}

DEFAULT_REGULARIZERS = ("l1", "l2", "group_lasso", "sparsity", "sparsity_global")


def proxopt_accepts(opt: OptimizerSpec, kwargs: dict[str, Any], device: str = "cpu",
                    dtype: torch.dtype = torch.float32) -> str | None:
    """None when proxopt's class takes these regularizer arguments, else why not.

    The signature says which keywords exist (so group_lasso, max_norm, Adagrad,
    RMSprop show up as soon as they are implemented); one step on a tiny
    tensor says whether the combination is defined (e.g. no adaptive metric
    for SGD or for group proxes)."""
    cls = opt.proxopt_cls
    if cls is None:
        return f"proxopt.{opt.name} does not exist yet"
    params = inspect.signature(cls).parameters
    missing = [k for k in kwargs if k not in params]
    if missing:
        return f"proxopt.{opt.name} takes no {', '.join(missing)}"
    p = torch.zeros(2, 3, device=device, dtype=dtype, requires_grad=True)
    p.grad = torch.ones_like(p)
    try:
        cls([p], **opt.hyper, **kwargs).step()
    except Exception as exc:  # noqa: BLE001 - a broken build is reported, not fatal
        return f"proxopt.{opt.name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}): {type(exc).__name__}: {exc}"
    return None


def torch_accepts(opt: OptimizerSpec, flags: dict[str, Any], device: str, dtype: torch.dtype) -> str | None:
    """None when torch.optim's class runs with these flags (fused=True, ...) here, else why not."""
    p = torch.zeros(2, 3, device=device, dtype=dtype, requires_grad=True)
    p.grad = torch.ones_like(p)
    try:
        opt.torch_cls([p], **opt.hyper, **flags).step()
    except (ValueError, TypeError, RuntimeError, NotImplementedError) as exc:
        return f"torch.optim.{opt.name}({', '.join(f'{k}={v}' for k, v in flags.items())}): {exc}"
    return None
