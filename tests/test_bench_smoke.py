"""The benchmark command runs and writes well-formed results. No speed
assertions: timings are the benchmark's to report, not the tests' to judge."""

from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
import textwrap

import pytest

import proxopt
from proxopt.bench import main, paramsets, progress

VARIANT_KEYS = {
    "name", "family", "regularizer", "ref", "detail", "steps_per_sample", "samples_ms", "median_ms",
    "q1_ms", "q3_ms", "iqr_ms", "gbs", "roofline_fraction", "ratio", "ratio_q1", "ratio_q3", "extra_peak_bytes",
}


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _run(tmp_path, *args: str) -> dict:
    out = tmp_path / "results.json"
    # the proxopt under test, not another installed copy (a relative PYTHONPATH
    # would not reach it from tmp_path)
    root = os.path.dirname(os.path.dirname(os.path.abspath(proxopt.__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "proxopt.bench", "--quick", "--no-plot", "--no-progress", "--json", str(out), *args],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "vs proxopt" in proc.stdout  # the table was printed
    doc = json.loads(out.read_text())
    # stdout is a pipe, not a terminal: one line per finished section came first
    n = len(doc["groups"])
    sections = re.findall(rf"^\[\d+/{n}\] .* repeats in .*$", proc.stdout.split("proxopt-bench ·")[0], flags=re.M)
    assert len(sections) == n, proc.stdout
    return doc


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


class _Pipe(io.StringIO):
    """A stdout that is not a terminal and remembers what it held at each flush."""

    def __init__(self, tty: bool = False):
        super().__init__()
        self.tty, self.at_flush = tty, []

    def isatty(self) -> bool:
        return self.tty

    def flush(self) -> None:
        self.at_flush.append(self.getvalue())
        super().flush()


def test_redirected_run_prints_and_flushes_a_line_per_section(tmp_path, monkeypatch):
    out = _Pipe()
    monkeypatch.setattr("sys.stdout", out)
    assert main(["--quick", "--no-plot", "--no-progress", "--json", str(tmp_path / "r.json"), "-o", "adamw,sgd"]) == 0
    text = out.getvalue()
    lines = re.findall(r"^\[\d/2\] tiny/\w+, \d+ threads?: 3 repeats in .*$", text, flags=re.M)
    assert [line.split()[1] for line in lines] == ["tiny/adamw,", "tiny/sgd,"], text
    for line in lines:  # each one was flushed as soon as it was written, before the table
        assert any(seen.endswith(line + "\n") for seen in out.at_flush), (line, out.at_flush)
    assert text.index(lines[1]) < text.index("vs proxopt")


def test_no_section_lines_on_a_terminal(monkeypatch):
    out = _Pipe(tty=True)
    monkeypatch.setattr("sys.stdout", out)
    group = {"param_set": "tiny", "optimizer": "adamw", "threads": 1, "repeats": 3, "elapsed_s": 1.0,
             "variants": [{"name": "proxopt", "median_ms": 0.5}]}
    lines = progress.SectionLines(1)
    lines.finished(group)
    assert out.getvalue() == ""  # the bar on stderr shows the progress there
    out.tty = False
    lines.finished(group)
    assert re.fullmatch(r"\[2/1\] tiny/adamw, 1 thread: 3 repeats in 1\.0 s; proxopt 0\.5 ms/step \(\d+ s elapsed\)\n",
                        out.getvalue()), out.getvalue()
