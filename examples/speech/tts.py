"""Speech synthesis (phonemes → log-mel) with the regularizers synthesis
recipes use, trained side by side with the same seeds, data order and
learning-rate schedule; only the regularization differs:

=================  ==========================================================
run                what
=================  ==========================================================
``dense``          ``torch.optim.AdamW`` (no weight decay), no penalty
``l2-loss``        the same + λ₂/2·Σ‖w‖² in the loss
                   (``proxopt.penalties.l2_penalty``): the articles' recipe
``prox-l2``        ``proxopt.AdamW(l2=λ₂, prox_metric=...)``: the ridge prox
``weight-decay``   ``torch.optim.AdamW(weight_decay=λ_wd)``: decoupled decay
``prox-maxnorm``   ``proxopt.AdamW(max_norm=c)``: every output row's norm ≤ c
``clamp-maxnorm``  torch AdamW, then ``p.renorm_(2, 0, c)`` over the weights
                   after each ``opt.step()`` (the usual Python loop)
``prox-bounds``    ``proxopt.AdamW(bounds=(-b, b))``: every weight in [-b, b]
``clamp-bounds``   torch AdamW, then ``p.clamp_(-b, b)`` after each step
``prox-sgl``       ``proxopt.AdamW(l1=λ₁, group_lasso=λ_g)``: sparse group
                   lasso (exact zeros, whole channels), then
                   :meth:`ProsodyTTS.pruned` and its speed
``kl``             torch AdamW + β·KL(q(z | mel) ‖ N(0, I)) in the loss
                   (``proxopt.penalties.gaussian_kl_penalty``): the
                   variational prosody latent regularized
=================  ==========================================================

    python -m examples.speech.tts                       # the espeak-ng corpus (synthesized once, cached)
    python -m examples.speech.tts --data mine.npz --epochs 30 --out runs/tts

The regularized tensors are the Conv/Linear weights, chosen by
:func:`proxopt.param_groups` (biases and embeddings excluded); in
``prox-sgl`` the decoder's output convolution (whose rows are mel bands) is
grouped by its input channels (``group_dim=1``). The model is
:class:`examples.speech.tts_model.ProsodyTTS`; the loss is the L1 distance to
the target log-mel, standardized per mel band with the training set's
statistics, over the utterances' frames. The data is a corpus of
:mod:`examples.speech.tts_corpus`.

Held-out metrics (each utterance alone; prosody latent = the prior's mean,
as at inference; for unseen voices the speaker vector is the mean of the
trained speakers' embeddings): log-mel L1 and MSE (natural-log mel power,
per frame and band) and the mel-cepstral distortion (:func:`mcd`). Also the
KL of the posterior on held-out utterances, exact zeros and all-zero output
channels of the regularized weights, the largest row norm and |w| (the
ranges asked for, checked), the optimizer-step time (``opt.step()``, plus
the renorm/clamp loop in the clamp runs: it is part of the step it
replaces) and the training time. Writes ``tts.txt`` (table), ``tts.json``
(everything), ``tts.png`` (metrics), ``tts_spectrograms.png`` (target vs
predicted mels of held-out utterances) and ``wav/*.wav`` (Griffin-Lim of the
predicted and of the target mels) to ``--out``.

Choice of the strengths (defaults): from sweeps of 12-epoch runs on the
default corpus (dense: held-out L1 1.38, ‖w‖₂ 25, posterior KL 27 nats), each
should visibly act while the held-out L1 stays within ~10 % of dense.
λ₂ = 3e-4 for l2-loss and prox-l2 (``adaptive`` metric: the ridge threshold
lr·λ₂/√v̂ is the prox counterpart of a loss gradient λ₂w divided by Adam's
√v̂); at 1e-3 they cut ‖w‖₂ from 25 to 9.6 / 8.0 but cost 10 % / 18 % L1.
λ_wd = 0.5: AdamW's decoupled decay lr·λ_wd per step is tiny over ~340
steps (0.1 moved ‖w‖₂ by 3 %). c = 0.6 is about the norm of a freshly
initialized row (PyTorch's uniform init gives rows of norm ≈ 1/√3 whatever
the fan-in), so the limit binds the rows that training grows (+3 % L1);
b = 0.06 binds the largest weights (+3 % L1). Sparse group lasso λ₁ = 0.01,
λ_g = 0.08 (euclidean thresholds lr·λ): (0.02, 0.15) zeroed 137 of 992
channels and 23 % of the weights but cost 29 % L1. β = 1e-3 for the KL:
0.05 and 0.01 collapse the posterior (KL → 0; the prior then gives a better
held-out L1 than dense, whose decoder relies on a latent the prior does not
match), 1e-3 nearly so.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import proxopt
from proxopt.penalties import gaussian_kl_penalty, l2_penalty

from .espeak import EspeakUnavailableError
from . import tts_corpus as C
from .features import dct_matrix
from .runs import compare_inference, environment, lr_schedule, pyplot, text_table
from .tts_model import ProsodyTTS

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
SPLITS = ("test_sentences", "test_voices")
DEFAULTS = dict(
    lr=2e-3, epochs=12, batch_size=16, l2=3e-4, weight_decay=0.5, max_norm=0.6, bound=0.06,
    l1=1e-2, group_lasso=0.08, kl=1e-3, dim=96, out="runs/tts",
)  # fmt: skip
N_CEPSTRA = 25  # MCD: c1..c24 of a 25-coefficient DCT (c0, the energy, excluded)


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
    runs = [r.strip() for r in text.split(",") if r.strip()]
    bad = [r for r in runs if r not in RUN_NAMES]
    if bad or not runs:
        raise ValueError(f"Invalid {option} value: {bad or text!r} (choose from {', '.join(RUN_NAMES)})")
    twice = sorted({r for r in runs if runs.count(r) > 1})
    if twice:
        raise ValueError(f"Invalid {option} value: {text!r} lists {', '.join(twice)} more than once")
    return runs


# --------------------------------------------------------------------------
# Data as tensors
# --------------------------------------------------------------------------


class Batch(tuple):
    """(phonemes [B, P], durations [B, P], speakers [B], mels [B, n_mels, T] standardized)."""


@dataclass
class TTSData:
    corpus: C.TTSCorpus
    splits: dict[str, np.ndarray]
    mean: Tensor  # [n_mels] per-band mean of the training frames (ln mel)
    std: Tensor  # [n_mels]
    phonemes: list[Tensor]
    durations: list[Tensor]
    mels: list[Tensor]  # standardized [n_mels, frames]
    speakers: Tensor

    @classmethod
    def from_corpus(cls, corpus: C.TTSCorpus, seed: int = 0) -> "TTSData":
        if corpus.held_out_speakers is None or corpus.held_out_sentences is None:
            corpus = corpus.with_held_out(seed=seed)
        splits = corpus.split()
        train = np.concatenate([corpus.mels[i] for i in splits["train"]])
        mean = torch.from_numpy(train.mean(0))
        std = torch.from_numpy(train.std(0)).clamp_min(1e-3)
        return cls(
            corpus=corpus,
            splits=splits,
            mean=mean,
            std=std,
            phonemes=[torch.from_numpy(p) for p in corpus.phonemes],
            durations=[torch.from_numpy(d) for d in corpus.durations],
            mels=[((torch.from_numpy(m) - mean) / std).T.contiguous() for m in corpus.mels],
            speakers=torch.from_numpy(corpus.speakers),
        )

    @property
    def n_phonemes(self) -> int:
        return len(self.corpus.phoneme_names)

    def batch(self, idx: Sequence[int]) -> Batch:
        """Utterances ``idx`` padded (phoneme id ``n_phonemes``, 0 durations, 0 frames)."""
        p_max = max(len(self.phonemes[i]) for i in idx)
        t_max = max(self.mels[i].shape[1] for i in idx)
        ph = torch.full((len(idx), p_max), self.n_phonemes, dtype=torch.int64)
        du = torch.zeros(len(idx), p_max, dtype=torch.int64)
        mel = torch.zeros(len(idx), self.mels[0].shape[0], t_max)
        for b, i in enumerate(idx):
            ph[b, : len(self.phonemes[i])] = self.phonemes[i]
            du[b, : len(self.durations[i])] = self.durations[i]
            mel[b, :, : self.mels[i].shape[1]] = self.mels[i]
        return Batch((ph, du, self.speakers[list(idx)], mel))

    def epoch_batches(self, batch_size: int, gen: torch.Generator) -> list[list[int]]:
        """Training batches of similar lengths (less padding): a seeded shuffle,
        sorted by length within pools of 8 batches, cut, and the batches shuffled."""
        train = self.splits["train"]
        perm = train[torch.randperm(len(train), generator=gen).numpy()]
        pool = 8 * batch_size
        batches = []
        for s in range(0, len(perm), pool):
            chunk = sorted(perm[s : s + pool].tolist(), key=lambda i: self.mels[i].shape[1])
            batches += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
        order = torch.randperm(len(batches), generator=gen).tolist()
        return [batches[k] for k in order]


# --------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------


def masked_l1(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean |pred − target| over the utterances' frames ([B, n_mels, T], mask [B, T])."""
    m = mask[:, None, :].to(pred.dtype)
    return ((pred - target).abs() * m).sum() / (m.sum() * pred.shape[1]).clamp_min(1)


