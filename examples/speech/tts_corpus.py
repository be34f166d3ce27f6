"""A speech-synthesis corpus: phoneme sequences, per-phoneme durations in
frames and log-mel targets, made with espeak-ng and aligned by espeak-ng
itself; its ``.npz`` format, loader and validator.

The format
==========

One ``.npz`` file (``numpy.savez``, no pickled objects: it loads with
``allow_pickle=False``) of N utterances, stored flat (utterance ``i`` is a
slice given by offsets or counts):

=======================  ===========================================================
key                      content
=======================  ===========================================================
``phoneme_ids``          int64 ``[P]``: every utterance's phoneme ids, one after the other
``phoneme_offsets``      int64 ``[N + 1]``: utterance ``i`` has phonemes
                         ``phoneme_ids[phoneme_offsets[i]:phoneme_offsets[i+1]]``
                         (starts at 0, ends at P, non-decreasing, every utterance >= 1 phoneme)
``durations``            int64 ``[P]``: frames per phoneme (>= 0; a phoneme may get 0 frames)
``num_frames``           int64 ``[N]``: frames per utterance; the durations of an
                         utterance sum to it exactly
``mels``                 float32 ``[F, n_mels]`` with ``F = sum(num_frames)``: the
                         log-mel frames of all utterances, one after the other
``phoneme_names``        str ``[V]``: the phoneme inventory (ids index it)
``speakers``             int64 ``[N]``: speaker / voice id of each utterance
``speaker_names``        str ``[S]``
``sentences``            int64 ``[N]``: sentence id (the same text spoken by several
                         speakers shares the id)
``texts``                optional str ``[n_sentences]``: the text of each sentence id
``held_out_speakers``    optional int64 ``[k]``: speakers never seen in training
``held_out_sentences``   optional int64 ``[m]``: sentences never seen in training
``sample_rate``          int scalar (Hz)                    \\
``n_fft``, ``win_length``, ``hop_length``   int scalars      | how ``mels`` were computed
``fmin``, ``fmax``       float scalars (Hz)                  | (needed to turn mels back into
``mel_floor``            float scalar > 0                   /  audio: Griffin-Lim)
=======================  ===========================================================

``mels`` are ``ln(M·|STFT|² + mel_floor)``: a Hann-windowed STFT (``center=True``,
reflect padding) whose frame ``t`` is centred on sample ``t·hop_length``, so an
utterance of ``n`` samples has ``n // hop_length + 1`` frames, and ``M`` is
librosa's Slaney mel filterbank (``librosa.filters.mel(norm="slaney")``) with
``n_mels`` = ``mels.shape[1]``. Any other key is an error (a misspelt optional
key would otherwise be ignored).

The splits (:meth:`TTSCorpus.split`) follow from the two held-out sets:

* ``train``: seen speakers saying seen sentences;
* ``test_sentences``: seen speakers saying held-out sentences;
* ``test_voices``: held-out speakers (saying anything; in the synthesized
  corpus they say only held-out sentences: unseen text by unseen voices).

Nothing a held-out speaker says and no held-out sentence is ever trained on. A
file without ``held_out_*`` gets them from :meth:`TTSCorpus.with_held_out`
(a seeded choice of speakers and sentences).

Bring your own aligned data (e.g. phone durations from the Montreal Forced
Aligner, converted to frames of your hop) with :func:`save_tts_corpus`, which
takes per-utterance lists; :func:`load_tts_corpus` validates a file and raises
:class:`examples.speech.corpus_files.CorpusFormatError` naming the file and the
problem (a missing key, durations that do not sum to the frame count, a
phoneme id out of range, NaN/Inf in the mels, ...).

The synthesized corpus
======================

:func:`synthesize_tts_corpus` makes sentences from word lists and templates
(:func:`make_sentences`, deterministic from the seed), holds some out, and
has each spoken by espeak-ng voices ``<accent>+<variant>``
(:class:`TTSSpec`: seen voices, and held-out voices that say only held-out
sentences), with a per-utterance speaking rate and pitch drawn from the seed
(the pitch is what the model's prosody latent can learn: phonemes and
speaker do not predict it). espeak-ng runs in this process through its C
library ``libespeak-ng.so.1`` (:class:`examples.speech.espeak.Espeak`, ``ctypes``), initialised with
``espeakINITIALIZE_PHONEME_EVENTS``: the synth callback receives the audio
and a phoneme event per phoneme, carrying the phoneme's mnemonic and the
sample where it starts. Those sample positions become frame counts
(:func:`frame_durations`): phoneme ``i`` owns the frames whose centre
``t·hop`` lies in ``[start_i, start_{i+1})`` (the first phoneme from sample 0,
the last to the end of the audio), so the counts sum exactly to the number of
frames. The durations are espeak-ng's own, not a learned aligner's.

The result is cached under :func:`examples.speech.corpus_cache.default_cache_dir`
(``speech/tts-<key>.npz``), keyed by a hash of the spec, libespeak-ng's
version and :data:`FORMAT_VERSION`, and written atomically. Command line::

    python -m examples.speech.tts_corpus [--tiny] [--seed 0] [--out corpus.npz]
    python -m examples.speech.tts_corpus --check corpus.npz
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from . import corpus_files as F
from .corpus_cache import cached_corpus, default_cache_dir, spec_key
from .espeak import Espeak, EspeakUnavailableError, espeak_library
from .features import resample_poly

FORMAT_VERSION = 1

# --------------------------------------------------------------------------
# How the log-mels are computed
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class MelConfig:
    """The STFT / mel parameters of a corpus's ``mels`` (the format's scalar keys)."""

    sample_rate: int = 22050
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 256
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float = 8000.0
    floor: float = 1e-5  # ln(mel + floor): -11.5 for digital silence

    def logmel(self):
        """The :class:`examples.speech.features.LogMel` module computing these mels."""
        from .features import LogMel  # noqa: PLC0415

        return LogMel(
            sample_rate=self.sample_rate,
            n_fft=self.n_fft,
            win_length=self.win_length,
            hop_length=self.hop_length,
            n_mels=self.n_mels,
            fmin=self.fmin,
            fmax=self.fmax,
            floor=self.floor,
        )

    def num_frames(self, samples: int) -> int:
        return samples // self.hop_length + 1

    def problem(self) -> str | None:
        """What is wrong with these parameters, or None."""
        if self.sample_rate <= 0 or self.hop_length <= 0 or self.n_fft <= 0 or self.n_mels <= 0:
            return f"sample_rate, n_fft, hop_length and n_mels must be > 0, got {self}"
        if not 0 < self.win_length <= self.n_fft:
            return f"win_length must be in (0, n_fft={self.n_fft}], got {self.win_length}"
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            return f"need 0 <= fmin < fmax <= sample_rate/2, got fmin={self.fmin}, fmax={self.fmax}"
        if not (np.isfinite(self.floor) and self.floor > 0):
            return f"mel_floor must be > 0, got {self.floor}"
        return None


# npz key -> MelConfig field; n_mels is not stored, it is mels.shape[1]
_MEL_KEYS = {
    "sample_rate": "sample_rate",
    "n_fft": "n_fft",
    "win_length": "win_length",
    "hop_length": "hop_length",
    "fmin": "fmin",
    "fmax": "fmax",
    "mel_floor": "floor",
}
REQUIRED_KEYS = (
    "phoneme_ids", "phoneme_offsets", "durations", "num_frames", "mels",
    "phoneme_names", "speakers", "speaker_names", "sentences", *_MEL_KEYS,
)  # fmt: skip
OPTIONAL_KEYS = ("texts", "held_out_speakers", "held_out_sentences")
KEYS = REQUIRED_KEYS + OPTIONAL_KEYS


# --------------------------------------------------------------------------
# The in-memory corpus and its splits
# --------------------------------------------------------------------------


@dataclass
class TTSCorpus:
    """An in-memory synthesis corpus, as :func:`load_tts_corpus` returns it."""

    phonemes: list[np.ndarray]  # int64 [phonemes] per utterance
    durations: list[np.ndarray]  # int64 [phonemes] per utterance, frames
    mels: list[np.ndarray]  # float32 [frames, n_mels] per utterance
    speakers: np.ndarray  # int64 [N]
    sentences: np.ndarray  # int64 [N]
    phoneme_names: list[str]
    speaker_names: list[str]
    mel: MelConfig
    texts: list[str] | None = None
    held_out_speakers: np.ndarray | None = None
    held_out_sentences: np.ndarray | None = None
    path: str | None = None

    def __len__(self) -> int:
        return len(self.phonemes)

    def with_held_out(self, sentence_fraction: float = 0.15, speakers: int = 1, seed: int = 0) -> "TTSCorpus":
        """A copy whose held-out sets are a seeded choice of ``speakers`` speakers
        (at least one, and at least one left to train) and ``sentence_fraction``
        of the sentences (kept when the file has them)."""
        if not 0.0 < sentence_fraction < 1.0:
            raise ValueError(f"Invalid sentence_fraction value: {sentence_fraction} (a fraction in (0, 1))")
        n_spk = len(np.unique(self.speakers))
        if not 1 <= speakers < n_spk:
            raise ValueError(
                f"Invalid speakers value: {speakers} (need 1 <= speakers < {n_spk}, the corpus's speakers: "
                "test_voices must not be empty and at least one speaker must train)"
            )
        rng = np.random.default_rng([seed, 11])
        spk, sen = self.held_out_speakers, self.held_out_sentences
        if spk is None:
            spk = np.sort(rng.permutation(np.unique(self.speakers))[:speakers]).astype(np.int64)
        if sen is None:
            uniq = np.unique(self.sentences)
            k = max(1, int(round(sentence_fraction * len(uniq))))
            sen = np.sort(rng.permutation(uniq)[:k]).astype(np.int64)
        return dataclasses.replace(self, held_out_speakers=spk, held_out_sentences=sen)

    def split(self) -> dict[str, np.ndarray]:
        """Utterance indices of ``train``, ``test_sentences`` and ``test_voices``
        (see the module docstring)."""
        if self.held_out_speakers is None or self.held_out_sentences is None:
            raise ValueError(f"{self.path or 'corpus'}: no held-out speakers/sentences; call with_held_out() first")
        unseen_voice = np.isin(self.speakers, self.held_out_speakers)
        unseen_text = np.isin(self.sentences, self.held_out_sentences)
        return {
            "train": np.nonzero(~unseen_voice & ~unseen_text)[0],
            "test_sentences": np.nonzero(~unseen_voice & unseen_text)[0],
            "test_voices": np.nonzero(unseen_voice)[0],
        }

    def summary(self) -> str:
        frames = sum(len(m) for m in self.mels)
        parts = [
            f"{len(self)} utterances, {len(np.unique(self.sentences))} sentences, {len(self.speaker_names)} speakers, "
            f"{len(self.phoneme_names)} phonemes, {frames} frames ({frames * self.mel.hop_length / self.mel.sample_rate:.0f} s)"
        ]
        if self.held_out_speakers is not None and self.held_out_sentences is not None:
            sizes = ", ".join(f"{k} {len(v)}" for k, v in self.split().items())
            held = ", ".join(self.speaker_names[i] for i in self.held_out_speakers)
            parts.append(f"split: {sizes}; held-out voices: {held}")
        return "; ".join(parts)


# --------------------------------------------------------------------------
# Validation, loading, saving
# --------------------------------------------------------------------------


def _ints(path: str, data: dict, key: str, ndim: int = 1) -> np.ndarray:
    a = np.asarray(data[key])
    if a.ndim != ndim:
        raise F.format_error(path, f"'{key}' must be {ndim}-D, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise F.format_error(path, f"'{key}' must be integers (int64), got dtype {a.dtype}")
    return a.astype(np.int64)


def _strings(path: str, data: dict, key: str) -> list[str]:
    a = np.asarray(data[key])
    if a.ndim != 1 or not (a.dtype.kind in "US"):
        raise F.format_error(path, f"'{key}' must be a 1-D array of strings, got dtype {a.dtype} and shape {a.shape}")
    return [str(x) for x in a]


def _scalar(path: str, data: dict, key: str) -> float:
    a = np.asarray(data[key])
    if a.size != 1 or a.dtype.kind not in "iuf":
        raise F.format_error(path, f"'{key}' must be one number, got {a!r}")
    return float(a.reshape(()))


def _ids_in_range(path: str, key: str, ids: np.ndarray, n: int, what: str) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= n):
        bad = int(ids[(ids < 0) | (ids >= n)][0])
        raise F.format_error(path, f"'{key}' has id {bad} out of range: {what} has {n} entries (ids 0..{n - 1})")


def validate_tts_corpus(data: dict[str, Any], path: str = "<corpus>") -> TTSCorpus:
    """Check a dict of arrays against the documented format; return a :class:`TTSCorpus`.

    Raises :class:`examples.speech.corpus_files.CorpusFormatError` naming the first problem."""
    for key in sorted(data):
        if key not in KEYS:
            raise F.format_error(path, f"unknown key '{key}'; the format's keys are {', '.join(KEYS)}")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise F.format_error(path, f"missing key '{missing[0]}' (missing: {', '.join(missing)})")

    mel = MelConfig(
        **{field: (int if field not in ("fmin", "fmax", "floor") else float)(_scalar(path, data, key)) for key, field in _MEL_KEYS.items()},
        n_mels=int(np.asarray(data["mels"]).shape[-1]) if np.asarray(data["mels"]).ndim == 2 else 1,
    )
    if (why := mel.problem()) is not None:
        raise F.format_error(path, f"mel parameters: {why}")

    ids = _ints(path, data, "phoneme_ids")
    offsets = _ints(path, data, "phoneme_offsets")
    durations = _ints(path, data, "durations")
    num_frames = _ints(path, data, "num_frames")
    n = len(offsets) - 1
    if n < 1:
        raise F.format_error(path, f"'phoneme_offsets' must have N + 1 >= 2 entries, got {len(offsets)}")
    if offsets[0] != 0 or offsets[-1] != len(ids):
        raise F.format_error(path, f"'phoneme_offsets' must start at 0 and end at len(phoneme_ids) = {len(ids)}, got {offsets[0]} .. {offsets[-1]}")
    counts = np.diff(offsets)
    if (counts <= 0).any():
        i = int(np.nonzero(counts <= 0)[0][0])
        raise F.format_error(path, f"utterance {i} has {counts[i]} phonemes ('phoneme_offsets' must increase)")
    if len(durations) != len(ids):
        raise F.format_error(path, f"'durations' has {len(durations)} entries but 'phoneme_ids' has {len(ids)}")
    if durations.size and durations.min() < 0:
        raise F.format_error(path, f"'durations' has a negative frame count {int(durations.min())}")
    if len(num_frames) != n:
        raise F.format_error(path, f"'num_frames' has {len(num_frames)} entries but there are {n} utterances")
    if (num_frames <= 0).any():
        raise F.format_error(path, f"utterance {int(np.nonzero(num_frames <= 0)[0][0])} has no frames")
    sums = np.add.reduceat(durations, offsets[:-1])
    if (sums != num_frames).any():
        i = int(np.nonzero(sums != num_frames)[0][0])
        raise F.format_error(path, f"utterance {i}: its durations sum to {int(sums[i])} frames but 'num_frames' says {int(num_frames[i])}")

    mels = np.asarray(data["mels"])
    if mels.ndim != 2 or not np.issubdtype(mels.dtype, np.floating):
        raise F.format_error(path, f"'mels' must be a float32 [frames, n_mels] array, got dtype {mels.dtype} and shape {mels.shape}")
    if mels.shape[0] != int(num_frames.sum()):
        raise F.format_error(path, f"'mels' has {mels.shape[0]} frames but 'num_frames' sums to {int(num_frames.sum())}")
    if not np.isfinite(mels).all():
        frame = int(np.nonzero(~np.isfinite(mels).all(axis=1))[0][0])
        utt = int(np.searchsorted(np.cumsum(num_frames), frame, side="right"))
        raise F.format_error(path, f"'mels' has {'NaN' if np.isnan(mels).any() else 'Inf'} values (utterance {utt}, frame {frame})")

    phoneme_names = _strings(path, data, "phoneme_names")
    speaker_names = _strings(path, data, "speaker_names")
    _ids_in_range(path, "phoneme_ids", ids, len(phoneme_names), "'phoneme_names'")
    speakers = _ints(path, data, "speakers")
    sentences = _ints(path, data, "sentences")
    for key, a in (("speakers", speakers), ("sentences", sentences)):
        if len(a) != n:
            raise F.format_error(path, f"'{key}' has {len(a)} entries but there are {n} utterances")
    _ids_in_range(path, "speakers", speakers, len(speaker_names), "'speaker_names'")
    if sentences.min() < 0:
        raise F.format_error(path, f"'sentences' has a negative id {int(sentences.min())}")
    texts = None
    if "texts" in data:
        texts = _strings(path, data, "texts")
        _ids_in_range(path, "sentences", sentences, len(texts), "'texts'")
    held = {}
    for key, a, what in (("held_out_speakers", speakers, "speaker"), ("held_out_sentences", sentences, "sentence")):
        if key in data:
            h = _ints(path, data, key)
            unknown = np.setdiff1d(h, a)
            if unknown.size:
                raise F.format_error(path, f"'{key}' names {what} {int(unknown[0])}, which has no utterance")
            held[key] = h
    corpus = TTSCorpus(
        phonemes=np.split(ids, offsets[1:-1]),
        durations=np.split(durations, offsets[1:-1]),
        mels=np.split(mels.astype(np.float32, copy=False), np.cumsum(num_frames)[:-1]),
        speakers=speakers,
        sentences=sentences,
        phoneme_names=phoneme_names,
        speaker_names=speaker_names,
        mel=mel,
        texts=texts,
        path=path,
        **held,
    )
    if corpus.held_out_speakers is not None and corpus.held_out_sentences is not None and len(corpus.split()["train"]) == 0:
        raise F.format_error(path, "the held-out speakers and sentences leave no training utterance")
    return corpus


def load_tts_corpus(path: str | os.PathLike) -> TTSCorpus:
    """Load and validate a synthesis corpus ``.npz`` (see the module docstring)."""
    return validate_tts_corpus(F.read_npz(path, allow_pickle=False), str(path))


def tts_corpus_arrays(
    *,
    phonemes: Sequence[Sequence[int]],
    durations: Sequence[Sequence[int]],
    mels: Sequence[np.ndarray],
    speakers: Sequence[int],
    sentences: Sequence[int],
    phoneme_names: Sequence[str],
    speaker_names: Sequence[str],
    mel: MelConfig,
    texts: Sequence[str] | None = None,
    held_out_speakers: Sequence[int] | None = None,
    held_out_sentences: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """Per-utterance lists to the flat arrays of the format (not validated)."""
    counts = [len(p) for p in phonemes]
    data: dict[str, np.ndarray] = {
        "phoneme_ids": np.concatenate([np.asarray(p, dtype=np.int64) for p in phonemes]) if phonemes else np.zeros(0, np.int64),
        "phoneme_offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        "durations": np.concatenate([np.asarray(d, dtype=np.int64) for d in durations]) if durations else np.zeros(0, np.int64),
        "num_frames": np.asarray([len(m) for m in mels], dtype=np.int64),
        "mels": np.concatenate([np.asarray(m, dtype=np.float32) for m in mels]) if mels else np.zeros((0, mel.n_mels), np.float32),
        "phoneme_names": np.asarray(list(phoneme_names), dtype=str),
        "speakers": np.asarray(speakers, dtype=np.int64),
        "speaker_names": np.asarray(list(speaker_names), dtype=str),
        "sentences": np.asarray(sentences, dtype=np.int64),
    }
    for key, field in _MEL_KEYS.items():
        data[key] = np.asarray(getattr(mel, field))
    if texts is not None:
        data["texts"] = np.asarray(list(texts), dtype=str)
    if held_out_speakers is not None:
        data["held_out_speakers"] = np.asarray(held_out_speakers, dtype=np.int64)
    if held_out_sentences is not None:
        data["held_out_sentences"] = np.asarray(held_out_sentences, dtype=np.int64)
    return data


def save_tts_corpus(path: str | os.PathLike, **utterances: Any) -> Path:
    """Write a corpus from per-utterance lists (the arguments of
    :func:`tts_corpus_arrays`), validated first, atomically; returns the path."""
    data = tts_corpus_arrays(**utterances)
    validate_tts_corpus(data, str(path))
    return F.write_npz(path, data)


def frame_durations(starts: Sequence[int] | np.ndarray, num_samples: int, hop_length: int) -> np.ndarray:
    """Frames per phoneme (int64), summing to ``num_samples // hop_length + 1``.

    ``starts`` are the phonemes' first samples (non-decreasing, in
    ``[0, num_samples]``). Frame ``t`` (centred on sample ``t·hop_length``)
    belongs to the last phoneme starting at or before it; the first phoneme
    also owns the frames before its start."""
    starts = np.asarray(starts, dtype=np.int64)
    if starts.ndim != 1 or starts.size == 0:
        raise ValueError(f"Invalid starts: need a non-empty 1-D sequence, got shape {starts.shape}")
    if (np.diff(starts) < 0).any() or starts[0] < 0 or starts[-1] > num_samples:
        raise ValueError(f"Invalid starts: must be non-decreasing within [0, {num_samples}], got {starts.tolist()}")
    if hop_length <= 0:
        raise ValueError(f"Invalid hop_length value: {hop_length} (must be > 0)")
    total = num_samples // hop_length + 1
    first = np.minimum(-(-starts // hop_length), total)  # ceil(start / hop): first frame centred at or after it
    first[0] = 0
    return np.diff(np.append(first, total))


# --------------------------------------------------------------------------
# Sentences
# --------------------------------------------------------------------------

_WORDS = {
    "adj": "red old small quiet bright cold happy little heavy green young lazy clever yellow gentle busy".split(),
    "noun": "dog cat bird farmer teacher robot sailor doctor horse driver painter child baker pilot rabbit king".split(),
    "thing": "box table garden window river letter basket bottle ladder mountain kettle candle blanket wagon".split(),
    "verb": "found painted carried opened watched cleaned dropped followed lifted counted pushed visited".split(),
    "place": "near the station|by the lake|in the kitchen|under the bridge|at the market|behind the school".split("|"),
    "time": "this morning|last night|before dinner|on sunday|after the storm|every day|at noon".split("|"),
    "name": "anna|peter|maria|john|lucy|tom|sarah|david|emma|oliver".split("|"),
    "number": "two three four five six seven eight nine ten twelve".split(),
}
_TEMPLATES = (
    "the {adj} {noun} {verb} the {thing}.",
    "{name} {verb} a {adj} {thing} {place}.",
    "the {noun} {verb} {number} {thing}s {time}.",
    "did the {adj} {noun} see the {thing} {place}?",
    "{name} and the {noun} {verb} the {adj} {thing} {time}.",
    "there are {number} {adj} {thing}s {place}.",
    "a {noun} {verb} my {thing} {time}.",
    "why did {name} leave the {thing} {place}?",
)


def make_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct short English sentences from templates and word lists,
    the same for the same ``seed``."""
    if n <= 0:
        raise ValueError(f"Invalid n value: {n} (must be > 0)")
    rng = np.random.default_rng([seed, 3])
    out: list[str] = []
    seen: set[str] = set()
    for _ in range(100 * n):
        template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
        words = {k: v[int(rng.integers(len(v)))] for k, v in _WORDS.items()}
        s = template.format(**words)
        s = s[0].upper() + s[1:]
        if s not in seen:
            seen.add(s)
            out.append(s)
            if len(out) == n:
                return out
    raise ValueError(f"Invalid n value: {n} (the templates do not give that many distinct sentences)")


