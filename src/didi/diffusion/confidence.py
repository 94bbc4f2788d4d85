"""Training-free few-step samplers that order the reveals by the model's confidence (the rivals of distillation).

Every step calls the network once on the current sequence, draws a token at *every* masked position from the SUBS
distribution (float64, shaped by the :class:`~didi.diffusion.sampling.SamplingControls`), scores each draw by its
confidence ``c = p(x̃)``, and keeps only some of the draws; the others are re-masked:

* ``maskgit`` (MaskGIT, Chang et al. 2022): after step ``k`` of ``K`` a fraction ``γ(k/K)`` of the free positions
  stays masked (``reveal_schedule``: ``cosine`` ``γ(r) = cos(πr/2)``, MaskGIT's, or ``linear`` ``1 - r``); the draws
  kept are the most confident by ``log c + τ_k · Gumbel`` with ``τ_k = gumbel_noise · (1 - k/K)`` (annealed to 0);
* ``low-confidence`` (LLaDA's default remasking): the same without the noise, with the ``linear`` schedule by
  default (the same number of tokens every step);
* ``threshold`` (Fast-dLLM's parallel decoding): every draw with ``c > threshold`` is kept, and at least the most
  confident one per row; ``num_steps`` is only a cap (the last allowed step keeps everything). Rows finish after
  different numbers of steps: ``info["calls_per_row"]`` holds each row's, ``nfe`` the batch's (the calls made).

At least one position is revealed per step and row while any is masked, so a row never stalls. Fixed positions
(prompts, infill templates; ``prefix``/``fixed`` as in :func:`~didi.diffusion.sampling.conditioned_start`) are never
masked, hence never re-drawn. With ``controls.greedy_tail`` the last step takes the argmax. ``nfe`` counts network
calls (:class:`~didi.diffusion.sampling.CachedDenoiser`): one per step while a row of the batch has masks.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config import helpfield
from ..errors import require
from ..runtime.progress import track
from .process import Denoiser, LogLinearSchedule
from .sampling import (
    CachedDenoiser,
    SampleResult,
    SamplingControls,
    check_num_steps,
    conditioned_start,
    masked_token_probs,
    sample_categorical,
    time_grid,
)

ORDERS = ("maskgit", "low-confidence", "threshold")
SCHEDULES = ("cosine", "linear")


@dataclass
class ConfidenceConfig:
    """Options of :func:`confidence_sample` (``didi sample/eval --sampler maskgit|low-confidence|threshold``)."""

    order: str = helpfield("maskgit", "which draws are kept: maskgit (confidence + annealed Gumbel noise), "
                                      "low-confidence (no noise, LLaDA) or threshold (Fast-dLLM)", choices=ORDERS)
    reveal_schedule: str | None = helpfield(None, "how many positions stay masked after step k of K: cosine "
                                                  "(MaskGIT) or linear (equal reveals per step); default cosine "
                                                  "for maskgit, linear for low-confidence")
    gumbel_noise: float = helpfield(4.5, "maskgit: scale of the Gumbel noise on log-confidences at the first step, "
                                         "annealed linearly to 0 (MaskGIT's choice temperature)")
    threshold: float = helpfield(0.9, "threshold: keep every draw whose probability exceeds this (Fast-dLLM)")

    @property
    def schedule(self) -> str:
        """The reveal schedule used: ``reveal_schedule``, else cosine for maskgit and linear otherwise."""
        return self.reveal_schedule or ("cosine" if self.order == "maskgit" else "linear")

    def __post_init__(self) -> None:
        require(self.order in ORDERS, "order", f"must be one of {', '.join(ORDERS)} (got {self.order!r})")
        require(self.reveal_schedule in (None, *SCHEDULES), "reveal_schedule",
                f"must be cosine or linear (got {self.reveal_schedule!r})")
        require(math.isfinite(self.gumbel_noise) and self.gumbel_noise >= 0, "gumbel_noise",
                f"must be >= 0 (got {self.gumbel_noise})")
        require(0.0 < self.threshold < 1.0, "threshold", f"must be in (0, 1) (got {self.threshold})")


def masked_fraction(r: float, schedule: str) -> float:
    """``γ(r)``: the fraction of the free positions still masked after a share ``r`` of the steps."""
    return math.cos(math.pi * r / 2) if schedule == "cosine" else 1.0 - r


def reveal_counts(masked_now: torch.Tensor, free: torch.Tensor, step: int, num_steps: int, schedule: str
                  ) -> torch.Tensor:
    """How many positions each row reveals at step ``step`` (0-based) of ``num_steps``: down to
    ``floor(free · γ((step+1)/K))`` masked, at least 1 while any is masked, all at the last step."""
    if step == num_steps - 1:
        return masked_now
    left = torch.floor(free.double() * masked_fraction((step + 1) / num_steps, schedule)).long()
    return (masked_now - left).clamp(min=1).minimum(masked_now)


def keep_most_confident(score: torch.Tensor, masked: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: in each row, the ``counts[row]`` masked positions of highest ``score`` (ties: lower position)."""
    score = torch.where(masked, score, torch.full_like(score, -math.inf))
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(score.shape[-1], device=score.device).expand_as(
        order).contiguous())
    return masked & (rank < counts[:, None])


