"""DiDi-Instruct as pure functions (Zheng et al., ICLR 2026), in the order of one iteration of Algorithm 1.

Objective (paper §2, notes §2.1-2.2): the integral KL between the student's and the teacher's forward marginals,
``D_IKL = ∫ ω(t) KL(q_ν(·,t) ‖ q_θ(·,t)) dt``, whose gradient is a policy gradient (score-function identity)::

    ∇ν D_IKL = E_{τ~π, x~p_ν, z~Q_τ(·|x)} [ ω(τ)/π(τ) · R(z, τ) · ∇ν log p_ν(x) ],   R = log q_ν/q_θ.

One iteration (notes §4.4); the recipe :mod:`didi.recipes.didi_instruct` calls these functions in this order:

1. τ ~ π = Beta(a, b), clamped (:func:`sample_tau`, :func:`draw_tau`);
2. *intermediate-state matching* (score decomposition): the student generates from all-mask, ``1 → τ → t0``, and
   keeps ``log P(z_τ | z_1) + log P(x | z_τ)``; only newly revealed tokens depend on ν (:func:`rollout`,
   :func:`student_step`);
3. *coupled time*: real and student rows are corrupted at the same τ (:func:`didi.diffusion.process.forward_mask`)
   and the discriminator (label 1 = real) is trained with label-smoothed BCE on the corrupted positions
   (:func:`scored_positions`, :func:`discriminator_loss`);
4. its per-token log-odds ``log q_real/q_ν ≈ -R``, clipped and averaged, are the sequence reward the student
   maximises (:func:`token_rewards`, :func:`sequence_rewards`);
5. *grouped reward normalisation* (GRPO-style) over the G samples of one real row (:func:`group_advantages`,
   or per token: :func:`local_advantages`);
6. student loss ``-mean(ω(τ)·A·log P) + kl_hi·D(z_1) + kl_lo·D(z_τ) − entropy_weight·H`` (:func:`omega_weight`,
   :func:`policy_gradient_loss`, :func:`kl_weight`, :func:`divergence`, :func:`entropy`).

Convention: label 1 = *real* (data), so the optimal discriminator logit is ``log q_real(z_t)/q_student(z_t)``, i.e.
``-R``, and the student *maximises* the reward.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .process import NEG_INF, LogLinearSchedule
from .sampling import ancestral_transition, time_grid

REWARD_CLIP = 8.0
"""Default clip of the per-token log-odds in :func:`token_rewards` (``--reward-clip`` of distillation and RGAS)."""
LOG_ODDS_EPS = 1e-6
"""The ``ε`` in ``log(σ(d) + ε) - log(1 - σ(d) + ε)`` (distillation's ``--log-odds-eps``)."""

DiscriminatorFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``discriminator(x, sigma) -> logits (B, L)`` for ids (B, L) or soft inputs (B, L, V)."""


# ------------------------------------------------------------------------------------------- 1. the time τ

def sample_tau(n: int, *, a: float, b: float, lo: float, hi: float, generator: torch.Generator,
               device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """τ ~ Beta(a, b) per row, clamped to ``[lo, hi]``; returns ``(τ, π(τ))`` in float64.

    Beta via two Gamma draws on the given generator (``torch.distributions`` takes no generator).
    """
    gen_device = generator.device
    ga = torch._standard_gamma(torch.full((n,), a, dtype=torch.float64, device=gen_device), generator=generator)
    gb = torch._standard_gamma(torch.full((n,), b, dtype=torch.float64, device=gen_device), generator=generator)
    tau = (ga / (ga + gb)).clamp(lo, hi)
    log_pi = ((a - 1) * torch.log(tau) + (b - 1) * torch.log1p(-tau)
              - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)))
    return tau.to(device), log_pi.exp().to(device)


def draw_tau(n: int, group_size: int, *, per_group: bool, generator: torch.Generator,
             device: torch.device | str = "cpu", **beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """τ for ``n`` rows made of consecutive groups of ``group_size``: one draw per row, or (``per_group``) one per
    group shared by its rows. ``beta``: the ``a, b, lo, hi`` of :func:`sample_tau`."""
    if per_group:
        tau, pi_tau = sample_tau(n // group_size, generator=generator, device=device, **beta)
        return tau.repeat_interleave(group_size), pi_tau.repeat_interleave(group_size)
    return sample_tau(n, generator=generator, device=device, **beta)


def omega_weight(tau: torch.Tensor, pi_tau: torch.Tensor, schedule: LogLinearSchedule, *, constant: bool = False,
                 lo: float = 0.1, hi: float = 10.0, importance: bool = False) -> torch.Tensor:
    """ω(τ) = -α'(τ)/(1-α(τ)) (= 1/τ, the MDLM ELBO weight) clamped to ``[lo, hi]`` (1 if ``constant``), divided by
    π(τ) if ``importance``."""
    w = torch.ones_like(tau) if constant else schedule.weight(tau).clamp(lo, hi)
    return w / pi_tau if importance else w


# ------------------------------------------------------------------------------ 2. the student's rollout

def student_log_probs(logits: torch.Tensor, mask_index: int) -> torch.Tensor:
    """``log x̂`` at masked positions (float32, the [MASK] column removed); differentiable."""
    logits = logits.float()
    logits = torch.cat([logits[..., :mask_index], torch.full_like(logits[..., :1], NEG_INF),
                        logits[..., mask_index + 1:]], dim=-1)
    return torch.log_softmax(logits, dim=-1)


@dataclass
class StepOutput:
    """One student ancestral step with its policy log-probability."""

    z_next: torch.Tensor  # (N, L)
    log_prob: torch.Tensor  # (N,) sum of log x̂ over positions revealed in this step (carries gradient)
    position_log_prob: torch.Tensor  # (N, L) log x̂ of the token revealed at each position (0 elsewhere)
    log_x_hat: torch.Tensor  # (N, L, V), or (1, L, V) when every row had the same input
    was_masked: torch.Tensor  # positions masked at the step input, batch dimension like log_x_hat


def student_step(logits: torch.Tensor, z: torch.Tensor, alpha_t: torch.Tensor, alpha_s: torch.Tensor, *,
                 mask_index: int, generator: torch.Generator, fill: bool = False) -> StepOutput:
    """The ancestral step ``z_t → z_s`` (:func:`~didi.diffusion.sampling.ancestral_transition`) with its
    log-probability.

    ``log P(z_s | z_t) = Σ_{revealed i} log x̂(z_t)^i[z_s^i] + const(α)``: a masked position stays masked with a
    ν-independent probability, so only revealed tokens carry the policy gradient (unbiased). ``alpha_t``/``alpha_s``
    are (N,) float64; ``fill`` reveals every masked position. ``logits`` may have batch size 1 when all rows share
    the same input ``z`` (the all-mask start): nothing is copied N times.
    """
    n = z.shape[0]
    log_x_hat = student_log_probs(logits, mask_index)
    shared = log_x_hat.shape[0] == 1 and n > 1
    z_next = ancestral_transition(z, log_x_hat.detach(), alpha_t, alpha_s, mask_index=mask_index,
                                  generator=generator, fill=fill)
    was_masked = z == mask_index
    row_idx, pos_idx = (was_masked & (z_next != mask_index)).nonzero(as_tuple=True)
    rows = torch.zeros_like(row_idx) if shared else row_idx
    position_log_prob = torch.zeros(z.shape, device=z.device, dtype=log_x_hat.dtype).index_put(
        (row_idx, pos_idx), log_x_hat[rows, pos_idx, z_next[row_idx, pos_idx]])
    return StepOutput(z_next, position_log_prob.sum(-1), position_log_prob, log_x_hat,
                      was_masked[:1] if shared else was_masked)


def rollout_times(num_steps: int, tau: torch.Tensor, t0: float) -> list[torch.Tensor]:
    """The start times of a rollout's steps and its end, each (N,) float64: ``[1, τ, t0]`` (2 steps, intermediate-
    state matching), ``[1, t0]`` (1 step) or the uniform K-step grid ``1, (K-1)/K, …, 0`` of the deployed sampler."""
    one = torch.ones(len(tau), dtype=torch.float64, device=tau.device)
    if num_steps == 1:
        return [one, torch.full_like(one, t0)]
    if num_steps == 2:
        return [one, tau.double(), torch.full_like(one, t0)]
    return [torch.full_like(one, float(t)) for t in time_grid(num_steps)]


@dataclass
class Rollout:
    """The student's generation and what the loss needs from it."""

    x_fake: torch.Tensor
    log_prob: torch.Tensor  # (N,) Σ_k log P(z_{t_k+1} | z_{t_k}), e.g. log P(z_τ|z_1) + log P(x|z_τ)
    position_log_prob: torch.Tensor  # (N, L) the same sum, split by the position each token was revealed at
    steps: list[StepOutput]
    inputs: list[torch.Tensor]  # each step's input (1 row for the all-mask start)
    times: list[torch.Tensor]  # each step's start time (N,)


