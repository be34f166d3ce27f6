"""The speech corpus format, its validation, resampling and the espeak-ng synthesizer."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from examples.speech import data as D
from examples.speech import espeak as E

# espeak-ng tests skip only when the binary is truly absent (CI installs it);
# PROXOPT_REQUIRE_ESPEAK=1 turns that skip into a failure.
_SKIP = E.espeak_binary() is None and os.environ.get("PROXOPT_REQUIRE_ESPEAK") != "1"
needs_espeak = pytest.mark.skipif(_SKIP, reason="espeak-ng is not installed (apt-get install -y espeak-ng)")


# --------------------------------------------------------------------------
# format and validation
# --------------------------------------------------------------------------


def _features(n=4, dims=5, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((7 + i, dims)).astype(np.float32) for i in range(n)]


def _obj(items):
    a = np.empty(len(items), dtype=object)
    for i, x in enumerate(items):
        a[i] = x
    return a


def _write(tmp_path, name="c.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


def test_save_load_roundtrip_features(tmp_path):
    feats = _features()
    path = D.save_corpus(tmp_path / "f.npz", labels=[0, 1, 1, 2], features=feats, groups=[0, 0, 1, 1], label_names=["a", "b", "c"])
    c = D.load_corpus(path)
    assert c.labels.dtype == np.int64 and c.labels.tolist() == [0, 1, 1, 2]
    assert c.label_names == ["a", "b", "c"] and c.num_classes == 3
    assert c.audio is None and len(c.features) == 4
    for a, b in zip(c.features, feats):
        assert a.dtype == np.float32 and np.array_equal(a, b)
    assert c.groups.tolist() == [0, 0, 1, 1]


def test_dense_arrays_and_default_names(tmp_path):
    path = _write(tmp_path, audio=np.zeros((3, 100), np.float32) + 0.1, sample_rate=8000, labels=np.array([0, 1, 0]))
    c = D.load_corpus(path)
    assert c.sample_rate == 8000 and len(c.audio) == 3 and c.label_names == ["0", "1"] and c.groups is None


@pytest.mark.parametrize(
    "arrays, message",
    [
        (dict(features=_obj(_features(2))), "missing key 'labels'"),
        (dict(labels=np.array([0, 1])), "missing key 'features' or 'audio'"),
        (dict(features=_obj(_features(3)), labels=np.array([0, 1])), "'labels' has 2 entries but 'features' has 3"),
        (dict(audio=_obj([np.ones(5, np.float32)] * 2), labels=np.array([0, 1, 1]), sample_rate=16000), "'labels' has 3 entries but 'audio' has 2"),
        (dict(features=_obj([np.full((3, 4), np.nan, np.float32), np.ones((3, 4), np.float32)]), labels=np.array([0, 1])), "features[0] contains NaN"),
        (dict(features=_obj([np.ones((3, 4), np.float32), np.full((3, 4), np.inf, np.float32)]), labels=np.array([0, 1])), "features[1] contains Inf"),
        (dict(features=_obj([np.ones((3, 4), np.float32), np.ones((0, 4), np.float32)]), labels=np.array([0, 1])), "features[1] is empty"),
        (dict(audio=_obj([np.ones(5, np.float32), np.ones(0, np.float32)]), labels=np.array([0, 1]), sample_rate=16000), "audio[1] is empty"),
        (dict(features=_obj([np.ones((3, 4), np.float32), np.ones((3, 5), np.float32)]), labels=np.array([0, 1])), "features[1] has 5 dims"),
        (dict(features=_obj([np.ones(3, np.float32), np.ones(3, np.float32)]), labels=np.array([0, 1])), "expected [frames, dims]"),
        (dict(audio=_obj([np.ones(5, np.float32)] * 2), labels=np.array([0, 1])), "'sample_rate' is missing"),
        (dict(features=_obj(_features(2)), labels=np.array([0.5, 1.0])), "must be integers"),
        (dict(features=_obj(_features(2)), labels=np.array([-1, 1])), "negative class index"),
        (dict(features=_obj(_features(2)), labels=np.array([0, 2]), label_names=np.array(["a", "b"])), "'label_names' has 2 names"),
        (dict(features=_obj(_features(2)), labels=np.array([0, 1]), groups=np.array([0])), "'groups' has shape (1,)"),
        (dict(features=_obj(_features(2)), labels=np.array([], np.int64)), "'labels' is empty"),
    ],
)
def test_bad_files_raise_clear_errors(tmp_path, arrays, message):
    path = _write(tmp_path, **arrays)
    with pytest.raises(D.CorpusFormatError) as e:
        D.load_corpus(path)
    assert message in str(e.value)
    assert str(e.value).startswith(path)  # names the file


@pytest.mark.parametrize(
    "key, hint", [("speakers", "did you mean 'groups'?"), ("feature", "did you mean 'features'?"), ("lables", "did you mean 'labels'?"), ("extra", "the format's keys are")]
)
def test_a_wrong_key_is_named(tmp_path, key, hint):
    arrays = dict(features=_obj(_features(2)), labels=np.array([0, 1]))
    arrays[key] = np.array([0, 1])
    path = _write(tmp_path, **arrays)
    with pytest.raises(D.CorpusFormatError) as e:
        D.load_corpus(path)
    assert f"unknown key '{key}'" in str(e.value) and hint in str(e.value)


def test_features_only_file_without_groups_and_odd_lengths(tmp_path):
    # a user's corpus: precomputed features of odd lengths, no audio, no speaker ids
    feats = [np.random.default_rng(i).standard_normal((13 + 7 * i % 11, 20)).astype(np.float32) for i in range(9)]
    path = _write(tmp_path, features=_obj(feats), labels=np.arange(9) % 3)
    c = D.load_corpus(path)
    assert c.audio is None and c.groups is None and [f.shape[0] for f in c.features] == [f.shape[0] for f in feats]
    tr, te = D.split_by_group(c, 0.34, seed=0)  # every utterance its own group: a random split
    assert len(te) == 3 and sorted(np.concatenate([tr, te]).tolist()) == list(range(9))


def test_not_an_npz(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"this is not a zip file")
    with pytest.raises(D.CorpusFormatError, match="not a readable .npz"):
        D.load_corpus(path)
    with pytest.raises(FileNotFoundError):
        D.load_corpus(tmp_path / "missing.npz")


def test_save_corpus_validates(tmp_path):
    with pytest.raises(D.CorpusFormatError, match="features\\[0\\] contains NaN"):
        D.save_corpus(tmp_path / "x.npz", labels=[0], features=[np.full((2, 2), np.nan)])
    assert not (tmp_path / "x.npz").exists()


def test_split_by_group_is_speaker_disjoint():
    c = D.Corpus(labels=np.zeros(40, np.int64), label_names=["a"], groups=np.repeat(np.arange(10), 4))
    tr, te = D.split_by_group(c, 0.2, seed=3)
    assert len(tr) + len(te) == 40 and len(te) == 8
    assert not set(c.groups[tr]) & set(c.groups[te])
    assert np.array_equal(D.split_by_group(c, 0.2, seed=3)[1], te)
    with pytest.raises(ValueError, match="at least 2 groups"):
        D.split_by_group(D.Corpus(labels=np.zeros(3, np.int64), label_names=["a"], groups=np.zeros(3, np.int64)))


# --------------------------------------------------------------------------
# resampling
# --------------------------------------------------------------------------


def test_resample_is_scipy_s():
    from scipy.signal import resample_poly

    x = np.random.default_rng(0).standard_normal(4410)
    y = D.resample_poly(x, 22050, 16000)
    assert y.dtype == np.float32 and len(y) == 3200
    np.testing.assert_array_equal(y, resample_poly(x, 320, 441).astype(np.float32))


def test_espeak_wav_is_read_bit_for_bit():
    # espeak-ng --stdout writes placeholder sizes; the samples are int16 / 32768 exactly
    n = 1000
    pcm = (np.arange(n, dtype=np.int64) * 37 % 65536 - 32768).astype("<i2")
    header = b"RIFF" + b"\xff\xff\xff\x7f" + b"WAVE" + b"fmt " + (16).to_bytes(4, "little")
    header += (1).to_bytes(2, "little") + (1).to_bytes(2, "little") + (22050).to_bytes(4, "little")
    header += (44100).to_bytes(4, "little") + (2).to_bytes(2, "little") + (16).to_bytes(2, "little")
    header += b"data" + b"\xff\xff\xff\x7f"
    wav, sr = E._parse_wav(header + pcm.tobytes())
    assert sr == 22050 and wav.dtype == np.float32
    np.testing.assert_array_equal(wav, pcm.astype(np.float32) / 32768.0)


def test_resample_keeps_a_tone():
    t = np.arange(22050) / 22050
    y = D.resample_poly(np.sin(2 * np.pi * 1000 * t), 22050, 16000)
    assert len(y) == 16000
    spectrum = np.abs(np.fft.rfft(y[1000:-1000] * np.hanning(14000)))
    peak_hz = np.argmax(spectrum) * 16000 / 14000
    assert abs(peak_hz - 1000) < 3


# --------------------------------------------------------------------------
# espeak-ng synthesis
# --------------------------------------------------------------------------


@needs_espeak
def test_tiny_corpus_format_and_determinism(tmp_path):
    spec = D.tiny_spec(seed=5)
    a = D.synthesize_corpus(spec, tmp_path / "a.npz", use_cache=False, workers=1)
    b = D.synthesize_corpus(spec, tmp_path / "b.npz", use_cache=False, workers=2)
    with np.load(a, allow_pickle=True) as z:
        assert {"audio", "sample_rate", "labels", "groups", "label_names", "group_names"} <= set(z.files)
        assert z["audio"].dtype == object and z["labels"].dtype == np.int64 and int(z["sample_rate"]) == 16000
        assert list(z["label_names"]) == ["yes", "no"] and list(z["group_names"]) == ["m3", "f2"]
    ca, cb = D.load_corpus(a), D.load_corpus(b)
    assert len(ca) == 2 * 2 * spec.reps  # speakers x classes x reps
    assert np.array_equal(ca.labels, cb.labels) and np.array_equal(ca.groups, cb.groups)
    for x, y in zip(ca.audio, cb.audio):
        assert x.dtype == np.float32 and x.shape == (16000,)
        assert np.array_equal(x, y)  # deterministic, whatever the number of workers
        assert np.abs(x).max() <= 1.0 and np.abs(x).max() > 1e-3
    c = D.load_corpus(D.synthesize_corpus(spec.with_(seed=6), tmp_path / "c.npz", use_cache=False))
    assert not all(np.array_equal(x, y) for x, y in zip(ca.audio, c.audio))  # the seed matters


@needs_espeak
def test_cache_is_reused(tmp_path):
    spec = D.tiny_spec(reps=1)
    p1 = D.synthesize_corpus(spec, cache_dir=tmp_path)
    mtime = os.path.getmtime(p1)
    p2 = D.synthesize_corpus(spec, cache_dir=tmp_path)
    assert p1 == p2 and os.path.getmtime(p2) == mtime and str(p1).startswith(str(tmp_path))
    out = D.synthesize_corpus(spec, tmp_path / "copy.npz", cache_dir=tmp_path)
    assert out == tmp_path / "copy.npz" and out.read_bytes() == p1.read_bytes()


@needs_espeak
def test_unknown_voice_is_an_error(tmp_path):
    assert {"m3", "f2", "klatt"} <= E.espeak_variants()
    with pytest.raises(ValueError, match="no voice variant.*no-such-variant"):
        D.synthesize_corpus(D.tiny_spec(variants=("m3", "no-such-variant")), cache_dir=tmp_path)
    with pytest.raises(RuntimeError, match="espeak-ng"):
        E.espeak_synthesize("yes", "qqqq")


def test_missing_espeak_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PROXOPT_ESPEAK", str(tmp_path / "no-espeak-here"))
    assert E.espeak_binary() is None
    with pytest.raises(E.EspeakUnavailableError, match="apt-get install -y espeak-ng"):
        D.synthesize_corpus(D.tiny_spec(), cache_dir=tmp_path)
    assert shutil.which("sh")  # (the env var only affects proxopt)
