"""The optimizer families the runs compare, torch's and proxopt's side by
side, and :func:`proxopt.param_groups`' groups made fit for a torch
optimizer."""

from __future__ import annotations

import torch

OPTIMIZERS = {
    # name: (torch class, proxopt class, extra kwargs)
    "adamw": (torch.optim.AdamW, "AdamW", {}),
    "adam": (torch.optim.Adam, "Adam", {}),
    "sgd": (torch.optim.SGD, "SGD", {"momentum": 0.9}),
}


def torch_groups(groups: list[dict], cls: type) -> list[dict]:
    """param_groups' dicts without proxopt's regularizer keys (torch would keep and ignore them)."""
    allowed = set(cls([torch.zeros(1, requires_grad=True)]).defaults)
    return [{k: v for k, v in g.items() if k == "params" or k in allowed} for g in groups]
