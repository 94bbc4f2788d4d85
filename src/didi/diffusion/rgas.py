"""Reward-guided ancestral sampling (RGAS) for DiDi-Instruct students (paper §3.3).

RGAS is :func:`didi.diffusion.sampling.ancestral_sample` (uniform grid ``1 = t_0 > ... > t_K = 0``, the last step to
``alpha = 1`` fills every mask, cache, float64 draws, SUBS) steered by the student's discriminator
``D(z, sigma) -> (B, L)`` logits (label 1 = real, trained on the corrupted positions of ``z_t`` with
``sigma_t = -log alpha_t``). With ``N = floor(K (1 - rerank_ratio))`` the steps ``t -> s`` are:

* ``n < N``, **gradient tilting** (one draw)::

      l       = student(z_t)                               raw logits (B, L, V)
      x_soft  = log x_hat(l; z_t)                          SUBS: [MASK] logit removed, unmasked positions one-hot
      J       = sum_b r(D(x_soft, sigma_t)_b, masked(z_t)_b)
      g       = clip(dJ/dl, -grad_clip, grad_clip)         0 at unmasked positions and in the [MASK] column
      z_s     ~ ancestral step with logits  l + h_n g,     h_n = h_start + n / max(1, N - 1) * (h_end - h_start)

  The discriminator's embedding turns the soft input into ``softmax(x_soft) @ E = x_hat @ E``: it scores the
  student's own prediction of the clean sequence, and ``g`` says how to move it towards "real".

* ``n >= N``, **re-ranking**: ``M`` candidates ``z_s^(1..M)`` are drawn from the same ancestral step, scored by
  *one* discriminator call on all ``B * M`` rows at ``sigma_s``, and one is kept per row with probability
  ``softmax(r_j / T_rerank)`` (a float64 draw, not an argmax; ``T_rerank`` is ``rerank_temperature``, not the
  sampling temperature of :class:`~didi.diffusion.sampling.SamplingControls`).

Reward ``r`` (``RGASConfig.reward``):

* ``masked_mean`` (default): the reward the student was trained with
  (:func:`didi.diffusion.instruct.sequence_rewards`), the mean over the positions masked in the scored state of
  ``clip(log(sigmoid(d) + eps) - log(1 - sigmoid(d) + eps), +-reward_clip)``. At every corrupted position the
  optimal discriminator's logit is the same sequence-level log density ratio ``log q_real(z_t) / q_student(z_t)`` of
  the forward marginals (compressed by the label smoothing), so the mean estimates that ratio whatever the length
  and the number of masks. Re-ranking with ``T_rerank = 1`` then keeps candidate ``j`` with weight
  ``~ q_real / q_student`` (importance resampling of student proposals towards the data). Tilting scores the
  positions masked in ``z_t``. A candidate of the final step (``alpha_s = 1``) has no masked position left: the
  discriminator never saw such inputs and the reward is undefined there, so the final step is a plain ancestral step
  (no discriminator call).
* ``sum`` (the released sampler): ``J = sum_{i masked in z_t} d_i`` for tilting and ``r = sum_{all i} d_i`` for
  re-ranking, raw logits. It grows with the number of positions (an inverse temperature ``~ L``) and includes the
  unmasked positions, where the discriminator is never trained.

The tilt uses the released scales ``h = 30 -> 40`` on gradients clipped to ``+-1`` for both rewards: with logit
gradients no scale is exact. Under ``sum`` the gradient is about ``#masked`` times that of the mean, so the clip
binds far more often and the tilt approaches ``+-h`` per logit; under ``masked_mean`` it is the gradient of the
estimated log density ratio itself. ``RGASConfig(reward="sum")`` reproduces the released sampler (every other
default is its own: M = 4, ratio 0.5, T_rerank = 1), without its defects: float32 Gumbel noise, the [MASK] logit
kept in the soft input and the draw, and a final noise-removal call to an untrained backbone (here the last grid
step goes to ``alpha = 1`` with the student and is counted in the budget).

Fixed positions (prompts, infill templates, semi-autoregressive context; ``prefix``/``fixed`` as in
:func:`didi.diffusion.sampling.conditioned_start`) are never re-drawn and enter no reward sum: they are never masked,
so tilting (masked positions of ``z_t``) and ``masked_mean`` re-ranking (masked positions of the candidate) skip
them by construction, and ``sum`` re-ranking sums over the free positions only (``~fixed``). They still reach the
discriminator as context, as they reach the student. With a log density ratio reward this is the conditional
ratio: ``q_real(z | x_fixed) / q_student(z | x_fixed)`` differs from the unconditional one by a factor that is the
same for every candidate of a row (cancels in the softmax) and has no gradient (no effect on the tilt). The
discriminator was trained on states masked at rate ``1 - alpha_t`` everywhere; a state whose fixed positions are
never masked is off that distribution, more so the longer the prompt.

Call accounting (:class:`didi.diffusion.sampling.SampleResult`): ``nfe`` counts student calls; as in the ancestral
sampler the student is called only when ``z`` changed since its last call (every step if it is time-conditioned or
the cache is off) and never after the last mask is filled. ``extra_calls["discriminator"]`` counts discriminator
forward calls and ``extra_calls["discriminator_backward"]`` backward passes. A call is one batched pass of the
network, whatever its number of rows: a tilting step costs one forward and one backward on ``B`` rows, a re-ranking
step one forward on ``B * M`` rows. No call is made where it cannot change the result: ``h_n = 0``, ``M = 1``, the
final step under ``masked_mean``, a re-ranking step whose candidates are all the same state in every row. With
``h = 0`` and ``M = 1`` RGAS is therefore exactly the ancestral sampler, random stream included.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config import helpfield
from ..errors import require
from ..runtime.progress import track
from .instruct import LOG_ODDS_EPS, REWARD_CLIP, DiscriminatorFn, sequence_rewards
from .process import Denoiser, LogLinearSchedule, subs_log_probs
from .sampling import (
    CachedDenoiser,
    SampleResult,
    SamplingControls,
    ancestral_transition,
    check_num_steps,
    conditioned_start,
    sample_categorical,
    time_grid,
)

REWARDS = ("masked_mean", "sum")


@dataclass
class RGASConfig:
    """Options of :func:`rgas_sample`; the defaults are the released sampler's except ``reward`` (see the module
    docstring). ``RGASConfig(reward="sum")`` reproduces the released sampler."""

    h_start: float = helpfield(30.0, "guidance scale h of the first tilting step (0 with --h-end 0: no tilting)")
    h_end: float = helpfield(40.0, "guidance scale h of the last tilting step, linear in between")
    rerank_ratio: float = helpfield(0.5, "fraction of the steps, at the end, that re-rank candidates instead of "
                                         "tilting (0: tilt only, 1: re-rank only)")
    num_candidates: int = helpfield(4, "M: candidates per re-ranking step (1: no re-ranking)")
    grad_clip: float = helpfield(1.0, "clip the reward gradient to +-this before scaling it by h")
    rerank_temperature: float = helpfield(1.0, "T_rerank: keep candidate j with probability "
                                               "softmax(reward / T_rerank) (not the sampling --temperature)")
    reward: str = helpfield("masked_mean", "masked_mean: the trained reward, mean clipped log-odds over masked "
                                           "positions; sum: the released sampler's sum of raw logits (with the "
                                           "other defaults: the released RGAS)")
    reward_clip: float = helpfield(REWARD_CLIP, "masked_mean: clip per-token log-odds to +-this "
                                                "(as the distillation reward)")

    def __post_init__(self) -> None:
        for name in ("h_start", "h_end"):
            value = getattr(self, name)
            require(math.isfinite(value) and value >= 0, name, f"must be a finite number >= 0 (got {value})")
        require(0.0 <= self.rerank_ratio <= 1.0, "rerank_ratio", f"must be in [0, 1] (got {self.rerank_ratio})")
        m = self.num_candidates
        require(isinstance(m, int) and not isinstance(m, bool) and m >= 1, "num_candidates",
                f"must be an integer >= 1 (got {m!r})")
        require(self.grad_clip > 0, "grad_clip", f"must be > 0 (got {self.grad_clip})")
        require(math.isfinite(self.rerank_temperature) and self.rerank_temperature > 0, "rerank_temperature",
                f"must be a finite number > 0 (got {self.rerank_temperature})")
        require(self.reward in REWARDS, "reward", f"must be one of {', '.join(REWARDS)} (got {self.reward!r})")
        require(self.reward_clip > 0, "reward_clip", f"must be > 0 (got {self.reward_clip})")


def rerank_start(num_steps: int, rerank_ratio: float) -> int:
    """First re-ranking step ``N = floor(K (1 - rerank_ratio))`` (the released rule), immune to float round-off
    (``10 * (1 - 0.9)`` is 0.99999...)."""
    return math.floor(round(num_steps * (1.0 - rerank_ratio), 9))


def guidance_scale(step: int, tilt_steps: int, config: RGASConfig) -> float:
    """``h_n = h_start + n / max(1, N - 1) * (h_end - h_start)`` for the tilting steps ``n < N``."""
    return config.h_start + step / max(1, tilt_steps - 1) * (config.h_end - config.h_start)


def sequence_reward(disc_logits: torch.Tensor, positions: torch.Tensor, config: RGASConfig) -> torch.Tensor:
    """Reward (B,) of each row from discriminator logits (B, L) over ``positions`` (B, L, bool)."""
    if config.reward == "sum":
        return (disc_logits * positions).sum(-1)
    return sequence_rewards(disc_logits, positions, clip=config.reward_clip, eps=LOG_ODDS_EPS)


def tilted_logits(discriminator: DiscriminatorFn, logits: torch.Tensor, z: torch.Tensor, sigma: torch.Tensor, h: float,
                  config: RGASConfig, mask_index: int) -> torch.Tensor:
    """``l + h * clip(dJ/dl)`` (float32) with ``J`` the reward of the soft SUBS prediction ``log x_hat(l; z)``.

    One discriminator forward and one backward. Rows do not interact, so the gradient of the batch sum is every
    row's own gradient. ``subs_log_probs`` routes no gradient to the unmasked positions or to the [MASK] column.
    """
    masked = z == mask_index
    with torch.enable_grad():
        leaf = logits.detach().float().requires_grad_(True)
        soft = subs_log_probs(leaf, z, mask_index)
        reward = sequence_reward(discriminator(soft, sigma).float(), masked, config).sum()
        (grad,) = torch.autograd.grad(reward, leaf)
    return leaf.detach() + h * grad.clamp(-config.grad_clip, config.grad_clip)


def rerank(discriminator: DiscriminatorFn, candidates: torch.Tensor, sigma: torch.Tensor, config: RGASConfig,
           generator: torch.Generator | None, mask_index: int, fixed: torch.Tensor | None = None) -> torch.Tensor:
    """Keep one of the candidates (B, M, L) per row, ``j ~ softmax(r / T_rerank)``; one discriminator call on B*M
    rows.

    ``fixed`` (B, L): positions left out of the ``sum`` reward (``masked_mean`` never counts them: never masked).
    """
    b, m, length = candidates.shape
    flat = candidates.reshape(b * m, length)
    if config.reward == "masked_mean":
        positions = flat == mask_index
    elif fixed is None:
        positions = torch.ones_like(flat, dtype=torch.bool)
    else:
        positions = ~fixed.repeat_interleave(m, dim=0)
    rewards = sequence_reward(discriminator(flat, sigma.repeat_interleave(m)).float(), positions, config)
    probs = torch.softmax(rewards.view(b, m).double() / config.rerank_temperature, dim=-1)
    choice = sample_categorical(probs, generator)
    return candidates[torch.arange(b, device=candidates.device), choice]


@torch.no_grad()
def rgas_sample(denoiser: Denoiser, discriminator: DiscriminatorFn, *, batch_size: int, seq_len: int, num_steps: int,
                mask_index: int, schedule: LogLinearSchedule, controls: SamplingControls | None = None,
                use_cache: bool = True, time_conditioning: bool = False, generator: torch.Generator | None = None,
                device: torch.device | str = "cpu", prefix: torch.Tensor | None = None,
                fixed: torch.Tensor | None = None, progress: bool = False,
                config: RGASConfig | None = None,
                on_step: Callable[[int, torch.Tensor], None] | None = None) -> SampleResult:
    """Sample ``batch_size`` sequences from all-mask (or from ``prefix`` with its ``fixed`` positions kept, see
    :func:`didi.diffusion.sampling.conditioned_start`) in ``num_steps`` RGAS steps (see the module docstring).

    The signature of :func:`~didi.diffusion.sampling.ancestral_sample` plus ``discriminator(x, sigma) -> (B, L)``, a
    DiDi-Instruct student's discriminator called on ids (B, L) or soft inputs (B, L, V), and ``config``. Both
    networks run under the caller's device and autocast (:meth:`didi.pipelines.diffusion.DiffusionPipeline.sample`
    passes its ``denoiser`` and ``discriminate``). ``controls`` (temperature, top-k, top-p) shape every draw,
    candidates included, as in the ancestral sampler; with ``controls.greedy_tail`` the last step takes the argmax
    (its candidates are then one state: no re-ranking). ``on_step(n, z)``, if given, sees the state after step ``n``.
    """
    config = config or RGASConfig()
    check_num_steps(num_steps)
    require(seq_len >= 1, "seq_len", f"must be >= 1 (got {seq_len})")
    controls = controls or SamplingControls()
    start = time.perf_counter()
    device, mask = torch.device(device), mask_index
    grid = time_grid(num_steps, device)
    tilt_steps = rerank_start(num_steps, config.rerank_ratio)
    z, fixed = conditioned_start(batch_size, seq_len, mask, device, prefix, fixed)
    net = CachedDenoiser(denoiser, schedule, time_conditioning=time_conditioning, use_cache=use_cache, device=device)
    disc_forward = disc_backward = 0
    for n in track(range(num_steps), "rgas", enabled=progress, unit="step"):
        if not (z == mask).any():
            break  # nothing left to fill: every further step is the identity
        t, s = grid[n], grid[n + 1]
        logits = net(z, t)
        step = functools.partial(ancestral_transition, z, alpha_t=schedule.alpha(t), alpha_s=schedule.alpha(s),
                                 mask_index=mask, generator=generator, controls=controls,
                                 greedy=controls.greedy_tail and n == num_steps - 1)
        h = guidance_scale(n, tilt_steps, config) if n < tilt_steps else 0.0
        scorable = config.reward == "sum" or n < num_steps - 1  # masked_mean: the final step leaves no mask
        if h > 0:
            sigma_t = schedule.sigma(t).float().expand(batch_size)
            z = step(tilted_logits(discriminator, logits, z, sigma_t, h, config, mask))
            disc_forward += 1
            disc_backward += 1
        elif n >= tilt_steps and config.num_candidates > 1 and scorable:
            candidates = torch.stack([step(logits) for _ in range(config.num_candidates)], dim=1)
            distinct = not (candidates == candidates[:, :1]).all()  # else every row drew one state M times
            z = (rerank(discriminator, candidates, schedule.sigma(s).float().expand(batch_size), config, generator,
                        mask, fixed) if distinct else candidates[:, 0])
            disc_forward += int(distinct)
        else:
            z = step(logits)
        if on_step is not None:
            on_step(n, z)
    return SampleResult(tokens=z, nfe=net.calls, seconds=time.perf_counter() - start, num_steps=num_steps,
                        sampler="rgas",
                        extra_calls={"discriminator": disc_forward, "discriminator_backward": disc_backward},
                        info={"rgas": dataclasses.asdict(config), "rerank_start": tilt_steps,
                              "h_schedule": [guidance_scale(n, tilt_steps, config) for n in range(tilt_steps)]},
                        fixed=None if prefix is None else fixed)
