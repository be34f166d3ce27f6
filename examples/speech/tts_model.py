"""A small non-autoregressive acoustic model in the FastSpeech style, with a
variational prosody latent.

    phonemes ─ embedding (+ speaker) ─ encoder ─ length regulator ─┐
                                                                   + speaker
    target mel ─ posterior ─ mean over frames ─ (μ, log σ²) ─ z ───+ latent projection ─ decoder ─ log-mel
                                        (prior N(0, I) at inference)  + position in the phoneme

* The **length regulator** repeats each phoneme's encoding for its duration
  in frames (given: espeak-ng's, or a forced aligner's), so the output has
  exactly the target's frames.
* The **prosody latent** is one Gaussian per utterance: in training
  ``z = μ + σ·ε`` from the posterior on the target mel (reparameterization),
  at inference the prior's mean ``z = 0`` (or a sample). It carries what
  phonemes and speaker do not determine (in the espeak corpus, the
  utterance's pitch), and is what a KL penalty
  (:func:`proxopt.penalties.gaussian_kl_penalty`) regularizes.
* The encoder, posterior and decoder are plain ``nn.Sequential`` chains of
  ``Conv1d`` → ``ReLU`` → ``Dropout`` (no normalization: the weights' scale
  matters, so norm and range limits on them act on the function), with
  ``replicate`` padding (a pruned channel's constant output then stays
  constant at the borders and folds into the next bias), so
  :func:`proxopt.pruning.prune_zero_channels` shrinks each of them
  (:meth:`ProsodyTTS.pruned`).

Batches are padded: phonemes with the id ``n_phonemes`` (a zero embedding)
and 0 durations; frames beyond an utterance's end are masked out of the
posterior's mean and should be out of the loss (``frame_mask``). Because
the convolutions see the padding, an utterance's output in a padded batch
differs at its last few frames from its output alone; evaluation runs one
utterance at a time.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from torch import Tensor, nn

LATENTS = ("prior", "posterior", "sample")


def conv_stack(c_in: int, channels: int, layers: int, kernel: int, dropout: float) -> list[nn.Module]:
    """``layers`` × (Conv1d → ReLU → Dropout), length-preserving (replicate padding)."""
    if kernel % 2 != 1:
        raise ValueError(f"Invalid kernel value: {kernel} (an odd width keeps the length)")
    out: list[nn.Module] = []
    for i in range(layers):
        out += [
            nn.Conv1d(c_in if i == 0 else channels, channels, kernel, padding=kernel // 2, padding_mode="replicate"),
            nn.ReLU(),
            nn.Dropout(dropout),
        ]
    return out


class TTSOutput(NamedTuple):
    mel: Tensor  # [B, n_mels, T], in the units of the training targets
    frame_mask: Tensor  # [B, T] bool, True on an utterance's frames
    mean: Tensor | None  # [B, latent_dim] posterior mean (None without a target mel)
    log_var: Tensor | None  # [B, latent_dim] posterior log-variance


def length_regulate(h: Tensor, durations: Tensor, num_frames: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Repeat phoneme encodings ``h`` ``[B, C, P]`` by ``durations`` ``[B, P]``.

    Returns the frames ``[B, C, T]`` (zeros past an utterance's end), the
    frame mask ``[B, T]`` and per frame (position within its phoneme in
    (0, 1), log(1 + phoneme duration)) ``[B, T, 2]``. ``T`` is the longest
    total duration (or ``num_frames``)."""
    if durations.shape != (h.shape[0], h.shape[2]):
        raise ValueError(f"Invalid durations shape: {tuple(durations.shape)} (expected {(h.shape[0], h.shape[2])})")
    if (durations < 0).any():
        raise ValueError("Invalid durations: negative frame counts")
    end = durations.cumsum(1)  # [B, P]
    total = end[:, -1]
    t_max = int(total.max()) if num_frames is None else int(num_frames)
    t = torch.arange(t_max, device=h.device)
    idx = torch.searchsorted(end, t.expand(len(h), t_max).contiguous(), right=True).clamp_max(h.shape[2] - 1)  # [B, T]
    mask = t[None, :] < total[:, None]
    frames = torch.gather(h, 2, idx[:, None, :].expand(-1, h.shape[1], -1)) * mask[:, None, :]
    dur = torch.gather(durations, 1, idx).clamp_min(1).to(h.dtype)
    start = torch.gather(end - durations, 1, idx).to(h.dtype)
    pos = ((t[None, :].to(h.dtype) - start + 0.5) / dur).clamp(0, 1)
    position = torch.stack([pos, torch.log1p(dur)], dim=-1) * mask[..., None]
    return frames, mask, position


