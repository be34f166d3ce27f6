"""Channel groups that span tensors, found from a model's graph.

A channel of a conv or linear layer lives in several tensors: its output row
of the layer's weight (and its bias element), the weight and bias elements
of a norm layer after it, and the input columns of the next layer. A group
penalty on the row alone is not a penalty on the channel: with a BatchNorm
after the conv the loss does not depend on the row's scale.
:func:`channel_groups` traces the model with ``torch.fx`` and returns, for
every prunable channel, every slice that belongs to it.

Data model
==========

* :class:`Member`: one slice of one tensor along one dim, ``param.narrow(dim,
  index_start, length)``. A producer's output row (block) is ``dim=0``; a
  consumer's input columns are ``dim=1`` (``length > 1`` when a flatten maps
  one channel to ``length`` consecutive features); a bias or norm
  weight/bias element is ``dim=0`` of a 1-D tensor.
* :class:`ChannelGroup`: one channel, ``name`` and its ``members``.
* :class:`ChannelFamily`: the channels that share the same set of tensors
  (``conv1``'s outputs with ``bn1`` and ``conv2``'s inputs; the producers of
  a residual sum, tied). :meth:`ChannelFamily.stacked` gives, for every
  tensor of the family, its dim and a per-channel index map.
* :class:`ChannelGroups`: the result, one family per producer (or per set of
  tied producers), plus the producers that are not prunable because their
  channels are the model's outputs.

What the walk understands
=========================

A *producer* is an ``nn.Linear`` or ``nn.Conv1d/2d/3d`` whose input carries
no channel of another producer (the first layer), or that consumes one
(then it is a consumer of those channels and a producer of its own). Along
a channel path, these keep channels:

* ``BatchNorm*``, ``InstanceNorm*``, ``GroupNorm`` over dim 1 and a
  ``LayerNorm`` over the last dim only, when the channels are on that dim:
  their weight and bias elements are members (without affine parameters
  they pass channels through). LayerNorm and GroupNorm normalize across
  channels, so removing a channel changes the others' statistics: the
  members are right, the removal is not exact (see
  :mod:`proxopt.pruning`);
* element-wise activations and ``Dropout*`` (modules, ``torch.relu`` and the
  like, ``F.relu``, ``x.relu()``), a per-channel ``PReLU`` (its weight
  element is a member), multiplying/dividing/adding a Python number;
* pooling over dims that are not the channel dim (``MaxPool*``, ``AvgPool*``,
  adaptive pools, their ``F.`` forms, ``mean``/``sum``/``amax`` over other
  dims), ``transpose``/``permute`` (the channel dim moves), ``contiguous``;
* ``Flatten`` / ``torch.flatten`` / a ``view``/``reshape`` that is a flatten
  from the channel dim on: the next ``Linear`` sees each channel as a block
  of consecutive columns (the sizes come from ``example_inputs`` through
  ``torch.fx.passes.shape_prop.ShapeProp``);
* a depthwise convolution (``groups == in_channels == out_channels``): the
  channel passes through and the depthwise row and bias element are
  members;
* an element-wise sum or difference of two channel paths of the same shape
  (a residual addition): the channels at the same position are tied, and
  their producers form one family;
* ``torch.cat`` along the channel dim: each input's channels keep their
  offset in the result (an input that carries no channels takes positions
  that belong to no group).

A producer whose channels reach the graph's output is an output layer: its
channels are the model's outputs and are not grouped
(:attr:`ChannelGroups.outputs` names them). Anything else on a channel path
raises :class:`ChannelGroupError` naming the node and the op, rather than
guessing: a grouped (not depthwise) convolution, a ``Linear`` over a dim
that is not the channel dim, a ``view`` that mixes channels, indexing,
``matmul``/attention, a product of two channel paths, a sum with a tensor
that comes from no producer, modules and functions it does not know.

Example::

    groups = proxopt.channel_groups(model, torch.randn(1, 40, 101))
    for family in groups:
        print(family.name, len(family.groups), [(s.param_name, s.dim) for s in family.stacked()])
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

# The modules that keep a channel where it is: one list, shared with
# prune_zero_channels (which cuts the channels these groups describe).
from .pruning import _CONV, _ELEMENTWISE

__all__ = ["channel_groups", "ChannelGroups", "ChannelFamily", "ChannelGroup", "Member", "StackedMember", "ChannelGroupError"]


class ChannelGroupError(ValueError):
    """The model has a structure :func:`channel_groups` cannot group."""


@dataclass(frozen=True)
class Member:
    """One slice of one tensor: ``param.narrow(dim, index_start, length)``."""

    param_name: str
    param: torch.Tensor = field(repr=False, compare=False)
    dim: int
    index_start: int
    length: int = 1

    def slice(self) -> torch.Tensor:
        """The slice itself (a view of ``param``)."""
        return self.param.narrow(self.dim, self.index_start, self.length)

    def key(self) -> tuple[str, int, int, int]:
        return (self.param_name, self.dim, self.index_start, self.length)


@dataclass
class ChannelGroup:
    """One channel: every slice that belongs to it."""

    name: str
    members: list[Member]


@dataclass
class StackedMember:
    """One tensor of a family: ``index[c]`` are the indices along ``dim`` of
    channel ``c`` (padded with -1 where a channel has fewer, or none)."""

    param_name: str
    param: torch.Tensor = field(repr=False, compare=False)
    dim: int
    index: torch.Tensor


@dataclass
class ChannelFamily:
    """The channels of one producer, or of producers tied by a residual sum."""

    name: str
    producers: list[str]
    groups: list[ChannelGroup]

    def stacked(self) -> list[StackedMember]:
        """For each (tensor, dim) of the family, in first-seen order, the
        per-channel index map: a ``[len(groups), k]`` long tensor."""
        order: list[tuple[str, int]] = []
        tensors: dict[tuple[str, int], torch.Tensor] = {}
        rows: dict[tuple[str, int], list[list[int]]] = {}
        for c, g in enumerate(self.groups):
            for m in g.members:
                k = (m.param_name, m.dim)
                if k not in rows:
                    order.append(k)
                    tensors[k] = m.param
                    rows[k] = [[] for _ in self.groups]
                rows[k][c].extend(range(m.index_start, m.index_start + m.length))
        out = []
        for k in order:
            width = max(len(r) for r in rows[k])
            index = torch.full((len(self.groups), width), -1, dtype=torch.long)
            for c, r in enumerate(rows[k]):
                index[c, : len(r)] = torch.tensor(r, dtype=torch.long)
            out.append(StackedMember(k[0], tensors[k], k[1], index))
        return out


@dataclass
class ChannelGroups:
    """What :func:`channel_groups` found."""

    families: list[ChannelFamily]
    outputs: list[str]  # producers whose channels are the model's outputs (not grouped)

    def __iter__(self) -> Iterator[ChannelFamily]:
        return iter(self.families)

    def __len__(self) -> int:
        return len(self.families)

    def family(self, name: str) -> ChannelFamily:
        """The family named ``name``, or the one that has ``name`` as a producer."""
        for f in self.families:
            if f.name == name or name in f.producers:
                return f
        raise KeyError(f"channel_groups: no family named {name!r} or produced by it; families: {[f.name for f in self.families]}")

    def groups(self) -> list[ChannelGroup]:
        """Every channel group of every family, in family order."""
        return [g for f in self.families for g in f.groups]

    def stacked(self) -> dict[str, list[StackedMember]]:
        """Per family name, :meth:`ChannelFamily.stacked`."""
        return {f.name: f.stacked() for f in self.families}

    def param_groups(self, model: nn.Module, *, exclude: Any = ("bias", "norm", "embedding"),
                     **options: Any) -> list[dict]:
        """Param groups for a proxopt optimizer in which ``group_lasso``,
        ``channel_sparsity`` and ``max_norm`` act on these channel groups,
        each one group spanning its tensors (:mod:`proxopt.coupled`).

        The split is :func:`proxopt.param_groups`'s (same ``exclude`` rules
        and ``options``): the first group holds the regularized tensors,
        ``options`` and the ``"channel_groups"`` (a
        :class:`proxopt.coupled.CoupledChannels`); the second the biases,
        norm weights and embeddings, with no regularizer and no weight decay
        of their own, whose slices (a channel's bias, its BatchNorm γ and
        β) still count in their channel's norm and are scaled or zeroed
        with it. Example::

            groups = proxopt.channel_groups(model, torch.randn(1, 40, 101))
            opt = proxopt.AdamW(groups.param_groups(model, group_lasso=1e-3, channel_sparsity=0.5), lr=1e-3)
        """
        from .coupled import COUPLED_KEY, CoupledChannels, CoupledFamily, CoupledMember
        from .groups import param_groups as split

        out = split(model, exclude=exclude, **options)
        where = {id(p): (gi, i) for gi, g in enumerate(out) for i, p in enumerate(g["params"])}
        families = []
        for fam in self.families:
            members = []
            for sm in fam.stacked():
                if id(sm.param) not in where:
                    continue  # a frozen tensor is not stepped: its slices are not scaled
                gi, i = where[id(sm.param)]
                index = tuple(tuple(int(j) for j in row if j >= 0) for row in sm.index.tolist())
                members.append(CoupledMember(gi, i, sm.dim, index))
            if members:
                families.append(CoupledFamily(fam.name, len(fam.groups), tuple(members)))
        if out:
            out[0][COUPLED_KEY] = CoupledChannels(tuple(families))
        return out


# --------------------------------------------------------------------------
# What keeps channels
# --------------------------------------------------------------------------

_AFFINE_NORM_DIM1 = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm)
_POOL_MODULES = {
    nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3, nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3,
    nn.AdaptiveMaxPool1d: 1, nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3,
    nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3,
}  # fmt: skip
_ELEMENTWISE_FUNCS = {
    F.relu, torch.relu, F.relu6, F.gelu, F.silu, F.elu, F.selu, F.celu, F.leaky_relu, F.hardtanh, F.hardswish,
    F.hardsigmoid, F.mish, F.softplus, F.softsign, F.tanhshrink, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout,
}  # fmt: skip
_ELEMENTWISE_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "detach", "float", "double", "half", "to"}
_POOL_FUNCS = {
    F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3, F.avg_pool1d: 1, F.avg_pool2d: 2, F.avg_pool3d: 3,
    F.adaptive_max_pool1d: 1, F.adaptive_max_pool2d: 2, F.adaptive_max_pool3d: 3,
    F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2, F.adaptive_avg_pool3d: 3,
    torch.max_pool1d: 1, torch.max_pool2d: 2, torch.avg_pool1d: 1,
}  # fmt: skip
_SUM_OPS = {operator.add, operator.sub, operator.iadd, operator.isub, torch.add, torch.sub}
_SCALE_OPS = {operator.mul, operator.truediv, operator.imul, operator.itruediv, torch.mul, torch.div}
_SHAPE_ONLY_METHODS = {"size", "dim"}


@dataclass
class _Ann:
    """Channels carried by a value: along ``axis``, position ``p`` is channel label ``labels[p]`` (None: no channel)."""

    axis: int
    labels: list


def _where(node: fx.Node, gm: fx.GraphModule) -> str:
    if node.op == "call_module":
        return f"layer {node.target!r} ({type(gm.get_submodule(node.target)).__name__})"
    return f"node {node.name!r} ({_op_name(node)})"


def _op_name(node: fx.Node) -> str:
    if node.op == "call_method":
        return f"method .{node.target}()"
    t = node.target
    return f"function {getattr(t, '__module__', None) or ''}.{getattr(t, '__name__', repr(t))}".replace("_operator.", "operator.")


def _shape(node: Any) -> tuple[int, ...] | None:
    if not isinstance(node, fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _runs(labels: list) -> list[tuple[Any, int, int]]:
    """(label, start, length) of each run of equal non-None labels."""
    out = []
    p = 0
    while p < len(labels):
        q = p
        while q + 1 < len(labels) and labels[q + 1] == labels[p]:
            q += 1
        if labels[p] is not None:
            out.append((labels[p], p, q - p + 1))
        p = q + 1
    return out


class _Walk:
    def __init__(self, model: nn.Module, gm: fx.GraphModule):
        self.gm = gm
        self.pname = {id(p): n for n, p in model.named_parameters()}
        self.labels: list[tuple[str, int]] = []  # label id -> (producer, channel)
        self.parent: list[int] = []
        self.members: list[list[Member]] = []
        self.producers: list[str] = []
        self.prod_parent: dict[str, str] = {}
        self.output_labels: set[int] = set()
        self.ann: dict[fx.Node, _Ann | None] = {}

    # union-find over channel labels and over producers
    def _find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def _pfind(self, p: str) -> str:
        while self.prod_parent[p] != p:
            p = self.prod_parent[p]
        return p

    def _tie(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)
        pa, pb = self._pfind(self.labels[a][0]), self._pfind(self.labels[b][0])
        if pa != pb:
            first, second = sorted((pa, pb), key=self.producers.index)
            self.prod_parent[second] = first

    def _member(self, label: int, param: torch.Tensor | None, dim: int, start: int, length: int = 1) -> None:
        if param is None:
            return
        name = self.pname.get(id(param))
        if name is None:  # a tensor that is not a parameter of the model (a buffer): nothing to regularize
            return
        self.members[label].append(Member(name, param, dim, start, length))

    def _new_channels(self, name: str, m: nn.Module, n: int) -> list[int]:
        if name not in self.prod_parent:
            self.producers.append(name)
            self.prod_parent[name] = name
        out = []
        for c in range(n):
            i = len(self.labels)
            self.labels.append((name, c))
            self.parent.append(i)
            self.members.append([])
            self._member(i, m.weight, 0, c)
            self._member(i, m.bias, 0, c)
            out.append(i)
        return out

    def _fail(self, node: fx.Node, why: str) -> None:
        raise ChannelGroupError(f"channel_groups: cannot group channels at {_where(node, self.gm)}: {why}")

    # ------------------------------------------------------------------
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            if node.op in ("placeholder", "get_attr"):
                self.ann[node] = None
            elif node.op == "output":
                for a in self._annotated(node.args):
                    self.output_labels.update(l for l in self.ann[a].labels if l is not None)
            elif node.op == "call_module":
                self.ann[node] = self._module(node)
            else:
                annotated = self._annotated((node.args, node.kwargs))
                self.ann[node] = self._function(node, annotated) if annotated else None

    def _annotated(self, args: Any) -> list[fx.Node]:
        found: list[fx.Node] = []
        fx.node.map_arg(args, lambda n: found.append(n) if self.ann.get(n) is not None and n not in found else None)
        return found

    def _module(self, node: fx.Node) -> _Ann | None:
        m = self.gm.get_submodule(node.target)
        name = str(node.target)
        x = node.args[0] if node.args else None
        a = self.ann.get(x) if isinstance(x, fx.Node) else None
        extra = self._annotated((node.args[1:], node.kwargs))
        if extra:
            self._fail(node, f"channels enter it through an argument other than its input ({extra[0].name})")
        in_shape = _shape(x)
        if isinstance(m, (nn.Linear,) + _CONV):
            if a is not None:
                if isinstance(m, nn.Linear):
                    if a.axis != len(in_shape) - 1:
                        self._fail(node, f"the Linear acts on the last dim but the channels are on dim {a.axis}")
                elif a.axis != 1:
                    self._fail(node, f"the convolution's channel dim is 1 but the channels are on dim {a.axis}")
                elif m.groups != 1:
                    if m.groups == m.in_channels == m.out_channels:  # depthwise: the channel passes through
                        for label, p, length in _runs(a.labels):
                            self._member(label, m.weight, 0, p, length)
                            self._member(label, m.bias, 0, p, length)
                        return _Ann(1, list(a.labels))
                    self._fail(
                        node,
                        f"{name} is a grouped convolution (groups={m.groups}, in_channels={m.in_channels}, "
                        f"out_channels={m.out_channels}): an input channel feeds only its group's outputs, and removing "
                        "it leaves groups of unequal width, which a convolution cannot express; only groups=1 and "
                        "depthwise (groups == in_channels == out_channels) convolutions are supported",
                    )
                for label, p, length in _runs(a.labels):
                    self._member(label, m.weight, 1, p, length)
            out_shape = _shape(node)
            axis = len(out_shape) - 1 if isinstance(m, nn.Linear) else 1
            return _Ann(axis, self._new_channels(name, m, m.weight.shape[0]))
        if a is None:
            return None
        if isinstance(m, _AFFINE_NORM_DIM1):
            if a.axis != 1:
                self._fail(node, f"{type(m).__name__} normalizes over dim 1 but the channels are on dim {a.axis}")
            self._affine(m, a)
            return a
        if isinstance(m, nn.LayerNorm):
            if len(m.normalized_shape) != 1 or a.axis != len(in_shape) - 1:
                self._fail(
                    node,
                    f"LayerNorm over {tuple(m.normalized_shape)} with the channels on dim {a.axis} of a "
                    f"{len(in_shape)}-d input (only a LayerNorm over the channel dim alone, the last dim, is supported)",
                )
            self._affine(m, a)
            return a
        if isinstance(m, nn.PReLU):
            if m.num_parameters > 1:
                if a.axis != 1:
                    self._fail(node, f"a per-channel PReLU acts on dim 1 but the channels are on dim {a.axis}")
                self._affine(m, a)
            return a
        if isinstance(m, _ELEMENTWISE):
            return a
        if type(m) in _POOL_MODULES:
            return self._pool(node, a, in_shape, _POOL_MODULES[type(m)])
        if isinstance(m, nn.Flatten):
            return self._flatten(node, a, in_shape, m.start_dim, m.end_dim)
        self._fail(node, f"{name} is a {type(m).__name__}, which channel_groups does not know")

    def _affine(self, m: nn.Module, a: _Ann) -> None:
        for label, p, length in _runs(a.labels):
            self._member(label, getattr(m, "weight", None), 0, p, length)
            self._member(label, getattr(m, "bias", None), 0, p, length)

    def _pool(self, node: fx.Node, a: _Ann, in_shape, k: int) -> _Ann:
        if a.axis >= len(in_shape) - k:
            self._fail(node, f"it pools over the last {k} dim(s) of a {len(in_shape)}-d input, which include the channel dim {a.axis}")
        return a

    def _flatten(self, node: fx.Node, a: _Ann, in_shape, start: int, end: int) -> _Ann:
        nd = len(in_shape)
        start, end = start % nd if nd else 0, end % nd if nd else 0
        if a.axis < start:
            return a
        if a.axis > end:
            return _Ann(a.axis - (end - start), a.labels)
        if start < a.axis:
            self._fail(node, f"it flattens dims {start}..{end}, which merges dims before the channel dim {a.axis} into it")
        inner = math.prod(in_shape[a.axis + 1 : end + 1])
        return _Ann(a.axis, [l for l in a.labels for _ in range(inner)])

    def _function(self, node: fx.Node, annotated: list[fx.Node]) -> _Ann | None:
        t = node.target
        first = node.args[0] if node.args else None
        a = self.ann.get(first) if isinstance(first, fx.Node) else None
        in_shape = _shape(first)
        method = node.op == "call_method"
        if (method and t in _SHAPE_ONLY_METHODS) or (t is getattr and node.args[1] in ("shape", "dtype", "device")):
            return None
        if (method and t in _ELEMENTWISE_METHODS) or (not method and t in _ELEMENTWISE_FUNCS):
            if len(annotated) == 1 and a is not None:
                return a
        if not method and t in _POOL_FUNCS and len(annotated) == 1 and a is not None:
            return self._pool(node, a, in_shape, _POOL_FUNCS[t])
        if (not method and t in _SUM_OPS) or (method and t in ("add", "sub", "add_", "sub_")):
            return self._sum(node, annotated)
        if (not method and t in _SCALE_OPS) or (method and t in ("mul", "div", "mul_", "div_")):
            other = [x for x in node.args if x is not first] if a is not None else [first]
            if len(annotated) == 1 and len(other) == 1 and isinstance(other[0], (int, float)):
                return self.ann[annotated[0]]
            self._fail(node, "a product or quotient with something other than a Python number mixes channels")
        if (not method and t in (torch.cat, torch.concat)) or (method and t == "cat"):
            return self._cat(node)
        if len(annotated) == 1 and a is not None:
            if (not method and t is torch.flatten) or (method and t == "flatten"):
                start = node.kwargs.get("start_dim", node.args[1] if len(node.args) > 1 else 0)
                end = node.kwargs.get("end_dim", node.args[2] if len(node.args) > 2 else -1)
                return self._flatten(node, a, in_shape, start, end)
            if (method and t in ("view", "reshape")) or (not method and t is torch.reshape):
                out = _shape(node)
                if out == in_shape:
                    return a
                if out == in_shape[: a.axis] + (math.prod(in_shape[a.axis :]),):
                    return self._flatten(node, a, in_shape, a.axis, -1)
                self._fail(node, f"it reshapes {in_shape} to {out} with the channels on dim {a.axis}, which is not a flatten from the channel dim on")
            if (method and t == "transpose") or (not method and t is torch.transpose):
                d0 = node.kwargs.get("dim0", node.args[1] if len(node.args) > 1 else None)
                d1 = node.kwargs.get("dim1", node.args[2] if len(node.args) > 2 else None)
                d0, d1 = d0 % len(in_shape), d1 % len(in_shape)
                axis = d1 if a.axis == d0 else d0 if a.axis == d1 else a.axis
                return _Ann(axis, a.labels)
            if (method and t == "permute") or (not method and t is torch.permute):
                dims = node.kwargs.get("dims", node.args[1:] if method else node.args[1])
                if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
                    dims = dims[0]
                dims = [d % len(in_shape) for d in dims]
                return _Ann(dims.index(a.axis), a.labels)
            if (method and t in ("mean", "sum", "amax")) or (not method and t in (torch.mean, torch.sum, torch.amax)):
                dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
                if dims is None:
                    self._fail(node, "it reduces over every dim, the channel dim included")
                dims = {d % len(in_shape) for d in (dims if isinstance(dims, (tuple, list)) else (dims,))}
                if a.axis in dims:
                    self._fail(node, f"it reduces over the channel dim {a.axis}")
                keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
                return _Ann(a.axis if keep else a.axis - sum(d < a.axis for d in dims), a.labels)
        self._fail(node, "channel_groups does not know how this op treats channels")

    def _sum(self, node: fx.Node, annotated: list[fx.Node]) -> _Ann:
        operands = list(node.args[:2])
        if len(annotated) == 1:
            other = [x for x in operands if x is not annotated[0]]
            if len(other) == 1 and isinstance(other[0], (int, float)) and "alpha" not in node.kwargs:
                return self.ann[annotated[0]]
            self._fail(node, "it adds channels to a tensor that comes from no producer (its channels could not be removed)")
        if len(annotated) != 2 or any(not isinstance(x, fx.Node) for x in operands):
            self._fail(node, "an element-wise sum of more than two operands")
        a, b = self.ann[operands[0]], self.ann[operands[1]]
        if _shape(operands[0]) != _shape(operands[1]) or a.axis != b.axis:
            self._fail(node, f"a sum of shapes {_shape(operands[0])} and {_shape(operands[1])} with channels on dims {a.axis} and {b.axis}")
        for p, (la, lb) in enumerate(zip(a.labels, b.labels)):
            if (la is None) != (lb is None):
                self._fail(node, f"position {p} of the channel dim is a channel in one operand and no channel in the other")
            if la is not None:
                self._tie(la, lb)
        return _Ann(a.axis, list(a.labels))

    def _cat(self, node: fx.Node) -> _Ann:
        tensors = node.kwargs.get("tensors", node.args[0] if node.args else None)
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        out = _shape(node)
        dim %= len(out)
        labels: list = []
        for x in tensors:
            ax = self.ann.get(x) if isinstance(x, fx.Node) else None
            if ax is not None and ax.axis != dim:
                self._fail(node, f"it concatenates along dim {dim} but {x.name}'s channels are on dim {ax.axis}")
            labels += ax.labels if ax is not None else [None] * _shape(x)[dim]
        return _Ann(dim, labels)

    # ------------------------------------------------------------------
    def result(self) -> ChannelGroups:
        outputs_roots = {self._pfind(self.labels[l][0]) for l in self.output_labels}
        classes: dict[int, list[int]] = {}
        for i in range(len(self.labels)):
            classes.setdefault(self._find(i), []).append(i)
        by_family: dict[str, list[list[int]]] = {}
        for root in sorted(classes):
            by_family.setdefault(self._pfind(self.labels[root][0]), []).append(classes[root])
        families = []
        outputs = []
        for root in sorted(by_family, key=self.producers.index):
            producers = [p for p in self.producers if self._pfind(p) == root]
            if root in outputs_roots:
                outputs += producers
                continue
            name = "+".join(producers)
            groups = []
            for c, labels in enumerate(by_family[root]):
                seen: set = set()
                members = []
                for l in labels:
                    for m in self.members[l]:
                        if m.key() not in seen:
                            seen.add(m.key())
                            members.append(m)
                groups.append(ChannelGroup(f"{name}[{c}]", members))
            families.append(ChannelFamily(name, producers, groups))
        return ChannelGroups(families, outputs)


def channel_groups(model: nn.Module, example_inputs: Any) -> ChannelGroups:
    """For every prunable channel of ``model``, every slice of every tensor
    that belongs to it, found from the model's ``torch.fx`` graph.

    ``example_inputs`` is one tensor or a tuple of the ``forward`` arguments;
    it is run once (in eval mode and without gradients; the model's
    train/eval mode is restored) to learn the shapes, e.g. how many
    features each channel becomes after a flatten. The model is not
    modified. Returns :class:`ChannelGroups`: one :class:`ChannelFamily` per
    producer layer, or per set of producers tied by residual sums, each
    with one :class:`ChannelGroup` per channel. The model's output layers
    are not grouped (:attr:`ChannelGroups.outputs`).

    Raises :class:`ChannelGroupError` (a ``ValueError``) naming the node and
    the op where the graph does something to channels the walk does not
    understand: a grouped convolution, a reshape that mixes channels,
    ``matmul``, unknown modules or functions. See :mod:`proxopt.channels`
    for what is understood.

    Example::

        groups = proxopt.channel_groups(model, torch.randn(1, 40, 101))
        fam = groups.family("conv1")
        for g in fam.groups:
            print(g.name, [(m.param_name, m.dim, m.index_start, m.length) for m in g.members])
    """
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 (any tracing failure is reported as such)
        raise ChannelGroupError(f"channel_groups: torch.fx could not trace {type(model).__name__}: {type(e).__name__}: {e}") from e
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(*example_inputs)
    finally:
        for m, training in modes:
            m.training = training
    walk = _Walk(model, gm)
    walk.run()
    return walk.result()
