"""Speech corpora: the ``.npz`` interchange format and a synthetic
keyword-spotting corpus made with espeak-ng.

The interchange format
======================

One ``.npz`` file (``numpy.savez``) holding one utterance per entry:

=================  ==========================================================
key                content
=================  ==========================================================
``features``       object array of float32 ``[frames, dims]`` arrays (every
                   utterance the same ``dims``), or one float32 array
                   ``[N, frames, dims]``
``audio``          object array of float32 mono waveforms ``[samples]``, or one
                   float32 array ``[N, samples]``; needs ``sample_rate``
``sample_rate``    scalar int (Hz), required with ``audio``
``labels``         int64 ``[N]``, class index in ``0 .. C-1`` (required)
``label_names``    optional str ``[C]``; default ``"0" .. "C-1"``
``groups``         optional int64 ``[N]``: speaker / voice id.  Train/test
                   splits are made by group, so no speaker of the test set is
                   seen in training.  Without it every utterance is its own
                   group (a plain random split).
``group_names``    optional str ``[G]`` naming the group ids
=================  ==========================================================

Any other key is an error (a misspelt ``speakers`` would otherwise be
ignored and the split silently become a random one).  Utterances may have
any number of frames or samples (the pipelines pad them to the longest).

At least one of ``features`` / ``audio`` must be present (the KWS pipeline
uses ``features`` when both are; the denoising pipeline needs clean
``audio``).  Object arrays are stored with pickle, so :func:`load_corpus`
loads with ``allow_pickle=True``: only load files you trust.  Write your own
data with :func:`save_corpus`::

    save_corpus("mine.npz", labels=y, audio=[w0, w1, ...], sample_rate=16000,
                groups=speaker_ids, label_names=["yes", "no", ...])

:func:`load_corpus` validates a file and raises :class:`CorpusFormatError`
(a ``ValueError``) naming the file and the problem: a missing key, a count
mismatch between labels and utterances, NaN/Inf values, an empty utterance,
inconsistent feature dims, bad labels.

The synthetic corpus
====================

:func:`synthesize_corpus` calls the ``espeak-ng`` binary (Debian/Ubuntu:
``apt-get install -y espeak-ng``) once per utterance with ``--stdout``, a
voice ``<accent>+<variant>`` (e.g. ``en-us+f3``), a speaking rate and a
pitch, one ``espeak-ng`` process per core at a time (a thread pool whose
threads each wait on one child process).
The 22050 Hz output (read with ``soundfile``) is resampled to 16 kHz with
``scipy.signal.resample_poly`` (:func:`resample_poly`), trimmed of silence, placed at a random offset in a
fixed-length clip, mixed with white/pink/brown noise at a random SNR and
scaled by a random gain.  Speakers are espeak *variants* (``m1`` .. ``f5``,
``klatt``, ``Annie`` ...); the accent is drawn per utterance, so a speaker is
a timbre heard in several accents, and ``groups`` holds the variant id.
Besides the keywords the corpus has an ``_unknown_`` class (other words)
and a ``_silence_`` class (noise only), as in Speech Commands.

Everything is drawn from one seed (per-utterance generators seeded by
``(seed, index)``), so the corpus is identical whatever the number of
workers.  The result is cached under ``$PROXOPT_CACHE`` or
``~/.cache/proxopt`` by a hash of the spec, the espeak-ng version and the
resampler.  Command line::

    python -m examples.speech.data --out corpus.npz [--tiny] [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .corpus_cache import cached_corpus, default_cache_dir, spec_key
from .corpus_files import CorpusFormatError, format_error, read_npz, write_npz
from .espeak import espeak_synthesize_many, espeak_variants, espeak_version
from .features import RESAMPLER, resample_poly

FORMAT_VERSION = 1


# --------------------------------------------------------------------------
# The interchange format
# --------------------------------------------------------------------------


@dataclass
class Corpus:
    """An in-memory corpus, as :func:`load_corpus` returns it."""

    labels: np.ndarray  # int64 [N]
    label_names: list[str]
    features: list[np.ndarray] | None = None  # float32 [frames, dims] each
    audio: list[np.ndarray] | None = None  # float32 [samples] each
    sample_rate: int | None = None
    groups: np.ndarray | None = None  # int64 [N]
    group_names: list[str] | None = None
    path: str | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def subset(self, idx: np.ndarray) -> "Corpus":
        idx = np.asarray(idx, dtype=np.int64)

        def pick(xs):
            return [xs[i] for i in idx]

        return Corpus(
            labels=self.labels[idx],
            label_names=list(self.label_names),
            features=pick(self.features) if self.features is not None else None,
            audio=pick(self.audio) if self.audio is not None else None,
            sample_rate=self.sample_rate,
            groups=self.groups[idx] if self.groups is not None else None,
            group_names=self.group_names,
            path=self.path,
        )

    def summary(self) -> str:
        kind = "features" if self.features is not None else "audio"
        n_groups = len(np.unique(self.groups)) if self.groups is not None else len(self)
        counts = np.bincount(self.labels, minlength=self.num_classes)
        return (
            f"{len(self)} utterances ({kind}), {self.num_classes} classes "
            f"[{', '.join(f'{n}:{c}' for n, c in zip(self.label_names, counts))}], {n_groups} groups"
        )


def _as_utterances(path: str, key: str, value: np.ndarray, ndim: int) -> list[np.ndarray]:
    """An object array of arrays, or one dense array stacked along axis 0."""
    what = "[frames, dims]" if ndim == 2 else "[samples]"
    if value.dtype == object:
        if value.ndim != 1:
            raise format_error(path, f"'{key}' must be a 1-D object array of {what} arrays, got shape {value.shape}")
        items = list(value)
    elif value.ndim == ndim + 1:
        items = list(value)
    else:
        raise format_error(
            path,
            f"'{key}' must be an object array of {what} arrays or one array of {ndim + 1} dims, "
            f"got dtype {value.dtype} and shape {value.shape}",
        )
    out = []
    for i, item in enumerate(items):
        arr = np.asarray(item)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise format_error(path, f"{key}[{i}] has dtype {arr.dtype}; expected float32 {what}")
        if arr.ndim != ndim:
            raise format_error(path, f"{key}[{i}] has shape {arr.shape}; expected {what}")
        if arr.size == 0 or arr.shape[0] == 0:
            raise format_error(path, f"{key}[{i}] is empty (shape {arr.shape})")
        arr = arr.astype(np.float32, copy=False)
        if not np.isfinite(arr).all():
            bad = "NaN" if np.isnan(arr).any() else "Inf"
            raise format_error(path, f"{key}[{i}] contains {bad} values")
        out.append(arr)
    return out


def _names(path: str, key: str, value: np.ndarray | None, n: int) -> list[str] | None:
    if value is None:
        return None
    names = [str(x) for x in np.asarray(value).reshape(-1)]
    if len(names) < n:
        raise format_error(path, f"'{key}' has {len(names)} names but the ids go up to {n - 1}")
    return names


# The format's keys (the module docstring's table); any other key is an error,
# so a misspelt optional key (``speakers`` for ``groups``) is not silently ignored.
KEYS = ("features", "audio", "sample_rate", "labels", "label_names", "groups", "group_names")
_KEY_HINTS = {"speaker": "groups", "speakers": "groups", "speaker_ids": "groups", "voices": "groups", "y": "labels", "x": "features"}


def _unknown_key_error(path: str, key: str) -> CorpusFormatError:
    import difflib  # noqa: PLC0415

    guess = _KEY_HINTS.get(key.lower()) or next(iter(difflib.get_close_matches(key, KEYS, n=1)), None)
    hint = f" (did you mean '{guess}'?)" if guess else ""
    return format_error(path, f"unknown key '{key}'{hint}; the format's keys are {', '.join(KEYS)}")


def validate_corpus(data: dict[str, Any], path: str = "<corpus>") -> Corpus:
    """Check a dict of arrays against the documented format; return a :class:`Corpus`.

    Raises :class:`CorpusFormatError` naming the first problem found."""
    keys = sorted(data)
    for key in keys:
        if key not in KEYS:
            raise _unknown_key_error(path, key)
    if "labels" not in data:
        raise format_error(path, f"missing key 'labels' (found keys: {', '.join(keys) or 'none'})")
    if "features" not in data and "audio" not in data:
        raise format_error(path, f"missing key 'features' or 'audio' (found keys: {', '.join(keys)}); one of them is required")
    labels = np.asarray(data["labels"])
    if labels.ndim != 1:
        raise format_error(path, f"'labels' must be 1-D, got shape {labels.shape}")
    if labels.size == 0:
        raise format_error(path, "'labels' is empty: the corpus has no utterances")
    if not np.issubdtype(labels.dtype, np.integer):
        if np.issubdtype(labels.dtype, np.floating) and np.all(np.isfinite(labels)) and np.all(labels == np.round(labels)):
            labels = labels.astype(np.int64)
        else:
            raise format_error(path, f"'labels' must be integers (int64), got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.min() < 0:
        raise format_error(path, f"'labels' has negative class index {int(labels.min())}")
    n = len(labels)
    n_classes = int(labels.max()) + 1

    features = audio = None
    sample_rate = None
    if "features" in data:
        features = _as_utterances(path, "features", np.asarray(data["features"], dtype=None), 2)
        if len(features) != n:
            raise format_error(path, f"'labels' has {n} entries but 'features' has {len(features)} utterances")
        dims = features[0].shape[1]
        for i, f in enumerate(features):
            if f.shape[1] != dims:
                raise format_error(path, f"features[{i}] has {f.shape[1]} dims but features[0] has {dims}")
    if "audio" in data:
        audio = _as_utterances(path, "audio", np.asarray(data["audio"], dtype=None), 1)
        if len(audio) != n:
            raise format_error(path, f"'labels' has {n} entries but 'audio' has {len(audio)} waveforms")
        if "sample_rate" not in data:
            raise format_error(path, "'audio' is present but 'sample_rate' is missing")
        sr = np.asarray(data["sample_rate"])
        if sr.size != 1 or not np.isfinite(sr.astype(np.float64)).all() or float(sr.reshape(())) <= 0:
            raise format_error(path, f"'sample_rate' must be one positive number, got {sr!r}")
        sample_rate = int(sr.reshape(()))

    groups = None
    if data.get("groups") is not None:
        groups = np.asarray(data["groups"])
        if groups.shape != (n,):
            raise format_error(path, f"'groups' has shape {groups.shape} but 'labels' has {n} entries")
        if not np.issubdtype(groups.dtype, np.integer):
            raise format_error(path, f"'groups' must be integer speaker/voice ids, got dtype {groups.dtype}")
        groups = groups.astype(np.int64)
    label_names = _names(path, "label_names", data.get("label_names"), n_classes)
    if label_names is None:
        label_names = [str(i) for i in range(n_classes)]
    group_names = None
    if groups is not None:
        group_names = _names(path, "group_names", data.get("group_names"), int(groups.max()) + 1)
    return Corpus(
        labels=labels,
        label_names=label_names,
        features=features,
        audio=audio,
        sample_rate=sample_rate,
        groups=groups,
        group_names=group_names,
        path=path,
    )


def load_corpus(path: str | os.PathLike) -> Corpus:
    """Load and validate an ``.npz`` corpus (see the module docstring)."""
    return validate_corpus(read_npz(path, allow_pickle=True), str(path))


def _object_array(items: Sequence[np.ndarray]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    for i, x in enumerate(items):
        out[i] = np.ascontiguousarray(x, dtype=np.float32)
    return out


def save_corpus(
    path: str | os.PathLike,
    *,
    labels: Sequence[int] | np.ndarray,
    features: Sequence[np.ndarray] | None = None,
    audio: Sequence[np.ndarray] | None = None,
    sample_rate: int | None = None,
    groups: Sequence[int] | np.ndarray | None = None,
    label_names: Sequence[str] | None = None,
    group_names: Sequence[str] | None = None,
) -> Path:
    """Write a corpus in the interchange format (validated first); returns the path."""
    data: dict[str, Any] = {"labels": np.asarray(labels, dtype=np.int64)}
    if features is not None:
        data["features"] = _object_array(features)
    if audio is not None:
        data["audio"] = _object_array(audio)
        data["sample_rate"] = np.int64(sample_rate if sample_rate is not None else -1)
    if groups is not None:
        data["groups"] = np.asarray(groups, dtype=np.int64)
    if label_names is not None:
        data["label_names"] = np.asarray(list(label_names), dtype=str)
    if group_names is not None:
        data["group_names"] = np.asarray(list(group_names), dtype=str)
    validate_corpus(data, str(path))
    return write_npz(path, data)


def describe_split(groups: Any) -> str:
    """How the held-out set was chosen, given the corpus's ``groups`` (None
    when the file has none: every utterance is then its own group, i.e. a
    plain random split, and speakers may appear on both sides)."""
    return "random: the file has no groups" if groups is None else "by group (speaker-disjoint)"


def split_by_group(
    corpus: Corpus, test_fraction: float = 0.2, seed: int = 0, min_test_groups: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)`` such that no group (speaker) is in both.

    Groups are shuffled with ``seed`` and the first ``round(test_fraction * G)``
    (at least ``min_test_groups``, at most G - 1) go to the test set."""
    groups = corpus.groups if corpus.groups is not None else np.arange(len(corpus))
    uniq = np.unique(groups)
    if len(uniq) < 2:
        raise ValueError(f"split_by_group: need at least 2 groups (speakers), got {len(uniq)}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(uniq)
    n_test = int(min(len(uniq) - 1, max(min_test_groups, round(test_fraction * len(uniq)))))
    test_groups = set(perm[:n_test].tolist())
    is_test = np.array([g in test_groups for g in groups])
    return np.nonzero(~is_test)[0], np.nonzero(is_test)[0]


# --------------------------------------------------------------------------
# The synthetic keyword-spotting corpus
# --------------------------------------------------------------------------

DEFAULT_KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
DEFAULT_UNKNOWN = ("bed", "bird", "cat", "dog", "happy", "house", "tree", "wow", "seven", "zero", "learn", "follow")
DEFAULT_ACCENTS = (
    "en",
    "en-us",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
# espeak-ng voice variants (espeak-ng-data/voices/!v): one "speaker" each
DEFAULT_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8",
    "f1", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt3", "klatt4", "klatt6",
    "Alex", "Annie", "Andy", "aunty", "belinda", "benjamin", "boris", "caleb",
    "david", "ed", "edward", "grandma", "grandpa", "iven", "john", "linda",
    "max", "michel", "norbert", "paul", "pedro", "quincy", "robert", "steph",
)  # fmt: skip

UNKNOWN_LABEL = "_unknown_"
SILENCE_LABEL = "_silence_"


@dataclass(frozen=True)
class SynthSpec:
    """What :func:`synthesize_corpus` makes. Every field enters the cache key."""

    keywords: tuple[str, ...] = DEFAULT_KEYWORDS
    unknown_words: tuple[str, ...] = DEFAULT_UNKNOWN  # empty: no _unknown_ class
    silence: bool = True  # a _silence_ class of noise-only clips
    variants: tuple[str, ...] = DEFAULT_VARIANTS[:40]  # speakers
    accents: tuple[str, ...] = DEFAULT_ACCENTS
    reps: int = 4  # utterances per (speaker, class)
    rate: tuple[int, int] = (120, 220)  # espeak words per minute, uniform
    pitch: tuple[int, int] = (25, 75)  # espeak pitch 0..99, uniform
    sample_rate: int = 16000
    clip_seconds: float = 1.0
    noise: bool = True  # mix white / pink / brown noise
    snr_db: tuple[float, float] = (5.0, 30.0)
    gain_db: tuple[float, float] = (-18.0, 0.0)  # applied to the mixture, peak-limited to 1
    seed: int = 0

    @property
    def label_names(self) -> list[str]:
        names = list(self.keywords)
        if self.unknown_words:
            names.append(UNKNOWN_LABEL)
        if self.silence:
            names.append(SILENCE_LABEL)
        return names

    def with_(self, **kw: Any) -> "SynthSpec":
        return dataclasses.replace(self, **kw)


def tiny_spec(**kw: Any) -> SynthSpec:
    """A corpus of seconds: 2 keywords, 2 speakers, no extra classes (for tests)."""
    base = dict(keywords=("yes", "no"), unknown_words=(), silence=False, variants=("m3", "f2"), accents=("en-us", "en"), reps=3)
    base.update(kw)
    return SynthSpec(**base)


def _colored_noise(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    white = rng.standard_normal(n)
    if kind == "white":
        out = white
    else:
        alpha = {"pink": 1.0, "brown": 2.0}[kind]
        spec = np.fft.rfft(white)
        f = np.fft.rfftfreq(n)
        f[0] = f[1]
        out = np.fft.irfft(spec / f ** (alpha / 2), n)
    return (out / (np.sqrt(np.mean(out**2)) + 1e-12)).astype(np.float32)


NOISE_KINDS = ("white", "pink", "brown")


def add_noise(
    speech: np.ndarray, rng: np.random.Generator, snr_db: tuple[float, float], ref_rms: float | None = None
) -> tuple[np.ndarray, dict]:
    """Mix ``speech`` with white/pink/brown noise at an SNR drawn from ``snr_db``
    (relative to ``ref_rms``, default the RMS of the non-silent part)."""
    kind = NOISE_KINDS[int(rng.integers(len(NOISE_KINDS)))]
    snr = float(rng.uniform(*snr_db))
    if ref_rms is None:
        active = speech[np.abs(speech) > 1e-4]
        ref_rms = float(np.sqrt(np.mean(active**2))) if active.size else 1e-3
    noise = _colored_noise(rng, len(speech), kind) * (ref_rms / 10 ** (snr / 20))
    return (speech + noise).astype(np.float32), {"noise": kind, "snr_db": snr}


def _trim(wav: np.ndarray, sr: int, top_db: float = 40.0) -> np.ndarray:
    """Drop leading/trailing frames more than ``top_db`` below the loudest frame."""
    frame = max(1, sr // 100)
    n = len(wav) // frame
    if n == 0:
        return wav
    energy = (wav[: n * frame].reshape(n, frame) ** 2).mean(axis=1)
    keep = np.nonzero(energy > energy.max() * 10 ** (-top_db / 10))[0]
    if keep.size == 0:
        return wav
    return wav[max(0, (keep[0] - 1) * frame) : min(len(wav), (keep[-1] + 2) * frame)]


@dataclass
class _Utt:
    label: int
    group: int
    text: str | None  # None: silence
    voice: str
    rate: int
    pitch: int


def _plan(spec: SynthSpec) -> list[_Utt]:
    """Every utterance's label, speaker, text, accent, rate and pitch, from the seed."""
    rng = np.random.default_rng([spec.seed, 0])
    names = spec.label_names
    plan = []
    for g, variant in enumerate(spec.variants):
        for label, name in enumerate(names):
            for _ in range(spec.reps):
                accent = spec.accents[int(rng.integers(len(spec.accents)))]
                rate = int(rng.integers(spec.rate[0], spec.rate[1] + 1))
                pitch = int(rng.integers(spec.pitch[0], spec.pitch[1] + 1))
                if name == SILENCE_LABEL:
                    text = None
                elif name == UNKNOWN_LABEL:
                    text = spec.unknown_words[int(rng.integers(len(spec.unknown_words)))]
                else:
                    text = name
                plan.append(_Utt(label, g, text, f"{accent}+{variant}", rate, pitch))
    return plan


def _render(spec: SynthSpec, index: int, utt: _Utt, raw: tuple[np.ndarray, int] | None) -> tuple[np.ndarray, dict]:
    """Resample, trim, place in the clip, add noise and gain: one utterance."""
    rng = np.random.default_rng([spec.seed, 1, index])
    n = int(round(spec.clip_seconds * spec.sample_rate))
    clip = np.zeros(n, dtype=np.float32)
    meta: dict[str, Any] = {}
    ref = None
    if raw is not None:
        wav, sr = raw
        wav = _trim(resample_poly(wav, sr, spec.sample_rate), spec.sample_rate)
        if len(wav) > n:  # too long for the clip: keep the middle
            start = (len(wav) - n) // 2
            wav = wav[start : start + n]
        wav = wav / (np.abs(wav).max() + 1e-9) * 0.5
        offset = int(rng.integers(0, n - len(wav) + 1))
        clip[offset : offset + len(wav)] = wav
        ref = float(np.sqrt(np.mean(wav**2)))
        meta["speech_samples"] = len(wav)
    if spec.noise:
        if raw is None:  # silence: noise at the levels utterances get (speech RMS ~0.1)
            ref = 0.1
        clip, info = add_noise(clip, rng, spec.snr_db, ref_rms=ref)
        meta.update(info)
    gain = float(rng.uniform(*spec.gain_db))
    clip = clip * 10 ** (gain / 20)
    peak = float(np.abs(clip).max())
    if peak > 1.0:
        clip = clip / peak
    meta["gain_db"] = gain
    return clip.astype(np.float32), meta


def synthesize_corpus(
    spec: SynthSpec | None = None,
    out: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    workers: int | None = None,
    verbose: bool = False,
) -> Path:
    """Make (or reuse from the cache) the espeak-ng corpus of ``spec``; returns its path.

    With ``out`` the file is (also) written there. ``workers`` espeak-ng
    processes run side by side (default: one per core)."""
    spec = spec or SynthSpec()
    if len(spec.label_names) < 2:
        raise ValueError("SynthSpec needs at least 2 classes")
    if len(spec.variants) < 2:
        raise ValueError("SynthSpec needs at least 2 speaker variants (the split holds speakers out)")
    # a corpus made with another resampler or espeak-ng is another corpus
    key = spec_key(spec, format=FORMAT_VERSION, espeak=espeak_version(), resampler=RESAMPLER)
    known = espeak_variants()
    unknown = [v for v in spec.variants if v not in known]
    if unknown and known:  # espeak-ng would silently use the default voice
        raise ValueError(f"espeak-ng has no voice variant(s) {unknown}; known: {', '.join(sorted(known))}")
    log = (lambda s: print(s, file=sys.stderr)) if verbose else None

    def make(target: Path) -> Path:
        t0 = time.perf_counter()
        plan = _plan(spec)
        # one espeak-ng call per distinct (text, voice, rate, pitch)
        calls = sorted({(u.text, u.voice, u.rate, u.pitch) for u in plan if u.text is not None})
        n_workers = workers or os.cpu_count() or 1
        raws = dict(zip(calls, espeak_synthesize_many(calls, n_workers)))
        t1 = time.perf_counter()
        audio = [_render(spec, i, u, raws[(u.text, u.voice, u.rate, u.pitch)] if u.text is not None else None)[0] for i, u in enumerate(plan)]
        if log:
            log(f"[kws-corpus] {len(plan)} utterances, {len(calls)} espeak-ng calls in {t1 - t0:.1f}s "
                f"({n_workers} workers), resample + augment {time.perf_counter() - t1:.1f}s")  # fmt: skip
        return save_corpus(
            target,
            labels=[u.label for u in plan],
            audio=audio,
            sample_rate=spec.sample_rate,
            groups=[u.group for u in plan],
            label_names=spec.label_names,
            group_names=list(spec.variants),
        )

    return cached_corpus("kws", key, make, load_corpus, CorpusFormatError, out, cache_dir=cache_dir, use_cache=use_cache, log=log)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m examples.speech.data", description="Synthesize the espeak-ng keyword-spotting corpus.")
    p.add_argument("--out", help="write the .npz here (it is cached anyway)")
    p.add_argument("--tiny", action="store_true", help="2 keywords, 2 speakers (seconds)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reps", type=int, help="utterances per (speaker, class)")
    p.add_argument("--speakers", type=int, help="number of espeak variants (speakers)")
    p.add_argument("--no-noise", action="store_true", help="clean speech (no noise mixed in)")
    p.add_argument("--cache", help=f"cache directory (default {default_cache_dir()})")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--check", metavar="FILE", help="only validate FILE.npz and print a summary")
    args = p.parse_args(argv)
    if args.check:
        print(load_corpus(args.check).summary())
        return 0
    spec = tiny_spec() if args.tiny else SynthSpec()
    changes: dict[str, Any] = {"seed": args.seed}
    if args.reps:
        changes["reps"] = args.reps
    if args.speakers:
        if args.speakers > len(DEFAULT_VARIANTS):
            p.error(f"--speakers: at most {len(DEFAULT_VARIANTS)}")
        changes["variants"] = DEFAULT_VARIANTS[: args.speakers]
    if args.no_noise:
        changes["noise"] = False
    spec = spec.with_(**changes)
    path = synthesize_corpus(spec, args.out, cache_dir=args.cache, use_cache=not args.no_cache, verbose=True)
    print(f"{path}: {load_corpus(path).summary()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