class ProsodyTTS(nn.Module):
    """Phonemes + durations + speaker (+ target mel in training) → log-mel."""

    def __init__(
        self,
        n_phonemes: int,
        n_speakers: int,
        n_mels: int = 80,
        dim: int = 128,
        encoder_layers: int = 3,
        decoder_layers: int = 3,
        kernel: int = 5,
        latent_dim: int = 8,
        posterior_channels: int = 64,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        for name, v in (("n_phonemes", n_phonemes), ("n_speakers", n_speakers), ("n_mels", n_mels), ("dim", dim), ("latent_dim", latent_dim)):
            if v <= 0:
                raise ValueError(f"Invalid {name} value: {v} (must be > 0)")
        self.n_phonemes, self.n_mels, self.latent_dim = n_phonemes, n_mels, latent_dim
        self.phoneme_embedding = nn.Embedding(n_phonemes + 1, dim, padding_idx=n_phonemes)  # last id: padding
        self.speaker_embedding = nn.Embedding(n_speakers, dim)
        self.encoder = nn.Sequential(*conv_stack(dim, dim, encoder_layers, kernel, dropout))
        self.posterior = nn.Sequential(*conv_stack(n_mels, posterior_channels, 2, kernel, 0.0))
        self.posterior_head = nn.Linear(posterior_channels, 2 * latent_dim)
        self.latent_projection = nn.Linear(latent_dim, dim)
        self.position_projection = nn.Linear(2, dim)
        self.decoder = nn.Sequential(*conv_stack(dim, dim, decoder_layers, kernel, dropout), nn.Conv1d(dim, n_mels, 1))

    @property
    def pad_id(self) -> int:
        return self.n_phonemes

    def posterior_params(self, mel: Tensor, frame_mask: Tensor) -> tuple[Tensor, Tensor]:
        """(μ, log σ²) ``[B, latent_dim]`` of q(z | mel) for ``mel`` ``[B, n_mels, T]``."""
        h = self.posterior(mel)
        m = frame_mask[:, None, :].to(h.dtype)
        pooled = (h * m).sum(-1) / m.sum(-1).clamp_min(1)
        mean, log_var = self.posterior_head(pooled).chunk(2, dim=-1)
        return mean, log_var

    def forward(
        self,
        phonemes: Tensor,
        durations: Tensor,
        speakers: Tensor,
        mel: Tensor | None = None,
        *,
        latent: str | Tensor = "posterior",
        generator: torch.Generator | None = None,
    ) -> TTSOutput:
        """``phonemes``/``durations`` ``[B, P]`` (long), ``speakers`` ``[B]`` ids or
        ``[B, dim]`` speaker vectors (e.g. the mean of the trained ones for an
        unseen voice), ``mel`` ``[B, n_mels, T]`` the target (needed for
        ``latent="posterior"``).

        ``latent``: ``"posterior"`` (z sampled from q(z | mel) in training
        mode, its mean in eval mode), ``"prior"`` (z = 0, the prior's mean),
        ``"sample"`` (z ~ N(0, I) from ``generator``), or a ``[B, latent_dim]`` tensor."""
        x = self.phoneme_embedding(phonemes)  # [B, P, dim]
        spk = self.speaker_embedding(speakers) if speakers.dtype in (torch.int32, torch.int64) else speakers
        h = self.encoder((x + spk[:, None, :]).transpose(1, 2))  # [B, dim, P]
        frames, mask, position = length_regulate(h, durations, None if mel is None else mel.shape[-1])
        mean = log_var = None
        if mel is not None:
            mean, log_var = self.posterior_params(mel, mask)
        if isinstance(latent, Tensor):
            z = latent
        elif latent == "posterior":
            if mean is None:
                raise ValueError("Invalid latent: 'posterior' needs the target mel")
            z = mean + torch.randn_like(mean) * (0.5 * log_var).exp() if self.training else mean
        elif latent == "prior":
            z = frames.new_zeros(len(frames), self.latent_dim)
        elif latent == "sample":
            z = torch.randn(len(frames), self.latent_dim, generator=generator).to(frames)
        else:
            raise ValueError(f"Invalid latent: {latent!r} (one of {', '.join(LATENTS)}, or a tensor)")
        cond = spk + self.latent_projection(z)  # [B, dim]
        dec_in = frames + cond[:, :, None] + self.position_projection(position).transpose(1, 2)
        out = self.decoder(dec_in * mask[:, None, :])
        return TTSOutput(out, mask, mean, log_var)

    def pruned(self) -> "ProsodyTTS":
        """A copy with the all-zero channels of the encoder, posterior and decoder
        cut out (:func:`proxopt.pruning.prune_zero_channels` on each chain); in
        eval mode it computes the same outputs."""
        from proxopt.pruning import prune_zero_channels  # noqa: PLC0415

        small = copy.deepcopy(self)
        for name in ("encoder", "posterior", "decoder"):
            setattr(small, name, prune_zero_channels(getattr(self, name)))
        return small
