"""Log-mel / MFCC front ends, normalization and SpecAugment."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from examples.speech.features import (
    MFCC,
    LogMel,
    SpecAugment,
    compute_features,
    dct_matrix,
    mel_filterbank,
    normalize_utterance,
    pad_features,
)


def test_filterbank_is_librosa_s_and_checks_its_range():
    import librosa

    fb = mel_filterbank(22050, 1024, 80, 0.0, 8000.0)
    ref = librosa.filters.mel(sr=22050, n_fft=1024, n_mels=80, fmin=0.0, fmax=8000.0)
    assert fb.shape == (80, 513) and fb.dtype == np.float32
    np.testing.assert_array_equal(fb, ref.astype(np.float32))
    assert (fb.sum(axis=1) > 0).all()  # no empty filter
    with pytest.raises(ValueError, match="fmin"):
        mel_filterbank(16000, 512, 40, fmin=9000)


def test_logmel_and_mfcc_shapes():
    x = torch.randn(3, 16000)
    lm = LogMel()
    y = lm(x)
    assert y.shape == (3, 40, 101) == (3, 40, lm.num_frames(16000)) and torch.isfinite(y).all()
    assert MFCC(n_mfcc=13)(x).shape == (3, 13, 101)
    # batched == one at a time
    torch.testing.assert_close(lm(x[1:2]), y[1:2], rtol=1e-4, atol=1e-4)


def test_logmel_matches_librosa_melspectrogram():
    import librosa

    x = torch.randn(16000)
    ref = librosa.feature.melspectrogram(
        y=x.numpy(), sr=16000, n_fft=512, win_length=400, hop_length=160, n_mels=40, fmin=20.0, center=True, pad_mode="reflect", power=2.0
    )
    np.testing.assert_allclose(LogMel()(x)[0].numpy(), np.log(ref + 1e-6), atol=1e-4)


def test_dct_is_orthonormal():
    d = dct_matrix(40, 40).double()
    torch.testing.assert_close(d @ d.T, torch.eye(40, dtype=torch.float64), atol=1e-6, rtol=0)


def test_normalize_utterance():
    x = torch.randn(2, 5, 50) * 3 + 7
    y = normalize_utterance(x)
    torch.testing.assert_close(y.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(-1, unbiased=False), torch.ones(2, 5), atol=1e-3, rtol=0)
    lengths = torch.tensor([50, 20])
    z = normalize_utterance(x, lengths)
    assert (z[1, :, 20:] == 0).all()
    torch.testing.assert_close(z[1, :, :20].mean(-1), torch.zeros(5), atol=1e-5, rtol=0)


def test_compute_and_pad_features():
    waves = [np.random.default_rng(i).standard_normal(n).astype(np.float32) for i, n in enumerate((16000, 8000, 20000))]
    f = compute_features(waves, LogMel(), num_samples=16000, batch_size=2)
    assert f.shape == (3, 40, 101)
    torch.testing.assert_close(f[2:], compute_features(waves[2:], LogMel(), num_samples=16000), rtol=1e-4, atol=1e-4)
    p = pad_features([np.ones((10, 4), np.float32) * np.arange(4), np.random.rand(30, 4).astype(np.float32)], num_frames=20)
    assert p.shape == (2, 4, 20)


def test_specaugment():
    x = torch.randn(4, 40, 101)
    sa = SpecAugment(generator=torch.Generator().manual_seed(0))
    y1 = sa(x)
    sa.generator = torch.Generator().manual_seed(0)
    assert torch.equal(y1, sa(x))  # reproducible from the generator
    assert (y1 == 0).any() and (y1 != x).any()
    assert torch.equal(sa.eval()(x), x)  # identity in eval mode
