"""The benchmark command runs and writes well-formed results. No speed
assertions: timings are the benchmark's to report, not the tests' to judge."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import pytest

from proxopt.bench import main, paramsets

VARIANT_KEYS = {
    "name", "family", "regularizer", "ref", "detail", "steps_per_sample", "samples_ms", "median_ms",
    "q1_ms", "q3_ms", "iqr_ms", "gbs", "roofline_fraction", "ratio", "ratio_q1", "ratio_q3", "extra_peak_bytes",
}


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _run(tmp_path, *args: str) -> dict:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "proxopt.bench", "--quick", "--no-plot", "--no-progress", "--json", str(out), *args],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "vs proxopt" in proc.stdout  # the table was printed
    return json.loads(out.read_text())


def test_quick_run_writes_results(tmp_path):
    doc = _run(tmp_path)
    assert doc["schema"] == "proxopt-bench/1"
    assert {"cpu", "torch", "proxopt", "backend", "torch_threads"} <= set(doc["machine"])
    (group,) = doc["groups"]
    assert group["param_set"] == "tiny" and group["optimizer"] == "adamw"
    assert group["bytes_per_param"] == 28  # Adam, float32
    bw = group["bandwidth"]
    assert all(_positive(bw[k]["median"]) for k in ("copy_gbs", "triad_gbs", "axpy_gbs"))
    assert _positive(bw["roofline_gbs"]) and _positive(bw["roofline_ms"])

    names = {v["name"]: v for v in group["variants"]}
    expected = {"proxopt", "proxopt l1", "torch fused", "l1 loss penalty + torch fused", "torch fused + foreach l1 prox"}
    assert expected <= set(names)
    for v in group["variants"]:
        assert VARIANT_KEYS <= set(v), v["name"]
        assert v["ref"] in names  # every ratio is against a row of the same table
        assert len(v["samples_ms"]) == doc["config"]["repeats"]
        for key in ("median_ms", "gbs", "roofline_fraction", "ratio", "ratio_q1", "ratio_q3"):
            assert _positive(v[key]), (v["name"], key, v[key])
        # measured exactly when the run measures memory, and never negative
        assert (v["extra_peak_bytes"] is None) == (group["memory_method"] is None), v["name"]
        if v["extra_peak_bytes"] is not None:
            assert v["extra_peak_bytes"] >= 0, v["name"]
    assert names["proxopt"]["ratio"] == 1.0
    assert {v["family"] for v in group["variants"]} == {"proxopt", "torch", "loss penalty", "prox pass"}


def test_user_model(tmp_path):
    (tmp_path / "tinymodel.py").write_text(textwrap.dedent("""
        import torch

        def make():
            return torch.nn.Sequential(torch.nn.Conv1d(8, 16, 3), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    """))
    doc = _run(tmp_path, "--model", f"{tmp_path / 'tinymodel.py'}:make", "-o", "sgd", "-r", "l2")
    (group,) = doc["groups"]
    assert group["param_set"] == "make"
    assert (group["numel"], group["tensors"]) == (8 * 16 * 3 + 16 + 16 * 4 + 4, 4)
    assert group["bytes_per_param"] == 20  # SGD with momentum, float32
    assert all(_positive(v["ratio"]) for v in group["variants"])


def test_parameter_sets_have_their_documented_shape():
    conformer = paramsets.conformer()
    assert 20e6 <= conformer.numel <= 26e6 and conformer.tensors == 16 * 30
    assert (256, 1, 31) in conformer.shapes  # depthwise conv, kernel 31
    assert 100e3 <= paramsets.kws_cnn().numel <= 500e3
    assert paramsets.large().shapes == [(4096, 4096)]
    assert paramsets.small().tensors >= 1000


def test_list(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "adamw" in out and "conformer" in out


def test_unknown_optimizer_is_a_clear_error():
    with pytest.raises(SystemExit, match="unknown optimizer"):
        main(["-o", "lbfgs", "--no-progress"])