def mcd(pred: Tensor, target: Tensor, n_cepstra: int = N_CEPSTRA) -> Tensor:
    """Mel-cepstral distortion (dB) per frame of two log-mels ``[n_mels, T]``
    (natural log of mel power; frames aligned 1:1 by the given durations).

    Each frame's log-mel *amplitude* ``L_k = ½·ln(mel power_k)`` (k < N =
    n_mels) has the cepstrum ``c_d = (1/N)·Σ_k L_k·cos(π·d·(k + ½)/N)``, so
    that ``L_k ≈ c_0 + 2·Σ_d c_d·cos(π·d·(k + ½)/N)`` (the convention of the
    MCD formula); computed as the orthonormal DCT-II (:func:`dct_matrix`)
    divided by √(2N). With ``c_1 .. c_{n_cepstra-1}`` (c0, the energy,
    excluded): MCD = (10 / ln 10)·√(2·Σ_d (c_d − ĉ_d)²). A proxy of the usual
    MCD on mel-cepstra of the STFT (SPTK): comparable between these runs,
    close in scale to, not equal to, papers' numbers."""
    n = pred.shape[0]
    dct = dct_matrix(n_cepstra, n).to(pred)[1:] / math.sqrt(2 * n)
    diff = dct @ (0.5 * (pred - target))  # [n_cepstra - 1, T]
    return (10.0 / math.log(10.0)) * torch.sqrt(2.0 * diff.square().sum(0))


