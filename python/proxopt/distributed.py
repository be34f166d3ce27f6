"""proxopt under torch.distributed: DTensor parameters (FSDP2 ``fully_shard``,
tensor parallel) and group regularizers whose groups are split across shards.

DDP and ``ZeroRedundancyOptimizer`` need nothing from this module: under DDP
every rank holds whole parameters with all-reduced gradients, and ZeRO gives
each rank whole parameters (a partition of the list), so every group of
``group_lasso``/``max_norm`` lives on one rank.

FSDP2 (``torch.distributed.fsdp.fully_shard``) and tensor parallelism hand the
optimizer ``DTensor`` parameters, gradients and (because state is created with
``zeros_like``) state. The kernels take raw pointers, so the optimizer works on
the local shards (:func:`local_tensor`). Elementwise rules and proxes (``l1``,
``l2``, ``l0``, ``bounds``) are exact on a shard. Group proxes need the norm of
each whole group:

* groups along the sharded dim (``group_dim=0`` with FSDP2's ``Shard(0)``):
  every group lies on one rank, the kernel computes its norm locally, no
  communication;
* groups across the sharded dim (``group_dim=1`` with ``Shard(0)``, or any
  group dim under ``Shard(d)`` with ``d != group_dim``): each rank holds a
  piece of every group. :func:`split_group_prox` takes the group proxes (and
  ``bounds``, which must act after them) out of the kernel call, and
  :func:`sharded_group_prox_` applies them afterwards from the per-group sums
  of squares, summed in float64 and all-reduced (one ``all_reduce`` per mesh
  dimension per param group and step, over the mesh dimension's process
  group).

The result equals one process holding whole tensors, up to the summation order
of the norms (float64).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Any, Iterable

import torch
from torch import Tensor

from . import reference
from .hyper import Hyper
from .regularizers import group_shape

__all__ = [
    "is_dtensor",
    "local_tensor",
    "split_mesh_dims",
    "split_group_prox",
    "sharded_group_prox_",
    "group_sumsq",
    "prox_lr",
    "reduced_group_norms",
]

# DTensor is looked up lazily: importing torch.distributed.tensor costs ~0.5 s, and no
# tensor can be a DTensor before some code (FSDP2, tensor parallel) imported it.
_DTENSOR: type | None = None


def _dtensor_type() -> type | None:
    global _DTENSOR
    if _DTENSOR is None:
        mod = sys.modules.get("torch.distributed.tensor") or sys.modules.get("torch.distributed._tensor")
        _DTENSOR = getattr(mod, "DTensor", None) if mod is not None else None
    return _DTENSOR


def _shard_type() -> type:
    try:
        from torch.distributed.tensor import Shard
    except ImportError:  # pragma: no cover - torch < 2.5
        from torch.distributed._tensor import Shard
    return Shard


def is_dtensor(t: Any) -> bool:
    """True for a ``torch.distributed.tensor.DTensor`` (FSDP2, tensor parallel)."""
    cls = _dtensor_type()
    return cls is not None and isinstance(t, cls)


def local_tensor(t: Tensor) -> Tensor:
    """The tensor whose memory a kernel may read and write: the local shard of a
    DTensor (no copy, it shares the DTensor's storage), ``t`` itself otherwise.
    Cheap enough for the step's hot path (one ``isinstance``)."""
    cls = _DTENSOR or _dtensor_type()
    if cls is not None and isinstance(t, cls):
        return t._local_tensor
    return t


def split_mesh_dims(p: Tensor, dim: int) -> tuple[int, ...]:
    """The device-mesh dims across which the groups along ``dim`` of DTensor
    ``p`` are split: those sharding ``p`` along a tensor dim other than ``dim``
    (with more than one rank). Empty for a plain tensor, a replicated DTensor,
    or one sharded along ``dim`` itself (each group then lies on one rank)."""
    if not is_dtensor(p):
        return ()
    Shard = _shard_type()
    ndim = p.dim()
    dim = dim % ndim
    mesh = p.device_mesh
    out = []
    for mesh_dim, placement in enumerate(p.placements):
        if isinstance(placement, Shard) and placement.dim % ndim != dim and mesh.size(mesh_dim) > 1:
            out.append(mesh_dim)
        elif placement.is_partial():
            raise ValueError(
                f"a parameter with a Partial placement {p.placements}: group regularizers need its "
                "values; redistribute it to Shard or Replicate placements"
            )
    return tuple(out)


def split_group_prox(h: Hyper, params: Iterable[Tensor], dim: int) -> tuple[Hyper, Hyper | None]:
    """``(hyper for the kernel, deferred)``. When a group prox is set and some
    DTensor in ``params`` has its groups along ``dim`` split across shards, the
    kernel must run without the group proxes and without ``bounds`` (they act
    after the group proxes) and :func:`sharded_group_prox_` applies them with
    ``deferred`` (the full hyperparameters) after the kernel. Otherwise returns
    ``(h, None)`` and nothing changes."""
    if not h.has_group or not any(split_mesh_dims(p, dim) for p in params):
        return h, None
    kernel_h = dataclasses.replace(h, group_lasso=0.0, max_norm=0.0, lo=-math.inf, hi=math.inf)
    return kernel_h, h


# The lr the proxes scale with after a step: the reference's, kept under this name.
prox_lr = reference.rule_lr


def _math(t: Tensor) -> Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def group_sumsq(local: Tensor, dim: int) -> Tensor:
    """Per-group sums of squares (float64) of the groups along ``dim`` of a local shard."""
    outer, groups, inner = group_shape(tuple(local.shape), dim)
    return local.detach().reshape(outer, groups, inner).double().square().sum(dim=(0, 2))


@torch.no_grad()
def sharded_group_prox_(
    h: Hyper,
    params: list[Tensor],
    dim: int,
    steps: list[Tensor | float | None] | None = None,
) -> None:
    """Apply the group proxes of ``h`` (block soft threshold, max-norm
    projection) and then ``bounds`` to ``params`` in place, as
    :func:`proxopt.reference.prox_group` does to whole tensors, with the group
    norms of split groups all-reduced across the shards that hold them.

    ``params`` are the parameters the kernel just stepped (DTensors or plain
    tensors; plain ones and groups that lie on one rank are done locally).
    ``steps`` are their step counters after the step (for Adagrad's decayed lr;
    None otherwise). Every rank of a mesh must call this with the same
    parameters in the same order, as optimizers do.
    """
    if not params:
        return
    import torch.distributed as dist

    steps = steps if steps is not None else [None] * len(params)
    sumsqs = [group_sumsq(local_tensor(p), dim) for p in params]
    # One all_reduce per (mesh, mesh dim) over every parameter split there.
    buckets: dict[tuple[int, int], tuple[Any, int, list[int]]] = {}
    for i, p in enumerate(params):
        for mesh_dim in split_mesh_dims(p, dim):
            key = (id(p.device_mesh), mesh_dim)
            if key not in buckets:
                buckets[key] = (p.device_mesh, mesh_dim, [])
            buckets[key][2].append(i)
    for mesh, mesh_dim, idx in buckets.values():
        flat = torch.cat([sumsqs[i] for i in idx]) if len(idx) > 1 else sumsqs[idx[0]].clone()
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=mesh.get_group(mesh_dim))
        for i, part in zip(idx, flat.split([sumsqs[i].numel() for i in idx])):
            sumsqs[i] = part
    for p, sumsq, step in zip(params, sumsqs, steps):
        local = local_tensor(p)
        if local.numel() == 0:
            continue
        w = _math(local)  # the arithmetic runs in float32 for 16-bit tensors, as the kernels do
        n_groups = p.shape[dim % p.dim()]
        size = p.numel() // n_groups  # elements of one whole group (all shards)
        tau = reference.group_tau(h, reference.rule_lr(h, step), size)
        # The norms stay float64, as in the reference and the kernels: the factor is
        # computed in float64 and rounded once.
        w3 = w.reshape(group_shape(tuple(local.shape), dim))
        local.copy_(reference.finish_groups(h, w3, sumsq.sqrt(), tau).reshape(local.shape))


def reduced_group_norms(p: Tensor, dim: int) -> Tensor:
    """The float64 norms of the whole groups along ``dim`` of ``p``, a DTensor
    or a plain tensor, all-reduced across the shards that hold pieces of them.
    For pruning and reporting (e.g. which channels a group lasso zeroed) under
    FSDP2; a collective: every rank of the mesh must call it."""
    import torch.distributed as dist

    sumsq = group_sumsq(local_tensor(p), dim)
    for mesh_dim in split_mesh_dims(p, dim):
        dist.all_reduce(sumsq, op=dist.ReduceOp.SUM, group=p.device_mesh.get_group(mesh_dim))
    return sumsq.sqrt()
