"""proxopt.channel_groups: the slices of every tensor that belong to one channel, from the fx graph."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import proxopt
from proxopt.channels import ChannelGroupError, channel_groups


def _keys(group):
    return [(m.param_name, m.dim, m.index_start, m.length) for m in group.members]


def _row(name, c, bias=True):
    return [(f"{name}.weight", 0, c, 1)] + ([(f"{name}.bias", 0, c, 1)] if bias else [])


def _norm(name, c):
    return [(f"{name}.weight", 0, c, 1), (f"{name}.bias", 0, c, 1)]


def _cols(name, start, length=1):
    return [(f"{name}.weight", 1, start, length)]


def _randomize(model: nn.Module, g: torch.Generator) -> None:
    """Random weights, positive BN shifts, running_mean = 0: a channel whose row, bias and BN shift are
    zero then leaves its BN as exactly 0 in eval mode."""
    with torch.no_grad():
        for m in model.modules():
            for p in m.parameters(recurse=False):
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
            if isinstance(m, nn.modules.batchnorm._BatchNorm):  # positive shifts: few dead ReLUs
                m.bias.copy_(torch.rand(m.num_features, generator=g, dtype=m.bias.dtype) + 0.5)
                m.running_mean.zero_()
                m.running_var.copy_(torch.rand(m.num_features, generator=g, dtype=m.running_var.dtype) + 0.5)


def _check_functional(model: nn.Module, shape: tuple[int, ...], group, seed: int = 0) -> None:
    """Zeroing every member slice of ``group`` changes the output, and cuts the channel out from both sides:
    with its input-side slices (rows, biases, norm elements: dim 0) zero, random values in its consumer
    columns (dim 1) change nothing (the channel is exactly 0 wherever it is read, which needs the BN shift and
    every tied producer); with its consumer columns zero, random values in its input-side slices change nothing
    (nothing else reads the channel). A missing member or a foreign one (another channel's slice) makes one
    of these fail."""
    g = torch.Generator().manual_seed(seed)
    model = model.double().eval()
    _randomize(model, g)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    inside = [m for m in group.members if m.dim == 0]
    outside = [m for m in group.members if m.dim == 1]
    assert inside and outside
    with torch.no_grad():
        before = model(x)
        for m in group.members:
            m.slice().zero_()
        zeroed = model(x)
        assert (zeroed - before).abs().max() > 1e-3
        for perturbed in (outside, inside):
            for m in perturbed:
                # positive values for biases and norm elements: the channel stays alive after the ReLUs
                r = torch.randn if m.param.dim() > 1 else lambda n, **kw: torch.rand(n, **kw) + 0.5
                m.slice().copy_(r(m.slice().shape, generator=g, dtype=torch.float64))
            torch.testing.assert_close(model(x), zeroed, rtol=1e-12, atol=1e-12)
            for m in perturbed:
                m.slice().zero_()


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------


def _kws():
    return nn.Sequential(
        nn.Conv1d(4, 6, 3, padding=1), nn.BatchNorm1d(6), nn.ReLU(),
        nn.Conv1d(6, 5, 3, padding=1), nn.BatchNorm1d(5), nn.ReLU(),
        nn.Flatten(), nn.Linear(5 * 7, 3),
    )  # fmt: skip


class _MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 5)
        self.ln = nn.LayerNorm(5)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        return self.head(self.ln(self.fc2(torch.relu(self.fc1(x)))))


class _Residual(nn.Module):
    """A stem and two residual blocks (conv-bn-relu-conv-bn + skip), then a pooled linear head."""

    def __init__(self, c=4):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(c)
        self.a1, self.abn1 = nn.Conv2d(c, 5, 3, padding=1), nn.BatchNorm2d(5)
        self.a2, self.abn2 = nn.Conv2d(5, c, 3, padding=1), nn.BatchNorm2d(c)
        self.b1, self.bbn1 = nn.Conv2d(c, 5, 3, padding=1), nn.BatchNorm2d(5)
        self.b2, self.bbn2 = nn.Conv2d(5, c, 3, padding=1), nn.BatchNorm2d(c)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c, 2)

    def forward(self, x):
        h = torch.relu(self.bn0(self.stem(x)))
        h = torch.relu(self.abn2(self.a2(torch.relu(self.abn1(self.a1(h))))) + h)
        h = torch.relu(self.bbn2(self.b2(torch.relu(self.bbn1(self.b1(h))))) + h)
        return self.head(self.pool(h).flatten(1))


class _Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.left, self.lbn = nn.Conv1d(3, 4, 3, padding=1), nn.BatchNorm1d(4)
        self.right, self.rbn = nn.Conv1d(3, 2, 1), nn.BatchNorm1d(2)
        self.mix, self.mbn = nn.Conv1d(6, 5, 3, padding=1), nn.BatchNorm1d(5)
        self.head = nn.Linear(5 * 8, 2)

    def forward(self, x):
        h = torch.cat([torch.relu(self.lbn(self.left(x))), torch.relu(self.rbn(self.right(x)))], dim=1)
        h = torch.relu(self.mbn(self.mix(h)))
        return self.head(h.view(h.size(0), -1))


def _separable():
    return nn.Sequential(
        nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 6, 1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2),
    )  # fmt: skip


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = nn.Linear(8, 8)
        self.k = nn.Linear(8, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        scores = torch.matmul(self.q(x), self.k(x).transpose(1, 2))
        return self.out(torch.softmax(scores, dim=-1) @ x)


# --------------------------------------------------------------------------
# Exact members
# --------------------------------------------------------------------------


def test_kws_conv_bn_flatten_linear():
    model = _kws()
    groups = channel_groups(model, torch.randn(2, 4, 7))
    assert [f.name for f in groups] == ["0", "3"]
    assert groups.outputs == ["7"]
    first, second = groups.family("0"), groups.family("3")
    assert [g.name for g in first.groups] == [f"0[{c}]" for c in range(6)]
    for c in range(6):
        assert _keys(first.groups[c]) == _row("0", c) + _norm("1", c) + _cols("3", c)
    for c in range(5):  # each channel of the last conv owns 7 consecutive Linear columns
        assert _keys(second.groups[c]) == _row("3", c) + _norm("4", c) + _cols("7", 7 * c, 7)
    stacked = {s.param_name: s for s in second.stacked()}
    assert list(stacked) == ["3.weight", "3.bias", "4.weight", "4.bias", "7.weight"]
    assert stacked["7.weight"].dim == 1
    assert torch.equal(stacked["7.weight"].index, torch.arange(35).reshape(5, 7))
    assert torch.equal(stacked["4.bias"].index, torch.arange(5).reshape(5, 1))
    assert stacked["3.weight"].param is model[3].weight


def test_kws_zeroing_a_group_cuts_the_channel():
    model = _kws()
    groups = channel_groups(model, torch.randn(2, 4, 7))
    shape = (64, 4, 7)
    _check_functional(model, shape, groups.family("0").groups[2])
    _check_functional(model, shape, groups.family("3").groups[4])


def test_kws_zeroed_group_is_the_structurally_pruned_model():
    model = _kws().double().eval()
    _randomize(model, torch.Generator().manual_seed(1))
    group = channel_groups(model, torch.randn(2, 4, 7, dtype=torch.float64)).family("3").groups[1]
    with torch.no_grad():
        for m in group.members:
            m.slice().zero_()
    pruned = proxopt.prune_zero_channels(model)
    assert pruned[3].out_channels == 4
    assert pruned[7].in_features == 28
    x = torch.randn(3, 4, 7, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x), rtol=1e-12, atol=1e-12)


def test_mlp_layernorm_ties_its_affine_elements():
    model = _MLP()
    groups = channel_groups(model, torch.randn(2, 6))
    assert [f.name for f in groups] == ["fc1", "fc2"]
    assert groups.outputs == ["head"]
    for c in range(8):
        assert _keys(groups.family("fc1").groups[c]) == _row("fc1", c) + _cols("fc2", c)
    for c in range(5):
        assert _keys(groups.family("fc2").groups[c]) == _row("fc2", c) + _norm("ln", c) + _cols("head", c)
    _check_functional(model, (64, 6), groups.family("fc1").groups[3])  # (not fc2: LayerNorm mixes channels)


def test_residual_adds_tie_their_producers():
    model = _Residual()
    groups = channel_groups(model, torch.randn(1, 3, 6, 6))
    assert [f.name for f in groups] == ["stem+a2+b2", "a1", "b1"]
    tied = groups.family("a2")
    assert tied.producers == ["stem", "a2", "b2"]
    assert len(tied.groups) == 4
    for c in range(4):
        assert sorted(_keys(tied.groups[c])) == sorted(
            _row("stem", c) + _norm("bn0", c) + _cols("a1", c) + _row("a2", c) + _norm("abn2", c)
            + _cols("b1", c) + _row("b2", c) + _norm("bbn2", c) + _cols("head", c)
        )  # fmt: skip
    for c in range(5):
        assert _keys(groups.family("a1").groups[c]) == _row("a1", c) + _norm("abn1", c) + _cols("a2", c)
    shape = (32, 3, 6, 6)
    _check_functional(model, shape, tied.groups[1])
    _check_functional(model, shape, groups.family("b1").groups[0])


def test_concat_keeps_offsets():
    model = _Concat()
    groups = channel_groups(model, torch.randn(1, 3, 8))
    assert [f.name for f in groups] == ["left", "right", "mix"]
    for c in range(4):
        assert _keys(groups.family("left").groups[c]) == _row("left", c) + _norm("lbn", c) + _cols("mix", c)
    for c in range(2):
        assert _keys(groups.family("right").groups[c]) == _row("right", c) + _norm("rbn", c) + _cols("mix", 4 + c)
    for c in range(5):  # view(N, -1) is a flatten: 8 columns per channel
        assert _keys(groups.family("mix").groups[c]) == _row("mix", c) + _norm("mbn", c) + _cols("head", 8 * c, 8)
    stacked = {s.param_name: s for s in groups.family("right").stacked()}
    assert torch.equal(stacked["mix.weight"].index, torch.tensor([[4], [5]]))
    shape = (64, 3, 8)
    _check_functional(model, shape, groups.family("right").groups[1])
    _check_functional(model, shape, groups.family("left").groups[0])


def test_depthwise_separable_passes_the_channel_through():
    model = _separable()
    groups = channel_groups(model, torch.randn(1, 3, 5, 5))
    assert [f.name for f in groups] == ["0", "6"]
    for c in range(4):
        assert _keys(groups.family("0").groups[c]) == (
            _row("0", c) + _norm("1", c) + _row("3", c) + _norm("4", c) + _cols("6", c)
        )
    for c in range(6):
        assert _keys(groups.family("6").groups[c]) == _row("6", c, bias=False) + _norm("7", c) + _cols("11", c)
    shape = (32, 3, 5, 5)
    _check_functional(model, shape, groups.family("0").groups[3])
    _check_functional(model, shape, groups.family("6").groups[2])


def test_family_ties_stacked_index_by_position():
    stacked = {s.param_name: s for s in channel_groups(_Residual(), torch.randn(1, 3, 6, 6)).family("stem").stacked()}
    assert torch.equal(stacked["b2.weight"].index, torch.arange(4).reshape(4, 1))
    assert stacked["b1.weight"].dim == 1
    assert stacked["b2.weight"].dim == 0


# --------------------------------------------------------------------------
# What it refuses
# --------------------------------------------------------------------------


def test_grouped_conv_raises_naming_the_layer():
    model = nn.Sequential(nn.Conv1d(3, 8, 3), nn.ReLU(), nn.Conv1d(8, 4, 3, groups=2), nn.Flatten(), nn.Linear(4 * 6, 2))
    with pytest.raises(ChannelGroupError, match=r"at layer '2' \(Conv1d\): 2 is a grouped convolution \(groups=2"):
        channel_groups(model, torch.randn(1, 3, 10))


def test_attention_matmul_raises():
    with pytest.raises(ChannelGroupError, match=r"at node 'matmul' \(function torch.matmul\)"):
        channel_groups(_Attention(), torch.randn(2, 5, 8))


def test_reshape_that_mixes_channels_raises():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(2, 4, 1)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.conv(x).reshape(x.shape[0], 6, 4))

    with pytest.raises(ChannelGroupError, match=r"node 'reshape' \(method .reshape\(\)\): it reshapes \(1, 4, 6\) to \(1, 6, 4\)"):
        channel_groups(M(), torch.randn(1, 2, 6))


def test_unknown_module_raises():
    model = nn.Sequential(nn.Linear(4, 6), nn.Softmax(dim=-1), nn.Linear(6, 2))
    with pytest.raises(ChannelGroupError, match=r"at layer '1' \(Softmax\): 1 is a Softmax, which channel_groups does not know"):
        channel_groups(model, torch.randn(2, 4))


def test_linear_over_a_non_channel_dim_raises():
    model = nn.Sequential(nn.Conv1d(2, 4, 1), nn.Linear(5, 3))
    with pytest.raises(ChannelGroupError, match=r"the Linear acts on the last dim but the channels are on dim 1"):
        channel_groups(model, torch.randn(1, 2, 5))


def test_training_mode_and_running_stats_are_left_alone():
    model = _kws().train()
    before = model[1].running_mean.clone()
    channel_groups(model, torch.randn(2, 4, 7) + 5)
    assert model.training and model[1].training
    assert torch.equal(model[1].running_mean, before)


def test_exported_from_proxopt():
    assert proxopt.channel_groups is channel_groups


def test_sum_with_a_tensor_from_no_producer_raises():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(3, 3, 1)
            self.head = nn.Conv1d(3, 2, 1)

        def forward(self, x):
            return self.head(self.conv(x) + x)

    with pytest.raises(ChannelGroupError, match=r"at node 'add' \(function operator.add\): it adds channels to a tensor that comes from no producer"):
        channel_groups(M(), torch.randn(1, 3, 4))


def test_project_kws_model():
    from examples.speech.models import kws_cnn

    groups = channel_groups(kws_cnn(), torch.randn(2, 40, 101))
    assert [f.name for f in groups] == ["0", "3", "7", "10", "14", "19"]
    assert groups.outputs == ["22"]
    assert _keys(groups.family("14").groups[159]) == _row("14", 159, bias=False) + _norm("15", 159) + _cols("19", 159)