def speaker_vectors(model: ProsodyTTS, data: TTSData, idx: np.ndarray) -> Tensor:
    """Speaker inputs for utterances ``idx``: their ids, except held-out voices,
    which get the mean embedding of the trained speakers (they have none of their own)."""
    seen = np.unique(data.corpus.speakers[data.splits["train"]])
    table = model.speaker_embedding.weight.detach().clone()
    held = np.setdiff1d(np.arange(len(table)), seen)
    table[held] = table[seen].mean(0)
    return table[data.speakers[list(idx)]]


@torch.no_grad()
def predict(model: ProsodyTTS, data: TTSData, i: int, latent: str = "prior") -> Tensor:
    """Log-mel ``[n_mels, T]`` (natural log of mel power) predicted for utterance ``i`` alone."""
    model.eval()
    ph, du, _, mel = data.batch([i])
    out = model(ph, du, speaker_vectors(model, data, np.array([i])), mel, latent=latent)
    return out.mel[0] * data.std[:, None] + data.mean[:, None]


@torch.no_grad()
def evaluate(model: ProsodyTTS, data: TTSData, split: str, latent: str = "prior") -> dict[str, float]:
    """Frame-averaged log-mel L1, MSE and MCD of ``split``, and the posterior's KL per utterance."""
    idx = data.splits[split]
    if len(idx) == 0:
        raise ValueError(f"Invalid split: {split!r} has no utterances (nothing to evaluate)")
    model.eval()
    l1 = mse = dist = kl = 0.0
    frames = 0
    for i in idx:
        ph, du, _, mel = data.batch([i])
        out = model(ph, du, speaker_vectors(model, data, np.array([i])), mel, latent=latent)
        pred = out.mel[0] * data.std[:, None] + data.mean[:, None]
        target = torch.from_numpy(data.corpus.mels[i]).T
        l1 += float((pred - target).abs().mean(0).sum())
        mse += float((pred - target).square().mean(0).sum())
        dist += float(mcd(pred, target).sum())
        kl += float(gaussian_kl_penalty(out.mean, out.log_var))
        frames += target.shape[1]
    if frames == 0:
        raise ValueError(f"Invalid split: the {len(idx)} utterances of {split!r} have no frames (nothing to evaluate)")
    return {"l1": l1 / frames, "mse": mse / frames, "mcd": dist / frames, "kl": kl / len(idx)}


# --------------------------------------------------------------------------
# Optimizers of the runs
# --------------------------------------------------------------------------


def _torch_groups(groups: list[dict], cls: type) -> list[dict]:
    """param_groups' dicts without proxopt's regularizer keys (torch would keep and ignore them)."""
    allowed = set(cls([torch.zeros(1, requires_grad=True)]).defaults)
    return [{k: v for k, v in g.items() if k == "params" or k in allowed} for g in groups]