def rollout(student: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], times: list[torch.Tensor], *,
            seq_len: int, mask_index: int, schedule: LogLinearSchedule, generator: torch.Generator,
            fill_remaining: bool = True, remask_prob: float = 0.0) -> Rollout:
    """Generate ``N = len(times[0])`` rows from all-mask along ``times`` (:func:`rollout_times`), keeping the
    log-probability of every transition; ``student(z, t) -> logits``.

    The all-mask input is identical for every row, so step 1 calls the student once and broadcasts. The last step
    reveals every remaining mask (``fill_remaining``: its end time ``t0 > 0`` would leave some). ``remask_prob``
    re-masks tokens revealed by the first of two steps with this probability (an ablation).
    """
    n, device = len(times[0]), times[0].device
    z = torch.full((n, seq_len), mask_index, dtype=torch.long, device=device)
    steps: list[StepOutput] = []
    inputs: list[torch.Tensor] = []
    for k in range(len(times) - 1):
        z_in = z[:1] if k == 0 else z  # the all-mask start is shared by all rows
        logits = student(z_in, times[k][: len(z_in)])
        step = student_step(logits, z, schedule.alpha(times[k]), schedule.alpha(times[k + 1]),
                            mask_index=mask_index, generator=generator,
                            fill=k == len(times) - 2 and fill_remaining)
        z = step.z_next
        if k == 0 and len(times) == 3 and remask_prob > 0:
            revealed = step.was_masked & (z != mask_index)
            back = revealed & (torch.rand(z.shape, generator=generator, device=device, dtype=torch.float64)
                               < remask_prob)
            z = torch.where(back, torch.full_like(z, mask_index), z)
        steps.append(step)
        inputs.append(z_in)
    position_log_prob = torch.stack([step.position_log_prob for step in steps]).sum(0)
    return Rollout(z, position_log_prob.sum(-1), position_log_prob, steps, inputs, times[:-1])


