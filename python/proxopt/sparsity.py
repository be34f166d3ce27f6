"""What regularization did: exact zeros and all-zero groups per parameter."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .groups import _excluded
from .regularizers import ACTING_DEFAULTS


@dataclass
class ParamSparsity:
    name: str
    shape: tuple[int, ...]
    numel: int
    zeros: int
    # dim -> (all-zero groups along that dim, groups along that dim)
    zero_groups: dict[int, tuple[int, int]] = field(default_factory=dict)
    # whether a regularizer acts on it (its optimizer group's settings, or
    # without an optimizer param_groups' default rules)
    regularized: bool = True

    @property
    def fraction(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0


@dataclass(frozen=True)
class Totals:
    numel: int
    zeros: int

    @property
    def fraction(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0


@dataclass
class SparsityReport:
    """Zeros per parameter, totalled over all of them, over the regularized ones
    (the sparsity regularization produced, and what ``target`` is compared
    with) and over the rest (zero-initialised biases are not sparsity)."""

    params: list[ParamSparsity]
    target: float | None = None  # the regularized fraction asked for

    def _totals(self, which) -> Totals:
        ps = [p for p in self.params if which(p)]
        return Totals(sum(p.numel for p in ps), sum(p.zeros for p in ps))

    @property
    def numel(self) -> int:
        return sum(p.numel for p in self.params)

    @property
    def zeros(self) -> int:
        return sum(p.zeros for p in self.params)

    @property
    def fraction(self) -> float:
        """Zeros over every parameter."""
        return self.zeros / self.numel if self.numel else 0.0

    @property
    def regularized(self) -> Totals:
        return self._totals(lambda p: p.regularized)

    @property
    def unregularized(self) -> Totals:
        return self._totals(lambda p: not p.regularized)

    @property
    def target_met(self) -> bool | None:
        return None if self.target is None else self.regularized.fraction >= self.target

    def to_dict(self) -> dict:
        """The report as plain data (JSON-serializable)."""
        return {
            "numel": self.numel,
            "zeros": self.zeros,
            "fraction": self.fraction,
            "regularized": {**asdict(self.regularized), "fraction": self.regularized.fraction},
            "unregularized": {**asdict(self.unregularized), "fraction": self.unregularized.fraction},
            "target": self.target,
            "target_met": self.target_met,
            "params": [
                {**asdict(p), "fraction": p.fraction, "zero_groups": {str(d): list(v) for d, v in p.zero_groups.items()}}
                for p in self.params
            ],
        }

    def scalars(self, prefix: str = "sparsity/", per_param: bool = True) -> dict[str, float]:
        """The report as flat ``name -> float`` pairs, for
        ``SummaryWriter.add_scalar``, ``wandb.log`` or a Lightning logger.

        The names, after ``prefix``: ``fraction`` (zeros over every
        parameter), ``regularized/fraction``, ``unregularized/fraction``,
        ``zero_channels`` (all-zero groups along dim 0, summed over the
        parameters: output rows or channels), ``zero_inputs`` (along dim 1),
        ``zero_groups_dim{d}`` for any other dim the report counted;
        ``target`` and ``target_met`` (1.0 or 0.0) when a target was given;
        and with ``per_param``, ``fraction/{name}`` and
        ``zero_channels/{name}`` (etc.) for each parameter.

        Args:
            prefix: prepended to every name (``""`` for none).
            per_param: include one entry per parameter (many tags for a big model).
        """
        if not isinstance(prefix, str):
            raise TypeError(f"Invalid prefix value: {prefix!r} (a {type(prefix).__name__}; expected a str)")
        out = {
            f"{prefix}fraction": float(self.fraction),
            f"{prefix}regularized/fraction": float(self.regularized.fraction),
            f"{prefix}unregularized/fraction": float(self.unregularized.fraction),
        }
        dims = sorted({d for p in self.params for d in p.zero_groups})
        for d in dims:
            out[f"{prefix}{_group_name(d)}"] = float(sum(p.zero_groups[d][0] for p in self.params if d in p.zero_groups))
        if self.target is not None:
            out[f"{prefix}target"] = float(self.target)
            out[f"{prefix}target_met"] = float(self.target_met)
        if per_param:
            for p in self.params:
                out[f"{prefix}fraction/{p.name}"] = float(p.fraction)
                for d, (zero, _) in p.zero_groups.items():
                    out[f"{prefix}{_group_name(d)}/{p.name}"] = float(zero)
        return out

    def table(self) -> str:
        """A plain-text table: one row per parameter, then the total."""
        rows = [("parameter", "shape", "zeros", "zero groups (dim: zero/total)")]
        for p in self.params:
            groups = ", ".join(f"{d}: {z}/{n}" for d, (z, n) in p.zero_groups.items())
            name = p.name if p.regularized else f"{p.name} (unregularized)"
            rows.append((name, "x".join(map(str, p.shape)) or "()", f"{p.fraction:7.2%}", groups))
        for label, t in (("regularized", self.regularized), ("unregularized", self.unregularized)):
            rows.append((label, "", f"{t.fraction:7.2%}", f"{t.zeros}/{t.numel} elements"))
        rows.append(("total", "", f"{self.fraction:7.2%}", f"{self.zeros}/{self.numel} elements"))
        if self.target is not None:
            verdict = "met" if self.target_met else "not met"
            rows.append(("target", "", f"{self.target:7.2%}", f"regularized fraction {verdict}"))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _group_name(dim: int) -> str:
    """What scalars() calls the all-zero groups along ``dim`` (sparsity()'s
    docstring: dim 0 are output rows/channels, dim 1 inputs)."""
    return {0: "zero_channels", 1: "zero_inputs"}.get(dim, f"zero_groups_dim{dim}")


def _regularized_by(optimizer: Any) -> dict[int, bool]:
    """id(param) -> whether its param group sets any regularizer off its default."""
    out = {}
    for group in optimizer.param_groups:
        on = any(group.get(k, d) != d for k, d in ACTING_DEFAULTS.items())
        for p in group["params"]:
            out[id(p)] = on
    return out


def sparsity(
    model: nn.Module | dict[str, torch.Tensor],
    dims: tuple[int, ...] = (0, 1),
    *,
    optimizer: Any = None,
    target: float | None = None,
) -> SparsityReport:
    """Exact zeros of every parameter of ``model`` (a module or a name->tensor
    dict), and for tensors with 2+ dimensions the number of all-zero groups
    along each of ``dims`` (dim 0: output rows/channels, dim 1: inputs).

    Each parameter is marked regularized or not: with ``optimizer``, by its
    param group (any regularizer set); without, by :func:`param_groups`'
    default rules (biases, norms and embeddings are not; for a dict, tensors
    of fewer than 2 dims are not). ``target`` is the fraction of zeros wanted
    among the regularized parameters; the report says whether it is met."""
    if target is not None and not 0.0 <= target <= 1.0:
        raise ValueError(f"Invalid target value: {target!r} (a fraction in [0, 1])")
    by_group = _regularized_by(optimizer) if optimizer is not None else None
    if isinstance(model, nn.Module):
        owner = {id(p): m for m in model.modules() for p in m.parameters(recurse=False)}
        named = [(n, p, owner[id(p)]) for n, p in model.named_parameters()]
        rules = ("bias", "norm", "embedding")
    else:
        named = [(n, p, None) for n, p in model.items()]
        rules = ("1d",)
    out = []
    with torch.no_grad():
        for name, p, module in named:
            t = p.detach()
            if t.is_complex():
                t = torch.view_as_real(t)
            nz = t != 0
            groups = {}
            if t.dim() >= 2:
                for d in dims:
                    if d < t.dim():
                        # flatten, not reshape(n, -1): -1 is ambiguous when a tensor has no elements
                        alive = nz.movedim(d, 0).flatten(1).any(dim=1)
                        groups[d] = (int((~alive).sum()), t.shape[d])
            if by_group is not None:
                regularized = by_group.get(id(p), False)
            else:
                regularized = not any(_excluded(r, name, p, module) for r in rules)
            out.append(ParamSparsity(name, tuple(p.shape), t.numel(), int(t.numel() - nz.sum()), groups, regularized))
    return SparsityReport(out, target)
