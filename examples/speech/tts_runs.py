"""The synthesis runs: one :class:`examples.speech.training.Regime` per
regularizer synthesis recipes use (the table of :mod:`examples.speech.tts`),
trained by the one loop on a :class:`SynthesisTask`."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import proxopt
import torch
from proxopt.penalties import gaussian_kl_penalty, l2_penalty
from torch import Tensor, nn

from . import cli
from .inference import compare_inference
from .optimizers import torch_groups
from .results import RunResult, run_result
from .training import Regime, Step, fit
from .tts_data import SPLITS, Batch, TTSData
from .tts_metrics import evaluate, masked_l1
from .tts_model import ProsodyTTS
from .zeros import count_zeros

RUN_LABELS = {
    "dense": "torch AdamW",
    "l2-loss": "torch AdamW + λ/2·Σ‖w‖² in loss",
    "prox-l2": "proxopt.AdamW(l2=λ)",
    "weight-decay": "torch AdamW(weight_decay=λ)",
    "prox-maxnorm": "proxopt.AdamW(max_norm=c)",
    "clamp-maxnorm": "torch AdamW + renorm_ loop",
    "prox-bounds": "proxopt.AdamW(bounds=(-b, b))",
    "clamp-bounds": "torch AdamW + clamp_ loop",
    "prox-sgl": "proxopt.AdamW(l1, group_lasso)",
    "kl": "torch AdamW + β·KL in loss",
}
RUN_NAMES = tuple(RUN_LABELS)
MAX_NORM_RUNS = ("prox-maxnorm", "clamp-maxnorm")
BOUNDS_RUNS = ("prox-bounds", "clamp-bounds")
DEFAULTS = dict(
    lr=2e-3, epochs=12, batch_size=16, l2=3e-4, weight_decay=0.5, max_norm=0.6, bound=0.06,
    l1=1e-2, group_lasso=0.08, kl=1e-3, dim=96, out="runs/tts",
)  # fmt: skip


@dataclass
class TTSConfig:
    lr: float = DEFAULTS["lr"]
    epochs: int = DEFAULTS["epochs"]
    batch_size: int = DEFAULTS["batch_size"]
    warmup: float = 0.05  # fraction of the steps with a linear lr warmup, then cosine decay
    seed: int = 0
    l2: float = DEFAULTS["l2"]
    prox_metric: str = "adaptive"  # of prox-l2
    weight_decay: float = DEFAULTS["weight_decay"]
    max_norm: float = DEFAULTS["max_norm"]
    bound: float = DEFAULTS["bound"]
    l1: float = DEFAULTS["l1"]
    group_lasso: float = DEFAULTS["group_lasso"]
    kl: float = DEFAULTS["kl"]
    log: Callable[[str], None] | None = print

    def check(self) -> None:
        for name in ("lr", "l2", "weight_decay", "l1", "group_lasso", "kl"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"Invalid {name} value: {v} (must be finite and >= 0)")
        for name in ("max_norm", "bound"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"Invalid {name} value: {v} (must be finite and > 0)")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"Invalid epochs/batch_size: {self.epochs}/{self.batch_size} (must be >= 1)")
        if self.prox_metric not in ("adaptive", "euclidean"):
            raise ValueError(f"Invalid prox_metric: {self.prox_metric!r} ('adaptive' or 'euclidean')")


def parse_runs(text: str, option: str = "--runs") -> list[str]:
    """The run names of ``option``'s comma-separated value: known, each once."""
    return cli.parse_runs(text, RUN_NAMES, option)


# --------------------------------------------------------------------------
# Optimizers of the runs
# --------------------------------------------------------------------------