# ----------------------------------------------------------------------------------- 3. the discriminator

def scored_positions(z_real: torch.Tensor, z_fake: torch.Tensor, x_fake: torch.Tensor, mask_index: int,
                     mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions whose discriminator logits enter the loss and the reward: the corrupted ones (``masked``; never a
    position the student itself left masked) or every position (``all``). Every per-position logit estimates the
    same sequence-level log density ratio, so ``all`` targets the same quantity with more training signal."""
    if mode == "all":
        everywhere = torch.ones_like(z_real, dtype=torch.bool)
        return everywhere, everywhere
    return z_real == mask_index, (z_fake == mask_index) & (x_fake != mask_index)


def discriminator_loss(disc_logits_real: torch.Tensor, real_positions: torch.Tensor,
                       disc_logits_fake: torch.Tensor, fake_positions: torch.Tensor, smoothing: float
                       ) -> torch.Tensor:
    """½[BCE(D(z_real), 1-s) + BCE(D(z_fake), s)], each averaged over its scored positions."""
    def masked_bce(logits: torch.Tensor, positions: torch.Tensor, target: float) -> torch.Tensor:
        if not positions.any():
            return logits.sum() * 0.0
        values = logits[positions]
        return F.binary_cross_entropy_with_logits(values, torch.full_like(values, target))
    return 0.5 * (masked_bce(disc_logits_real, real_positions, 1.0 - smoothing)
                  + masked_bce(disc_logits_fake, fake_positions, smoothing))


# ----------------------------------------------------------------------------------------- 4. the reward

def token_rewards(disc_logits: torch.Tensor, *, clip: float = REWARD_CLIP, eps: float = LOG_ODDS_EPS
                  ) -> torch.Tensor:
    """Per-token reward ``clip(log(σ(d)+ε) - log(1-σ(d)+ε), ±clip)`` (≈ the logit d), float32."""
    p = torch.sigmoid(disc_logits.float())
    return (torch.log(p + eps) - torch.log1p(-p + eps)).clamp(-clip, clip)


def sequence_rewards(disc_logits: torch.Tensor, positions: torch.Tensor, *, clip: float = REWARD_CLIP,
                     eps: float = LOG_ODDS_EPS) -> torch.Tensor:
    """Per-row reward: the mean over ``positions`` of :func:`token_rewards` (the student maximises it; RGAS steers
    by it)."""
    log_odds = token_rewards(disc_logits, clip=clip, eps=eps)
    return (log_odds * positions).sum(-1) / (positions.sum(-1) + 1e-8)


# ------------------------------------------------------------------------------------- 5. the advantages

def group_advantages(rewards: torch.Tensor, group_size: int, *, mode: str = "group", clip: float = 3.0,
                     eps: float = 1e-8) -> torch.Tensor:
    """GRPO-style advantage: standardise rewards within each consecutive group of ``group_size`` rows (unbiased
    std), then clip. ``group-mean`` only centres per group; ``batch`` standardises over all rows; ``none`` returns
    the raw rewards (ablation)."""
    if mode == "none":
        return rewards
    if mode == "group-mean":
        groups = rewards.view(-1, group_size)
        return (groups - groups.mean(-1, keepdim=True)).view(-1).clamp(-clip, clip)
    if mode == "batch":
        return ((rewards - rewards.mean()) / (rewards.std() + eps)).clamp(-clip, clip)
    groups = rewards.view(-1, group_size)
    normalised = (groups - groups.mean(-1, keepdim=True)) / (groups.std(-1, keepdim=True) + eps)
    return normalised.view(-1).clamp(-clip, clip)


def local_advantages(rewards: torch.Tensor, positions: torch.Tensor, group_size: int, *, window: int,
                     clip: float = 3.0, eps: float = 1e-8, mode: str = "group") -> torch.Tensor:
    """Per-token advantages (N, L) for local credit assignment.

    ``W_j = Σ_{|i-j| ≤ window, i scored} r_i`` is the reward a token at position ``j`` is credited with; it is
    centred on the mean of the same position over the row's group (same τ, so the same noise level), then (``mode``
    group) divided by one standard deviation over the whole batch (not per group or position: a group whose rewards
    barely differ is not blown up to unit scale), or (group-mean) left at the rewards' own scale; then clipped.
    """
    r = rewards * positions
    padded = F.pad(r.cumsum(-1), (1, 0))
    length = r.shape[-1]
    idx = torch.arange(length, device=r.device)
    hi = (idx + window + 1).clamp(max=length)
    lo = (idx - window).clamp(min=0)
    windowed = padded[:, hi] - padded[:, lo]
    groups = windowed.view(-1, group_size, length)
    centred = (groups - groups.mean(1, keepdim=True)).view(-1, length)
    if mode == "group-mean":
        return centred.clamp(-clip, clip)
    return (centred / (centred.std() + eps)).clamp(-clip, clip)


# -------------------------------------------------------------------------------------- 6. the student loss

def policy_gradient_loss(omega: torch.Tensor, advantage: torch.Tensor, rollout: Rollout) -> torch.Tensor:
    """``-mean(ω(τ) · A · log P)`` over rows; per token (local credit) ``-mean(ω · Σ_j A_j · log P_j)``."""
    if advantage.dim() == 2:
        return -(omega * (advantage * rollout.position_log_prob).sum(-1)).mean()
    return -(omega * advantage * rollout.log_prob).mean()


def kl_weight(k: int, num_steps: int, *, hi: float, lo: float, one_step: float) -> float:
    """Weight of the teacher-student regulariser at rollout step ``k``: ``one_step`` for the single jump; ``hi`` at
    the all-mask step and ``lo`` at z_τ (two steps); for K > 2 steps ``lo`` is shared equally by the K-1 later
    steps, so the regulariser's total weight does not grow with K."""
    if num_steps == 1:
        return one_step
    return hi if k == 0 else lo / (num_steps - 1)


def divergence(student_lp: torch.Tensor, teacher_lp: torch.Tensor, positions: torch.Tensor, kind: str,
               beta: float) -> torch.Tensor:
    """Mean over ``positions`` of KL(teacher‖student) (forward), KL(student‖teacher) (reverse) or the Jeffrey
    mix ``(1-β)·forward + β·reverse``; both inputs are log-probabilities over the vocabulary."""
    if not positions.any():
        return student_lp.sum() * 0.0
    s, t = student_lp[positions], teacher_lp[positions]
    forward = (t.exp() * (t - s)).sum(-1).mean()
    reverse = (s.exp() * (s - t)).sum(-1).mean()
    if kind == "forward":
        return forward
    if kind == "reverse":
        return reverse
    return (1.0 - beta) * forward + beta * reverse


def entropy(log_p: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Mean token entropy ``-Σ p log p`` over ``positions``."""
    if not positions.any():
        return log_p.sum() * 0.0
    lp = log_p[positions]
    return -(lp.exp() * lp).sum(-1).mean()
