"""A synthesis corpus as tensors: per-band standardized log-mels, the
splits, padded batches and the training batches of an epoch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from . import tts_corpus as C

SPLITS = ("test_sentences", "test_voices")  # the held-out splits: unseen sentences, unseen voices


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
