"""The variants raced for one (parameter set, optimizer): proxopt with each
regularizer and metric, and the ways to get the same thing from torch.optim.

Every variant owns a fresh copy of the parameters, their (preset, random)
gradients and its optimizer state, so variants never share memory.

Regularizers apply to the tensors with at least 2 dimensions (weight
matrices, conv kernels); biases and norm parameters stay unregularized, as
``proxopt.param_groups`` does by default (and group proxes need rows). proxopt
gets them as two param groups; the baselines step all tensors with torch and
regularize the same subset."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from . import baselines
from .specs import OptimizerSpec, RegularizerSpec, proxopt_accepts, torch_accepts

TORCH_FLAGS = {"for-loop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}


@dataclass
class Variant:
    name: str
    family: str  # proxopt | torch | loss penalty | prox pass
    regularizer: str
    ref: str | None  # the proxopt variant its ratio is taken against (None: it is the reference)
    detail: str  # what one step runs
    step: Callable[[], None]


@dataclass
class Skipped:
    name: str
    reason: str


def regularized(params: list[Tensor]) -> list[Tensor]:
    return [p for p in params if p.dim() >= 2]


def _clone(master: tuple[list[Tensor], list[Tensor]]) -> list[Tensor]:
    params = []
    for w, g in zip(*master):
        p = w.clone().requires_grad_(True)
        p.grad = g.clone()
        params.append(p)
    return params


def _fmt(kwargs: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


class VariantBuilder:
    def __init__(self, opt: OptimizerSpec, master, device: str, dtype: torch.dtype):
        self.opt, self.master, self.device, self.dtype = opt, master, device, dtype
        self.variants: list[Variant] = []
        self.skipped: list[Skipped] = []
        self.shared = None
        # Baselines step with torch's fastest implementation available here.
        self.torch_impl = {impl: torch_accepts(opt, flags, device, dtype) for impl, flags in TORCH_FLAGS.items()}
        self.best_torch = next((i for i in ("fused", "foreach", "for-loop") if self.torch_impl[i] is None), None)

    def _torch_opt(self, params: list[Tensor], impl: str):
        return self.opt.torch_cls(params, **self.opt.hyper, **TORCH_FLAGS[impl])

    def _torch_detail(self, impl: str) -> str:
        return f"torch.optim.{self.opt.name}({_fmt(TORCH_FLAGS[impl])})"

    def add_plain_torch(self, ref: str) -> None:
        for impl, why in self.torch_impl.items():
            name = f"torch {impl}"
            if why:
                self.skipped.append(Skipped(name, why))
                continue
            params = _clone(self.master)
            opt = self._torch_opt(params, impl)
            detail = self._torch_detail(impl)
            self.variants.append(Variant(name, "torch", "none", ref, detail, opt.step))

    def _shared_proxopt(self):
        """One proxopt optimizer that every regularizer row steps, with its own
        settings put in its regularized param group first: the rows then time
        the same tensors, so the cost of a regularizer is not mixed up with
        where the memory of each row happens to lie (on a shared machine that
        differs by tens of percent between allocations of the same size)."""
        if self.shared is None:
            params = _clone(self.master)
            rest = [p for p in params if p.dim() < 2]
            groups = [{"params": regularized(params)}] + ([{"params": rest}] if rest else [])
            self.shared = self.opt.proxopt_cls(groups, **self.opt.hyper)
        return self.shared

    def add_proxopt(self, reg: RegularizerSpec, metric: str, ref: str | None) -> str | None:
        """Add proxopt with this regularizer; return its name, or None if proxopt can't."""
        from proxopt.regularizers import REGULARIZER_DEFAULTS

        kwargs = dict(reg.kwargs)
        if metric == "adaptive":
            kwargs["prox_metric"] = "adaptive"
        words = ["proxopt"] + ([reg.name] if reg.name != "none" else []) + ([metric] if metric != "euclidean" else [])
        name = " ".join(words)
        why = proxopt_accepts(self.opt, kwargs, self.device, self.dtype)
        if why:
            self.skipped.append(Skipped(name, why))
            return None
        opt = self._shared_proxopt()
        settings = {**REGULARIZER_DEFAULTS, **kwargs}

        def step(opt=opt, settings=settings) -> None:
            opt.param_groups[0].update(settings)
            opt.step()

        detail = f"proxopt.{self.opt.name}({_fmt(kwargs)})" if kwargs else f"proxopt.{self.opt.name}()"
        self.variants.append(Variant(name, "proxopt", reg.name, ref, detail, step))
        return name

    def add_compiled(self, ref: str) -> None:
        """The compiled step of proxopt (``torch.compile(fullgraph=True)``) and of
        torch.optim (its compiled-optimizer recipe: a tensor lr, for-loop
        implementation, inductor), each on its own tensors; compile time is
        spent in the warmup."""
        lr = torch.tensor(float(self.opt.hyper["lr"]), device=self.device)
        hyper = {**self.opt.hyper, "lr": lr}
        params = _clone(self.master)
        opt = self.opt.proxopt_cls(params, **hyper)
        try:
            step = torch.compile(opt.step, fullgraph=True)
        except Exception as exc:  # noqa: BLE001 - reported, not fatal
            self.skipped.append(Skipped("proxopt compiled", f"{type(exc).__name__}: {exc}"))
        else:
            self.variants.append(Variant("proxopt compiled", "proxopt", "none", ref,
                                         f"torch.compile(proxopt.{self.opt.name}(lr=tensor).step, fullgraph=True)", step))
        params = _clone(self.master)
        t_opt = self.opt.torch_cls(params, **hyper, foreach=False)
        self.variants.append(Variant("torch compiled", "torch", "none", ref,
                                     f"torch.compile(torch.optim.{self.opt.name}(lr=tensor, foreach=False).step)",
                                     torch.compile(t_opt.step)))

    def add_penalty(self, reg: RegularizerSpec, ref: str) -> None:
        penalty = baselines.penalty_fn(reg.name, reg.kwargs)
        if penalty is None or self.best_torch is None:
            return
        params = _clone(self.master)
        opt, targets = self._torch_opt(params, self.best_torch), regularized(params)

        def step() -> None:
            # The grads from "the model" are already in .grad; backward adds the penalty's.
            penalty(targets).backward()
            opt.step()

        name = f"{reg.name} loss penalty + torch {self.best_torch}"
        detail = f"({reg.name} penalty in the loss).backward(); {self._torch_detail(self.best_torch)}.step()"
        self.variants.append(Variant(name, "loss penalty", reg.name, ref, detail, step))

    def add_prox_passes(self, reg: RegularizerSpec, ref: str) -> None:
        if self.best_torch is None:
            return
        for style in ("foreach", "for-loop"):
            prox = baselines.prox_pass(reg.name, reg.kwargs, self.opt.hyper["lr"], style)
            if prox is None:
                continue
            params = _clone(self.master)
            opt, targets = self._torch_opt(params, self.best_torch), regularized(params)

            def step(opt=opt, targets=targets, prox=prox) -> None:
                opt.step()
                prox(targets)

            name = f"torch {self.best_torch} + {style} {reg.name} prox"
            detail = f"{self._torch_detail(self.best_torch)}.step(); {style} {reg.name} prox in Python"
            self.variants.append(Variant(name, "prox pass", reg.name, ref, detail, step))


def build(opt: OptimizerSpec, regs: list[RegularizerSpec], master, device: str,
          dtype: torch.dtype, compiled: bool = False) -> tuple[list[Variant], list[Skipped]]:
    """All variants for one optimizer. The first proxopt row of each
    regularizer (euclidean metric) is that section's reference; "none" comes
    first. ``compiled`` adds the compiled steps of proxopt and torch.optim."""
    b = VariantBuilder(opt, master, device, dtype)
    for reg in regs:
        if reg.name != "none" and not regularized(master[0]):
            b.skipped.append(Skipped(f"[{reg.name}]", "no tensor with 2 or more dimensions to regularize"))
            continue
        ref = b.add_proxopt(reg, "euclidean", None)
        if ref is None:
            continue  # nothing to compare the baselines against
        if reg.name == "none":
            b.add_plain_torch(ref)
            if compiled:
                b.add_compiled(ref)
            continue
        if reg.metric_matters:
            b.add_proxopt(reg, "adaptive", ref)
        b.add_penalty(reg, ref)
        b.add_prox_passes(reg, ref)
    return b.variants, b.skipped