@torch.no_grad()
def confidence_sample(denoiser: Denoiser, *, batch_size: int, seq_len: int, num_steps: int, mask_index: int,
                      schedule: LogLinearSchedule, controls: SamplingControls | None = None, use_cache: bool = True,
                      time_conditioning: bool = False, generator: torch.Generator | None = None,
                      device: torch.device | str = "cpu", prefix: torch.Tensor | None = None,
                      fixed: torch.Tensor | None = None, progress: bool = False,
                      on_step: Callable[[int, torch.Tensor], None] | None = None,
                      config: ConfidenceConfig | None = None) -> SampleResult:
    """Sample ``batch_size`` sequences in at most ``num_steps`` confidence-ordered steps (see the module docstring);
    the signature of :func:`~didi.diffusion.sampling.ancestral_sample` (``on_step(k, z)`` sees the state after
    step ``k``) plus ``config``."""
    config = config or ConfidenceConfig()
    check_num_steps(num_steps)
    require(seq_len >= 1, "seq_len", f"must be >= 1 (got {seq_len})")
    controls = controls or SamplingControls()
    device = torch.device(device)
    start = time.perf_counter()
    z, fixed = conditioned_start(batch_size, seq_len, mask_index, device, prefix, fixed)
    free = (z == mask_index).sum(-1)
    grid = time_grid(num_steps, device)
    net = CachedDenoiser(denoiser, schedule, time_conditioning=time_conditioning, use_cache=use_cache, device=device)
    calls_per_row = torch.zeros(batch_size, dtype=torch.long, device=device)
    for k in track(range(num_steps), config.order, enabled=progress, unit="step"):
        masked = z == mask_index
        if not masked.any():
            break
        calls_per_row += masked.any(-1).long()
        probs = masked_token_probs(net(z, grid[k])[masked], mask_index, controls)
        greedy = controls.greedy_tail and k == num_steps - 1
        drawn = probs.argmax(-1) if greedy else sample_categorical(probs, generator)
        candidate = z.clone()
        candidate[masked] = drawn
        confidence = torch.zeros(z.shape, dtype=torch.float64, device=device)
        confidence[masked] = probs.gather(-1, drawn[:, None]).squeeze(-1)
        z = torch.where(_kept(confidence, masked, k, num_steps, free, config, generator), candidate, z)
        if on_step is not None:
            on_step(k, z)
    return SampleResult(tokens=z, nfe=net.calls, seconds=time.perf_counter() - start, num_steps=num_steps,
                        sampler=config.order, info={"confidence": {**vars(config), "reveal_schedule": config.schedule},
                                                    "calls_per_row": calls_per_row.tolist()},
                        fixed=None if prefix is None else fixed)


def _kept(confidence: torch.Tensor, masked: torch.Tensor, k: int, num_steps: int, free: torch.Tensor,
          config: ConfidenceConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Which of this step's draws are kept (the rest are re-masked)."""
    masked_now = masked.sum(-1)
    if config.order == "threshold":
        if k == num_steps - 1:
            return masked
        above = masked & (confidence > config.threshold)
        best = keep_most_confident(confidence, masked, torch.ones_like(masked_now))
        return above | best
    score = torch.log(confidence.clamp_min(1e-300))
    tau = config.gumbel_noise * (1.0 - k / num_steps) if config.order == "maskgit" else 0.0
    if tau > 0:  # no noise, no draw: maskgit with --gumbel-noise 0 is low-confidence with its schedule
        uniform = torch.rand(confidence.shape, generator=generator, device=confidence.device, dtype=torch.float64)
        score = score + tau * -torch.log(-torch.log(uniform.clamp(1e-300, 1.0 - 1e-16)))
    counts = reveal_counts(masked_now, free, k, num_steps, config.schedule)
    return keep_most_confident(score, masked, counts)