def make_optimizer(run: str, model: ProsodyTTS, cfg: TTSConfig) -> tuple[torch.optim.Optimizer, list[Tensor], Callable[[], None] | None]:
    """(optimizer, the regularized weights, the projection loop to run after
    each step or None) of ``run``."""
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
        return opt, groups[0]["params"] + [out_w], None
    prox = {
        "prox-l2": dict(l2=cfg.l2, prox_metric=cfg.prox_metric),
        "prox-maxnorm": dict(max_norm=cfg.max_norm),
        "prox-bounds": dict(bounds=(-cfg.bound, cfg.bound)),
    }
    if run in prox:
        groups = proxopt.param_groups(model, **prox[run])
        return proxopt.AdamW(groups, lr=cfg.lr, betas=betas, weight_decay=0.0), groups[0]["params"], None
    if run not in RUN_NAMES:
        raise ValueError(f"Invalid run: {run!r} (choose from {', '.join(RUN_NAMES)})")
    wd = cfg.weight_decay if run == "weight-decay" else 0.0
    groups = _torch_groups(proxopt.param_groups(model, weight_decay=wd), torch.optim.AdamW)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, weight_decay=0.0)
    regularized = groups[0]["params"]
    project = None
    if run == "clamp-maxnorm":

        @torch.no_grad()
        def project() -> None:
            for p in regularized:
                p.renorm_(2, 0, cfg.max_norm)  # each p[i] (output row) to norm <= c

    elif run == "clamp-bounds":

        @torch.no_grad()
        def project() -> None:
            for p in regularized:
                p.clamp_(-cfg.bound, cfg.bound)

    return opt, regularized, project


# --------------------------------------------------------------------------
# Training one run
# --------------------------------------------------------------------------


@dataclass
class TTSRunResult:
    run: str
    label: str
    metrics: dict[str, dict[str, float]]  # split -> metrics, latent = prior
    posterior_metrics: dict[str, float]  # test_sentences with the posterior's mean (an upper bound)
    history: list[dict[str, float]]
    losses: list[float]  # every training step's loss (without penalties)
    params: int
    weights: int  # regularized weights
    zeros: int  # exact zeros among them
    zero_channels: int
    channels: int
    max_row_norm: float  # of the regularized weights (rows: dim 0)
    max_abs_weight: float
    weight_norm: float  # ‖w‖₂ over the regularized weights
    range_held: bool | None  # the run's limit held (max-norm / bounds runs), else None
    step_time_s: float  # opt.step() (+ the projection loop)
    projection_time_s: float  # the loop alone (clamp runs)
    steps: int
    train_time_s: float
    pruned_params: int
    pruned_max_abs_diff: float
    infer_ms: dict[str, float]
    model: nn.Module | None = field(default=None, repr=False)
    pruned_model: nn.Module | None = field(default=None, repr=False)

    @property
    def step_ms(self) -> float:
        return 1e3 * self.step_time_s / max(1, self.steps)

    def to_dict(self) -> dict[str, Any]:
        skip = ("model", "pruned_model", "losses")  # the models are not copied (asdict would deep-copy them)
        d = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name not in skip}
        d["step_ms"] = self.step_ms
        d["zero_fraction"] = self.zeros / max(1, self.weights)
        return d


class _Synthesize(nn.Module):
    """``model(batch)`` with the prior latent: what inference timing calls."""

    def __init__(self, model: ProsodyTTS) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> Tensor:
        ph, du, spk, _ = batch
        return self.model(ph, du, spk, latent="prior").mel


def _ranges(weights: list[Tensor]) -> tuple[float, float, float]:
    with torch.no_grad():
        rows = max(float(w.reshape(len(w), -1).norm(dim=1).max()) for w in weights)
        mx = max(float(w.abs().max()) for w in weights)
        norm = math.sqrt(sum(float(w.square().sum()) for w in weights))
    return rows, mx, norm


