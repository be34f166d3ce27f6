"""Magnitude-pruning baselines, the sparsity sweep (proxopt's controller vs
magnitude pruning at equal sparsity) and its reports, on tiny synthetic
feature files (no espeak-ng needed)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from examples.speech import data as D
from examples.speech import kws, runs, sweep, sweep_command
from examples.speech import layers as L
from examples.speech.magnitude import ChannelMagnitudePruning, CubicSchedule, GlobalMagnitudePruning, check_fraction
from proxopt.pruning import prune_zero_channels

SMALL_MODEL = ["--channels", "8,8,12,12,16", "--hidden", "16", "--threads", "1", "--quiet"]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def features_file(tmp_path_factory):
    """3 classes of 13x36 feature sequences, no ``groups``: a random split."""
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 24)
    t = np.arange(36)
    feats = [
        (rng.standard_normal((36, 13)) + 1.5 * (1 + y) * np.sin(t / (2.0 + y) + i)[:, None] * np.linspace(-1, 1, 13)[None, :]).astype(np.float32)
        for i, y in enumerate(labels)
    ]
    return D.save_corpus(tmp_path_factory.mktemp("feat") / "f.npz", labels=labels, features=feats, label_names=["a", "b", "c"])


def _sweep(path, out, *argv):
    args = kws.build_parser().parse_args(["--data", str(path), "--out", str(out), *SMALL_MODEL, *argv])
    return sweep_command.run_command(args, kws.load_data, kws.make_task, "kws", lambda info: "test")


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(4, 10, 3), nn.ReLU(), nn.Conv1d(10, 7, 3), nn.Flatten(), nn.Linear(7 * 4, 5))


def _layers(model):
    return [m for m in model if isinstance(m, (nn.Conv1d, nn.Linear))]


def _zero_rows(w: torch.Tensor) -> int:
    return int((w.reshape(w.shape[0], -1) == 0).all(dim=1).sum())


def _no_reparametrization(model: nn.Module) -> None:
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    assert not [n for n in names if n.endswith(("_orig", "_mask"))]
    assert all(len(m._forward_pre_hooks) == 0 for m in model.modules())


# --------------------------------------------------------------------------
# The schedule and the pruners
# --------------------------------------------------------------------------


def test_cubic_schedule_follows_zhu_and_gupta():
    s = CubicSchedule(final=0.9, start=10, every=5, events=4)
    assert s.end == 30
    assert s.sparsity(10) == 0.0 and s.sparsity(30) == 0.9 and s.sparsity(500) == 0.9
    assert s.sparsity(15) == pytest.approx(0.9 * (1 - 0.75**3))
    assert [t for t in range(60) if s.prunes_at(t)] == [15, 20, 25, 30]
    over = CubicSchedule.over(0.9, 1000)
    assert (over.start, over.every, over.events, over.end) == (100, 30, 20, 700)
    for total in (1, 2, 3, 7):  # tiny runs still end inside the run
        tiny = CubicSchedule.over(0.5, total)
        assert tiny.start < tiny.end <= total


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: CubicSchedule.over(1.5, 100), r"Invalid final value: 1.5 \(a fraction in \[0, 1\)\)"),
        (lambda: CubicSchedule.over(0.5, 0), "Invalid total_steps value: 0"),
        (lambda: CubicSchedule.over(0.5, 100, window=(0.7, 0.1)), r"Invalid window value: \(0\.7, 0\.1\)"),
        (lambda: CubicSchedule.over(0.5, 100, every=-1), "Invalid every value: -1"),
        (lambda: CubicSchedule(final=0.5, start=0, every=0, events=3), "Invalid every value: 0"),
        (lambda: GlobalMagnitudePruning([], CubicSchedule.over(0.5, 10)), r"Invalid layers value: \[\]"),
        (lambda: ChannelMagnitudePruning([nn.BatchNorm1d(3)], CubicSchedule.over(0.5, 10)), "BatchNorm1d has no 'weight' of 2"),
        (lambda: runs.train_run("dense", None, runs.TrainConfig(), target=0.5), "run 'dense' takes no sparsity target"),
    ],
)
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
    with pytest.raises(TypeError, match=r"^Invalid target value: '0\.5' \(a fraction in \[0, 1\)\)$"):
        check_fraction("0.5")


def test_global_pruning_counts_do_not_compound():
    model = _mlp()
    layers = _layers(model)
    n = sum(m.weight.numel() for m in layers)
    before = torch.cat([m.weight.detach().abs().flatten() for m in layers])
    pruner = GlobalMagnitudePruning(layers, CubicSchedule.over(0.75, 10))
    pruner.prune_to(0.5)
    assert pruner.masked() == round(0.5 * n)
    masks = torch.cat([m.weight_mask.flatten() for m in layers])
    # the globally smallest |w|, across layers
    assert before[masks == 0].max() <= before[masks == 1].min()
    pruner.prune_to(0.75)  # a fraction passed to torch as is would give 1 - 0.5 * 0.25 = 87.5 %
    assert pruner.masked() == round(0.75 * n)
    pruner.finish()
    _no_reparametrization(model)
    assert sum(int((m.weight == 0).sum()) for m in layers) == round(0.75 * n)


def test_channel_pruning_per_layer_counts_and_norms():
    model = _mlp()
    layers = _layers(model)[:2]  # the output layer's rows are never pruned
    norms = [m.weight.detach().reshape(m.weight.shape[0], -1).norm(dim=1) for m in layers]
    pruner = ChannelMagnitudePruning(layers, CubicSchedule.over(0.6, 10))
    pruner.prune_to(0.3)
    for m, nrm in zip(layers, norms):
        k = round(0.3 * m.weight.shape[0])
        gone = (m.weight_mask.reshape(m.weight.shape[0], -1) == 0).all(dim=1)
        assert int(gone.sum()) == k and nrm[gone].max() <= nrm[~gone].min()  # the smallest L2 norms
    pruner.prune_to(0.6)
    assert [pruner.masked_channels(m) for m in layers] == [6, 4]  # round(6.0), round(4.2)
    pruner.prune_to(0.99)
    assert [pruner.masked_channels(m) for m in layers] == [9, 6]  # one channel kept per layer
    pruner.finish()
    _no_reparametrization(model)
    assert [_zero_rows(m.weight) for m in layers] == [9, 6]


# --------------------------------------------------------------------------
# The plan and the verdicts
# --------------------------------------------------------------------------


def test_plan_of_a_sweep_and_without_one():
    pts = sweep.plan(None, [0.8, 0.9], [0.5], seeds=[0, 1])
    assert [(p.run, p.target, p.seed) for p in pts[:6]] == [
        ("dense", None, 0), ("prox-l1", 0.8, 0), ("magnitude", 0.8, 0), ("prox-l1", 0.9, 0), ("magnitude", 0.9, 0),
        ("prox-group", 0.5, 0),
    ]  # fmt: skip
    assert len(pts) == 2 * 7 and pts[7] == sweep.Point("dense", None, 1)
    assert [p.run for p in sweep.plan(None, [0.9], (), [0])] == ["dense", "prox-l1", "magnitude"]
    fixed = sweep.plan(["dense", "magnitude", "magnitude-structured", "prox-l1"], seeds=[3])
    assert [(p.run, p.target) for p in fixed] == [("dense", None), ("magnitude", 0.9), ("magnitude-structured", 0.5), ("prox-l1", None)]
    with pytest.raises(ValueError, match="'l1-loss' takes no sparsity target"):
        sweep.plan(["l1-loss"], [0.9], (), [0])
    with pytest.raises(ValueError, match="'prox-group' needs --channel-sparsity targets"):
        sweep.plan(["prox-group"], [0.9], (), [0])
    with pytest.raises(ValueError, match=r"^Invalid --seeds value: \(0, 0\) \(distinct ints >= 0\)$"):
        sweep.plan(None, [0.9], (), [0, 0])


def test_option_parsing_errors(capsys):
    assert sweep_command.parse_fractions("0.8, 0.9", "--sparsity") == (0.8, 0.9)
    with pytest.raises(ValueError, match=r"Invalid --sparsity value: 1.5 \(a fraction in \[0, 1\)\)"):
        sweep_command.parse_fractions("0.9,1.5", "--sparsity")
    with pytest.raises(ValueError, match="Invalid --channel-sparsity value: '0.5,0.5' lists a target twice"):
        sweep_command.parse_fractions("0.5,0.5", "--channel-sparsity")
    with pytest.raises(ValueError, match=r"^Invalid --seeds value: '0,-1' \(distinct ints >= 0\)$"):
        sweep_command.parse_seeds("0,-1")
    with pytest.raises(ValueError, match=r"^Invalid --runs value: \['magnitud'\] \(choose from dense, "):
        runs.parse_runs("dense,magnitud")
    with pytest.raises(SystemExit) as exit_:  # argparse reports the error on stderr and exits with 2
        kws.main(["--sparsity", "0.9,1.5"])
    assert exit_.value.code == 2
    assert "Invalid --sparsity value: 1.5" in capsys.readouterr().err


def _curve(run, target, metrics, landed, kind=None):
    s = sweep.Spread(tuple(landed))
    return sweep.CurvePoint(run, kind or runs.RUNS[run].kind, target, sweep.Spread(tuple(metrics)), s, s, s, tuple(range(len(metrics))))


def test_verdicts_say_who_wins_by_how_much():
    pts = [
        _curve("prox-l1", 0.9, [0.977, 0.981], [0.901, 0.905]),
        _curve("magnitude", 0.9, [0.967, 0.975], [0.9, 0.9]),
        _curve("prox-group", 0.5, [0.90, 0.95], [0.5, 0.52]),
        _curve("magnitude-structured", 0.5, [0.93, 0.94], [0.5, 0.5]),
    ]
    (v1, v2) = sweep.verdicts(pts, "accuracy", higher_is_better=True)
    assert v1["winner"] == "prox-l1" and v1["gaps"][0]["gap"] == pytest.approx(0.008) and v1["gaps"][0]["ranges_apart"]
    assert "at 90 % zeros: prox-l1 97.90 ± 0.20 % vs magnitude 97.10 ± 0.40 %: prox-l1 ahead of magnitude by 0.80 points" in v1["line"]
    assert "prox-l1's controller landed at 90.3 % (+0.3 points, seeds 90.1–90.5 %)" in v1["line"]
    assert v2["winner"] == "magnitude-structured" and "(within the seed spread)" in v2["line"]
    # the denoiser: lower validation loss wins
    (v,) = sweep.verdicts([_curve("prox-l1", 0.8, [0.41, 0.43], [0.8, 0.8]), _curve("magnitude", 0.8, [0.40, 0.42], [0.8, 0.8])], "val_loss", False)
    assert v["ranking"] == ["magnitude", "prox-l1"] and "magnitude ahead of prox-l1 by 0.0100 (within the seed spread)" in v["line"]
    (v,) = sweep.verdicts([_curve("prox-l1", 0.8, [0.30], [0.8]), _curve("magnitude", 0.8, [0.40], [0.8])], "val_loss", False)
    assert v["winner"] == "prox-l1" and "prox-l1 ahead of magnitude by 0.1000 (one seed: no spread)" in v["line"]
    assert v["gaps"][0]["ranges_apart"] is None
    (v,) = sweep.verdicts([_curve("prox-l1", 0.8, [0.30, 0.31], [0.8, 0.8]), _curve("magnitude", 0.8, [0.40, 0.41], [0.8, 0.8])], "val_loss", False)
    assert v["winner"] == "prox-l1" and "(the seed ranges do not overlap)" in v["line"]


def test_ahead_while_less_sparse_is_no_win():
    # the controller landed 3 points short of 90 %: its better accuracy is not a win at equal sparsity
    short = [_curve("prox-l1", 0.9, [0.98, 0.98], [0.87, 0.87]), _curve("magnitude", 0.9, [0.96, 0.96], [0.9, 0.9])]
    (v,) = sweep.verdicts(short, "accuracy", higher_is_better=True)
    assert v["ranking"] == ["prox-l1", "magnitude"] and v["winner"] is None
    assert "not a win at equal sparsity: prox-l1 is less sparse than magnitude by more than 1 point" in v["line"]
    # sparser than the other and ahead: a win
    over = [_curve("prox-l1", 0.9, [0.98, 0.98], [0.93, 0.93]), _curve("magnitude", 0.9, [0.96, 0.96], [0.9, 0.9])]
    assert sweep.verdicts(over, "accuracy", higher_is_better=True)[0]["winner"] == "prox-l1"
    # behind while less sparse: the other method wins
    behind = [_curve("prox-l1", 0.9, [0.94, 0.94], [0.87, 0.87]), _curve("magnitude", 0.9, [0.96, 0.96], [0.9, 0.9])]
    assert sweep.verdicts(behind, "accuracy", higher_is_better=True)[0]["winner"] == "magnitude"


# --------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------


def test_tiny_sweep(features_file, tmp_path, capsys):
    out = tmp_path / "sweep"
    results, info, paths, _ = _sweep(features_file, out, "--epochs", "3", "--batch-size", "8", "--sparsity", "0.8",
                                     "--channel-sparsity", "0.5", "--seeds", "0,1")  # fmt: skip
    printed = capsys.readouterr().out
    assert [(r.run, r.target, r.seed) for r in results[:5]] == [
        ("dense", None, 0), ("prox-l1", 0.8, 0), ("magnitude", 0.8, 0), ("prox-group", 0.5, 0), ("magnitude-structured", 0.5, 0)
    ]  # fmt: skip
    assert len(results) == 10
    by = {(r.run, r.seed): r for r in results}
    for seed in (0, 1):
        mag, chan = by[("magnitude", seed)], by[("magnitude-structured", seed)]
        # unstructured: exactly round(s * N) zeros over the regularized weights
        weights = [m.weight for m in L.regularized_layers(mag.model)]
        n = sum(w.numel() for w in weights)
        assert sum(int((w == 0).sum()) for w in weights) == round(0.8 * n)
        assert mag.weight_zero_fraction == pytest.approx(0.8, abs=1 / n)
        # structured: per layer round(s * C) rows, the output layer untouched
        layers = L.channel_layers(chan.model)
        assert [_zero_rows(m.weight) for m in layers] == [round(0.5 * m.weight.shape[0]) for m in layers]
        assert chan.zero_channels == sum(round(0.5 * m.weight.shape[0]) for m in layers)
        assert _zero_rows(L.output_layer(chan.model).weight) == 0
        # masks are permanent, and the pruned model is the sparse one, smaller
        for r in (mag, chan):
            _no_reparametrization(r.model)
            assert r.pruned_max_abs_diff < 1e-5
        small = prune_zero_channels(chan.model)
        assert [m.weight.shape[0] for m in L.channel_layers(small)] == [m.weight.shape[0] - _zero_rows(m.weight) for m in layers]
        x = torch.randn(4, *chan.model[0].weight.shape[1:2], 40)
        chan.model.eval(), small.eval()
        torch.testing.assert_close(small(x), chan.model(x), atol=1e-5, rtol=1e-5)
        assert chan.pruned_params < chan.params
        # the controlled runs ran the controller to the magnitude schedule's end
        ctl = by[("prox-l1", seed)].control
        assert ctl["key"] == "l1" and ctl["by_step"] == mag.control["end"] and ctl["target"] == 0.8
        # prox-group: one controller per channel layer, the output layer's columns following the last
        group = by[("prox-group", seed)]
        n_layers = len(L.channel_layers(group.model))
        assert group.control["groups"] == [[i] for i in range(n_layers)] and list(group.control["followers"].values()) == [n_layers - 1]

    report = json.loads(paths["json"].read_text())
    assert report["data"]["split"] == "random: the file has no groups"
    assert len(report["points"]) == 10 and all("accuracy" in p and "landed" in p for p in report["points"])
    assert {(c["run"], c["target"]) for c in report["curves"]} == {
        ("dense", None), ("prox-l1", 0.8), ("magnitude", 0.8), ("prox-group", 0.5), ("magnitude-structured", 0.5)
    }  # fmt: skip
    assert [c["metric"]["values"].__len__() for c in report["curves"]] == [2] * 5
    assert [(v["kind"], v["target"]) for v in report["verdicts"]] == [("zeros", 0.8), ("channels", 0.5)]
    for v, head in zip(report["verdicts"], ["at 80 % zeros: ", "at 50 % channels removed: "], strict=True):
        assert v["line"] in printed and v["line"] in paths["table"].read_text()
        assert v["line"].startswith(head), v["line"]
        assert "controller landed at" in v["line"]
    assert "data split: random: the file has no groups" in printed
    table = paths["table"].read_text().split("\n\n")[0].splitlines()
    assert table[0].startswith("run ") and len(table) == 2 + 10  # header, rule, one row per (run, target, seed)
    pytest.importorskip("matplotlib")
    assert paths["png"].stat().st_size > 20_000


def test_controller_lands_near_its_target(features_file, tmp_path):
    # ~350 steps of a 3k-parameter model, a loose tolerance for a tiny run (a
    # fixed λ of 1e-3 stays near 3 % zeros on this data). Without BatchNorm:
    # with it, this tiny model's channels die all at once past a sharp λ_g
    # (every conv row scales alike), which no controller can stop at 40 %
    results, *_ = _sweep(features_file, tmp_path / "ctl", "--epochs", "25", "--batch-size", "4", "--no-batchnorm",
                         "--runs", "prox-l1,prox-group", "--sparsity", "0.7", "--channel-sparsity", "0.4", "--l1", "1e-3")  # fmt: skip
    l1, group = results
    assert l1.control["last_value"][0] != 1e-3  # λ was steered
    assert abs(l1.weight_zero_fraction - 0.7) < 0.2
    assert abs(group.channel_fraction - 0.4) < 0.3  # group lasso: channels die in clumps here
    # the controller measures what the table counts (at its last event)
    assert l1.control["measured"][0] == pytest.approx(l1.weight_zero_fraction, abs=0.05)
    # per layer: each channel layer's own fraction, their channel-weighted mean is the table's
    layers = L.channel_layers(group.model)
    rows = [m.weight.shape[0] for m in layers]
    assert [_zero_rows(m.weight) / n for m, n in zip(layers, rows)] == pytest.approx(group.control["measured"], abs=0.05)
    assert sum(f * n for f, n in zip(group.control["measured"], rows)) / sum(rows) == pytest.approx(group.channel_fraction, abs=0.05)
    # the output layer's column groups followed the controlled λ
    last = len(layers) - 1  # the output layer's column group (after the layers) takes the last layer's factor
    (follower, lead), = group.control["followers"].items()
    assert lead == last and follower >= len(layers)
    assert group.control["last_value"][follower] == pytest.approx(group.control["last_value"][last])


# --------------------------------------------------------------------------
# The budget and heal runs (proxopt's sparsity budget, L1 + heal)
# --------------------------------------------------------------------------


def test_budget_heal_and_l1_heal_runs(features_file, tmp_path):
    # ~30 steps of a 3k-parameter model: the two runs build, train on the
    # magnitude run's window and land on the target; heal freezes the support
    results, *_ = _sweep(features_file, tmp_path / "heal", "--epochs", "4", "--batch-size", "8", "--sparsity", "0.8",
                         "--runs", "magnitude,budget-heal,l1-heal")  # fmt: skip
    by = {r.run: r for r in results}
    assert list(by) == ["magnitude", "budget-heal", "l1-heal"]
    mag, budget, l1 = by["magnitude"], by["budget-heal"], by["l1-heal"]
    # the same window: the budget ramps on the magnitude schedule, heal from the step after its end
    assert (budget.control["start"], budget.control["end"]) == (mag.control["start"], mag.control["end"])
    assert budget.control["heal_from_step"] == mag.control["end"] + 1 == l1.control["heal_from_step"]
    assert l1.control["by_step"] == mag.control["end"] and l1.control["controller"] == "proxopt.SparsityTarget"
    assert budget.control["heal"][0] and l1.control["heal"][0]
    weights = [m.weight for m in L.regularized_layers(budget.model)]
    n = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    # the budget's count: ⌈s·n⌉ zeros (magnitude's round(s·n)); the exact
    # selection at heal cannot revive a weight the last ramp step over-pruned,
    # so allow a few weights over (measured: +2 of 2920 here)
    assert math.ceil(0.8 * n) <= zeros <= math.ceil(0.8 * n) + max(3, n // 500)
    assert budget.weight_zero_fraction == pytest.approx(0.8, abs=max(3, n // 500) / n + 1 / n)
    # heal froze the support: the zeros of every epoch after the window's end are the final ones
    steps_per_epoch = budget.steps // len(budget.history)
    after = [h["weight_zero_fraction"] for i, h in enumerate(budget.history) if (i + 1) * steps_per_epoch > budget.control["end"]]
    assert after and all(f == budget.weight_zero_fraction for f in after)
    after = [h["weight_zero_fraction"] for i, h in enumerate(l1.history) if (i + 1) * steps_per_epoch > l1.control["by_step"]]
    assert after and all(f == l1.weight_zero_fraction for f in after)
    # L1 steered to the target (a loose tolerance for ~30 steps), then frozen there
    assert abs(l1.weight_zero_fraction - 0.8) < 0.1
    for r in (budget, l1):
        assert r.pruned_max_abs_diff < 1e-5 and r.pruned_params <= r.params
    assert "SparsityTarget + heal" in l1.label and "sparsity=s" in budget.label


def test_heal_runs_are_not_in_the_default_sweep():
    assert "budget-heal" not in [p.run for p in sweep.plan(None, [0.9], (), [0])]
    pts = sweep.plan(["dense", "magnitude", "budget-heal", "l1-heal"], [0.9], (), [0])
    assert [(p.run, p.target) for p in pts] == [("dense", None), ("magnitude", 0.9), ("budget-heal", 0.9), ("l1-heal", 0.9)]


def test_channel_budget_heal_run(features_file, tmp_path):
    # the channel budget per layer on the magnitude runs' window: each
    # channel layer keeps exactly G - ceil(s G) rows, heal freezes them, and
    # prune_zero_channels cuts them as it cuts magnitude-structured's
    results, *_ = _sweep(features_file, tmp_path / "channels", "--epochs", "4", "--batch-size", "8",
                         "--channel-sparsity", "0.5", "--runs", "magnitude-structured,channel-budget-heal")  # fmt: skip
    by = {r.run: r for r in results}
    assert list(by) == ["magnitude-structured", "channel-budget-heal"]
    mag, budget = by["magnitude-structured"], by["channel-budget-heal"]
    assert (budget.control["start"], budget.control["end"]) == (mag.control["start"], mag.control["end"])
    assert budget.control["heal_from_step"] == mag.control["end"] + 1
    for m in L.channel_layers(budget.model):
        rows = m.weight.shape[0]
        assert _zero_rows(m.weight) == math.ceil(0.5 * rows), m
    assert budget.pruned_max_abs_diff < 1e-5 and budget.pruned_params < budget.params
