"""Param groups that leave biases, normalization layers and embeddings
unregularized: the usual recipe for weight decay, and what group
regularizers need (they are not defined on 1-D tensors)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .regularizers import REGULARIZER_DEFAULTS

NORM_TYPES: tuple[type[nn.Module], ...] = tuple(
    t
    for t in (
        nn.modules.batchnorm._NormBase,  # BatchNorm*, InstanceNorm*, SyncBatchNorm
        nn.LayerNorm,
        nn.GroupNorm,
        nn.LocalResponseNorm,
        getattr(nn, "RMSNorm", None),
    )
    if t is not None
)
EMBEDDING_TYPES: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)

# Everything a group sets to switch regularization off.
_NO_REGULARIZATION: dict[str, Any] = {**REGULARIZER_DEFAULTS, "weight_decay": 0.0}

def _excluded(rule, name: str, p: torch.Tensor, module: nn.Module) -> bool:
    if isinstance(rule, type):
        return isinstance(module, rule)
    if callable(rule):
        return bool(rule(name, p, module))
    if rule == "bias":
        return name.rsplit(".", 1)[-1] == "bias"
    if rule == "norm":
        return isinstance(module, NORM_TYPES)
    if rule == "embedding":
        return isinstance(module, EMBEDDING_TYPES)
    if rule == "1d":
        return p.dim() < 2
    return rule in name  # any other string: a substring of the parameter's name


def param_groups(
    model: nn.Module,
    *,
    exclude: Iterable[Any] = ("bias", "norm", "embedding"),
    **regularization: Any,
) -> list[dict]:
    """Split ``model``'s trainable parameters into a regularized group and an
    unregularized one, as torch-style param groups with ``param_names``.

    ``regularization`` holds what the regularized group gets (``l1``,
    ``group_lasso``, ``weight_decay``, ``max_norm``, ...). A parameter goes
    to the unregularized group (every regularizer off and ``weight_decay=0``)
    when any ``exclude`` rule matches it:

    * ``"bias"``: parameters named ``*.bias``;
    * ``"norm"``: parameters of normalization modules, by type (BatchNorm,
      InstanceNorm, LayerNorm, GroupNorm, RMSNorm, ...), whatever their name;
    * ``"embedding"``: parameters of ``nn.Embedding``/``nn.EmbeddingBag``;
    * ``"1d"``: parameters with fewer than 2 dimensions;
    * a module type, a callable ``(name, param, module) -> bool``, or any other
      string (matched as a substring of the parameter's qualified name).

    With ``group_lasso`` or ``max_norm``, tensors with fewer than 2
    dimensions are always excluded, since group proxes need rows.

    Example::

        opt = proxopt.AdamW(proxopt.param_groups(model, l1=1e-5, weight_decay=1e-2), lr=1e-3)
    """
    unknown = set(regularization) - set(_NO_REGULARIZATION)
    if unknown:
        raise ValueError(f"param_groups: unknown regularization argument(s) {sorted(unknown)}")
    rules = list(exclude)
    if regularization.get("group_lasso") or regularization.get("max_norm") is not None:
        rules.append("1d")
    owner = {id(p): m for m in model.modules() for p in m.parameters(recurse=False)}
    kept: list[tuple[str, torch.Tensor]] = []
    skipped: list[tuple[str, torch.Tensor]] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        module = owner[id(p)]
        (skipped if any(_excluded(r, name, p, module) for r in rules) else kept).append((name, p))
    groups = []
    if kept:
        groups.append({"params": [p for _, p in kept], "param_names": [n for n, _ in kept], **regularization})
    if skipped:
        groups.append({"params": [p for _, p in skipped], "param_names": [n for n, _ in skipped], **_NO_REGULARIZATION})
    return groups
