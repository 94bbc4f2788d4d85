"""The DiDi-Instruct discriminator: a teacher-initialised DiT trunk with a spectral-normalised per-token head.

``D(z_t, sigma) -> (B, L)`` logits. Convention used everywhere in didi: label 1 = *real* (data), 0 = *fake*
(student), so the optimal logit is ``log q_real(z_t) / q_student(z_t)``, i.e. ``-R`` of the paper (§2.4 of the
notes) and the student *maximises* it. Architecture (paper-notes §2.4, released code): a deep copy of the
teacher DiT whose ``output_layer`` is replaced by ``SN-Linear(d, d) -> SiLU -> SN-Linear(d, 1)`` applied to the
last block's hidden states (no final norm, no adaLN); only the last ``K`` blocks and the head are trainable.
State-dict keys therefore match the released ``discriminator.safetensors`` (``output_layer.main.0.weight_orig``...).
The reward computed from its logits is method maths: :mod:`didi.diffusion.instruct`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import spectral_norm

from ..config import ModelConfig
from .dit import DiT


class DiscriminatorHead(nn.Module):
    """``spectral_norm(Linear(d, d)) -> SiLU -> spectral_norm(Linear(d, 1))``; ignores the conditioning.

    ``normalize`` puts a parameter-free LayerNorm in front (no new weights: the released state-dict layout is
    kept); see :class:`Discriminator`.
    """

    def __init__(self, hidden_size: int, normalize: bool = False):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False) if normalize else nn.Identity()
        self.main = nn.Sequential(
            spectral_norm(nn.Linear(hidden_size, hidden_size)),
            nn.SiLU(),
            spectral_norm(nn.Linear(hidden_size, 1)),
        )

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return self.main(self.norm(x))


def default_trainable_blocks(n_blocks: int) -> int:
    """4 of 12 in the paper; the same third of the depth for other sizes (at least 1)."""
    return max(1, round(n_blocks / 3))


class Discriminator(DiT):
    """DiT trunk + :class:`DiscriminatorHead`; ``forward(z, sigma) -> (B, L)`` float32 logits.

    ``time_blocks``: how many of the top blocks receive the noise level ``sigma``; the blocks below see
    ``sigma = 0``, exactly the input of the (time-unconditioned) teacher whose weights they keep. The density ratio
    the discriminator estimates depends on the corruption time, so its trainable blocks are told the time
    (``time_blocks = trainable blocks``, didi's default). ``time_blocks = n_blocks`` feeds sigma to every block, as
    the released DiDi-Instruct code does; ``0`` feeds it to none.

    ``normalize``: a parameter-free LayerNorm on the residual stream where the trainable blocks begin and before the
    head (the released head reads the raw stream). The teacher's residual stream is not normalised between blocks
    (pre-LN), and in a small teacher trained at a high rate its norm can be hundreds (the markov teacher of
    docs/method.md: ~800 per position). The trainable blocks then add updates that are tiny next to the frozen
    features, and a spectral-normalised head's logits scale with that norm: the discriminator barely learns.
    ``window`` > 0 restricts the time-conditioned blocks' attention to ``|i - j| <= window``.
    """

    def __init__(self, config: ModelConfig, time_blocks: int = 0, window: int = 0, normalize: bool = False,
                 trainable_blocks: int | None = None):
        super().__init__(config)
        self.output_layer = DiscriminatorHead(config.hidden_size, normalize=normalize)
        self.time_blocks = time_blocks
        self.window = window
        self.normalize = normalize
        self.trainable_blocks = config.n_blocks if trainable_blocks is None else trainable_blocks

    def spec(self) -> dict:
        """What :func:`empty_discriminator` needs besides the model config (stored in a student's config.json)."""
        return {"time_blocks": self.time_blocks, "window": self.window, "normalize": self.normalize,
                "trainable_blocks": self.trainable_blocks}

    def local_mask(self, length: int, device: torch.device) -> torch.Tensor | None:
        """(L, L) band ``|i - j| <= window`` for the time-conditioned (trainable) blocks; None when global."""
        if self.window <= 0:
            return None
        idx = torch.arange(length, device=device)
        return (idx[:, None] - idx[None, :]).abs() <= self.window

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, no_grad_blocks: int = 0) -> torch.Tensor:
        """Logits (B, L); the lowest ``no_grad_blocks`` blocks run without autograd (frozen feature extractor)."""
        n = len(self.blocks)
        first_timed = n - self.time_blocks
        with torch.set_grad_enabled(torch.is_grad_enabled() and no_grad_blocks == 0):
            h = self.vocab_embed(x)
            b, device = h.shape[0], h.device
            c_time = self.condition(sigma, b, device)
            c_zero = self.condition(0.0, b, device) if first_timed > 0 else c_time
            cos, sin = self.rotary_emb(h.shape[1], device)
            band = self.local_mask(h.shape[1], device)
        first_trained = n - self.trainable_blocks
        for i, block in enumerate(self.blocks):
            with torch.set_grad_enabled(torch.is_grad_enabled() and i >= no_grad_blocks):
                if self.normalize and i == first_trained:
                    h = F.layer_norm(h, h.shape[-1:])
                timed = i >= first_timed
                h = block(h, c_time if timed else c_zero, cos, sin, band if timed else None)
        return self.output_layer(h).squeeze(-1).float()


def build_discriminator(teacher: DiT, trainable_blocks: int | None = None, time_blocks: int | None = None,
                        window: int = 0, normalize: bool = False) -> Discriminator:
    """Copy ``teacher``'s trunk, add a fresh head, freeze all but the last K blocks (and the head).

    ``time_blocks`` defaults to K (the trainable blocks are time-conditioned; see :class:`Discriminator`);
    ``window`` and ``normalize``: see :class:`Discriminator`.
    """
    k = default_trainable_blocks(len(teacher.blocks)) if trainable_blocks is None else trainable_blocks
    if not 0 <= k <= len(teacher.blocks):
        raise ValueError(f"trainable_blocks must be in [0, {len(teacher.blocks)}] (got {k})")
    disc = Discriminator(teacher.config, time_blocks=k if time_blocks is None else time_blocks, window=window,
                         normalize=normalize, trainable_blocks=k)
    trunk = {name: value for name, value in teacher.state_dict().items() if not name.startswith("output_layer.")}
    missing, _ = disc.load_state_dict(trunk, strict=False)
    assert all(name.startswith("output_layer.") for name in missing), missing
    disc.to(next(teacher.parameters()).device)
    for p in disc.parameters():
        p.requires_grad_(False)
    for block in list(disc.blocks)[len(disc.blocks) - k:]:
        for p in block.parameters():
            p.requires_grad_(True)
    for p in disc.output_layer.parameters():
        p.requires_grad_(True)
    return disc


def empty_discriminator(config: ModelConfig, time_blocks: int | None = None, window: int = 0,
                        normalize: bool = False, trainable_blocks: int | None = None) -> Discriminator:
    """A discriminator with the right shapes, to load weights into (e.g. from ``discriminator.safetensors``).

    ``time_blocks`` defaults to all blocks (the released DiDi-Instruct convention); the other options come from
    the student's ``config.json`` (:meth:`Discriminator.spec`; absent for released checkpoints).
    """
    return Discriminator(config, time_blocks=config.n_blocks if time_blocks is None else time_blocks, window=window,
                         normalize=normalize, trainable_blocks=trainable_blocks)
