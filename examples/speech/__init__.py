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

Modules (import them directly; nothing heavy is imported here):

* :mod:`examples.speech.data`       -- the ``.npz`` interchange format (load, validate, save),
  speaker-disjoint splits, and the espeak-ng corpus synthesizer with its cache;
* :mod:`examples.speech.features`   -- :class:`LogMel`, :class:`MFCC` (librosa's mel filterbank),
  per-utterance normalization, :class:`SpecAugment`;
* :mod:`examples.speech.models`     -- the KWS CNN and the denoiser (plain ``nn.Sequential``,
  so :func:`proxopt.pruning.prune_zero_channels` can shrink them);
* :mod:`examples.speech.magnitude`  -- the baselines: gradual global and channel magnitude pruning;
* :mod:`examples.speech.runs`       -- the runs side by side (one training loop, hooks per run), timing;
* :mod:`examples.speech.sweep`      -- sparsity targets over seeds, curves, verdicts, reports;
* :mod:`examples.speech.kws`        -- ``python -m examples.speech.kws``;
* :mod:`examples.speech.denoise`    -- ``python -m examples.speech.denoise``;
* :mod:`examples.speech.tts_corpus` -- phonemes, espeak-ng's own durations and log-mels; its ``.npz`` format;
* :mod:`examples.speech.tts_model`  -- the FastSpeech-style acoustic model with a variational latent;
* :mod:`examples.speech.tts`        -- ``python -m examples.speech.tts``.
"""

from __future__ import annotations

__all__ = ["data", "features", "models", "magnitude", "runs", "sweep", "kws", "denoise", "tts_corpus", "tts_model", "tts"]
