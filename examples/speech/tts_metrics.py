"""How a synthesis model is scored: the masked L1 training loss, the
mel-cepstral distortion and the held-out metrics of a split (each utterance
alone, the prior's latent, unseen voices given the trained speakers' mean
embedding)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from proxopt.penalties import gaussian_kl_penalty

from .features import dct_matrix
from .tts_data import TTSData
from .tts_model import ProsodyTTS

N_CEPSTRA = 25  # MCD: c1..c24 of a 25-coefficient DCT (c0, the energy, excluded)


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
