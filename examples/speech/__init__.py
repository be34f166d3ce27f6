"""Speech training pipelines for proxopt: a synthetic keyword-spotting corpus
(espeak-ng), log-mel / MFCC front ends, a keyword-spotting and a denoising
pipeline that compare dense training, an L1 penalty in the loss and
proxopt's fused proximal L1 and group lasso.

Modules (import them directly; nothing heavy is imported here):

* :mod:`examples.speech.data`     -- the ``.npz`` interchange format (load, validate, save),
  speaker-disjoint splits, and the espeak-ng corpus synthesizer with its cache;
* :mod:`examples.speech.features` -- mel filterbank, :class:`LogMel`, :class:`MFCC`,
  per-utterance normalization, :class:`SpecAugment`;
* :mod:`examples.speech.models`   -- the KWS CNN and the denoiser (plain ``nn.Sequential``,
  so :func:`proxopt.pruning.prune_zero_channels` can shrink them);
* :mod:`examples.speech.runs`     -- the four side-by-side runs, timing and reports;
* :mod:`examples.speech.kws`      -- ``python -m examples.speech.kws``;
* :mod:`examples.speech.denoise`  -- ``python -m examples.speech.denoise``.
"""

from __future__ import annotations

__all__ = ["data", "features", "models", "runs", "kws", "denoise"]
