"""Speech enhancement as regression: predict clean log-mel frames from noisy
ones with an MSE loss, and compare the same runs as the keyword spotter
(dense, L1 in the loss, proxopt's proximal L1 and group lasso, magnitude
pruning) by validation loss and sparsity; with target sparsities, proxopt
against magnitude pruning at equal sparsity (:mod:`examples.speech.sweep`).

    python -m examples.speech.denoise                     # clean espeak-ng speech (cached)
    python -m examples.speech.denoise --data clean.npz --epochs 20
    python -m examples.speech.denoise --sparsity 0.8,0.9,0.95 --channel-sparsity 0.3,0.5 --seeds 0,1 --out runs/denoise_sweep

``--data`` must hold clean ``audio`` (format of :mod:`examples.speech.data`;
``groups`` = speakers, held out for validation). Each clip is mixed with
white, pink or brown noise at an SNR drawn from ``--snr`` (deterministic
from ``--seed``); both versions go through the same log-mel front end, and
are standardized with the mean and deviation per mel band of the noisy
training features. The model (:func:`examples.speech.models.denoiser`) maps
``context`` noisy frames to one clean frame; the loss is the MSE over every
output frame and band, in standardized units. The table also gives the
validation MSE of the identity (the noisy input itself) for scale. The
primary metric is the validation loss: lower is better, in the verdicts and
the curves too. Writes ``denoise.txt``, ``denoise.json`` and
``denoise.png`` to ``--out``. The sweep above (2 seeds, 22 runs of 20
epochs) takes an estimated 15-25 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import data as D
from .features import LogMel, compute_features
from .models import count_params, denoiser, denoiser_context
from .runs import Task
from .sweep_command import add_args, load_corpus, run_command

DEFAULTS = dict(lr=3e-3, weight_decay=1e-2, l1=1e-4, group_lasso=0.1, epochs=20, batch_size=32, out="runs/denoise")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m examples.speech.denoise",
        description="Log-mel denoising (MSE): dense vs L1 in the loss vs proxopt's proximal L1 and group lasso; "
        "with --sparsity/--channel-sparsity, proxopt vs magnitude pruning at equal sparsity.",
    )
    add_args(p, DEFAULTS)
    p.add_argument("--snr", type=float, nargs=2, default=(0.0, 15.0), metavar=("LO", "HI"), help="SNR range (dB) of the mixed noise")
    p.add_argument("--n-mels", type=int, default=40)
    p.add_argument("--channels", default="128,128,128", help="conv widths of the denoiser")
    p.add_argument("--tiny-corpus", action="store_true", help="synthesize a small corpus (4 words, 8 speakers)")
    return p


def load_clean(args, log) -> D.Corpus:
    corpus = load_corpus(args, D.SynthSpec(seed=args.seed, noise=False, silence=False, reps=2), "denoise", log)
    if corpus.audio is None:
        raise D.CorpusFormatError(f"{args.data}: the denoising pipeline needs clean 'audio' (+ 'sample_rate'), not only 'features'")
    return corpus


def mix(corpus: D.Corpus, snr: tuple[float, float], seed: int) -> list[np.ndarray]:
    """Each clean clip plus white/pink/brown noise at an SNR in ``snr`` dB."""
    noisy = []
    for i, w in enumerate(corpus.audio):
        rng = np.random.default_rng([seed, 7, i])
        noisy.append(D.add_noise(w, rng, snr)[0])
    return noisy


def make_task(corpus: D.Corpus, args, log=print) -> tuple[Task, dict]:
    t0 = time.perf_counter()
    front = LogMel(corpus.sample_rate, n_mels=args.n_mels)
    n = max(len(w) for w in corpus.audio)
    clean = compute_features(corpus.audio, front, num_samples=n, normalize=False)
    noisy = compute_features(mix(corpus, tuple(args.snr), args.seed), front, num_samples=n, normalize=False)
    train_idx, val_idx = D.split_by_group(corpus, args.test_fraction, seed=args.seed)
    mean = noisy[train_idx].mean(dim=(0, 2), keepdim=True)
    std = noisy[train_idx].std(dim=(0, 2), keepdim=True) + 1e-5
    noisy, clean = (noisy - mean) / std, (clean - mean) / std
    channels = tuple(int(c) for c in args.channels.split(","))

    def make_model():
        return denoiser(args.n_mels, channels=channels)

    ctx = denoiser_context(make_model())
    half = ctx // 2
    if noisy.shape[2] < ctx:
        raise ValueError(f"utterances have {noisy.shape[2]} frames; the denoiser needs at least {ctx}")
    target = clean[:, :, half : noisy.shape[2] - (ctx - 1 - half)]
    xtr, ytr = noisy[train_idx], target[train_idx]
    xva, yva = noisy[val_idx], target[val_idx]
    identity = float(F.mse_loss(xva[:, :, half : xva.shape[2] - (ctx - 1 - half)], yva))
    log(
        f"[denoise] log-mel {tuple(noisy.shape)}, context {ctx} frames ({time.perf_counter() - t0:.1f}s); "
        f"train {len(xtr)} / validation {len(xva)} clips; model {count_params(make_model())} params; "
        f"identity (noisy) validation MSE {identity:.4f}"
    )

    @torch.no_grad()
    def evaluate(model):
        loss = 0.0
        for s in range(0, len(xva), 256):
            loss += float(F.mse_loss(model(xva[s : s + 256]), yva[s : s + 256], reduction="sum"))
        return {"val_loss": loss / yva.numel()}

    task = Task(
        name="denoise",
        make_model=make_model,
        train_x=xtr,
        train_y=ytr,
        loss=F.mse_loss,
        evaluate=evaluate,
        primary="val_loss",
        higher_is_better=False,
        bench_input=xva[:32],
    )
    info = {
        "corpus": corpus.path,
        "n_train": len(xtr),
        "n_val": len(xva),
        "context_frames": ctx,
        "identity_val_loss": identity,
        "snr_db": list(args.snr),
        "model_params": count_params(make_model()),
    }
    return task, info


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    done = run_command(args, load_clean, make_task, "denoise", lambda info: f"denoising, {info['n_train']} train / {info['n_val']} validation clips, {args.epochs} epochs")
    if done is None:
        return 2
    results, info, paths, total = done
    print(f"\nidentity (noisy input) validation MSE: {info['identity_val_loss']:.4f}")
    print(f"\nwrote {', '.join(str(p) for p in paths.values())}  (total {total:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