# --------------------------------------------------------------------------
# The synthesized corpus
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class TTSSpec:
    """What :func:`synthesize_tts_corpus` makes. Every field enters the cache key."""

    voices: tuple[str, ...] = ("en-us+m1", "en-us+f2", "en-us+m3", "en-us+f4", "en+m2", "en+f1", "en+m4", "en+f3")
    held_out_voices: tuple[str, ...] = ("en-us+m7", "en+f5")  # say only held-out sentences
    sentences: int = 240
    held_out_sentences: int = 30
    voices_per_sentence: int = 2  # seen voices saying each sentence
    rate: tuple[int, int] = (150, 190)  # words per minute, uniform per utterance
    pitch: tuple[int, int] = (30, 70)  # espeak pitch 0..99, uniform per utterance
    mel: MelConfig = MelConfig()
    seed: int = 0

    def problem(self) -> str | None:
        if len(self.voices) < 1 or set(self.voices) & set(self.held_out_voices):
            return "need at least one seen voice, and no voice both seen and held out"
        if not 0 < self.held_out_sentences < self.sentences:
            return f"held_out_sentences must be in (0, sentences={self.sentences}), got {self.held_out_sentences}"
        if not 1 <= self.voices_per_sentence <= len(self.voices):
            return f"voices_per_sentence must be in [1, {len(self.voices)}], got {self.voices_per_sentence}"
        return self.mel.problem()

    def with_(self, **kw: Any) -> "TTSSpec":
        return dataclasses.replace(self, **kw)


