"""Speech recipes that use proxopt: applications beside the library, not part
of the installed package. Run them from the repository root
(``python -m examples.speech.kws``); they need the ``speech`` extra and
espeak-ng.

Recognition and enhancement (a synthetic keyword-spotting corpus made with
espeak-ng, or your own ``.npz``): dense training, an L1 penalty in the loss,
proxopt's proximal L1 and group lasso, and gradual magnitude pruning, side by
side, at fixed strengths or at sparsity targets (accuracy–sparsity curves).
Synthesis: a FastSpeech-style phonemes → log-mel model trained with the
regularizers synthesis recipes use.

Modules (import them directly; nothing heavy is imported here). The core
every recipe shares, on top of the library:

* :mod:`examples.speech.espeak`       -- espeak-ng: its binary (KWS corpus) and its C library (phoneme events);
* :mod:`examples.speech.corpus_cache` -- the cache of synthesized corpora, keyed by a hash of their spec;
* :mod:`examples.speech.corpus_files` -- the format error naming the file, ``.npz`` reading and atomic writing;
* :mod:`examples.speech.training`     -- the one training loop (:func:`fit`) and a run's :class:`Regime`;
* :mod:`examples.speech.zeros`        -- exact zeros and all-zero channels, counted by :func:`proxopt.sparsity`;
* :mod:`examples.speech.results`      -- the one result type, :class:`RunResult`;
* :mod:`examples.speech.reports`      -- the text table, the JSON and the figures' writer;
* :mod:`examples.speech.inference`    -- CPU inference time before / after pruning;
* :mod:`examples.speech.optimizers`   -- torch and proxopt optimizer families, torch-ready param groups;
* :mod:`examples.speech.cli`          -- what the commands share: run lists, threads, progress.

Recognition and enhancement:

* :mod:`examples.speech.data`          -- the ``.npz`` interchange format, speaker-disjoint splits, the espeak-ng corpus;
* :mod:`examples.speech.features`      -- resampling, :class:`LogMel`, :class:`MFCC`, per-utterance normalization, :class:`SpecAugment`;
* :mod:`examples.speech.models`        -- the KWS CNN and the denoiser (plain ``nn.Sequential``);
* :mod:`examples.speech.layers`        -- which layers are regularized, which channels may be removed;
* :mod:`examples.speech.magnitude`     -- the baselines: gradual global and channel magnitude pruning;
* :mod:`examples.speech.runs`          -- the runs (dense, l1-loss, prox-l1, prox-group, magnitude ...) as regimes;
* :mod:`examples.speech.sweep`         -- the plan over targets and seeds, curves, verdicts;
* :mod:`examples.speech.sweep_report`  -- the sweep's table, figures and files;
* :mod:`examples.speech.sweep_command` -- the options and flow of ``kws`` and ``denoise``;
* :mod:`examples.speech.kws`, :mod:`examples.speech.denoise` -- the commands.

Synthesis:

* :mod:`examples.speech.tts_corpus`  -- phonemes, espeak-ng's own durations and log-mels; its ``.npz`` format;
* :mod:`examples.speech.tts_data`    -- the corpus as standardized tensors and batches;
* :mod:`examples.speech.tts_model`   -- the FastSpeech-style acoustic model with a variational latent;
* :mod:`examples.speech.tts_metrics` -- masked L1, MCD and the held-out metrics;
* :mod:`examples.speech.tts_runs`    -- the synthesis runs as regimes, trained by the one loop;
* :mod:`examples.speech.tts_figures` -- metrics, spectrograms and Griffin-Lim WAVs;
* :mod:`examples.speech.tts`         -- ``python -m examples.speech.tts``.
"""

from __future__ import annotations

__all__ = [
    "espeak", "corpus_cache", "corpus_files", "training", "zeros", "results", "reports", "inference", "optimizers", "cli",
    "data", "features", "models", "layers", "magnitude", "runs", "sweep", "sweep_report", "sweep_command", "kws", "denoise",
    "tts_corpus", "tts_data", "tts_model", "tts_metrics", "tts_runs", "tts_figures", "tts",
]  # fmt: skip
