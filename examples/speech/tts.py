"""Speech synthesis (phonemes → log-mel) with the regularizers synthesis
recipes use, trained side by side with the same seeds, data order and
learning-rate schedule; only the regularization differs:

=================  ==========================================================
run                what
=================  ==========================================================
``dense``          ``torch.optim.AdamW`` (no weight decay), no penalty
``l2-loss``        the same + λ₂/2·Σ‖w‖² in the loss
                   (``proxopt.penalties.l2_penalty``): the articles' recipe
``prox-l2``        ``proxopt.AdamW(l2=λ₂, prox_metric=...)``: the ridge prox
``weight-decay``   ``torch.optim.AdamW(weight_decay=λ_wd)``: decoupled decay
``prox-maxnorm``   ``proxopt.AdamW(max_norm=c)``: every output row's norm ≤ c
``clamp-maxnorm``  torch AdamW, then ``p.renorm_(2, 0, c)`` over the weights
                   after each ``opt.step()`` (the usual Python loop)
``prox-bounds``    ``proxopt.AdamW(bounds=(-b, b))``: every weight in [-b, b]
``clamp-bounds``   torch AdamW, then ``p.clamp_(-b, b)`` after each step
``prox-sgl``       ``proxopt.AdamW(l1=λ₁, group_lasso=λ_g)``: sparse group
                   lasso (exact zeros, whole channels), then
                   :meth:`ProsodyTTS.pruned` and its speed
``kl``             torch AdamW + β·KL(q(z | mel) ‖ N(0, I)) in the loss
                   (``proxopt.penalties.gaussian_kl_penalty``): the
                   variational prosody latent regularized
=================  ==========================================================

    python -m examples.speech.tts                       # the espeak-ng corpus (synthesized once, cached)
    python -m examples.speech.tts --data mine.npz --epochs 30 --out runs/tts

The regularized tensors are the Conv/Linear weights, chosen by
:func:`proxopt.param_groups` (biases and embeddings excluded); in
``prox-sgl`` the decoder's output convolution (whose rows are mel bands) is
grouped by its input channels (``group_dim=1``). The model is
:class:`examples.speech.tts_model.ProsodyTTS`; the loss is the L1 distance to
the target log-mel, standardized per mel band with the training set's
statistics, over the utterances' frames. The data is a corpus of
:mod:`examples.speech.tts_corpus`.

Held-out metrics (each utterance alone; prosody latent = the prior's mean,
as at inference; for unseen voices the speaker vector is the mean of the
trained speakers' embeddings): log-mel L1 and MSE (natural-log mel power,
per frame and band) and the mel-cepstral distortion (:func:`examples.speech.tts_metrics.mcd`). Also the
KL of the posterior on held-out utterances, exact zeros and all-zero output
channels of the regularized weights, the largest row norm and |w| (the
ranges asked for, checked), the optimizer-step time (``opt.step()``, plus
the renorm/clamp loop in the clamp runs: it is part of the step it
replaces) and the training time. Writes ``tts.txt`` (table), ``tts.json``
(everything), ``tts.png`` (metrics), ``tts_spectrograms.png`` (target vs
predicted mels of held-out utterances) and ``wav/*.wav`` (Griffin-Lim of the
predicted and of the target mels) to ``--out``.

Choice of the strengths (defaults): from sweeps of 12-epoch runs on the
default corpus (dense: held-out L1 1.38, ‖w‖₂ 25, posterior KL 27 nats), each
should visibly act while the held-out L1 stays within ~10 % of dense.
λ₂ = 3e-4 for l2-loss and prox-l2 (``adaptive`` metric: the ridge threshold
lr·λ₂/√v̂ is the prox counterpart of a loss gradient λ₂w divided by Adam's
√v̂); at 1e-3 they cut ‖w‖₂ from 25 to 9.6 / 8.0 but cost 10 % / 18 % L1.
λ_wd = 0.5: AdamW's decoupled decay lr·λ_wd per step is tiny over ~340
steps (0.1 moved ‖w‖₂ by 3 %). c = 0.6 is about the norm of a freshly
initialized row (PyTorch's uniform init gives rows of norm ≈ 1/√3 whatever
the fan-in), so the limit binds the rows that training grows (+3 % L1);
b = 0.06 binds the largest weights (+3 % L1). Sparse group lasso λ₁ = 0.01,
λ_g = 0.08 (euclidean thresholds lr·λ): (0.02, 0.15) zeroed 137 of 992
channels and 23 % of the weights but cost 29 % L1. β = 1e-3 for the KL:
0.05 and 0.01 collapse the posterior (KL → 0; the prior then gives a better
held-out L1 than dense, whose decoder relies on a latent the prior does not
match), 1e-3 nearly so.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import cli
from . import tts_corpus as C
from .espeak import EspeakUnavailableError
from .reports import Column, results_table, write_reports
from .tts_data import TTSData
from .tts_figures import plot_results, plot_spectrograms, showcase, write_wavs
from .tts_model import ProsodyTTS
from .tts_runs import BOUNDS_RUNS, DEFAULTS, MAX_NORM_RUNS, RUN_LABELS, RUN_NAMES, TTSConfig, parse_runs, train_run


def _held(r) -> str:
    return "" if r.range_held is None else (" ✓" if r.range_held else " ✗")


COLUMNS: list[Column] = [
    ("run", lambda r: r.run),
    ("optimizer / regularizer", lambda r: r.label),
    ("L1", lambda r: f"{r.metrics['test_sentences']['l1']:.4f}"),
    ("MSE", lambda r: f"{r.metrics['test_sentences']['mse']:.4f}"),
    ("MCD dB", lambda r: f"{r.metrics['test_sentences']['mcd']:.2f}"),
    ("MCD unseen voices", lambda r: f"{r.metrics['test_voices']['mcd']:.2f}"),
    ("KL", lambda r: f"{r.metrics['test_sentences']['kl']:.2f}"),
    ("zeros", lambda r: f"{r.weight_zero_fraction:.2%}"),
    ("zero ch.", lambda r: f"{r.zero_channels}/{r.channels}"),
    ("‖w‖₂", lambda r: f"{r.weight_norm:.1f}"),
    ("max ‖row‖", lambda r: f"{r.max_row_norm:.3f}" + (_held(r) if r.run in MAX_NORM_RUNS else "")),
    ("max |w|", lambda r: f"{r.max_abs_weight:.4f}" + (_held(r) if r.run in BOUNDS_RUNS else "")),
    ("step ms", lambda r: f"{r.step_ms:.2f}"),
    ("train s", lambda r: f"{r.train_time_s:.1f}"),
    ("params → pruned", lambda r: f"{r.params} → {r.pruned_params}"),
]


def report(results, data: TTSData, out: Path, config: dict, extra: dict, show: Sequence[str], picks, n_iter: int) -> dict[str, Any]:
    """``tts.txt``, ``tts.json``, ``tts.png``, ``tts_spectrograms.png`` and the WAVs in ``out``."""
    shown = [r for r in results if r.run in show]
    figures = {"png": lambda path: plot_results(results, path, config.get("title", ""))}
    if picks:
        figures["spectrograms"] = lambda path: plot_spectrograms(shown, data, picks, path)
    payload = {"config": config, "runs": [r.to_dict() for r in results], **extra}
    paths = write_reports(out, "tts", results_table(results, COLUMNS), payload, figures)
    if picks:
        paths["wavs"] = write_wavs(shown, data, picks, out / "wav", n_iter)
    return paths


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m examples.speech.tts",
        description="Phonemes → log-mel synthesis: dense vs L2 (loss / prox / decay), weight-range limits "
        "(prox / clamp loop), sparse group lasso and KL regularization, side by side.",
    )
    p.add_argument("--data", help="synthesis corpus .npz (default: the espeak-ng corpus, synthesized once and cached)")
    p.add_argument("--tiny-corpus", action="store_true", help="the tiny espeak-ng corpus (4 voices, 16 sentences)")
    p.add_argument("--runs", default=",".join(RUN_NAMES), help=f"comma list of {', '.join(RUN_NAMES)}")
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="peak learning rate (linear warmup, cosine decay)")
    p.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    p.add_argument("--l2", type=float, default=DEFAULTS["l2"], help="λ₂ of l2-loss and prox-l2")
    p.add_argument("--prox-metric", choices=("adaptive", "euclidean"), default="adaptive", help="prox_metric of prox-l2")
    p.add_argument("--weight-decay", type=float, default=DEFAULTS["weight_decay"], help="λ of the weight-decay run")
    p.add_argument("--max-norm", type=float, default=DEFAULTS["max_norm"], help="c: the row-norm limit")
    p.add_argument("--bound", type=float, default=DEFAULTS["bound"], help="b: weights limited to [-b, b]")
    p.add_argument("--l1", type=float, default=DEFAULTS["l1"], help="λ₁ of prox-sgl")
    p.add_argument("--group-lasso", type=float, default=DEFAULTS["group_lasso"], help="λ_g of prox-sgl")
    p.add_argument("--kl", type=float, default=DEFAULTS["kl"], help="β of the kl run")
    p.add_argument("--dim", type=int, default=DEFAULTS["dim"], help="model width")
    p.add_argument("--latent-dim", type=int, default=8, help="prosody latent dimensions")
    p.add_argument("--layers", type=int, default=3, help="conv layers of the encoder and of the decoder")
    p.add_argument("--show", default="dense,kl,prox-sgl", help="runs in the spectrogram figure and the WAVs")
    p.add_argument("--examples", type=int, default=3, help="held-out utterances to plot and render")
    p.add_argument("--griffin-lim-iters", type=int, default=32)
    p.add_argument("--out", default=DEFAULTS["out"], help="output directory (default %(default)s)")
    cli.add_run_args(p)
    return p


def load_data(args, log) -> C.TTSCorpus:
    if args.data:
        return C.load_tts_corpus(args.data)
    spec = (C.tiny_tts_spec() if args.tiny_corpus else C.TTSSpec()).with_(seed=args.seed)
    return C.load_tts_corpus(C.synthesize_tts_corpus(spec, cache_dir=args.cache, log=log))


def main(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    try:
        runs = parse_runs(args.runs)
        show = parse_runs(args.show, "--show") if args.show else []
    except ValueError as e:
        p.error(str(e))
    log = cli.start(args)
    cfg = TTSConfig(
        lr=args.lr, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, l2=args.l2, prox_metric=args.prox_metric,
        weight_decay=args.weight_decay, max_norm=args.max_norm, bound=args.bound, l1=args.l1,
        group_lasso=args.group_lasso, kl=args.kl, log=log,
    )  # fmt: skip
    try:
        cfg.check()
    except ValueError as e:
        p.error(str(e))
    t_all = time.perf_counter()
    try:
        corpus = load_data(args, log)
    except EspeakUnavailableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    data = TTSData.from_corpus(corpus, seed=args.seed)
    log(f"[tts] {data.corpus.summary()}")

    def make_model() -> ProsodyTTS:
        return ProsodyTTS(
            data.n_phonemes, len(corpus.speaker_names), corpus.mel.n_mels, dim=args.dim,
            encoder_layers=args.layers, decoder_layers=args.layers, latent_dim=args.latent_dim,
        )  # fmt: skip

    n_params = sum(q.numel() for q in make_model().parameters())
    log(f"[tts] model ProsodyTTS: {n_params} params")
    results = []
    for run in runs:
        log(f"[tts] run {run}: {RUN_LABELS[run]}")
        results.append(train_run(run, data, make_model, cfg))
    picks = showcase(data, args.examples)
    info = {
        "corpus": corpus.path,
        "summary": data.corpus.summary(),
        "splits": {k: len(v) for k, v in data.splits.items()},
        "held_out_voices": [corpus.speaker_names[i] for i in data.corpus.held_out_speakers],
        "model_params": n_params,
        "shown": [{"split": s, "utterance": i} for s, i in picks],
    }
    config = {k: v for k, v in vars(args).items()}
    config["title"] = (
        f"TTS, {info['splits']['train']} train utterances, held out {info['splits']['test_sentences']} unseen-sentence / "
        f"{info['splits']['test_voices']} unseen-voice, {args.epochs} epochs, seed {args.seed}"
    )
    paths = report(results, data, Path(args.out), config, {"data": info}, show, picks, args.griffin_lim_iters)
    total = time.perf_counter() - t_all
    Path(paths["json"]).write_text(json.dumps({**json.loads(Path(paths["json"]).read_text()), "wall_time_s": total}, indent=2))
    print(results_table(results, COLUMNS))
    print(
        "\nheld-out metrics: log-mel L1 / MSE / MCD of unseen sentences (seen voices) and MCD of unseen voices, prior latent; "
        "KL per utterance; zeros / zero channels of the regularized weights; step = opt.step() (+ clamp loop)."
    )
    for r in results:
        if r.range_held is not None:
            what = f"max ‖row‖ {r.max_row_norm:.6f} ≤ c = {cfg.max_norm}" if r.run in MAX_NORM_RUNS else f"max |w| {r.max_abs_weight:.6f} ≤ b = {cfg.bound}"
            print(f"  range {r.run:13s} {what}: {'held' if r.range_held else 'VIOLATED'}")
    for r in results:
        if r.pruned_params < r.params:
            i = r.infer_ms
            print(
                f"  pruned {r.run}: params {r.params} -> {r.pruned_params}, batch of {i.get('batch')} "
                f"{i.get('before_batch_ms', float('nan')):.2f} -> {i.get('after_batch_ms', float('nan')):.2f} ms, "
                f"max |output diff| {r.pruned_max_abs_diff:.1e}"
            )
    files = [str(v) for k, v in paths.items() if k != "wavs"]
    print(f"\nwrote {', '.join(files)} and {len(paths.get('wavs', []))} WAVs in {Path(args.out) / 'wav'}  (total {total:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
