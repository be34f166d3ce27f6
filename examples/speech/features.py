"""Speech front ends in plain PyTorch: resampling, log-mel and MFCC features from
``torch.stft``, per-utterance normalization and SpecAugment masking.

Everything runs batched on the tensor's device (``[batch, samples]`` in,
``[batch, dims, frames]`` out).

The mel filterbank is librosa's (``librosa.filters.mel``: Slaney mel scale,
area-normalized triangles), the one implementation speech toolkits compare
against. torchaudio has no CPU wheel for this torch, so it is not used.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

# --------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------

# Part of the cache key: a corpus made with another resampler is another corpus.
RESAMPLER = "scipy.signal.resample_poly"


def resample_poly(x: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample a 1-D float waveform from ``orig_sr`` to ``target_sr``:
    ``scipy.signal.resample_poly`` (polyphase FIR, Kaiser window) by the
    reduced ratio, returned as float32."""
    from math import gcd  # noqa: PLC0415

    from scipy.signal import resample_poly as _resample_poly  # noqa: PLC0415

    if orig_sr == target_sr:
        return np.asarray(x, dtype=np.float32)
    g = gcd(int(orig_sr), int(target_sr))
    return _resample_poly(np.asarray(x, dtype=np.float64), int(target_sr) // g, int(orig_sr) // g).astype(np.float32)


# --------------------------------------------------------------------------
# Mel filterbank
# --------------------------------------------------------------------------


def mel_filterbank(
    sample_rate: int,
    n_fft: int,
    n_mels: int = 40,
    fmin: float = 0.0,
    fmax: float | None = None,
    *,
    htk: bool = False,
    norm: str | None = "slaney",
) -> np.ndarray:
    """A ``[n_mels, n_fft // 2 + 1]`` float32 mel filterbank: ``librosa.filters.mel``
    (Slaney scale, or HTK's with ``htk=True``; ``norm=None`` for unnormalized triangles)."""
    from librosa.filters import mel as librosa_mel  # noqa: PLC0415

    fmax = float(sample_rate) / 2 if fmax is None else float(fmax)
    if not 0 <= fmin < fmax <= sample_rate / 2:
        raise ValueError(f"mel_filterbank: need 0 <= fmin < fmax <= sample_rate/2, got fmin={fmin}, fmax={fmax}")
    return librosa_mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk, norm=norm, dtype=np.float32)


def dct_matrix(n_mfcc: int, n_mels: int) -> Tensor:
    """Orthonormal DCT-II ``[n_mfcc, n_mels]`` (``scipy.fft.dct(type=2, norm='ortho')``)."""
    n = torch.arange(n_mels, dtype=torch.float64)
    k = torch.arange(n_mfcc, dtype=torch.float64)[:, None]
    basis = torch.cos(math.pi / n_mels * (n + 0.5) * k) * math.sqrt(2.0 / n_mels)
    basis[0] /= math.sqrt(2.0)
    return basis.float()


# --------------------------------------------------------------------------
# Front ends
# --------------------------------------------------------------------------


