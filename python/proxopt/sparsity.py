"""What regularization did: exact zeros and all-zero groups per parameter."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn


@dataclass
class ParamSparsity:
    name: str
    shape: tuple[int, ...]
    numel: int
    zeros: int
    # dim -> (all-zero groups along that dim, groups along that dim)
    zero_groups: dict[int, tuple[int, int]] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0


@dataclass
class SparsityReport:
    params: list[ParamSparsity]

    @property
    def numel(self) -> int:
        return sum(p.numel for p in self.params)

    @property
    def zeros(self) -> int:
        return sum(p.zeros for p in self.params)

    @property
    def fraction(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0

    def to_dict(self) -> dict:
        """The report as plain data (JSON-serializable)."""
        return {
            "numel": self.numel,
            "zeros": self.zeros,
            "fraction": self.fraction,
            "params": [
                {**asdict(p), "fraction": p.fraction, "zero_groups": {str(d): list(v) for d, v in p.zero_groups.items()}}
                for p in self.params
            ],
        }

    def table(self) -> str:
        """A plain-text table: one row per parameter, then the total."""
        rows = [("parameter", "shape", "zeros", "zero groups (dim: zero/total)")]
        for p in self.params:
            groups = ", ".join(f"{d}: {z}/{n}" for d, (z, n) in p.zero_groups.items())
            rows.append((p.name, "x".join(map(str, p.shape)) or "()", f"{p.fraction:7.2%}", groups))
        rows.append(("total", "", f"{self.fraction:7.2%}", f"{self.zeros}/{self.numel} elements"))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def sparsity(model: nn.Module | dict[str, torch.Tensor], dims: tuple[int, ...] = (0, 1)) -> SparsityReport:
    """Exact zeros of every parameter of ``model`` (a module or a name->tensor
    dict), and for tensors with 2+ dimensions the number of all-zero groups
    along each of ``dims`` (dim 0: output rows/channels, dim 1: inputs)."""
    named = model.named_parameters() if isinstance(model, nn.Module) else model.items()
    out = []
    with torch.no_grad():
        for name, p in named:
            t = p.detach()
            if t.is_complex():
                t = torch.view_as_real(t)
            nz = t != 0
            groups = {}
            if t.dim() >= 2:
                for d in dims:
                    if d < t.dim():
                        alive = nz.movedim(d, 0).reshape(t.shape[d], -1).any(dim=1)
                        groups[d] = (int((~alive).sum()), t.shape[d])
            out.append(ParamSparsity(name, tuple(p.shape), t.numel(), int(t.numel() - nz.sum()), groups))
    return SparsityReport(out)
