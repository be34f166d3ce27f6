"""The synthesis pipeline: espeak-ng's phoneme-event durations, the corpus
format's validation, the KL penalty, and a tiny version of the side-by-side
runs (shapes, determinism, and that each regularizer does what it claims)."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from examples.speech import data as D
from examples.speech import espeak as E
from examples.speech import tts, tts_runs
from examples.speech.results import RunResult
from examples.speech.tts_data import TTSData
from examples.speech.tts_metrics import evaluate, predict
from examples.speech import tts_corpus as C
from examples.speech.tts_model import ProsodyTTS, length_regulate
from proxopt.penalties import gaussian_kl_penalty


def _espeak_ok() -> bool:
    try:
        E.espeak_library()
        return True
    except E.EspeakUnavailableError:
        return False


_SKIP = not _espeak_ok() and os.environ.get("PROXOPT_REQUIRE_ESPEAK") != "1"
needs_espeak = pytest.mark.skipif(_SKIP, reason="libespeak-ng is not installed (apt-get install -y espeak-ng)")

# --------------------------------------------------------------------------
# espeak-ng's phoneme events and the durations made from them
# --------------------------------------------------------------------------


@needs_espeak
@pytest.mark.parametrize("voice", ["en-us+m3", "en+f2", "en-us+klatt"])
def test_espeak_phoneme_events_give_durations_summing_to_frames(voice):
    lib = E.espeak_library()
    spoken = lib.speak("hello world, this is a test", voice, rate=170, pitch=40)
    assert spoken.sample_rate == 22050 and spoken.audio.dtype == np.float32
    names = [e.name for e in spoken.phonemes]
    assert len(names) >= 15 and "h" in names and "_:" in names  # a pause at the comma
    starts = np.array([e.sample for e in spoken.phonemes])
    assert (np.diff(starts) >= 0).all() and 0 <= starts[0] and starts[-1] <= len(spoken.audio)
    # espeak-ng's millisecond positions agree with its sample positions
    ms = np.array([e.audio_ms for e in spoken.phonemes])
    assert np.abs(starts / spoken.sample_rate * 1000 - ms).max() <= 2.0
    mel = C.MelConfig()
    dur = C.frame_durations(starts, len(spoken.audio), mel.hop_length)
    assert dur.dtype == np.int64 and (dur >= 0).all()
    assert dur.sum() == mel.num_frames(len(spoken.audio))
    # deterministic: the same call gives the same audio and events
    again = lib.speak("hello world, this is a test", voice, rate=170, pitch=40)
    assert np.array_equal(again.audio, spoken.audio) and again.phonemes == spoken.phonemes


@needs_espeak
def test_espeak_voices_differ_and_unknown_voice_is_rejected():
    lib = E.espeak_library()
    a = lib.speak("a quiet garden", "en-us+m3")
    b = lib.speak("a quiet garden", "en+f2")
    assert len(a.audio) != len(b.audio) or not np.array_equal(a.audio, b.audio)
    with pytest.raises(ValueError, match="Invalid voice: 'en-us\\+nosuchvariant'"):
        lib.speak("hello", "en-us+nosuchvariant")
    with pytest.raises(ValueError, match="no language 'xx-yy'"):
        lib.speak("hello", "xx-yy")


@needs_espeak
def test_espeak_instance_is_one_per_library():
    lib = E.espeak_library()
    a = E.open_espeak(["/nonexistent/libespeak-ng.so.1", lib._lib._name])
    assert a is lib and E.open_espeak([lib._lib._name]) is lib  # the callback is registered once, by lib
    with pytest.raises(RuntimeError, match="already has its Espeak instance"):
        E.Espeak(lib._lib)


def _exit_3(*args):
    os._exit(3)


def _keyboard_interrupt(*args):
    raise KeyboardInterrupt


def _raise_in_callback(*args):
    raise ValueError("boom in the synth callback")


CHILD_FAILURES = [
    # (label, what to patch: (object or module attribute path, name, value), expected error, message)
    ("child exits", ("lib", "_speak_here", _exit_3), RuntimeError, "failed \\(exit status 3\\) synthesizing 'hello'"),
    ("unpicklable result", ("lib", "_speak_here", lambda *a: lambda: None), RuntimeError, "could not send .* synthesizing 'hello'"),
    ("interrupted while sending", ("E", "pickle", "dumps-raises"), RuntimeError, "failed \\(exit status 1\\) synthesizing 'hello'"),
    ("error in the synth callback", ("E", "PhonemeEvent", _raise_in_callback), ValueError, "boom in the synth callback"),
]


@needs_espeak
@pytest.mark.parametrize("label,patch,error,message", CHILD_FAILURES, ids=[c[0] for c in CHILD_FAILURES])
def test_espeak_child_failures_raise_in_the_parent(monkeypatch, label, patch, error, message):
    import pickle
    import types

    lib = E.espeak_library()
    where, name, value = patch
    if value == "dumps-raises":  # the child's pickle.dumps raises a BaseException: it must still exit, status 1
        value = types.SimpleNamespace(dumps=_keyboard_interrupt, loads=pickle.loads)
    monkeypatch.setattr(lib if where == "lib" else E, name, value)
    me = os.getpid()
    with pytest.raises(error, match=message):
        lib.speak("hello", "en-us+m3")
    assert os.getpid() == me  # the parent, not an escaped child
    monkeypatch.undo()
    assert len(lib.speak("hello", "en-us+m3").phonemes) >= 3  # and the library still works


def test_missing_library_raises_with_install_hint():
    with pytest.raises(E.EspeakUnavailableError, match="apt-get install -y espeak-ng"):
        E.open_espeak(["/nonexistent/libespeak-ng.so.1"])


def test_frame_durations_by_hand_and_errors():
    # hop 100, 450 samples -> 5 frames centred at 0, 100, 200, 300, 400
    assert C.frame_durations([30, 150, 150, 420], 450, 100).tolist() == [2, 0, 3, 0]
    assert C.frame_durations([0], 99, 100).tolist() == [1]
    with pytest.raises(ValueError, match="Invalid starts"):
        C.frame_durations([50, 20], 450, 100)
    with pytest.raises(ValueError, match="Invalid starts"):
        C.frame_durations([0, 500], 450, 100)
    with pytest.raises(ValueError, match="Invalid hop_length value: 0"):
        C.frame_durations([0], 450, 0)


def test_sentences_are_deterministic_and_distinct():
    a, b = C.make_sentences(50, seed=1), C.make_sentences(50, seed=1)
    assert a == b and len(set(a)) == 50 and a != C.make_sentences(50, seed=2)
    with pytest.raises(ValueError, match="Invalid n value: 0"):
        C.make_sentences(0)


# --------------------------------------------------------------------------
# The .npz format
# --------------------------------------------------------------------------


def _valid_arrays(rng=None) -> dict:
    rng = rng or np.random.default_rng(0)
    durations = [np.array([2, 0, 3]), np.array([1, 4])]
    return C.tts_corpus_arrays(
        phonemes=[[0, 1, 2], [2, 1]],
        durations=durations,
        mels=[rng.standard_normal((int(d.sum()), 4)).astype(np.float32) for d in durations],
        speakers=[0, 1],
        sentences=[0, 0],
        phoneme_names=["a", "b", "c"],
        speaker_names=["v0", "v1"],
        mel=C.MelConfig(sample_rate=8000, n_fft=256, win_length=256, hop_length=64, n_mels=4, fmax=4000.0),
        texts=["hello"],
    )


def _without(key):
    def f(d):
        del d[key]

    return f


def _set(key, value):
    def f(d):
        d[key] = value

    return f


BAD_FILES = [
    # (label, mutation, expected message)
    ("missing mels", _without("mels"), "missing key 'mels'"),
    ("unknown key", _set("speaker", np.array([0, 1])), "unknown key 'speaker'"),
    ("durations do not sum", _set("durations", np.array([2, 0, 2, 1, 4])), "utterance 0: its durations sum to 4 frames but 'num_frames' says 5"),
    ("negative duration", _set("durations", np.array([2, -1, 4, 1, 4])), "negative frame count -1"),
    ("phoneme out of range", _set("phoneme_ids", np.array([0, 1, 7, 2, 1])), "'phoneme_ids' has id 7 out of range"),
    ("NaN mel", lambda d: d["mels"].__setitem__((6, 2), np.nan), "'mels' has NaN values \\(utterance 1, frame 6\\)"),
    ("mel frames", _set("mels", np.zeros((9, 4), np.float32)), "'mels' has 9 frames but 'num_frames' sums to 10"),
    ("offsets", _set("phoneme_offsets", np.array([0, 3, 4])), "must start at 0 and end at len\\(phoneme_ids\\) = 5"),
    ("empty utterance", _set("phoneme_offsets", np.array([0, 0, 5])), "utterance 0 has 0 phonemes"),
    ("speaker out of range", _set("speakers", np.array([0, 2])), "'speakers' has id 2 out of range"),
    ("float ids", _set("phoneme_ids", np.array([0.0, 1, 2, 2, 1])), "'phoneme_ids' must be integers"),
    ("bad mel config", _set("fmax", np.array(9000.0)), "mel parameters: need 0 <= fmin < fmax <= sample_rate/2"),
    ("held-out nobody", _set("held_out_speakers", np.array([5])), "'held_out_speakers' names speaker 5, which has no utterance"),
    ("nothing to train", lambda d: d.update(held_out_speakers=np.array([0]), held_out_sentences=np.array([0])), "leave no training utterance"),
]


@pytest.mark.parametrize("label,mutate,message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_format_errors_name_the_file_and_the_problem(tmp_path, label, mutate, message):
    data = _valid_arrays()
    mutate(data)
    path = tmp_path / "bad.npz"
    np.savez(path, **data)
    with pytest.raises(D.CorpusFormatError, match=f"{path}: .*{message}"):
        C.load_tts_corpus(path)


def test_format_round_trip_and_split(tmp_path):
    d = _valid_arrays()
    corpus = C.validate_tts_corpus(d)
    path = C.save_tts_corpus(
        tmp_path / "ok.npz",
        phonemes=corpus.phonemes, durations=corpus.durations, mels=corpus.mels, speakers=corpus.speakers,
        sentences=corpus.sentences, phoneme_names=corpus.phoneme_names, speaker_names=corpus.speaker_names,
        mel=corpus.mel, texts=corpus.texts,
    )  # fmt: skip
    back = C.load_tts_corpus(path)
    assert back.mel == corpus.mel and back.mel.n_mels == 4
    for a, b in zip(back.mels, corpus.mels):
        np.testing.assert_array_equal(a, b)
    assert [p.tolist() for p in back.phonemes] == [[0, 1, 2], [2, 1]]
    with pytest.raises(ValueError, match="no held-out speakers/sentences"):
        back.split()
    held = back.with_held_out(sentence_fraction=0.5, speakers=1, seed=0)
    split = held.split()
    assert sorted(np.concatenate(list(split.values())).tolist()) == [0, 1] and len(split["test_voices"]) == 1
    with pytest.raises(ValueError, match="Invalid speakers value: 2"):
        back.with_held_out(speakers=2)
    with pytest.raises(ValueError, match="Invalid speakers value: 0 .*test_voices must not be empty"):
        back.with_held_out(speakers=0)
    with pytest.raises(FileNotFoundError):
        C.load_tts_corpus(tmp_path / "nope.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(D.CorpusFormatError, match="not a readable .npz"):
        C.load_tts_corpus(tmp_path / "junk.npz")


def test_evaluate_rejects_an_empty_split():
    corpus = dataclasses.replace(
        C.validate_tts_corpus(_valid_arrays()), held_out_speakers=np.array([1]), held_out_sentences=np.array([], np.int64)
    )
    data = TTSData.from_corpus(corpus)
    assert len(data.splits["test_sentences"]) == 0 and len(data.splits["test_voices"]) == 1
    torch.manual_seed(0)
    model = ProsodyTTS(data.n_phonemes, 2, 4, dim=8, encoder_layers=1, decoder_layers=1, latent_dim=2)
    with pytest.raises(ValueError, match="Invalid split: 'test_sentences' has no utterances"):
        evaluate(model, data, "test_sentences")
    assert all(np.isfinite(v) for v in evaluate(model, data, "test_voices").values())


RUNS_ERRORS = [
    # (label, text, expected message)
    ("unknown", "dense,nope", "Invalid --runs value: \\['nope'\\]"),
    ("empty", " , ", "Invalid --runs value: ' , '"),
    ("twice", "dense,kl,dense", "Invalid --runs value: 'dense,kl,dense' lists dense more than once"),
]


@pytest.mark.parametrize("label,text,message", RUNS_ERRORS, ids=[r[0] for r in RUNS_ERRORS])
def test_parse_runs_rejects_unknown_empty_and_repeated_runs(label, text, message):
    with pytest.raises(ValueError, match=message):
        tts_runs.parse_runs(text)
    with pytest.raises(ValueError, match=message.replace("--runs", "--show")):
        tts_runs.parse_runs(text, "--show")
    with pytest.raises(SystemExit):  # the command line reports it
        tts.main(["--runs", text])
    assert tts_runs.parse_runs("kl, dense") == ["kl", "dense"]


def test_run_result_to_dict_does_not_copy_the_models():
    class NoCopy(torch.nn.Module):
        def __deepcopy__(self, memo):
            raise AssertionError("to_dict deep-copied a model")

    values = {f.name: 0 for f in dataclasses.fields(RunResult)}
    values.update(run="dense", label="x", metrics={"test_sentences": {"l1": 1.0}}, losses=[1.0], model=NoCopy(), pruned_model=NoCopy())
    r = RunResult(**values)
    d = r.to_dict()
    assert "model" not in d and "pruned_model" not in d and "losses" not in d
    assert d["metrics"] == r.metrics and d["metrics"] is not r.metrics and d["step_ms"] == 0.0
    json.dumps(d)


# --------------------------------------------------------------------------
# The KL penalty
# --------------------------------------------------------------------------


def test_gaussian_kl_penalty_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(6, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    log_var = torch.randn(6, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    got = gaussian_kl_penalty(mean, log_var, lam=0.3)
    ref = 0.3 * kl_divergence(Normal(mean, (0.5 * log_var).exp()), Normal(0.0, 1.0)).sum(-1).mean()
    torch.testing.assert_close(got, ref)
    g1 = torch.autograd.grad(got, (mean, log_var))
    g2 = torch.autograd.grad(ref, (mean, log_var))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)
    assert gaussian_kl_penalty(torch.zeros(3, 2), torch.zeros(3, 2)).item() == 0.0  # the prior itself


def test_gaussian_kl_penalty_errors():
    with pytest.raises(ValueError, match="Invalid log_var shape"):
        gaussian_kl_penalty(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="Invalid lam value: -1.0"):
        gaussian_kl_penalty(torch.zeros(2, 3), torch.zeros(2, 3), lam=-1.0)
    with pytest.raises(TypeError, match="must be tensors"):
        gaussian_kl_penalty([0.0], torch.zeros(1))


# --------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------


def test_length_regulator_and_model_shapes():
    h = torch.arange(6.0).reshape(1, 2, 3)  # [B=1, C=2, P=3]
    frames, mask, pos = length_regulate(h, torch.tensor([[2, 0, 1]]), num_frames=4)
    assert frames[0, 0].tolist() == [0.0, 0.0, 2.0, 0.0] and mask[0].tolist() == [True, True, True, False]
    assert pos[0, :3, 0].tolist() == [0.25, 0.75, 0.5]
    torch.manual_seed(0)
    model = ProsodyTTS(n_phonemes=7, n_speakers=3, n_mels=10, dim=16, latent_dim=4)
    ph = torch.tensor([[1, 2, 3], [4, 5, 7]])  # 7: padding
    du = torch.tensor([[2, 3, 1], [4, 1, 0]])
    mel = torch.randn(2, 10, 6)
    out = model(ph, du, torch.tensor([0, 2]), mel)
    assert out.mel.shape == (2, 10, 6) and out.mean.shape == (2, 4) and out.frame_mask.sum().item() == 11
    assert model(ph, du, torch.tensor([0, 2]), latent="prior").mel.shape == (2, 10, 6)
    with pytest.raises(ValueError, match="Invalid latent: 'posterior' needs the target mel"):
        model(ph, du, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="Invalid durations shape"):
        model(ph, du[:, :2], torch.tensor([0, 2]), mel)


# --------------------------------------------------------------------------
# The pipeline, tiny
# --------------------------------------------------------------------------

TINY_SPEC = dict(voices=("en-us+m3", "en+f2"), held_out_voices=("en-us+f4",), sentences=10, held_out_sentences=3, voices_per_sentence=2)


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    if _SKIP:
        pytest.skip("libespeak-ng is not installed")
    cache = tmp_path_factory.mktemp("cache")
    return C.synthesize_tts_corpus(C.tiny_tts_spec(**TINY_SPEC), cache_dir=cache), cache


@needs_espeak
def test_tiny_corpus_is_cached_deterministic_and_split(tiny_corpus, tmp_path):
    path, cache = tiny_corpus
    corpus = C.load_tts_corpus(path)
    split = corpus.split()
    assert {k: len(v) for k, v in split.items()} == {"train": 14, "test_sentences": 6, "test_voices": 3}
    assert set(corpus.sentences[split["train"]]).isdisjoint(corpus.held_out_sentences)
    assert set(corpus.speakers[split["test_voices"]]) == {2} and corpus.speaker_names[2] == "en-us+f4"
    assert all(d.sum() == len(m) for d, m in zip(corpus.durations, corpus.mels))
    assert C.synthesize_tts_corpus(C.tiny_tts_spec(**TINY_SPEC), cache_dir=cache) == path  # from the cache
    fresh = C.load_tts_corpus(C.synthesize_tts_corpus(C.tiny_tts_spec(**TINY_SPEC), tmp_path / "again.npz", use_cache=False))
    for a, b in zip(fresh.mels, corpus.mels):
        np.testing.assert_array_equal(a, b)
    assert [d.tolist() for d in fresh.durations] == [d.tolist() for d in corpus.durations]


@pytest.fixture(scope="module")
def tiny_results(tiny_corpus):
    torch.set_num_threads(1)
    data = TTSData.from_corpus(C.load_tts_corpus(tiny_corpus[0]))
    cfg = tts_runs.TTSConfig(epochs=4, batch_size=4, lr=5e-3, max_norm=0.5, bound=0.05, l2=1e-2, weight_decay=5.0,
                        l1=1e-3, group_lasso=2.0, kl=1.0, log=None)  # fmt: skip

    def make_model():
        return ProsodyTTS(data.n_phonemes, len(data.corpus.speaker_names), data.corpus.mel.n_mels, dim=16, encoder_layers=2, decoder_layers=2, latent_dim=4)

    results = {run: tts_runs.train_run(run, data, make_model, cfg, time_inference=False) for run in tts_runs.RUN_NAMES}
    return data, cfg, make_model, results


@needs_espeak
def test_tiny_runs_are_deterministic_and_learn(tiny_results):
    data, cfg, make_model, results = tiny_results
    dense = results["dense"]
    again = tts_runs.train_run("dense", data, make_model, cfg, time_inference=False)
    assert again.losses == dense.losses and again.metrics == dense.metrics
    assert dense.steps == 4 * 4 and len(dense.history) == 4
    assert dense.history[-1]["train_l1"] < dense.history[0]["train_l1"]
    pred = predict(dense.model, data, int(data.splits["test_voices"][0]))
    assert pred.shape == (data.corpus.mel.n_mels, len(data.corpus.mels[int(data.splits["test_voices"][0])]))
    # the same first step for every run: same init, data order and seeds
    assert all(r.losses[0] == dense.losses[0] for r in results.values())
    for r in results.values():
        assert all(np.isfinite(v) for m in r.metrics.values() for v in m.values())


@needs_espeak
def test_tiny_runs_regularizers_do_what_they_claim(tiny_results):
    data, cfg, _, results = tiny_results
    r = results
    # weight-range limits hold, in the prox and in the clamp-loop runs alike
    for run in tts_runs.MAX_NORM_RUNS:
        assert r[run].range_held and r[run].max_row_norm <= cfg.max_norm * (1 + 1e-5)
    for run in tts_runs.BOUNDS_RUNS:
        assert r[run].range_held and r[run].max_abs_weight <= float(torch.tensor(cfg.bound))  # float32(b)
    assert r["dense"].max_row_norm > cfg.max_norm and r["dense"].max_abs_weight > cfg.bound  # they bind
    for run in ("prox-maxnorm", "prox-bounds"):  # and the fused projection matches the Python loop
        twin = "clamp-" + run.split("-")[1]
        assert abs(r[run].metrics["test_sentences"]["l1"] - r[twin].metrics["test_sentences"]["l1"]) < 1e-3
    # L2 in every form shrinks the weights
    for run in ("l2-loss", "prox-l2", "weight-decay"):
        assert r[run].weight_norm < 0.95 * r["dense"].weight_norm, run
    # the penalty in the loss and the projections leave no exact zero; the sparse group lasso does
    assert r["dense"].zeros == 0 and r["l2-loss"].zeros == 0
    sgl = r["prox-sgl"]
    assert sgl.zeros > 0 and sgl.zero_channels > 0
    assert sgl.pruned_params < sgl.params and sgl.pruned_max_abs_diff < 1e-5
    # KL regularization shrinks the posterior's divergence from the prior
    assert r["kl"].metrics["test_sentences"]["kl"] < 0.5 * r["dense"].metrics["test_sentences"]["kl"]


@needs_espeak
def test_command_line_writes_reports_pngs_and_wavs(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "o"
    rc = tts.main(["--data", str(tiny_corpus[0]), "--runs", "dense,prox-sgl", "--show", "dense,prox-sgl", "--epochs", "1",
                   "--batch-size", "4", "--dim", "16", "--layers", "2", "--examples", "2", "--griffin-lim-iters", "2",
                   "--threads", "1", "--quiet", "--out", str(out)])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "prox-sgl" in printed and "MCD" in printed
    report = json.loads((out / "tts.json").read_text())
    assert [r["run"] for r in report["runs"]] == ["dense", "prox-sgl"] and report["data"]["splits"]["train"] == 14
    assert (out / "tts.txt").read_text().count("\n") == 4
    wavs = sorted(p.name for p in (out / "wav").iterdir())
    assert len(wavs) == 2 * 3 and any(n.endswith("-target.wav") for n in wavs)
    import soundfile

    wave, sr = soundfile.read(out / "wav" / wavs[0])
    assert sr == 22050 and len(wave) > 1000 and np.abs(wave).max() > 0.1
    pytest.importorskip("matplotlib")
    assert (out / "tts_spectrograms.png").stat().st_size > 10_000 and (out / "tts.png").stat().st_size > 10_000
    with pytest.raises(SystemExit):
        tts.main(["--runs", "dense,nope"])