class LogMel(nn.Module):
    """Waveforms ``[batch, samples]`` to log-mel energies ``[batch, n_mels, frames]``.

    Power spectrum of a Hann-windowed ``torch.stft`` (``center=True``,
    reflect padding), a mel filterbank (:func:`mel_filterbank`), then
    ``log(mel + floor)``. With the defaults, one second at 16 kHz gives 101
    frames of 25 ms every 10 ms."""

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 512,
        win_length: int = 400,
        hop_length: int = 160,
        n_mels: int = 40,
        fmin: float = 20.0,
        fmax: float | None = None,
        floor: float = 1e-6,
    ) -> None:
        super().__init__()
        if win_length > n_fft:
            raise ValueError(f"LogMel: win_length ({win_length}) must be <= n_fft ({n_fft})")
        self.sample_rate, self.n_fft, self.win_length, self.hop_length = sample_rate, n_fft, win_length, hop_length
        self.n_mels, self.floor = n_mels, floor
        fb = mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax)
        self.register_buffer("fbank", torch.from_numpy(fb), persistent=False)
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)

    def num_frames(self, samples: int) -> int:
        return samples // self.hop_length + 1

    def forward(self, wave: Tensor) -> Tensor:
        if wave.dim() == 1:
            wave = wave[None]
        spec = torch.stft(
            wave.float(),
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        power = spec.real.square() + spec.imag.square()  # [B, freq, frames]
        mel = torch.matmul(self.fbank, power)  # [B, n_mels, frames]
        return torch.log(mel + self.floor)


class MFCC(LogMel):
    """Waveforms to MFCCs ``[batch, n_mfcc, frames]``: the orthonormal DCT-II of :class:`LogMel`."""

    def __init__(self, sample_rate: int = 16000, n_mfcc: int = 13, n_mels: int = 40, **kw) -> None:
        super().__init__(sample_rate=sample_rate, n_mels=n_mels, **kw)
        if not 1 <= n_mfcc <= n_mels:
            raise ValueError(f"MFCC: need 1 <= n_mfcc <= n_mels, got n_mfcc={n_mfcc}, n_mels={n_mels}")
        self.n_mfcc = n_mfcc
        self.register_buffer("dct", dct_matrix(n_mfcc, n_mels), persistent=False)

    def forward(self, wave: Tensor) -> Tensor:
        return torch.matmul(self.dct, super().forward(wave))


def make_frontend(kind: str = "logmel", sample_rate: int = 16000, n_mels: int = 40, n_mfcc: int = 13, **kw) -> LogMel:
    """``"logmel"`` → :class:`LogMel`, ``"mfcc"`` → :class:`MFCC`."""
    if kind == "logmel":
        return LogMel(sample_rate=sample_rate, n_mels=n_mels, **kw)
    if kind == "mfcc":
        return MFCC(sample_rate=sample_rate, n_mfcc=n_mfcc, n_mels=n_mels, **kw)
    raise ValueError(f"unknown front end {kind!r}: use 'logmel' or 'mfcc'")


def normalize_utterance(x: Tensor, lengths: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Per-utterance mean/variance normalization over time of ``[batch, dims, frames]``.

    With ``lengths`` (frames per utterance) only the first ``lengths[i]``
    frames enter the statistics, and padded frames come out as 0."""
    if lengths is None:
        mean = x.mean(dim=-1, keepdim=True)
        std = x.std(dim=-1, keepdim=True, unbiased=False)
        return (x - mean) / (std + eps)
    t = torch.arange(x.shape[-1], device=x.device)
    mask = (t[None, :] < lengths[:, None].to(x.device)).to(x.dtype)[:, None, :]  # [B, 1, T]
    n = mask.sum(dim=-1, keepdim=True).clamp_min(1)
    mean = (x * mask).sum(dim=-1, keepdim=True) / n
    var = ((x - mean).square() * mask).sum(dim=-1, keepdim=True) / n
    return (x - mean) / (var.sqrt() + eps) * mask


@torch.no_grad()
def compute_features(
    waves: list[np.ndarray] | np.ndarray,
    frontend: LogMel,
    num_samples: int | None = None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    normalize: bool = True,
) -> Tensor:
    """Features ``[N, dims, frames]`` of many waveforms, computed in batches on ``device``.

    Waveforms are zero-padded or center-cropped to ``num_samples`` (default:
    the longest). With ``normalize``, each utterance is mean/variance
    normalized over its frames."""
    lengths = [len(w) for w in waves]
    num_samples = num_samples or max(lengths)
    frontend = frontend.to(device)
    out = []
    for start in range(0, len(waves), batch_size):
        chunk = waves[start : start + batch_size]
        batch = np.zeros((len(chunk), num_samples), dtype=np.float32)
        for i, w in enumerate(chunk):
            if len(w) >= num_samples:
                off = (len(w) - num_samples) // 2
                batch[i] = w[off : off + num_samples]
            else:
                batch[i, : len(w)] = w
        feats = frontend(torch.from_numpy(batch).to(device))
        if normalize:
            feats = normalize_utterance(feats)
        out.append(feats.cpu())
    return torch.cat(out)


def pad_features(features: list[np.ndarray], num_frames: int | None = None, normalize: bool = True) -> Tensor:
    """User features (``[frames, dims]`` each) to one ``[N, dims, num_frames]`` tensor.

    Each utterance is normalized over its own frames (if ``normalize``), then
    zero-padded or center-cropped to ``num_frames`` (default: the longest)."""
    num_frames = num_frames or max(f.shape[0] for f in features)
    dims = features[0].shape[1]
    out = torch.zeros(len(features), dims, num_frames)
    for i, f in enumerate(features):
        x = torch.from_numpy(np.ascontiguousarray(f.T, dtype=np.float32))[None]
        if normalize:
            x = normalize_utterance(x)
        x = x[0]
        if x.shape[1] >= num_frames:
            off = (x.shape[1] - num_frames) // 2
            out[i] = x[:, off : off + num_frames]
        else:
            out[i, :, : x.shape[1]] = x
    return out


class SpecAugment(nn.Module):
    """SpecAugment-style masking of ``[batch, dims, frames]`` features (training only).

    Each utterance gets ``freq_masks`` bands of up to ``freq_width`` feature
    dims and ``time_masks`` spans of up to ``time_width`` frames set to
    ``value`` (0: the mean of normalized features). In eval mode, or with
    all counts 0, it is the identity. Pass a ``torch.Generator`` for
    reproducible masks."""

    def __init__(
        self,
        freq_masks: int = 2,
        freq_width: int = 8,
        time_masks: int = 2,
        time_width: int = 10,
        value: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.freq_masks, self.freq_width = freq_masks, freq_width
        self.time_masks, self.time_width = time_masks, time_width
        self.value = value
        self.generator = generator

    def _mask(self, batch: int, size: int, count: int, width: int, device) -> Tensor:
        g = self.generator
        if count == 0 or width == 0:
            return torch.zeros(batch, size, dtype=torch.bool, device=device)
        w = torch.randint(0, width + 1, (batch, count), generator=g)
        start = (torch.rand(batch, count, generator=g) * (size - w + 1).clamp_min(1)).long()
        pos = torch.arange(size)[None, None, :]
        m = (pos >= start[..., None]) & (pos < (start + w)[..., None])
        return m.any(dim=1).to(device)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or (self.freq_masks == 0 and self.time_masks == 0):
            return x
        b, d, t = x.shape
        fm = self._mask(b, d, self.freq_masks, self.freq_width, x.device)[:, :, None]
        tm = self._mask(b, t, self.time_masks, self.time_width, x.device)[:, None, :]
        return x.masked_fill(fm | tm, self.value)

    def extra_repr(self) -> str:
        return f"freq_masks={self.freq_masks}, freq_width={self.freq_width}, time_masks={self.time_masks}, time_width={self.time_width}"
