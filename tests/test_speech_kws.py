"""End to end: a short keyword-spotting run on a tiny espeak-ng corpus, and
a short denoising run."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from examples.speech import data as D
from examples.speech import denoise, kws
from examples.speech import espeak as E

_SKIP = E.espeak_binary() is None and os.environ.get("PROXOPT_REQUIRE_ESPEAK") != "1"
pytestmark = pytest.mark.skipif(_SKIP, reason="espeak-ng is not installed (apt-get install -y espeak-ng)")

TINY = dict(keywords=("yes", "no", "stop"), variants=("m1", "m3", "f2", "f4", "klatt", "Annie"), reps=6, snr_db=(15.0, 30.0))


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return D.synthesize_corpus(D.tiny_spec(**TINY), cache_dir=cache)


SMALL_MODEL = ["--channels", "16,16,24,24,32", "--hidden", "24", "--batch-size", "16", "--threads", "1", "--quiet"]


def test_kws_four_runs(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "kws"
    rc = kws.main(["--data", str(tiny_corpus), "--epochs", "2", "--lr", "5e-3", "--test-fraction", "0.34",
                   "--l1", "1e-3", "--group-lasso", "2.0", "--out", str(out), *SMALL_MODEL])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "prox-group" in printed and "params" in printed
    report = json.loads((out / "kws.json").read_text())
    runs = {r["run"]: r for r in report["runs"]}
    assert list(runs) == ["dense", "l1-loss", "prox-l1", "prox-group"]
    chance = report["data"]["chance"]
    assert chance == pytest.approx(1 / 3)
    assert runs["dense"]["metrics"]["accuracy"] > chance + 0.15  # beats chance on unseen speakers
    # the penalty in the loss never lands a weight on 0; the proxes do
    assert runs["dense"]["zeros"] == 0 and runs["l1-loss"]["zeros"] == 0
    assert runs["prox-l1"]["zeros"] > 0 and runs["prox-group"]["zeros"] > 0
    assert runs["prox-group"]["zero_channels"] > 0
    assert runs["prox-group"]["pruned_params"] < runs["prox-group"]["params"]
    for r in runs.values():
        assert r["pruned_max_abs_diff"] < 1e-4
        assert r["steps"] > 0 and r["step_time_s"] > 0 and r["train_time_s"] >= r["step_time_s"]
        assert len(r["history"]) == 2
    table = (out / "kws.txt").read_text().split("\n\n")[0]
    assert table.count("\n") == 5  # header, rule, four runs
    assert report["data"]["split"] == "by group (speaker-disjoint)" and "data split: by group (speaker-disjoint)" in printed
    pytest.importorskip("matplotlib")
    assert (out / "kws.png").stat().st_size > 10_000


def test_kws_user_features_file(tmp_path):
    # the interchange format with precomputed features instead of audio
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 20)
    feats = [
        (rng.standard_normal((40 + i % 5, 13)) + 2.0 * y * np.sin(np.arange(40 + i % 5) / 3.0)[:, None]).astype(np.float32)
        for i, y in enumerate(labels)
    ]
    path = D.save_corpus(tmp_path / "f.npz", labels=labels, features=feats, groups=np.arange(40) % 8, label_names=["a", "b"])
    rc = kws.main(["--data", str(path), "--epochs", "1", "--runs", "dense,prox-l1", "--out", str(tmp_path / "o"), *SMALL_MODEL])
    assert rc == 0
    report = json.loads((tmp_path / "o" / "kws.json").read_text())
    assert [r["run"] for r in report["runs"]] == ["dense", "prox-l1"] and report["data"]["feature_shape"][0] == 13


def test_denoise_runs(tiny_corpus, tmp_path):
    out = tmp_path / "den"
    rc = denoise.main(["--data", str(tiny_corpus), "--epochs", "3", "--channels", "16,16,16", "--batch-size", "16",
                       "--runs", "dense,l1-loss,prox-group,magnitude-structured", "--group-lasso", "2.0", "--threads", "1", "--quiet",
                       "--out", str(out)])  # fmt: skip
    assert rc == 0
    report = json.loads((out / "denoise.json").read_text())
    runs = {r["run"]: r for r in report["runs"]}
    hist = [h["val_loss"] for h in runs["dense"]["history"]]
    assert hist[-1] < hist[0]  # it learns
    assert runs["l1-loss"]["zeros"] == 0 and runs["prox-group"]["zero_channels"] > 0
    assert all(r["pruned_max_abs_diff"] < 1e-4 for r in runs.values())
    # without a sweep, magnitude-structured prunes to its default: half of
    # each non-output layer's channels (16 each; the 1x1 bottleneck too)
    mag = runs["magnitude-structured"]
    assert mag["target"] == 0.5 and mag["zero_channels"] == 4 * 8 and mag["channels"] == 4 * 16
    assert mag["pruned_params"] < mag["params"]


def test_denoise_sweep_lower_loss_wins(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "dsweep"
    rc = denoise.main(["--data", str(tiny_corpus), "--epochs", "2", "--channels", "16,16,16", "--batch-size", "16",
                       "--runs", "dense,prox-l1,magnitude", "--sparsity", "0.9", "--threads", "1", "--quiet", "--out", str(out)])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "denoise.json").read_text())
    assert [p["run"] for p in report["points"]] == ["dense", "prox-l1", "magnitude"]
    mag = next(p for p in report["points"] if p["run"] == "magnitude")
    assert mag["weight_zero_fraction"] == pytest.approx(0.9, abs=1e-4)
    (v,) = report["verdicts"]
    loss = {p["run"]: p["val_loss"] for p in report["points"]}
    zeros = {p["run"]: p["weight_zero_fraction"] for p in report["points"]}
    best, other = sorted(("prox-l1", "magnitude"), key=loss.get)
    assert v["ranking"] == [best, other] and not v["higher_is_better"]
    # the lower loss wins, unless it came with fewer zeros (a 2-epoch run's controller may land short)
    assert v["winner"] == (None if zeros[other] > zeros[best] + 0.01 else best)
    assert "val loss, lower is better" in printed and v["line"] in printed
    pytest.importorskip("matplotlib")
    assert (out / "denoise.png").stat().st_size > 10_000