def train_run(run: str, data: TTSData, make_model: Callable[[], ProsodyTTS], cfg: TTSConfig, *, time_inference: bool = True) -> TTSRunResult:
    """Train ``run``; everything random is seeded by ``cfg.seed`` (the same for every run)."""
    cfg.check()
    log = cfg.log or (lambda s: None)
    torch.manual_seed(cfg.seed)
    model = make_model()
    opt, regularized, project = make_optimizer(run, model, cfg)
    order_gen = torch.Generator().manual_seed(cfg.seed)
    batches_per_epoch = len(data.epoch_batches(cfg.batch_size, torch.Generator().manual_seed(cfg.seed)))
    sched = lr_schedule(opt, cfg.epochs * batches_per_epoch, cfg.warmup)
    torch.manual_seed(cfg.seed + 2)  # dropout and the posterior's ε
    step_time = proj_time = 0.0
    losses: list[float] = []
    history = []
    t_start = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        tot = kl_tot = 0.0
        for idx in data.epoch_batches(cfg.batch_size, order_gen):
            ph, du, spk, mel = data.batch(idx)
            opt.zero_grad(set_to_none=True)
            out = model(ph, du, spk, mel, latent="posterior")
            loss = masked_l1(out.mel, mel, out.frame_mask)
            kl = gaussian_kl_penalty(out.mean, out.log_var)
            total = loss
            if run == "l2-loss":
                total = total + l2_penalty(regularized, cfg.l2)
            elif run == "kl":
                total = total + cfg.kl * kl
            total.backward()
            t1 = time.perf_counter()
            opt.step()
            t2 = time.perf_counter()
            if project is not None:
                project()
            t3 = time.perf_counter()
            sched.step()
            step_time += t3 - t1
            proj_time += t3 - t2
            losses.append(loss.item())
            tot += losses[-1]
            kl_tot += kl.item()
        n = max(1, batches_per_epoch)
        val = evaluate(model, data, "test_sentences")
        history.append({"epoch": epoch + 1, "train_l1": tot / n, "train_kl": kl_tot / n, **{f"val_{k}": v for k, v in val.items()}})
        log(
            f"  [{run}] epoch {epoch + 1:2d}/{cfg.epochs}  train L1 {tot / n:.4f}  KL {kl_tot / n:.2f}  "
            f"held-out sentences: L1 {val['l1']:.4f}  MCD {val['mcd']:.2f} dB"
        )
    train_time = time.perf_counter() - t_start
    model.eval()
    metrics = {split: evaluate(model, data, split) for split in SPLITS}
    posterior = evaluate(model, data, "test_sentences", latent="posterior")

    sp = proxopt.sparsity(model)
    by_name = {p.name: p for p in sp.params}
    reg_ids = {id(p) for p in regularized}
    reg_names = [n for n, p in model.named_parameters() if id(p) in reg_ids]
    weights = sum(by_name[n].numel for n in reg_names)
    zeros = sum(by_name[n].zeros for n in reg_names)
    zc = sum(by_name[n].zero_groups[0][0] for n in reg_names)
    nc = sum(by_name[n].zero_groups[0][1] for n in reg_names)
    rows, mx, norm = _ranges(regularized)
    held = None  # up to float32 rounding: the weights hold float32(c) or float32(b)
    if run in MAX_NORM_RUNS:
        held = rows <= cfg.max_norm * (1 + 1e-5)
    elif run in BOUNDS_RUNS:
        held = mx <= cfg.bound * (1 + 1e-6)

    pruned = model.pruned().eval()
    bench = data.batch(data.splits["test_sentences"][:16].tolist())
    with torch.no_grad():
        diff = float((pruned(*bench, latent="posterior").mel - model(*bench, latent="posterior").mel).abs().max())
    infer = {}
    if time_inference:
        before, after = compare_inference(_Synthesize(model), _Synthesize(pruned), bench, reps=10)
        infer = {"batch": len(bench[0]), "before_batch_ms": before, "after_batch_ms": after}
    return TTSRunResult(
        run=run,
        label=RUN_LABELS[run],
        metrics=metrics,
        posterior_metrics=posterior,
        history=history,
        losses=losses,
        params=sum(p.numel() for p in model.parameters()),
        weights=weights,
        zeros=zeros,
        zero_channels=zc,
        channels=nc,
        max_row_norm=rows,
        max_abs_weight=mx,
        weight_norm=norm,
        range_held=held,
        step_time_s=step_time,
        projection_time_s=proj_time,
        steps=len(losses),
        train_time_s=train_time,
        pruned_params=sum(p.numel() for p in pruned.parameters()),
        pruned_max_abs_diff=diff,
        infer_ms=infer,
        model=model,
        pruned_model=pruned,
    )


# --------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------


