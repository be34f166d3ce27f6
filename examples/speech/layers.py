"""Which layers the sparsity runs regularize and which output channels they
may remove: the Conv/Linear layers :func:`proxopt.param_groups` regularizes,
and the same but the output layer, whose rows are the classes / output
features."""

from __future__ import annotations

import proxopt
from torch import Tensor, nn

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def output_layer(model: nn.Module) -> nn.Module | None:
    last = None
    for m in model.modules():
        if isinstance(m, _LAYERS):
            last = m
    return last


def regularized_layers(model: nn.Module) -> list[nn.Module]:
    """The Conv/Linear layers whose weights every run regularizes: those
    :func:`proxopt.param_groups` puts in its regularized group."""
    chosen = {id(p) for p in proxopt.param_groups(model, weight_decay=1.0)[0]["params"]}
    return [m for m in model.modules() if isinstance(m, _LAYERS) and id(effective_param(m)) in chosen]


def channel_layers(model: nn.Module) -> list[nn.Module]:
    """The layers whose output channels may be removed: the regularized ones
    but the output layer (its rows are the classes / output features)."""
    out = output_layer(model)
    return [m for m in regularized_layers(model) if m is not out]


def effective_param(m: nn.Module) -> Tensor:
    """The weight parameter object (``weight_orig`` under torch's pruning)."""
    return getattr(m, "weight_orig", None) if hasattr(m, "weight_mask") else m.weight
