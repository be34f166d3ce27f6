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


def _named(model: Any) -> list[tuple[str, torch.Tensor, nn.Module | None]]:
    """(name, parameter, owning module) of a module, of (name, parameter) pairs
    (``named_parameters()``) or of bare parameters (named by position; no module)."""
    if isinstance(model, nn.Module):
        owner = {id(p): m for m in model.modules() for p in m.parameters(recurse=False)}
        return [(n, p, owner[id(p)]) for n, p in model.named_parameters()]
    if isinstance(model, torch.Tensor):
        raise TypeError("param_groups: expected a module or an iterable of parameters, got a single tensor")
    out = []
    for i, item in enumerate(model):
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], torch.Tensor):
            out.append((str(item[0]), item[1], None))
        elif isinstance(item, torch.Tensor):
            out.append((str(i), item, None))
        else:
            raise TypeError(f"param_groups: item {i} is a {type(item).__name__}, not a parameter or (name, parameter)")
    return out


def _optimizer_options() -> frozenset[str]:
    """Every per-group option of proxopt's optimizers (lr, betas, momentum, ...) that
    is not a regularizer: read from their signatures, so a new option needs no edit here."""
    import inspect

    from . import adagrad, adam, rmsprop, sgd

    names: set[str] = set()
    for cls in (sgd.SGD, adam.Adam, adam.AdamW, adagrad.Adagrad, rmsprop.RMSprop):
        names.update(inspect.signature(cls.__init__).parameters)
    return frozenset(names - {"self", "params"} - set(_NO_REGULARIZATION))


def param_groups(
    model: nn.Module | Iterable[Any],
    *,
    exclude: Iterable[Any] = ("bias", "norm", "embedding"),
    names: bool = False,
    **options: Any,
) -> list[dict]:
    """Split ``model``'s trainable parameters into a regularized group and an
    unregularized one, as torch-style param groups.

    ``model`` is a module, or an iterable of parameters (``model.parameters()``)
    or of ``(name, parameter)`` pairs (``model.named_parameters()``).

    ``options`` holds what the regularized group gets: the regularizers
    (``l1``, ``group_lasso``, ``max_norm``, ...) and ``weight_decay``. Any
    other option of the optimizers (``lr``, ``betas``, ``momentum``, ...) goes
    to both groups, as a per-group setting. A parameter goes to the
    unregularized group (every regularizer off and ``weight_decay=0``) when any
    ``exclude`` rule matches it:

    * ``"bias"``: parameters named ``*.bias``;
    * ``"norm"``: parameters of normalization modules, by type (BatchNorm,
      InstanceNorm, LayerNorm, GroupNorm, RMSNorm, ...), whatever their name;
    * ``"embedding"``: parameters of ``nn.Embedding``/``nn.EmbeddingBag``;
    * ``"1d"``: parameters with fewer than 2 dimensions;
    * a module type, a callable ``(name, param, module) -> bool``, or any other
      string (matched as a substring of the parameter's qualified name).

    Without modules (an iterable was given), the type rules ``"norm"`` and
    ``"embedding"`` cannot be told apart from other tensors: they fall back to
    ``"1d"`` (norm weights are 1-D; embeddings stay regularized), and module
    types and callables see ``module=None``. With ``group_lasso``,
    ``channel_sparsity`` or ``max_norm``, tensors with fewer than 2 dimensions are always excluded,
    since group proxes need rows.

    ``names=True`` adds ``param_names`` to both groups (error messages then
    name the parameter). torch requires all of an optimizer's groups to have
    names or none, so with names, a later ``add_param_group`` needs them too;
    hence off by default.

    Example::

        opt = proxopt.AdamW(proxopt.param_groups(model, l1=1e-5, weight_decay=1e-2), lr=1e-3)
    """
    unknown = set(options) - set(_NO_REGULARIZATION) - _optimizer_options()
    if unknown:
        raise ValueError(
            f"param_groups: unknown argument(s) {sorted(unknown)} (neither a regularizer nor an optimizer option)"
        )
    regularization = {k: v for k, v in options.items() if k in _NO_REGULARIZATION}
    shared = {k: v for k, v in options.items() if k not in _NO_REGULARIZATION}
    named = _named(model)
    modules = all(m is not None for _, _, m in named)
    rules = list(exclude)
    if not modules:
        rules = ["1d" if r in ("norm", "embedding") else r for r in rules if r != "embedding"]
    if (regularization.get("group_lasso") or regularization.get("channel_sparsity")
            or regularization.get("max_norm") is not None):
        rules.append("1d")
    kept: list[tuple[str, torch.Tensor]] = []
    skipped: list[tuple[str, torch.Tensor]] = []
    for name, p, module in named:
        if not p.requires_grad:
            continue
        (skipped if any(_excluded(r, name, p, module) for r in rules) else kept).append((name, p))
    groups = []
    for members, settings in ((kept, {**shared, **regularization}), (skipped, {**shared, **_NO_REGULARIZATION})):
        if members:
            group = {"params": [p for _, p in members], **settings}
            if names:
                group["param_names"] = [n for n, _ in members]
            groups.append(group)
    return groups
