"""Exact zeros and all-zero output channels, counted by
:func:`proxopt.sparsity` on the weights the forward pass uses (torch's
pruning masks applied), for every recipe's tables and for the controllers'
and pruners' targets."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import proxopt
from torch import Tensor, nn


@dataclass
class ZeroCounts:
    params: int  # every parameter
    param_zeros: int  # exact zeros among them
    weights: int  # the regularized weights
    zeros: int  # exact zeros among them
    channels: int  # output channels (rows) of the channel tensors
    zero_channels: int  # all-zero ones among them
    sparsity: dict[str, Any]  # proxopt.sparsity's report, per tensor

    @property
    def zero_fraction(self) -> float:
        """Exact zeros over every parameter."""
        return self.param_zeros / max(1, self.params)

    @property
    def weight_zero_fraction(self) -> float:
        """Exact zeros over the regularized weights: what a zeros target measures."""
        return self.zeros / max(1, self.weights)

    @property
    def channel_fraction(self) -> float:
        return self.zero_channels / max(1, self.channels)


def forward_weights(model: nn.Module) -> tuple[dict[str, Tensor], dict[int, str]]:
    """name -> the tensor the forward pass uses (``m.weight_orig · m.weight_mask``
    under torch's pruning, named ``m.weight``), and id(parameter) -> that name."""
    tensors, names = {}, {}
    for prefix, m in model.named_modules():
        for pn, p in m.named_parameters(recurse=False):
            base = pn[: -len("_orig")] if pn.endswith("_orig") and hasattr(m, pn[: -len("_orig")] + "_mask") else pn
            name = f"{prefix}.{base}" if prefix else base
            mask = getattr(m, base + "_mask", None) if base != pn else None
            tensors[name] = p.detach() if mask is None else p.detach() * mask
            names[id(p)] = name
    return tensors, names


def count_zeros(model: nn.Module, regularized: Iterable[Tensor], channels: Iterable[Tensor] = ()) -> ZeroCounts:
    """Zeros of every parameter of ``model``, of the ``regularized`` parameters,
    and all-zero rows of the ``channels`` parameters (as the forward pass sees them)."""
    tensors, names = forward_weights(model)
    report = proxopt.sparsity(tensors)
    by_name = {p.name: p for p in report.params}
    reg = [by_name[names[id(p)]] for p in regularized]
    chan = [by_name[names[id(p)]].zero_groups[0] for p in channels]
    return ZeroCounts(
        params=report.numel,
        param_zeros=report.zeros,
        weights=sum(p.numel for p in reg),
        zeros=sum(p.zeros for p in reg),
        channels=sum(n for _, n in chan),
        zero_channels=sum(z for z, _ in chan),
        sparsity=report.to_dict(),
    )