def tiny_tts_spec(**kw: Any) -> TTSSpec:
    """A corpus of seconds (for tests): 3 seen voices, 1 held-out, 16 sentences."""
    base = dict(voices=("en-us+m3", "en+f2", "en-us+f4"), held_out_voices=("en+m1",), sentences=16, held_out_sentences=4)
    base.update(kw)
    return TTSSpec(**base)


class _Utt(NamedTuple):
    sentence: int
    speaker: int
    rate: int
    pitch: int


def _plan(spec: TTSSpec) -> tuple[list[_Utt], np.ndarray]:
    """Every utterance's sentence, speaker, rate and pitch, and the held-out sentence ids."""
    rng = np.random.default_rng([spec.seed, 0])
    held = np.sort(rng.permutation(spec.sentences)[: spec.held_out_sentences])
    n_seen = len(spec.voices)
    held_speakers = range(n_seen, n_seen + len(spec.held_out_voices))
    plan = []
    for s in range(spec.sentences):
        speakers = sorted(rng.permutation(n_seen)[: spec.voices_per_sentence].tolist())
        if s in held:
            speakers += list(held_speakers)
        for g in speakers:
            plan.append(_Utt(s, g, int(rng.integers(spec.rate[0], spec.rate[1] + 1)), int(rng.integers(spec.pitch[0], spec.pitch[1] + 1))))
    return plan, held.astype(np.int64)


