"""The synthesis recipe's figures and audio: metrics per run, target vs
predicted spectrograms of held-out utterances, and their Griffin-Lim WAVs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import tts_corpus as C
from .reports import bars, pyplot, save_figure
from .results import RunResult
from .tts_data import SPLITS, TTSData
from .tts_metrics import predict

def plot_results(results: Sequence[RunResult], path: Path, title: str) -> Path | None:
    """Held-out MCD (unseen sentences and voices), KL, step time, and the
    largest row norm and |w| per run; None without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    names = [r.run for r in results]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    bars(axes[0], names, [([r.metrics["test_sentences"]["mcd"] for r in results], "unseen sentences", None),
                          ([r.metrics["test_voices"]["mcd"] for r in results], "unseen voices", None)],
         ylabel="MCD (dB, log-mel cepstra 1..24)", title="held-out MCD (prior latent)")  # fmt: skip
    bars(axes[1], names, [([r.metrics["test_sentences"]["kl"] for r in results], None, "#7570b3")],
         ylabel="KL(q(z|mel) ‖ N(0, I)) per utterance (nats)", title="prosody latent KL, held-out")  # fmt: skip
    bars(axes[2], names, [([r.step_ms for r in results], None, "#1b9e77")], ylabel="ms per step (opt.step() + clamp loop)",
         title="optimizer step time", annotate=True)  # fmt: skip
    bars(axes[3], names, [([r.max_row_norm for r in results], "max ‖row‖₂", None), ([10 * r.max_abs_weight for r in results], "10·max |w|", None)],
         ylabel="", title="weight ranges (regularized weights)")  # fmt: skip
    return save_figure(plt, fig, path, title, dpi=90)


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


def plot_spectrograms(results: Sequence[RunResult], data: TTSData, picks, path: Path) -> Path | None:
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
    return save_figure(plt, fig, path, dpi=60)


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


def write_wavs(results: Sequence[RunResult], data: TTSData, picks, out: Path, n_iter: int = 32) -> list[Path]:
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