def results_table(results: Sequence[TTSRunResult]) -> str:
    header = (
        "run", "optimizer / regularizer", "L1", "MSE", "MCD dB", "MCD unseen voices", "KL",
        "zeros", "zero ch.", "‖w‖₂", "max ‖row‖", "max |w|", "step ms", "train s", "params → pruned",
    )  # fmt: skip
    rows = [header]
    for r in results:
        m, v = r.metrics["test_sentences"], r.metrics["test_voices"]
        held = "" if r.range_held is None else (" ✓" if r.range_held else " ✗")
        rows.append(
            (
                r.run,
                r.label,
                f"{m['l1']:.4f}",
                f"{m['mse']:.4f}",
                f"{m['mcd']:.2f}",
                f"{v['mcd']:.2f}",
                f"{m['kl']:.2f}",
                f"{r.zeros / max(1, r.weights):.2%}",
                f"{r.zero_channels}/{r.channels}",
                f"{r.weight_norm:.1f}",
                f"{r.max_row_norm:.3f}" + (held if r.run in MAX_NORM_RUNS else ""),
                f"{r.max_abs_weight:.4f}" + (held if r.run in BOUNDS_RUNS else ""),
                f"{r.step_ms:.2f}",
                f"{r.train_time_s:.1f}",
                f"{r.params} → {r.pruned_params}",
            )
        )
    return text_table(rows)