def synthesize_tts_corpus(
    spec: TTSSpec | None = None,
    out: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    log=None,
) -> Path:
    """Make (or reuse from the cache) the corpus of ``spec``; returns its path
    (``out`` when given, else the cache file)."""
    spec = spec or TTSSpec()
    if (why := spec.problem()) is not None:
        raise ValueError(f"Invalid TTSSpec: {why}")
    lib = espeak_library()
    key = spec_key(spec, format=FORMAT_VERSION, libespeak=lib.version)

    def make(target: Path) -> Path:
        return _synthesize(spec, lib, target, log)

    return cached_corpus("tts", key, make, load_tts_corpus, F.CorpusFormatError, out, cache_dir=cache_dir, use_cache=use_cache, log=log)


def _synthesize(spec: TTSSpec, lib: Espeak, target: Path, log) -> Path:
    """Speak, align and save the corpus of ``spec`` at ``target``."""
    import torch  # noqa: PLC0415

    t0 = time.perf_counter()
    texts = make_sentences(spec.sentences, spec.seed)
    plan, held_sentences = _plan(spec)
    voices = list(spec.voices) + list(spec.held_out_voices)
    front = spec.mel.logmel()
    inventory: dict[str, int] = {}
    phonemes, durations, mels = [], [], []
    for u in plan:
        spoken = lib.speak(texts[u.sentence], voices[u.speaker], u.rate, u.pitch)
        audio, starts = spoken.audio, np.array([e.sample for e in spoken.phonemes])
        if spoken.sample_rate != spec.mel.sample_rate:
            audio = resample_poly(audio, spoken.sample_rate, spec.mel.sample_rate)
            starts = np.minimum(np.round(starts * spec.mel.sample_rate / spoken.sample_rate).astype(np.int64), len(audio))
        with torch.no_grad():
            mel = front(torch.from_numpy(audio))[0].T.numpy()  # [frames, n_mels]
        dur = frame_durations(starts, len(audio), spec.mel.hop_length)
        assert dur.sum() == len(mel) == spec.mel.num_frames(len(audio))
        phonemes.append([inventory.setdefault(e.name, len(inventory)) for e in spoken.phonemes])
        durations.append(dur)
        mels.append(mel)
    # ids in sorted mnemonic order: the same inventory whatever the utterance order
    names = sorted(inventory)
    remap = np.array([names.index(k) for k in inventory], dtype=np.int64)
    phonemes = [remap[np.asarray(p)] for p in phonemes]
    if log:
        log(f"[tts-corpus] {len(plan)} utterances synthesized with libespeak-ng {lib.version} in {time.perf_counter() - t0:.1f}s")
    return save_tts_corpus(
        target,
        phonemes=phonemes,
        durations=durations,
        mels=mels,
        speakers=[u.speaker for u in plan],
        sentences=[u.sentence for u in plan],
        phoneme_names=names,
        speaker_names=voices,
        mel=spec.mel,
        texts=texts,
        held_out_speakers=list(range(len(spec.voices), len(voices))),
        held_out_sentences=held_sentences,
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m examples.speech.tts_corpus", description="Synthesize the espeak-ng TTS corpus.")
    p.add_argument("--out", help="write the .npz here (it is cached anyway)")
    p.add_argument("--tiny", action="store_true", help="4 voices, 16 sentences (seconds)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", help=f"cache directory (default {default_cache_dir()})")
    p.add_argument("--check", metavar="FILE", help="only validate FILE.npz and print a summary")
    args = p.parse_args(argv)
    if args.check:
        print(load_tts_corpus(args.check).summary())
        return 0
    spec = (tiny_tts_spec() if args.tiny else TTSSpec()).with_(seed=args.seed)
    try:
        path = synthesize_tts_corpus(spec, args.out, cache_dir=args.cache, log=lambda s: print(s, file=sys.stderr))
    except EspeakUnavailableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{path}: {load_tts_corpus(path).summary()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