def make_regime(run: str, model: ProsodyTTS, cfg: TTSConfig) -> Regime:
    """The optimizer of ``run``, the weights it regularizes, its loss term
    (l2-loss, kl) or the projection loop run after each step (clamp runs)."""
    betas = (0.9, 0.98)
    if run == "prox-sgl":
        out_w = model.decoder[-1].weight  # rows are mel bands: group its inputs instead
        groups = proxopt.param_groups(
            model, exclude=("bias", "norm", "embedding", lambda n, p, m: p is out_w), l1=cfg.l1, group_lasso=cfg.group_lasso
        )
        for g in groups:
            g["params"] = [p for p in g["params"] if p is not out_w]
        groups.append({"params": [out_w], "l1": cfg.l1, "group_lasso": cfg.group_lasso, "group_dim": 1})
        opt = proxopt.AdamW(groups, lr=cfg.lr, betas=betas, weight_decay=0.0)
        return Regime(opt, groups[0]["params"] + [out_w])
    prox = {
        "prox-l2": dict(l2=cfg.l2, prox_metric=cfg.prox_metric),
        "prox-maxnorm": dict(max_norm=cfg.max_norm),
        "prox-bounds": dict(bounds=(-cfg.bound, cfg.bound)),
    }
    if run in prox:
        groups = proxopt.param_groups(model, **prox[run])
        return Regime(proxopt.AdamW(groups, lr=cfg.lr, betas=betas, weight_decay=0.0), groups[0]["params"])
    if run not in RUN_NAMES:
        raise ValueError(f"Invalid run: {run!r} (choose from {', '.join(RUN_NAMES)})")
    wd = cfg.weight_decay if run == "weight-decay" else 0.0
    groups = torch_groups(proxopt.param_groups(model, weight_decay=wd), torch.optim.AdamW)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, weight_decay=0.0)
    regularized = groups[0]["params"]
    if run == "l2-loss":
        return Regime(opt, regularized, loss_term=lambda out: l2_penalty(regularized, cfg.l2))
    if run == "kl":
        return Regime(opt, regularized, loss_term=lambda out: cfg.kl * gaussian_kl_penalty(out.mean, out.log_var))
    if run == "clamp-maxnorm":

        @torch.no_grad()
        def project() -> None:
            for p in regularized:
                p.renorm_(2, 0, cfg.max_norm)  # each p[i] (output row) to norm <= c

        return Regime(opt, regularized, project=project)
    if run == "clamp-bounds":

        @torch.no_grad()
        def project() -> None:
            for p in regularized:
                p.clamp_(-cfg.bound, cfg.bound)

        return Regime(opt, regularized, project=project)
    return Regime(opt, regularized)


# --------------------------------------------------------------------------
# Training one run
# --------------------------------------------------------------------------


class _Synthesize(nn.Module):
    """``model(batch)`` with the prior latent: what inference timing calls."""

    def __init__(self, model: ProsodyTTS) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> Tensor:
        ph, du, spk, _ = batch
        return self.model(ph, du, spk, latent="prior").mel


@dataclass
class SynthesisTask:
    """What :func:`examples.speech.training.fit` asks of a task, for a synthesis corpus."""

    data: TTSData
    make_model: Callable[[], ProsodyTTS]

    def steps_per_epoch(self, batch_size: int) -> int:
        return len(self.data.epoch_batches(batch_size, torch.Generator().manual_seed(0)))  # the count does not depend on the order

    def batches(self, batch_size: int, order: torch.Generator, augment: torch.Generator):
        return (self.data.batch(idx) for idx in self.data.epoch_batches(batch_size, order))

    def step(self, model: ProsodyTTS, batch: Batch) -> Step:
        ph, du, spk, mel = batch
        out = model(ph, du, spk, mel, latent="posterior")
        return Step(masked_l1(out.mel, mel, out.frame_mask), out, logged={"train_kl": gaussian_kl_penalty(out.mean, out.log_var)})

    def epoch_metrics(self, model: ProsodyTTS) -> dict[str, float]:
        return {f"val_{k}": v for k, v in evaluate(model, self.data, "test_sentences").items()}


def train_run(run: str, data: TTSData, make_model: Callable[[], ProsodyTTS], cfg: TTSConfig, *, time_inference: bool = True) -> RunResult:
    """Train ``run``; everything random is seeded by ``cfg.seed`` (the same for every run)."""
    cfg.check()
    t = fit(SynthesisTask(data, make_model), lambda model, total_steps: make_regime(run, model, cfg), epochs=cfg.epochs,
            batch_size=cfg.batch_size, seed=cfg.seed, warmup=cfg.warmup, loss_name="train_l1", tag=run, log=cfg.log)  # fmt: skip
    model, regularized = t.model, t.regime.regularized
    metrics = {split: evaluate(model, data, split) for split in SPLITS}
    metrics["test_sentences_posterior"] = evaluate(model, data, "test_sentences", latent="posterior")  # an upper bound
    pruned = model.pruned().eval()
    bench = data.batch(data.splits["test_sentences"][:16].tolist())
    with torch.no_grad():
        diff = float((pruned(*bench, latent="posterior").mel - model(*bench, latent="posterior").mel).abs().max())
    infer = {}
    if time_inference:
        before, after = compare_inference(_Synthesize(model), _Synthesize(pruned), bench, reps=10)
        infer = {"batch": len(bench[0]), "before_batch_ms": before, "after_batch_ms": after}
    result = run_result(run, RUN_LABELS[run], t, count_zeros(model, regularized, regularized), pruned,
                        metrics=metrics, seed=cfg.seed, pruned_max_abs_diff=diff, infer_ms=infer)  # fmt: skip
    # up to float32 rounding: the weights hold float32(c) or float32(b)
    if run in MAX_NORM_RUNS:
        result.range_held = result.max_row_norm <= cfg.max_norm * (1 + 1e-5)
    elif run in BOUNDS_RUNS:
        result.range_held = result.max_abs_weight <= cfg.bound * (1 + 1e-6)
    return result