def plot_results(results: Sequence[TTSRunResult], path: Path, title: str) -> Path | None:
    """Held-out MCD (unseen sentences and voices), KL, step time, and the
    largest row norm and |w| per run; None without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    names = [r.run for r in results]
    x = np.arange(len(results))
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    ax = axes[0]
    ax.bar(x - 0.2, [r.metrics["test_sentences"]["mcd"] for r in results], 0.4, label="unseen sentences")
    ax.bar(x + 0.2, [r.metrics["test_voices"]["mcd"] for r in results], 0.4, label="unseen voices")
    ax.set_ylabel("MCD (dB, log-mel cepstra 1..24)")
    ax.set_title("held-out MCD (prior latent)")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.bar(x, [r.metrics["test_sentences"]["kl"] for r in results], color="#7570b3")
    ax.set_ylabel("KL(q(z|mel) ‖ N(0, I)) per utterance (nats)")
    ax.set_title("prosody latent KL, held-out")
    ax = axes[2]
    ax.bar(x, [r.step_ms for r in results], color="#1b9e77")
    for i, r in enumerate(results):
        ax.text(i, r.step_ms, f"{r.step_ms:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_ylabel("ms per step (opt.step() + clamp loop)")
    ax.set_title("optimizer step time")
    ax = axes[3]
    ax.bar(x - 0.2, [r.max_row_norm for r in results], 0.4, label="max ‖row‖₂")
    ax.bar(x + 0.2, [10 * r.max_abs_weight for r in results], 0.4, label="10·max |w|")
    ax.set_title("weight ranges (regularized weights)")
    ax.legend(fontsize=8)
    for ax in axes:
        ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def showcase(data: TTSData, count: int) -> list[tuple[str, int]]:
    """(split, utterance) to show and render: held-out utterances taken from
    each test split in turn, each of a sentence not shown yet."""
    picks: list[tuple[str, int]] = []
    used: set[int] = set()
    pools = {split: list(data.splits[split]) for split in SPLITS}
    k = 0
    while len(picks) < count and any(pools.values()):
        pool = pools[SPLITS[k % len(SPLITS)]]
        k += 1
        while pool:
            i = int(pool.pop(0))
            if int(data.corpus.sentences[i]) not in used:
                used.add(int(data.corpus.sentences[i]))
                picks.append((SPLITS[(k - 1) % len(SPLITS)], i))
                break
    return picks


def plot_spectrograms(results: Sequence[TTSRunResult], data: TTSData, picks, path: Path) -> Path | None:
    """Target vs predicted log-mels (rows: target, then each run) of the picked utterances (columns)."""
    plt = pyplot()
    if plt is None:
        return None
    rows = 1 + len(results)
    fig, axes = plt.subplots(rows, len(picks), figsize=(3.8 * len(picks), 1.4 * rows), squeeze=False)
    for c, (split, i) in enumerate(picks):
        target = data.corpus.mels[i].T
        lo, hi = float(np.percentile(target, 1)), float(target.max())
        text = data.corpus.texts[data.corpus.sentences[i]] if data.corpus.texts else f"sentence {data.corpus.sentences[i]}"
        voice = data.corpus.speaker_names[data.corpus.speakers[i]]
        mels = [("espeak-ng target", target)] + [(r.run, predict(r.model, data, i).numpy()) for r in results]
        for r, (name, m) in enumerate(mels):
            ax = axes[r, c]
            ax.imshow(m, origin="lower", aspect="auto", vmin=lo, vmax=hi, cmap="magma", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
            if r == 0:
                ax.set_title(f"{split.replace('_', ' ')} · {voice}\n{text}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=60)
    plt.close(fig)
    return path


def mel_to_wave(logmel: np.ndarray, mel: C.MelConfig, n_iter: int = 32, seed: int = 0) -> np.ndarray:
    """Griffin-Lim audio of a log-mel ``[n_mels, T]``: what
    ``librosa.feature.inverse.mel_to_audio`` does (NNLS back to a linear
    power spectrum with the same filterbank, then Griffin-Lim with the same
    STFT), with its random initial phase seeded."""
    import librosa  # noqa: PLC0415

    power = np.maximum(np.exp(logmel.astype(np.float64)) - mel.floor, 0.0)
    stft = librosa.feature.inverse.mel_to_stft(
        power, sr=mel.sample_rate, n_fft=mel.n_fft, power=2.0, fmin=mel.fmin, fmax=mel.fmax, htk=False, norm="slaney"
    )
    return librosa.griffinlim(
        stft, n_iter=n_iter, hop_length=mel.hop_length, win_length=mel.win_length, n_fft=mel.n_fft,
        window="hann", center=True, pad_mode="reflect", random_state=seed,
    ).astype(np.float32)  # fmt: skip


def write_wavs(results: Sequence[TTSRunResult], data: TTSData, picks, out: Path, n_iter: int = 32) -> list[Path]:
    """``<split>-<utt>-target.wav`` and ``<split>-<utt>-<run>.wav`` (16-bit PCM, peak 0.9)."""
    import soundfile  # noqa: PLC0415

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, i in picks:
        mels = [("target", data.corpus.mels[i].T)] + [(r.run, predict(r.model, data, i).numpy()) for r in results]
        for name, m in mels:
            wave = mel_to_wave(m, data.corpus.mel, n_iter=n_iter)
            wave = 0.9 * wave / max(1e-6, float(np.abs(wave).max()))
            path = out / f"{split}-{i:04d}-{name}.wav"
            soundfile.write(path, wave, data.corpus.mel.sample_rate, subtype="PCM_16")
            paths.append(path)
    return paths


def write_reports(results, data: TTSData, out: Path, config: dict, extra: dict, show: Sequence[str], picks, n_iter: int) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Any] = {"table": out / "tts.txt", "json": out / "tts.json"}
    paths["table"].write_text(results_table(results) + "\n")
    payload = {"config": config, "environment": environment(), "runs": [r.to_dict() for r in results], **extra}
    paths["json"].write_text(json.dumps(payload, indent=2, default=float))
    title = config.get("title", "")
    if (png := plot_results(results, out / "tts.png", title)) is not None:
        paths["png"] = png
    shown = [r for r in results if r.run in show]
    if picks and (png := plot_spectrograms(shown, data, picks, out / "tts_spectrograms.png")) is not None:
        paths["spectrograms"] = png
    if picks:
        paths["wavs"] = write_wavs(shown, data, picks, out / "wav", n_iter)
    return paths


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m examples.speech.tts",
        description="Phonemes → log-mel synthesis: dense vs L2 (loss / prox / decay), weight-range limits "
        "(prox / clamp loop), sparse group lasso and KL regularization, side by side.",
    )
    p.add_argument("--data", help="synthesis corpus .npz (default: the espeak-ng corpus, synthesized once and cached)")
    p.add_argument("--tiny-corpus", action="store_true", help="the tiny espeak-ng corpus (4 voices, 16 sentences)")
    p.add_argument("--runs", default=",".join(RUN_NAMES), help=f"comma list of {', '.join(RUN_NAMES)}")
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="peak learning rate (linear warmup, cosine decay)")
    p.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    p.add_argument("--l2", type=float, default=DEFAULTS["l2"], help="λ₂ of l2-loss and prox-l2")
    p.add_argument("--prox-metric", choices=("adaptive", "euclidean"), default="adaptive", help="prox_metric of prox-l2")
    p.add_argument("--weight-decay", type=float, default=DEFAULTS["weight_decay"], help="λ of the weight-decay run")
    p.add_argument("--max-norm", type=float, default=DEFAULTS["max_norm"], help="c: the row-norm limit")
    p.add_argument("--bound", type=float, default=DEFAULTS["bound"], help="b: weights limited to [-b, b]")
    p.add_argument("--l1", type=float, default=DEFAULTS["l1"], help="λ₁ of prox-sgl")
    p.add_argument("--group-lasso", type=float, default=DEFAULTS["group_lasso"], help="λ_g of prox-sgl")
    p.add_argument("--kl", type=float, default=DEFAULTS["kl"], help="β of the kl run")
    p.add_argument("--dim", type=int, default=DEFAULTS["dim"], help="model width")
    p.add_argument("--latent-dim", type=int, default=8, help="prosody latent dimensions")
    p.add_argument("--layers", type=int, default=3, help="conv layers of the encoder and of the decoder")
    p.add_argument("--show", default="dense,kl,prox-sgl", help="runs in the spectrogram figure and the WAVs")
    p.add_argument("--examples", type=int, default=3, help="held-out utterances to plot and render")
    p.add_argument("--griffin-lim-iters", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=DEFAULTS["out"], help="output directory (default %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1; 0 keeps torch's default)")
    p.add_argument("--cache", help="corpus cache directory (default $PROXOPT_CACHE or ~/.cache/proxopt)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def load_data(args, log) -> C.TTSCorpus:
    if args.data:
        return C.load_tts_corpus(args.data)
    spec = (C.tiny_tts_spec() if args.tiny_corpus else C.TTSSpec()).with_(seed=args.seed)
    return C.load_tts_corpus(C.synthesize_tts_corpus(spec, cache_dir=args.cache, log=log))


def main(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    try:
        runs = parse_runs(args.runs)
        show = parse_runs(args.show, "--show") if args.show else []
    except ValueError as e:
        p.error(str(e))
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TTSConfig(
        lr=args.lr, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, l2=args.l2, prox_metric=args.prox_metric,
        weight_decay=args.weight_decay, max_norm=args.max_norm, bound=args.bound, l1=args.l1,
        group_lasso=args.group_lasso, kl=args.kl, log=log,
    )  # fmt: skip
    try:
        cfg.check()
    except ValueError as e:
        p.error(str(e))
    t_all = time.perf_counter()
    try:
        corpus = load_data(args, log)
    except EspeakUnavailableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    data = TTSData.from_corpus(corpus, seed=args.seed)
    log(f"[tts] {data.corpus.summary()}")

    def make_model() -> ProsodyTTS:
        return ProsodyTTS(
            data.n_phonemes, len(corpus.speaker_names), corpus.mel.n_mels, dim=args.dim,
            encoder_layers=args.layers, decoder_layers=args.layers, latent_dim=args.latent_dim,
        )  # fmt: skip

    n_params = sum(q.numel() for q in make_model().parameters())
    log(f"[tts] model ProsodyTTS: {n_params} params")
    results = []
    for run in runs:
        log(f"[tts] run {run}: {RUN_LABELS[run]}")
        results.append(train_run(run, data, make_model, cfg))
    picks = showcase(data, args.examples)
    info = {
        "corpus": corpus.path,
        "summary": data.corpus.summary(),
        "splits": {k: len(v) for k, v in data.splits.items()},
        "held_out_voices": [corpus.speaker_names[i] for i in data.corpus.held_out_speakers],
        "model_params": n_params,
        "shown": [{"split": s, "utterance": i} for s, i in picks],
    }
    config = {k: v for k, v in vars(args).items()}
    config["title"] = (
        f"TTS, {info['splits']['train']} train utterances, held out {info['splits']['test_sentences']} unseen-sentence / "
        f"{info['splits']['test_voices']} unseen-voice, {args.epochs} epochs, seed {args.seed}"
    )
    paths = write_reports(results, data, Path(args.out), config, {"data": info}, show, picks, args.griffin_lim_iters)
    total = time.perf_counter() - t_all
    Path(paths["json"]).write_text(json.dumps({**json.loads(Path(paths["json"]).read_text()), "wall_time_s": total}, indent=2))
    print(results_table(results))
    print(
        "\nheld-out metrics: log-mel L1 / MSE / MCD of unseen sentences (seen voices) and MCD of unseen voices, prior latent; "
        f"KL per utterance; zeros / zero channels of the regularized weights; step = opt.step() (+ clamp loop)."
    )
    for r in results:
        if r.range_held is not None:
            what = f"max ‖row‖ {r.max_row_norm:.6f} ≤ c = {cfg.max_norm}" if r.run in MAX_NORM_RUNS else f"max |w| {r.max_abs_weight:.6f} ≤ b = {cfg.bound}"
            print(f"  range {r.run:13s} {what}: {'held' if r.range_held else 'VIOLATED'}")
    for r in results:
        if r.pruned_params < r.params:
            i = r.infer_ms
            print(
                f"  pruned {r.run}: params {r.params} -> {r.pruned_params}, batch of {i.get('batch')} "
                f"{i.get('before_batch_ms', float('nan')):.2f} -> {i.get('after_batch_ms', float('nan')):.2f} ms, "
                f"max |output diff| {r.pruned_max_abs_diff:.1e}"
            )
    files = [str(v) for k, v in paths.items() if k != "wavs"]
    print(f"\nwrote {', '.join(files)} and {len(paths.get('wavs', []))} WAVs in {Path(args.out) / 'wav'}  (total {total:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
