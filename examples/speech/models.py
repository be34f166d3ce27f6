"""Small speech models, built as plain ``nn.Sequential`` chains so that
:func:`proxopt.pruning.prune_zero_channels` can cut the output channels a
group lasso zeroed (and the matching inputs of the next layer).

The convolutions use no zero padding ("valid"): a pruned channel whose
output is a nonzero constant (a BatchNorm shift, a bias) can then always be
folded exactly into the next layer's bias.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def _conv_block(c_in: int, c_out: int, k: int, dilation: int = 1, norm: bool = False) -> list[nn.Module]:
    if norm:
        return [nn.Conv1d(c_in, c_out, k, dilation=dilation, bias=False), nn.BatchNorm1d(c_out), nn.ReLU()]
    return [nn.Conv1d(c_in, c_out, k, dilation=dilation), nn.ReLU()]


def kws_cnn(
    n_features: int = 40,
    n_classes: int = 12,
    channels: Sequence[int] = (96, 96, 128, 128, 160),
    kernel: int = 5,
    hidden: int = 128,
    dropout: float = 0.1,
    norm: bool = True,
) -> nn.Sequential:
    """A 1-D (temporal) CNN for keyword spotting on ``[batch, n_features, frames]``.

    Conv1d blocks (conv → BatchNorm → ReLU, or conv(+bias) → ReLU with
    ``norm=False``; max-pooling by 2 after every second block), global
    average pooling over time, then Linear → ReLU → Dropout → Linear. With
    the defaults (40 log-mels, 12 classes) it has about 290k parameters and
    needs at least 33 frames (:func:`min_frames`)."""
    layers: list[nn.Module] = []
    c_in = n_features
    for i, c in enumerate(channels):
        layers += _conv_block(c_in, c, kernel if i < len(channels) - 1 else 3, norm=norm)
        if i % 2 == 1:
            layers.append(nn.MaxPool1d(2))
        c_in = c
    layers += [
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(c_in, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, n_classes),
    ]
    return nn.Sequential(*layers)


def min_frames(model: nn.Sequential) -> int:
    """Frames a :func:`kws_cnn` / :func:`denoiser` needs: the receptive field of its valid convs and pools."""
    need, scale = 1, 1
    for m in model.modules():
        if isinstance(m, nn.Conv1d):
            need += (m.kernel_size[0] - 1) * m.dilation[0] * scale
            scale *= m.stride[0]
        elif isinstance(m, nn.MaxPool1d):
            k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
            s = m.stride if isinstance(m.stride, int) else m.stride[0]
            need += (k - 1) * scale
            scale *= s
    return need


def denoiser(
    n_features: int = 40, channels: Sequence[int] = (128, 128, 128), kernel: int = 5, dilations: Sequence[int] = (1, 2, 4)
) -> nn.Sequential:
    """A frame-wise denoiser: noisy log-mel ``[batch, n_features, frames]`` to
    clean log-mel ``[batch, n_features, frames - context + 1]``.

    Dilated valid Conv1d blocks (conv → BatchNorm → ReLU), a 1x1 conv
    bottleneck and a 1x1 conv to ``n_features``; ``context`` (the receptive
    field, :func:`denoiser_context`) input frames produce one output frame."""
    layers: list[nn.Module] = []
    c_in = n_features
    for c, d in zip(channels, dilations):
        layers += _conv_block(c_in, c, kernel, dilation=d)
        c_in = c
    layers += [nn.Conv1d(c_in, c_in, 1), nn.ReLU(), nn.Conv1d(c_in, n_features, 1)]
    return nn.Sequential(*layers)


def denoiser_context(model: nn.Sequential) -> int:
    """Input frames per output frame of a :func:`denoiser`."""
    return min_frames(model)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
