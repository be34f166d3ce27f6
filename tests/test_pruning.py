"""proxopt.pruning.prune_zero_channels: smaller model, same outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import proxopt
from proxopt.pruning import PruningError, prune_zero_channels
from examples.speech.models import denoiser, kws_cnn


def _randomize_norms(model: nn.Module, g: torch.Generator) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)


def _zero_rows(layer: nn.Module, rows) -> None:
    with torch.no_grad():
        layer.weight[list(rows)] = 0


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _check_equal(model, pruned, x, atol=1e-5):
    model.eval()
    pruned.eval()
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x), atol=atol, rtol=1e-4)


def test_conv2d_bn_flatten_linear_chain(rng):
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Conv2d(8, 16, 3, bias=False),
        nn.BatchNorm2d(16),
        nn.GELU(),
        nn.Conv2d(16, 12, 3, padding=1),  # zero padding: nonzero constants into it must stay
        nn.BatchNorm2d(12),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(12 * 3 * 3, 20),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(20, 5),
    )
    _randomize_norms(model, rng)
    _zero_rows(model[0][0], [1, 4])
    _zero_rows(model[1], [0, 3, 5, 15])
    _zero_rows(model[4], [2, 7])
    _zero_rows(model[8], [0, 1, 19])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned, report = prune_zero_channels(model, report=True)
    assert _params(pruned) < _params(model) and report.params_after == _params(pruned)
    assert pruned[0][0].out_channels == 6 and pruned[0][1].num_features == 6 and pruned[1].in_channels == 6
    assert pruned[1].out_channels + len(report.layers[1].removed) == 16 and len(report.layers[1].kept_zero) > 0
    assert pruned[4].in_channels == pruned[1].out_channels and pruned[4].out_channels == 10
    assert pruned[8].in_features == 10 * 9 and pruned[8].out_features == 17 and pruned[11].in_features == 17
    assert pruned[1].bias is not None  # BN constants of removed channels were folded into a new bias
    assert sum(len(lp.folded) for lp in report.layers) > 0
    _check_equal(model, pruned, torch.randn(7, 3, 12, 12, generator=rng))
    # the input model is untouched
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert "params" in report.table() and report.to_dict()["params_after"] == _params(pruned)


def test_linear_chain_with_bias_constants_is_folded(rng):
    model = nn.Sequential(
        nn.Linear(10, 32), nn.LeakyReLU(0.1), nn.Linear(32, 32), nn.PReLU(32), nn.Linear(32, 16), nn.Sigmoid(), nn.Linear(16, 3)
    )
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.bias.uniform_(-1, 1, generator=rng)
        model[3].weight.uniform_(0.05, 0.5, generator=rng)
    _zero_rows(model[0], range(0, 32, 3))
    _zero_rows(model[2], [1, 2, 3, 30])
    _zero_rows(model[4], [0, 15])
    pruned, report = prune_zero_channels(model, report=True)
    assert [m.out_features for m in pruned if isinstance(m, nn.Linear)] == [21, 28, 14, 3]
    assert pruned[3].num_parameters == 28
    assert sum(len(lp.folded) for lp in report.layers) == 11 + 4 + 2  # every removed channel had a nonzero constant
    _check_equal(model, pruned, torch.randn(9, 10, generator=rng))


def test_kws_cnn_and_denoiser(rng):
    for model, x in ((kws_cnn(20, 5, channels=(16, 16, 24, 24, 32), hidden=24), torch.randn(4, 20, 60, generator=rng)),
                     (denoiser(20, channels=(24, 24, 24)), torch.randn(4, 20, 40, generator=rng))):  # fmt: skip
        _randomize_norms(model, rng)
        convs = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Linear))]
        for layer in convs[:-1]:
            _zero_rows(layer, range(0, layer.weight.shape[0], 2))
        pruned = prune_zero_channels(model)
        assert _params(pruned) < 0.6 * _params(model)
        _check_equal(model, pruned, x)


def test_unchanged_without_zero_channels(rng):
    model = kws_cnn(20, 5, channels=(16, 16, 24, 24, 32), hidden=24)
    with torch.no_grad():
        model[0].weight[0, 0, 0] = 0  # a zero weight, but no all-zero channel
    pruned, report = prune_zero_channels(model, report=True)
    assert pruned is not model
    assert str(pruned) == str(model) and _params(pruned) == _params(model)
    sd = model.state_dict()
    assert pruned.state_dict().keys() == sd.keys()
    for k, v in pruned.state_dict().items():
        assert torch.equal(v, sd[k])
    assert all(lp.channels_after == lp.channels_before and not lp.removed for lp in report.layers)


def test_zero_padding_keeps_nonzero_constants(rng):
    # a zero row with a bias feeds a zero-padded conv: folding would be wrong at the borders
    model = nn.Sequential(nn.Conv1d(4, 6, 3), nn.ReLU(), nn.Conv1d(6, 5, 3, padding=1), nn.ReLU(), nn.Conv1d(5, 2, 1))
    with torch.no_grad():
        model[0].bias.copy_(torch.tensor([0.5, 0.5, -1.0, 0.3, 0.3, 0.3]))
        model[2].bias.fill_(0.2)
    _zero_rows(model[0], [0, 2])  # channel 0: relu(0.5) = 0.5 (kept), channel 2: relu(-1) = 0 (removed)
    _zero_rows(model[2], [4])  # constant relu(0.2) into an unpadded 1x1 conv: folded
    pruned, report = prune_zero_channels(model, report=True)
    assert pruned[0].out_channels == 5 and pruned[2].out_channels == 4
    first = report.layers[0]
    assert first.removed == [2] and 0 in first.kept_zero and "zero-padded" in first.kept_zero[0]
    _check_equal(model, pruned, torch.randn(3, 4, 17, generator=rng))
    # replicate padding keeps constants constant: folded
    model[2].padding_mode = "replicate"
    pruned = prune_zero_channels(model)
    assert pruned[0].out_channels == 4
    _check_equal(model, pruned, torch.randn(3, 4, 17, generator=rng))


def test_barriers_and_last_layer(rng):
    model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 4), nn.AvgPool1d(1), nn.Linear(4, 3))
    _zero_rows(model[0], [1, 2])  # into a LayerNorm: kept
    _zero_rows(model[5], [0])  # the model's own outputs: kept
    pruned, report = prune_zero_channels(model, report=True)
    assert pruned[0].out_features == 8 and pruned[5].out_features == 3
    assert "LayerNorm" in report.layers[0].kept_zero[1] and "last layer" in report.layers[-1].kept_zero[0]
    _check_equal(model, pruned, torch.randn(5, 6, generator=rng))
    # AvgPool counting zero padding: only zero constants may go
    m2 = nn.Sequential(nn.Conv1d(3, 4, 3), nn.AvgPool1d(3, padding=1), nn.Conv1d(4, 2, 1))
    with torch.no_grad():
        m2[0].bias.copy_(torch.tensor([0.0, 1.0, 2.0, 3.0]))
    _zero_rows(m2[0], [0, 1])
    p2 = prune_zero_channels(m2)
    assert p2[0].out_channels == 3
    _check_equal(m2, p2, torch.randn(2, 3, 11, generator=rng))


def test_every_channel_zero_keeps_one(rng):
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))
    _zero_rows(model[0], range(4))
    pruned = prune_zero_channels(model)
    assert pruned[0].out_features == 1 and pruned[2].in_features == 1
    _check_equal(model, pruned, torch.randn(3, 5, generator=rng))


def test_batchnorm_without_running_stats(rng):
    model = nn.Sequential(nn.Conv1d(3, 6, 3), nn.BatchNorm1d(6, track_running_stats=False), nn.ReLU(), nn.Conv1d(6, 2, 1))
    _randomize_norms(model, rng)
    _zero_rows(model[0], [0, 5])
    pruned = prune_zero_channels(model)
    assert pruned[0].out_channels == 4
    _check_equal(model, pruned, torch.randn(4, 3, 9, generator=rng))


def test_unsupported_structures_raise():
    class Block(nn.Module):
        def forward(self, x):
            return x * 2

    class Residual(nn.Sequential):
        def forward(self, x):
            return x + super().forward(x)

    with pytest.raises(PruningError, match="supports nn.Sequential"):
        prune_zero_channels(nn.Linear(3, 3))
    model = nn.Sequential(nn.Linear(4, 6), Block(), nn.Linear(6, 2))
    _zero_rows(model[0], [0])
    with pytest.raises(PruningError, match="Block"):
        prune_zero_channels(model)
    kept = prune_zero_channels(model, strict=False)
    assert kept[0].out_features == 6
    # an unknown module is fine where no channel would pass through it
    model2 = nn.Sequential(nn.Linear(4, 6), Block(), nn.Linear(6, 2))
    assert prune_zero_channels(model2)[0].out_features == 6
    with pytest.raises(PruningError, match="overrides"):
        prune_zero_channels(nn.Sequential(Residual(nn.Linear(3, 3)), nn.Linear(3, 2)))
    shared = nn.Linear(3, 3)
    with pytest.raises(PruningError, match="same object"):
        prune_zero_channels(nn.Sequential(shared, nn.ReLU(), shared))


def test_group_lasso_trained_model_prunes_exactly(rng):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(8, 32, 3), nn.BatchNorm1d(32), nn.ReLU(), nn.Conv1d(32, 32, 3), nn.ReLU(),
                          nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(32, 3))  # fmt: skip
    x = torch.randn(64, 8, 20, generator=rng)
    y = torch.randint(0, 3, (64,), generator=rng)
    opt = proxopt.AdamW(proxopt.param_groups(model, group_lasso=0.5, weight_decay=0.0), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    rep = proxopt.sparsity(model)
    zero_channels = sum(p.zero_groups.get(0, (0, 0))[0] for p in rep.params if len(p.shape) >= 2)
    assert zero_channels > 0
    pruned = prune_zero_channels(model)
    assert _params(pruned) < _params(model)
    _check_equal(model, pruned, x)


def _tied_chain():
    """Linear 0 -> ReLU -> Linear 2 -> ReLU -> Linear 4, the weights of 0 and 2 one tensor."""
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    model[2].weight = model[0].weight
    _zero_rows(model[0], [1])
    return model


def test_tied_weights_raise_naming_both_modules(rng):
    model = _tied_chain()
    before = {n: p.detach().clone() for n, p in model.named_parameters(remove_duplicate=False)}
    with pytest.raises(PruningError, match=r"0\.weight and 2\.weight are one tensor \(tied weights\)"):
        prune_zero_channels(model)
    assert model[2].weight is model[0].weight  # the input is untouched
    for n, p in model.named_parameters(remove_duplicate=False):
        assert torch.equal(p, before[n]), n
    # strict=False keeps those channels, and the copy stays tied
    pruned, report = prune_zero_channels(model, strict=False, report=True)
    assert pruned[2].weight is pruned[0].weight and pruned[0].out_features == 4
    reason = "0.weight and 2.weight are one tensor (tied weights), which pruning 0 would untie"
    assert report.layers[0].kept_zero == {1: reason}
    _check_equal(model, pruned, torch.randn(3, 4, generator=rng))


def test_tie_elsewhere_does_not_block_pruning(rng):
    # a tied tensor that pruning never touches (a later pair of layers) is no obstacle
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(),
                          nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))  # fmt: skip
    model[6].weight = model[4].weight
    _zero_rows(model[0], [2])
    pruned = prune_zero_channels(model)
    assert pruned[0].out_features == 4 and pruned[2].in_features == 4
    assert pruned[6].weight is pruned[4].weight
    _check_equal(model, pruned, torch.randn(3, 3, generator=rng))


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op")
def test_empty_weights_are_measured_not_reshaped(rng):
    # reshape(n, -1) of a tensor with no elements is ambiguous; a width-0 layer must not crash
    model = nn.Sequential(nn.Linear(4, 0), nn.ReLU(), nn.Linear(0, 2))
    pruned, report = prune_zero_channels(model, report=True)
    assert [(lp.channels_before, lp.channels_after) for lp in report.layers] == [(0, 0), (2, 2)]
    _check_equal(model, pruned, torch.randn(3, 4, generator=rng))
