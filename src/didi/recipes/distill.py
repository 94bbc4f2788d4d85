"""DiDi-Instruct: distil a few-step student from a masked-diffusion teacher (Zheng et al., ICLR 2026).

Objective (paper §2, notes §2.1-2.2): the integral KL between the student's and the teacher's forward marginals,
``D_IKL = ∫ ω(t) KL(q_ν(·,t) ‖ q_θ(·,t)) dt``, whose gradient is a policy gradient (score-function identity)::

    ∇ν D_IKL = E_{τ~π, x~p_ν, z~Q_τ(·|x)} [ ω(τ)/π(τ) · R(z, τ) · ∇ν log p_ν(x) ],   R = log q_ν/q_θ.

One iteration of :func:`distill_step` (notes §4.4):

1. *Intermediate-state matching* (score decomposition): the student generates from all-mask in two ancestral
   steps ``1 → τ → t0`` and keeps ``log P(z_τ | z_1) + log P(x | z_τ)`` (only newly revealed tokens depend on ν).
2. *Coupled time*: real rows (from the corpus) and student rows are corrupted at the same τ.
3. *Discriminator* (label 1 = real, 0 = student; BCE with label smoothing on the corrupted positions) is updated
   first; its per-token log-odds ``log q_real/q_ν ≈ -R`` at the corrupted positions, clipped and averaged, are the
   sequence reward the student *maximises*.
4. *Grouped reward normalisation*: every real row is replicated G times; rewards are standardised within each
   group of G student samples and clipped → advantage ``A``.
5. Student loss ``-mean(ω(τ)·A·(logp_1 + logp_2)) + kl_hi·D(z_1) + kl_lo·D(z_τ) − entropy_weight·H`` with
   ``D`` the forward / reverse / Jeffrey divergence between teacher and student denoisers (regularisers), then an
   EMA update of the student.

Choices where the sources disagree (notes §8) are documented on :class:`DistillConfig` and in docs/method.md.
"""
from __future__ import annotations

import copy
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import fit_warmups, helpfield, to_dict
from ..diffusion.process import NEG_INF, LogLinearSchedule, forward_mask
from ..diffusion.sampling import sample_masked_tokens, time_grid
from ..errors import CheckpointError, ConfigError, TrainingError, require
from ..models.discriminator import (
    LOG_ODDS_EPS,
    REWARD_CLIP,
    build_discriminator,
    default_trainable_blocks,
    token_rewards,
)
from ..models.dit import DiT
from ..runtime import distributed as dist
from ..runtime.checkpoint import (
    RunConfig,
    check_new_run_dir,
    clean_stale_tmp,
    ema_decay_at,
    ema_update,
    latest_snapshot,
    load_state_dict_strict,
    load_tensors,
    load_trainer_state,
    read_run_config,
    resumed_options,
    save_snapshot,
    write_run_config,
    write_run_files,
)
from ..runtime.utils import autocast, resolve_precision


@dataclass
class DistillConfig:
    """Hyper-parameters of DiDi-Instruct. Defaults are the published ones (notes §5) unless stated.

    Ambiguities (notes §8) and the choice made:
    1. "real" samples: corpus data (released code); ``real_source=teacher`` uses teacher samples instead.
    3. ω(τ) = -α'(τ)/(1-α(τ)) = 1/τ, clamped to [0.1, 10]; dividing by π(τ) is off by default.
    6. step 2 ends at t0 = 1e-3; positions still masked are filled from the same student prediction
       (``fill_remaining``, no extra call) so the discriminator never sees [MASK] in a "clean" sample.
    7. regulariser: Jeffrey divergence β = 0.5 at z_1 and z_τ with weights 0.01 each, entropy 5e-4 (initial-commit
       config); the released trainer used forward KL (``divergence=forward``).
    9. learning-rate schedule: linear warm-up then linear decay (released trainer); ``lr_schedule=cosine`` optional.
    10. discriminator warm-up: 0 steps (published config); set ``disc_warmup_steps`` to train D alone first.
    12. σ input: the MDLM teacher and the student were trained without time (σ=0) and keep seeing σ=0. The
       density ratio the discriminator estimates depends on the corruption time, so its trainable blocks receive
       σ_τ while its frozen teacher blocks see σ=0 (``sigma_mode=disc``). ``released`` feeds σ_τ to the teacher and
       to every discriminator block (the released code's quirk); ``zero`` tells nobody.
    Beyond the released trainer, off by default: ``rollout_dropout=False`` (the student generates its training
    rollouts without dropout, so the trained policy is the sampling policy), ``tau_per=group`` (a group shares τ),
    ``disc_positions=all`` (every position trains the discriminator) and ``student_steps=K > 2`` (the rollout is
    the deployed K-step sampler); docs/method.md reports what they changed.
    """

    teacher: str = helpfield("", "run directory of the teacher MDLM")
    out: str = helpfield("", "student run directory to create")
    steps: int = helpfield(10_000, "distillation iterations (paper: 10,000)")
    batch_size: int = helpfield(4, "real rows per iteration, summed over all processes under torchrun; each is "
                                   "replicated --group-size times for the student")
    group_size: int = helpfield(4, "G: student samples per group for grouped reward normalisation (>= 2)")
    lr: float = helpfield(1e-6, "student peak learning rate (paper: 1e-6)")
    disc_lr: float = helpfield(1e-5, "discriminator learning rate")
    lr_schedule: str = helpfield("linear", "after warm-up: linear decay, cosine, or constant")
    warmup_steps: int = helpfield(1000, "linear learning-rate warm-up steps (both optimisers)")
    min_lr_ratio: float = helpfield(0.0, "final learning rate as a fraction of the peak")
    beta1: float = helpfield(0.9, "AdamW beta1 (both optimisers)")
    beta2: float = helpfield(0.999, "AdamW beta2 (both optimisers)")
    weight_decay: float = helpfield(0.0, "AdamW weight decay (both optimisers)")
    grad_clip: float = helpfield(1.0, "student gradient-norm clip")
    disc_grad_clip: float = helpfield(1.0, "discriminator gradient-norm clip")
    tau_a: float = helpfield(1.0, "τ ~ Beta(a, b): a (released HEAD: Beta(1,1); initial config: Beta(2,2))")
    tau_b: float = helpfield(1.0, "τ ~ Beta(a, b): b")
    tau_per: str = helpfield("row", "draw τ per row (released trainer) or per group: with `group` the G samples "
                                    "that are standardised together share τ, so the advantage compares samples "
                                    "at one noise level instead of mixing rewards of different τ")
    tau_min: float = helpfield(0.02, "clamp τ from below")
    tau_max: float = helpfield(0.98, "clamp τ from above")
    t0: float = helpfield(1e-3, "end time of the student's second step (τ → t0)")
    fill_remaining: bool = helpfield(True, "fill masks left at t0 from the step-2 prediction (no extra call)")
    student_steps: int = helpfield(2, "student generation steps in training: 2 = intermediate-state matching "
                                      "1 → τ → t0 (paper), 1 = single jump (ablation), K > 2 = the K-step "
                                      "ancestral sampler that is deployed (τ then only sets the corruption)")
    rollout_dropout: bool = helpfield(True, "keep the backbone's dropout active while the student generates its "
                                            "training rollouts (released trainer); false: the policy that is "
                                            "trained is the one that samples")
    remask_prob: float = helpfield(0.0, "re-mask tokens revealed in step 1 with this probability")
    coupled_time: bool = helpfield(True, "corrupt real and student rows at the intermediate time τ (else an "
                                         "independent time, ablation)")
    omega: str = helpfield("alpha", "ω(τ): alpha = -α'/(1-α) clamped, or constant (ablation)")
    omega_min: float = helpfield(0.1, "ω clamp, lower")
    omega_max: float = helpfield(10.0, "ω clamp, upper")
    importance_weight: bool = helpfield(False, "divide ω(τ) by the proposal density π(τ)")
    advantage: str = helpfield("group", "reward normalisation: group (GRPO-style: centred and divided by the group's "
                                        "std; with --credit local: centred per group, divided by one batch-wide "
                                        "std), group-mean (centred only, so pure-noise rewards give small steps), "
                                        "batch, or none (ablation; sequence credit only)")
    credit: str = helpfield("sequence", "credit assignment: sequence (one advantage per sample, released) or local "
                                        "(each revealed token is credited with the discriminator's per-token "
                                        "rewards within --credit-window positions of it)")
    credit_window: int = helpfield(2, "local credit: positions on each side whose rewards a token is credited with")
    reward_corruption: str = helpfield("same", "corruption the reward is computed on: same (the one the "
                                                "discriminator was just trained on, released) or fresh")
    ema_warmup: bool = helpfield(False, "EMA warm-up min(decay, (1+n)/(10+n)) over student updates (false: plain "
                                        "--ema-decay, released)")
    reward_clip: float = helpfield(REWARD_CLIP, "clip per-token discriminator log-odds to ±this")
    advantage_clip: float = helpfield(3.0, "clip advantages to ±this")
    log_odds_eps: float = helpfield(LOG_ODDS_EPS, "ε in log(σ(d)+ε) - log(1-σ(d)+ε)")
    label_smoothing: float = helpfield(0.1, "discriminator targets 1-s (real) and s (fake)")
    disc_positions: str = helpfield("masked", "positions whose logits train the discriminator and form the reward: "
                                              "masked (the corrupted ones, released trainer) or all")
    disc_blocks: int = helpfield(-1, "trainable discriminator blocks, counted from the top (-1: 4 of 12, "
                                     "scaled to the model depth)")
    disc_normalize: bool = helpfield(True, "parameter-free LayerNorm on the discriminator's residual stream where its "
                                           "trainable blocks begin and before its head (false: released, raw stream; "
                                           "a large stream norm then stops it learning, see docs/method.md)")
    disc_window: int = helpfield(0, "attention window (positions on each side) of the discriminator's trainable "
                                    "blocks: 0 = global; > 0 makes each per-token logit judge its neighbourhood, "
                                    "the reward that --credit local needs")
    disc_warmup_steps: int = helpfield(0, "iterations during which only the discriminator trains")
    disc_updates: int = helpfield(1, "discriminator updates per iteration, each on a fresh corruption of the same "
                                     "real and student rows (1: released)")
    student_update_every: int = helpfield(1, "update the student every N iterations")
    divergence: str = helpfield("jeffrey", "teacher-student regulariser: jeffrey, forward or reverse KL")
    jeffrey_beta: float = helpfield(0.5, "Jeffrey mix: (1-β)·KL(teacher‖student) + β·KL(student‖teacher)")
    kl_hi: float = helpfield(0.01, "regulariser weight at z_1 (first step)")
    kl_lo: float = helpfield(0.01, "regulariser weight at z_τ (second step)")
    kl_one_step: float = helpfield(0.05, "regulariser weight in the 1-step ablation (kl_beta)")
    entropy_weight: float = helpfield(5e-4, "entropy bonus on the student's predictions")
    ema_decay: float = helpfield(0.999, "student EMA decay (the EMA is used for sampling)")
    real_source: str = helpfield("data", "what the discriminator treats as real: data or teacher samples")
    teacher_nfe: int = helpfield(64, "steps of the teacher sampler when --real-source teacher")
    sigma_mode: str = helpfield("disc", "who is told the noise level σ_τ: disc (the discriminator's trainable "
                                        "blocks), released (teacher and every discriminator block), or zero")
    regularize: bool = helpfield(True, "apply the KL and entropy regularisers (ablation switch)")
    save_every: int = helpfield(200, "snapshot every N iterations")
    keep_checkpoints: int = helpfield(2, "snapshots kept")
    log_every: int = helpfield(10, "metrics interval")
    seed: int = helpfield(0, "random seed")
    device: str = helpfield("auto", "auto (cuda > mps > cpu), cpu, cuda, ...")
    precision: str = helpfield("auto", "auto (bf16 autocast on CUDA), bf16 or fp32")
    progress: bool = helpfield(True, "show a progress bar")

    def __post_init__(self) -> None:
        require(self.steps >= 1, "steps", f"must be >= 1 (got {self.steps})")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1 (got {self.batch_size})")
        require(self.group_size >= 2, "group_size", f"must be >= 2 for grouped normalisation (got {self.group_size})")
        require(self.lr > 0 and self.disc_lr > 0, "lr", "learning rates must be > 0")
        require(self.lr_schedule in ("linear", "cosine", "constant"), "lr_schedule",
                f"must be linear, cosine or constant (got {self.lr_schedule!r})")
        require(self.tau_a > 0 and self.tau_b > 0, "tau_a", f"Beta parameters must be > 0 (got {self.tau_a}, "
                                                                f"{self.tau_b})")
        require(self.tau_per in ("row", "group"), "tau_per", f"must be row or group (got {self.tau_per!r})")
        require(0.0 < self.tau_min < self.tau_max < 1.0, "tau_min", "need 0 < tau_min < tau_max < 1")
        require(0.0 <= self.t0 < self.tau_min, "t0", f"must be in [0, tau_min) (got {self.t0})")
        require(self.student_steps >= 1, "student_steps",
                f"must be >= 1 (the two-step trajectory needs 2; got {self.student_steps})")
        require(0.0 <= self.remask_prob < 1.0, "remask_prob", f"must be in [0, 1) (got {self.remask_prob})")
        require(self.omega in ("alpha", "constant"), "omega", f"must be alpha or constant (got {self.omega!r})")
        require(0 < self.omega_min <= self.omega_max, "omega_min", "need 0 < omega_min <= omega_max")
        require(self.advantage in ("group", "group-mean", "batch", "none"), "advantage",
                f"must be group, group-mean, batch or none (got {self.advantage!r})")
        require(self.credit in ("sequence", "local"), "credit", f"must be sequence or local (got {self.credit!r})")
        require(self.credit == "sequence" or self.advantage in ("group", "group-mean"), "advantage",
                f"with --credit local must be group or group-mean (got {self.advantage!r})")
        require(self.credit_window >= 0, "credit_window", f"must be >= 0 (got {self.credit_window})")
        require(self.reward_corruption in ("same", "fresh"), "reward_corruption",
                f"must be same or fresh (got {self.reward_corruption!r})")
        require(self.divergence in ("jeffrey", "forward", "reverse"), "divergence",
                f"must be jeffrey, forward or reverse (got {self.divergence!r})")
        require(0.0 <= self.jeffrey_beta <= 1.0, "jeffrey_beta", f"must be in [0, 1] (got {self.jeffrey_beta})")
        require(0.0 <= self.label_smoothing < 0.5, "label_smoothing", "must be in [0, 0.5)")
        require(self.reward_clip > 0 and self.advantage_clip > 0, "reward_clip", "clips must be > 0")
        require(0.0 <= self.ema_decay < 1.0, "ema_decay", f"must be in [0, 1) (got {self.ema_decay})")
        require(self.disc_positions in ("masked", "all"), "disc_positions",
                f"must be masked or all (got {self.disc_positions!r})")
        require(self.real_source in ("data", "teacher"), "real_source", "must be data or teacher")
        require(self.teacher_nfe >= 1, "teacher_nfe", "must be >= 1")
        require(self.sigma_mode in ("disc", "released", "zero"), "sigma_mode", "must be disc, released or zero")
        require(self.disc_warmup_steps >= 0, "disc_warmup_steps", "must be >= 0")
        require(self.disc_updates >= 1, "disc_updates", f"must be >= 1 (got {self.disc_updates})")
        require(self.student_update_every >= 1, "student_update_every", "must be >= 1")
        require(self.save_every >= 1, "save_every", "must be >= 1")


# ---------------------------------------------------------------------------------------------- components

def sample_tau(n: int, cfg: DistillConfig, generator: torch.Generator, device: torch.device
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """τ ~ Beta(a, b) per row, clamped to [tau_min, tau_max]; returns (τ, π(τ)) in float64."""
    # Beta via two Gamma draws on the given generator (torch.distributions has no generator argument).
    gen_device = generator.device
    ga = torch._standard_gamma(torch.full((n,), cfg.tau_a, dtype=torch.float64, device=gen_device),
                               generator=generator)
    gb = torch._standard_gamma(torch.full((n,), cfg.tau_b, dtype=torch.float64, device=gen_device),
                               generator=generator)
    tau = (ga / (ga + gb)).clamp(cfg.tau_min, cfg.tau_max)
    log_pi = ((cfg.tau_a - 1) * torch.log(tau) + (cfg.tau_b - 1) * torch.log1p(-tau)
              - (math.lgamma(cfg.tau_a) + math.lgamma(cfg.tau_b) - math.lgamma(cfg.tau_a + cfg.tau_b)))
    return tau.to(device), log_pi.exp().to(device)


def draw_tau(n: int, group_size: int, cfg: DistillConfig, generator: torch.Generator, device: torch.device
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """τ for ``n`` rows made of consecutive groups of ``group_size``: one draw per row (``tau_per=row``) or one per
    group shared by its rows (``tau_per=group``)."""
    if cfg.tau_per == "group":
        tau, pi_tau = sample_tau(n // group_size, cfg, generator, device)
        return tau.repeat_interleave(group_size), pi_tau.repeat_interleave(group_size)
    return sample_tau(n, cfg, generator, device)


def scored_positions(z_real: torch.Tensor, z_fake: torch.Tensor, x_fake: torch.Tensor, mask_index: int,
                     mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions whose discriminator logits enter the loss and the reward: the corrupted ones (``masked``; never a
    position the student itself left masked) or every position (``all``). Every per-position logit estimates the
    same sequence-level log density ratio, so ``all`` targets the same quantity with more training signal."""
    if mode == "all":
        everywhere = torch.ones_like(z_real, dtype=torch.bool)
        return everywhere, everywhere
    return z_real == mask_index, (z_fake == mask_index) & (x_fake != mask_index)


def kl_weight(k: int, num_steps: int, cfg: DistillConfig) -> float:
    """Weight of the teacher-student regulariser at rollout step ``k``: ``kl_one_step`` for the single jump;
    ``kl_hi`` at the all-mask step and ``kl_lo`` at z_τ (two steps); for K > 2 steps ``kl_lo`` is shared equally
    by the K-1 later steps, so the regulariser's total weight does not grow with K."""
    if num_steps == 1:
        return cfg.kl_one_step
    return cfg.kl_hi if k == 0 else cfg.kl_lo / (num_steps - 1)


def omega_weight(tau: torch.Tensor, pi_tau: torch.Tensor, schedule: LogLinearSchedule, cfg: DistillConfig
                 ) -> torch.Tensor:
    """ω(τ) = -α'(τ)/(1-α(τ)) (= 1/τ, the MDLM ELBO weight) clamped, optionally divided by π(τ)."""
    if cfg.omega == "constant":
        w = torch.ones_like(tau)
    else:
        w = schedule.weight(tau).clamp(cfg.omega_min, cfg.omega_max)
    return w / pi_tau if cfg.importance_weight else w


def student_log_probs(logits: torch.Tensor, mask_index: int) -> torch.Tensor:
    """log x̂ at masked positions (float32, the [MASK] column removed); differentiable."""
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
    """Ancestral step ``z_t → z_s`` with the transition's log-probability.

    ``log P(z_s | z_t) = Σ_{revealed i} log x̂(z_t)^i[z_s^i] + const(α)``: a masked position stays masked with a
    ν-independent probability, so only revealed tokens carry the policy gradient (``prev_is_mask``, unbiased).
    ``alpha_t``/``alpha_s`` are (N,) float64; ``fill`` reveals every masked position (α_s = 1). ``logits`` may
    have batch size 1 when all rows share the same input ``z`` (the all-mask start): nothing is copied N times.
    """
    n = z.shape[0]
    log_x_hat = student_log_probs(logits, mask_index)
    shared = log_x_hat.shape[0] == 1 and n > 1
    rows = torch.zeros(n, dtype=torch.long, device=z.device) if shared else torch.arange(n, device=z.device)
    was_masked = z == mask_index
    reveal_prob = ((alpha_s - alpha_t) / (1.0 - alpha_t))[:, None]
    uniform = torch.rand(z.shape, generator=generator, device=z.device, dtype=torch.float64)
    reveal = was_masked & ((uniform < reveal_prob) | fill)
    z_next = z.clone()
    row_idx, pos_idx = reveal.nonzero(as_tuple=True)
    if row_idx.numel():
        z_next[row_idx, pos_idx] = sample_masked_tokens(log_x_hat.detach()[rows[row_idx], pos_idx], mask_index,
                                                        generator)
    position_log_prob = torch.zeros(z.shape, device=z.device, dtype=log_x_hat.dtype).index_put(
        (row_idx, pos_idx), log_x_hat[rows[row_idx], pos_idx, z_next[row_idx, pos_idx]])
    return StepOutput(z_next, position_log_prob.sum(-1), position_log_prob, log_x_hat,
                      was_masked[:1] if shared else was_masked)


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


def discriminator_loss(disc_logits_real: torch.Tensor, real_positions: torch.Tensor,
                       disc_logits_fake: torch.Tensor, fake_positions: torch.Tensor, smoothing: float
                       ) -> torch.Tensor:
    """½[BCE(D(z_real), 1-s) + BCE(D(z_fake), s)], each averaged over the corrupted (masked) positions."""
    def masked_bce(logits: torch.Tensor, positions: torch.Tensor, target: float) -> torch.Tensor:
        if not positions.any():
            return logits.sum() * 0.0
        values = logits[positions]
        return F.binary_cross_entropy_with_logits(values, torch.full_like(values, target))
    return 0.5 * (masked_bce(disc_logits_real, real_positions, 1.0 - smoothing)
                  + masked_bce(disc_logits_fake, fake_positions, smoothing))


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


def group_advantages(rewards: torch.Tensor, group_size: int, *, mode: str = "group", clip: float = 3.0,
                     eps: float = 1e-8) -> torch.Tensor:
    """GRPO-style advantage: standardise rewards within each consecutive group of ``group_size`` rows (unbiased
    std), then clip. ``batch`` standardises over all rows; ``none`` returns the raw rewards (ablation)."""
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


# -------------------------------------------------------------------------------------------------- models

@dataclass
class DistillModels:
    """Everything an iteration touches: networks, optimisers and fixed settings.

    Under ``torchrun`` :func:`distill` wraps ``student`` and ``discriminator`` (the networks that train) in
    ``DistributedDataParallel``; the teacher and the EMA stay local (identical on every rank).
    """

    student: nn.Module
    teacher: nn.Module
    discriminator: nn.Module  # a Discriminator (DDP-wrapped under torchrun)
    ema: nn.Module
    opt_student: torch.optim.Optimizer
    opt_disc: torch.optim.Optimizer
    schedule: LogLinearSchedule
    mask_index: int
    device: torch.device
    precision: torch.dtype | None = None
    frozen_disc_blocks: int = 0

    @classmethod
    def from_teacher(cls, teacher: DiT, cfg: DistillConfig, mask_index: int, eps: float, device: torch.device,
                     precision: torch.dtype | None = None) -> DistillModels:
        teacher = teacher.to(device).eval().requires_grad_(False)
        student = copy.deepcopy(teacher).train().requires_grad_(True)
        ema = copy.deepcopy(teacher).eval().requires_grad_(False)
        k = default_trainable_blocks(len(teacher.blocks)) if cfg.disc_blocks < 0 else cfg.disc_blocks
        if k > len(teacher.blocks):
            raise ConfigError(f"--disc-blocks: the teacher has only {len(teacher.blocks)} blocks (got {k})")
        time_blocks = {"disc": k, "released": len(teacher.blocks), "zero": 0}[cfg.sigma_mode]
        disc = build_discriminator(teacher, k, time_blocks, cfg.disc_window, cfg.disc_normalize).to(device).train()
        opt_s = torch.optim.AdamW(student.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                  weight_decay=cfg.weight_decay)
        opt_d = torch.optim.AdamW([p for p in disc.parameters() if p.requires_grad], lr=cfg.disc_lr,
                                  betas=(cfg.beta1, cfg.beta2), eps=1e-8, weight_decay=cfg.weight_decay)
        return cls(student, teacher, disc, ema, opt_s, opt_d, LogLinearSchedule(eps), mask_index, device,
                   precision, frozen_disc_blocks=len(teacher.blocks) - k)

    def disc_logits(self, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Discriminator logits (N, L); the frozen lower blocks run without autograd (they never train)."""
        with autocast(self.device, self.precision):
            return self.discriminator(z, sigma, no_grad_blocks=self.frozen_disc_blocks)

    def forward(self, net: nn.Module, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.precision):
            return net(z, sigma)


def student_updates_before(step: int, cfg: DistillConfig) -> int:
    """How many student updates happened before iteration ``step`` (the discriminator warm-up and
    ``student_update_every`` skip iterations)."""
    if step <= cfg.disc_warmup_steps:
        return 0
    first = cfg.disc_warmup_steps + (-cfg.disc_warmup_steps) % cfg.student_update_every
    return max(0, -(-(step - first) // cfg.student_update_every))


def _lr_factor(step: int, cfg: DistillConfig) -> float:
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    shape = 1.0 - progress if cfg.lr_schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * shape


# ------------------------------------------------------------------------------------------- one iteration

@dataclass
class Rollout:
    """The student's generation (1 → τ → t0 by default) and what the loss needs from it."""

    x_fake: torch.Tensor
    log_prob: torch.Tensor  # (N,) Σ_k log P(z_{t_k+1} | z_{t_k}), e.g. log P(z_τ|z_1) + log P(x|z_τ)
    position_log_prob: torch.Tensor  # (N, L) the same sum, split by the position each token was revealed at
    steps: list[StepOutput]
    inputs: list[torch.Tensor]  # each step's input (1 row for the all-mask start)
    times: list[torch.Tensor]  # each step's start time (N,)


def student_rollout(models: DistillModels, n: int, seq_len: int, tau: torch.Tensor, cfg: DistillConfig,
                    generator: torch.Generator, sigma_fn) -> Rollout:
    """Generate ``n`` rows from all-mask with the student and keep the log-probability of every transition.

    ``student_steps=2``: ``1 → τ → t0`` (intermediate-state matching); ``1``: ``1 → t0``; ``K > 2``: the uniform
    K-step ancestral sampler ``1 → (K-1)/K → … → 0`` that samples at deployment, so the discriminator judges, and
    the policy gradient improves, exactly the samples ``didi sample --nfe K`` draws. The all-mask input is
    identical for every row, so step 1 runs the network once and broadcasts.
    """
    mask, sched, dev = models.mask_index, models.schedule, models.device
    z = torch.full((n, seq_len), mask, dtype=torch.long, device=dev)
    one = torch.ones(n, dtype=torch.float64, device=dev)
    if cfg.student_steps == 1:
        times = [one, torch.full_like(one, cfg.t0)]
    elif cfg.student_steps == 2:
        times = [one, tau.double(), torch.full_like(one, cfg.t0)]
    else:
        times = [torch.full_like(one, float(t)) for t in time_grid(cfg.student_steps)]
    steps: list[StepOutput] = []
    inputs: list[torch.Tensor] = []
    for k in range(len(times) - 1):
        z_in = z[:1] if k == 0 else z  # the all-mask start is shared by all rows
        logits = models.forward(models.student, z_in, sigma_fn(times[k][: len(z_in)]))
        # the K-step grid ends at t = 0 (α = 1), where every remaining mask is revealed without `fill`
        step = student_step(logits, z, sched.alpha(times[k]), sched.alpha(times[k + 1]), mask_index=mask,
                            generator=generator, fill=k == len(times) - 2 and cfg.fill_remaining)
        z = step.z_next
        if k == 0 and cfg.student_steps == 2 and cfg.remask_prob > 0:
            revealed = step.was_masked & (z != mask)
            back = revealed & (torch.rand(z.shape, generator=generator, device=dev, dtype=torch.float64)
                               < cfg.remask_prob)
            z = torch.where(back, torch.full_like(z, mask), z)
        steps.append(step)
        inputs.append(z_in)
    position_log_prob = torch.stack([step.position_log_prob for step in steps]).sum(0)
    return Rollout(z, position_log_prob.sum(-1), position_log_prob, steps, inputs, times[:-1])


@torch.no_grad()
def teacher_samples(models: DistillModels, n: int, seq_len: int, cfg: DistillConfig,
                    generator: torch.Generator) -> torch.Tensor:
    """Teacher ancestral samples (``real_source=teacher``)."""
    from ..diffusion.sampling import AncestralConfig, ancestral_sample

    def denoiser(z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return models.forward(models.teacher, z, sigma)
    return ancestral_sample(denoiser, batch_size=n, seq_len=seq_len, mask_index=models.mask_index,
                            schedule=models.schedule, config=AncestralConfig(num_steps=cfg.teacher_nfe),
                            generator=generator, device=models.device).tokens


def distill_step(models: DistillModels, x_real: torch.Tensor, step: int, cfg: DistillConfig,
                 generator: torch.Generator, reward_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
                 ) -> dict[str, float]:
    """One DiDi-Instruct iteration on a batch of real rows (B, L); returns scalar metrics.

    ``reward_fn`` (optional) maps the student's clean samples (N, L) to per-row rewards (N,), or per-token rewards
    (N, L) for ``credit=local``, and replaces the discriminator's reward (the discriminator still trains): a
    diagnostic that asks whether the policy gradient follows a known reward, e.g. an AR model's log-likelihood
    (``benchmarks/reward_diagnostics.py``).

    Raises :class:`TrainingError` on a non-finite loss *before* any weight is changed by it.
    """
    G, mask, sched, dev = cfg.group_size, models.mask_index, models.schedule, models.device
    x_real = x_real.to(dev)
    if cfg.real_source == "teacher":
        x_real = teacher_samples(models, x_real.shape[0], x_real.shape[1], cfg, generator)
    x_real = x_real.repeat_interleave(G, dim=0)
    n, seq_len = x_real.shape

    def zero_sigma(t: torch.Tensor) -> torch.Tensor:  # student (and teacher unless `released`): no time input
        return torch.zeros(t.shape, device=dev)

    def time_sigma(t: torch.Tensor) -> torch.Tensor:
        return sched.sigma(t.double()).float()

    teacher_sigma = time_sigma if cfg.sigma_mode == "released" else zero_sigma

    tau, pi_tau = draw_tau(n, G, cfg, generator, dev)
    update_student = step >= cfg.disc_warmup_steps and step % cfg.student_update_every == 0
    for group in models.opt_student.param_groups:  # the student's warm-up starts at its first update
        group["lr"] = cfg.lr * _lr_factor(student_updates_before(step, cfg), cfg)
    for group in models.opt_disc.param_groups:
        group["lr"] = cfg.disc_lr * _lr_factor(step, cfg)

    # 1. student generation with the policy log-probability
    models.student.train(cfg.rollout_dropout)
    with torch.set_grad_enabled(update_student):  # no graph when only the discriminator learns from this rollout
        rollout = student_rollout(models, n, seq_len, tau, cfg, generator, zero_sigma)
    x_fake = rollout.x_fake

    # 2. coupled corruption of real and student rows at the same time
    if cfg.coupled_time:
        t_corr = tau
    else:
        t_corr = cfg.tau_min + (cfg.tau_max - cfg.tau_min) * torch.rand(n, generator=generator, device=dev,
                                                                         dtype=torch.float64)
    alpha_corr = sched.alpha(t_corr.double())[:, None]
    sigma_corr = time_sigma(t_corr)  # the discriminator decides (time_blocks) which blocks see it

    # 3. discriminator update(s), each on a fresh corruption; the reward below reuses the last one
    models.discriminator.train()
    for _ in range(cfg.disc_updates):
        z_real = forward_mask(x_real, alpha_corr, mask, torch.rand(x_real.shape, generator=generator, device=dev,
                                                                   dtype=torch.float64))
        z_fake = forward_mask(x_fake.detach(), alpha_corr, mask,
                              torch.rand(x_fake.shape, generator=generator, device=dev, dtype=torch.float64))
        pos_real, pos_fake = scored_positions(z_real, z_fake, x_fake, mask, cfg.disc_positions)
        d_loss = discriminator_loss(models.disc_logits(z_real, sigma_corr), pos_real,
                                    models.disc_logits(z_fake, sigma_corr), pos_fake, cfg.label_smoothing)
        if not dist.all_finite(d_loss):  # collective: every rank skips the step together
            raise TrainingError(f"non-finite discriminator loss at step {step}")
        models.opt_disc.zero_grad(set_to_none=True)
        d_loss.backward()
        _sanitize_grads(models.discriminator)
        torch.nn.utils.clip_grad_norm_([p for p in models.discriminator.parameters() if p.requires_grad],
                                       cfg.disc_grad_clip)
        models.opt_disc.step()
    metrics = {"disc_loss": float(d_loss.detach()), "tau": float(tau.mean())}

    if not update_student:
        models.opt_student.zero_grad(set_to_none=True)
        return metrics

    # 4. rewards from the updated discriminator, grouped normalisation
    with torch.no_grad():
        if reward_fn is None:
            if cfg.reward_corruption == "fresh":  # a corruption the discriminator has not just been trained on
                z_fake = forward_mask(x_fake.detach(), alpha_corr, mask,
                                      torch.rand(x_fake.shape, generator=generator, device=dev, dtype=torch.float64))
                _, pos_fake = scored_positions(z_fake, z_fake, x_fake, mask, cfg.disc_positions)
            models.discriminator.eval()
            per_token = token_rewards(models.disc_logits(z_fake, sigma_corr), clip=cfg.reward_clip,
                                      eps=cfg.log_odds_eps)
            models.discriminator.train()
            rewards = (per_token * pos_fake).sum(-1) / (pos_fake.sum(-1) + 1e-8)
        else:  # a given reward: (N,) per sample, or (N, L) per token (every position scored)
            given = reward_fn(x_fake.detach()).float().to(dev)
            per_token = given if given.dim() == 2 else None
            pos_fake = torch.ones_like(x_fake, dtype=torch.bool)
            rewards = given.mean(-1) if given.dim() == 2 else given
        omega = omega_weight(t_corr, pi_tau, sched, cfg).float()
        if cfg.credit == "local" and per_token is not None:
            advantage = local_advantages(per_token, pos_fake, G, window=cfg.credit_window, clip=cfg.advantage_clip,
                                         mode=cfg.advantage)
        else:
            advantage = group_advantages(rewards, G, mode=cfg.advantage, clip=cfg.advantage_clip)

    # 5. student loss: policy gradient + regularisers
    if advantage.dim() == 2:  # local credit: every revealed token has its own advantage
        pg_loss = -(omega * (advantage * rollout.position_log_prob).sum(-1)).mean()
    else:
        pg_loss = -(omega * advantage * rollout.log_prob).mean()
    kl = torch.zeros((), device=dev)
    ent = torch.zeros((), device=dev)
    if cfg.regularize:
        entropies = []
        for k, (st, z_in, t_in) in enumerate(zip(rollout.steps, rollout.inputs, rollout.times)):
            with torch.no_grad():  # the step-1 input is shared by all rows: one teacher call
                teacher_lp = student_log_probs(models.forward(models.teacher, z_in, teacher_sigma(t_in[: len(z_in)])),
                                               mask)
            kl = kl + kl_weight(k, len(rollout.steps), cfg) * divergence(st.log_x_hat, teacher_lp, st.was_masked,
                                                                          cfg.divergence, cfg.jeffrey_beta)
            entropies.append(entropy(st.log_x_hat, st.was_masked))
        ent = torch.stack(entropies).mean()
    loss = pg_loss + kl - cfg.entropy_weight * ent
    if not dist.all_finite(loss):
        models.opt_student.zero_grad(set_to_none=True)
        raise TrainingError(f"non-finite student loss at step {step}")
    models.opt_student.zero_grad(set_to_none=True)
    loss.backward()
    _sanitize_grads(models.student)
    grad_norm = torch.nn.utils.clip_grad_norm_(models.student.parameters(), cfg.grad_clip)
    models.opt_student.step()
    updates = student_updates_before(step, cfg)
    ema_update(models.ema, dist.unwrap(models.student),
               ema_decay_at(cfg.ema_decay, updates) if cfg.ema_warmup else cfg.ema_decay)
    metrics.update(reward=float(rewards.mean()), reward_std=float(rewards.std()) if n > 1 else 0.0,
                   advantage_std=float(advantage.std()) if n > 1 else 0.0, pg_loss=float(pg_loss.detach()),
                   kl=float(kl.detach()), entropy=float(ent.detach()), grad_norm=float(grad_norm),
                   omega=float(omega.mean()))
    return metrics


def _sanitize_grads(module: nn.Module) -> None:
    """Replace NaN/inf gradient entries by 0 (as the released trainer does) so one bad element cannot poison
    the Adam moments; a non-finite *loss* is caught before this and stops the step."""
    for p in module.parameters():
        if p.grad is not None:
            torch.nan_to_num_(p.grad, nan=0.0, posinf=0.0, neginf=0.0)


# --------------------------------------------------------------------------------------------- the recipe

def _load_teacher(path: Path, device: torch.device) -> tuple[RunConfig, DiT]:
    config = read_run_config(path)
    if config.kind != "mdlm" or config.diffusion is None:
        raise CheckpointError(f"{path}: --teacher must be a masked-diffusion (mdlm) run, this one is {config.kind!r}")
    teacher = DiT(config.model)
    weights = path / "ema.safetensors" if (path / "ema.safetensors").exists() else path / "model.safetensors"
    load_state_dict_strict(teacher, load_tensors(weights), str(weights))
    return config, teacher.to(device)


RESUMABLE_OPTIONS = ("steps", "device", "progress", "save_every", "log_every", "keep_checkpoints")
"""Options that may differ when a distillation is resumed; everything else is taken from the saved run."""


def resume_config(out: str | Path, **overrides: Any) -> DistillConfig:
    """The saved :class:`DistillConfig` of the student run ``out`` with ``overrides`` (only
    :data:`RESUMABLE_OPTIONS` may change; ``None`` values are ignored)."""
    out = Path(out)
    student_config = read_run_config(out)
    if student_config.kind != "didi":
        raise CheckpointError(f"{out}: is not a DiDi-Instruct student run")
    if latest_snapshot(out) is None:
        raise CheckpointError(f"{out}: no complete snapshot to resume from")
    saved = resumed_options(student_config.extra.get("distill", {}), overrides, RESUMABLE_OPTIONS,
                            DistillConfig.__dataclass_fields__, ignore=("out", "teacher"))
    saved["out"] = str(out)
    return DistillConfig(**saved)


def distill(cfg: DistillConfig, data_overrides: dict[str, Any] | None = None, *, resume: bool = False,
            force: bool = False) -> Path:
    """Run DiDi-Instruct from ``cfg.teacher`` into ``cfg.out`` (or resume it); returns the student run dir.

    Under ``torchrun`` every rank calls this: ``--batch-size`` real rows per iteration are split over the ranks and
    each row's G replicas stay on its rank, so grouped reward normalisation never mixes ranks; the randomness of a
    rank's rows comes from ``(seed, step, rank)``, so a run is reproducible for a given world size. Rank 0 prepares
    the data first, logs rank-averaged metrics and writes every file. A new run scales warm-ups longer than half
    of it (:func:`didi.config.fit_warmups`, recorded in ``config.json``); ``force`` writes into a directory that
    holds other files; a run stopped by SIGINT/SIGTERM snapshots and raises :class:`didi.errors.RunInterrupted`.
    """
    from ..data.corpora import BatchSchedule, DataConfig, prepare_data, shard
    from ..data.tokenizer import load_tokenizer

    require(bool(cfg.out), "out", "a student run directory is required")
    out = Path(cfg.out)
    ctx = dist.init(cfg.device)
    device = ctx.device
    with dist.main_process_first():  # rank 0 checks the run directory and tokenizes first
        if resume:
            cfg = resume_config(out, **{name: getattr(cfg, name) for name in RESUMABLE_OPTIONS})
            saved_config = read_run_config(out) if ctx.is_main else None
            if saved_config is not None and saved_config.extra["distill"].get("steps") != cfg.steps:
                saved_config.extra["distill"]["steps"] = cfg.steps  # an extended run resumes to its new length
                write_run_config(out, saved_config)
        elif ctx.is_main:
            check_new_run_dir(out, force)
        require(bool(cfg.teacher), "teacher", "a teacher run directory is required")
        teacher_dir = Path(cfg.teacher)
        teacher_config, teacher = _load_teacher(teacher_dir, device)
        tokenizer = load_tokenizer(teacher_dir, teacher_config.tokenizer)
        data_values = {**teacher_config.data, **(data_overrides or {})}
        if data_values.get("tokenizer") not in (None, "auto", tokenizer.kind):
            raise ConfigError(f"--tokenizer: the teacher uses a {tokenizer.kind} tokenizer, data asks for "
                              f"{data_values['tokenizer']}")
        data_cfg = DataConfig(**{k: v for k, v in data_values.items() if k in DataConfig.__dataclass_fields__})
        if data_cfg.seq_len > teacher_config.model.max_seq_len:
            raise ConfigError(f"--seq-len: {data_cfg.seq_len} exceeds the teacher's maximum "
                              f"{teacher_config.model.max_seq_len}")
        prepared = prepare_data(data_cfg, tokenizer=tokenizer, progress=cfg.progress and ctx.is_main)
    if cfg.batch_size % ctx.world_size:
        raise ConfigError(f"--batch-size: {cfg.batch_size} real rows per iteration cannot be split evenly over "
                          f"{ctx.world_size} processes")
    precision = resolve_precision(cfg.precision, device)
    cfg, fitted, note = (cfg, {}, None) if resume else fit_warmups(cfg, "warmup_steps", "disc_warmup_steps")

    torch.manual_seed(cfg.seed)
    models = DistillModels.from_teacher(teacher, cfg, teacher_config.diffusion.mask_index,
                                        teacher_config.diffusion.eps, device, precision)
    snapshot = dist.broadcast_object(latest_snapshot(out)) if resume else None
    start = 0
    if snapshot is not None:
        start = _restore(snapshot, models)
        if ctx.is_main:
            print(f"[didi] resuming from step {start} of {cfg.steps} ({snapshot})", file=sys.stderr)
    elif ctx.is_main:
        student_config = RunConfig(kind="didi", model=teacher_config.model, tokenizer=tokenizer.save(out),
                                   diffusion=teacher_config.diffusion, training=teacher_config.training,
                                   data=to_dict(data_cfg),
                                   extra={"distill": to_dict(cfg), "teacher": str(teacher_dir),
                                          "discriminator": models.discriminator.spec(),
                                          **({"fitted_warmups": fitted} if fitted else {})})
        write_run_config(out, student_config)
        write_run_files(out, prepared.run_files)
        if note:
            print(f"[didi] {note}", file=sys.stderr)
    if ctx.is_main:
        clean_stale_tmp(out)
    if ctx.enabled:
        # Each network is called twice before its backward (student: steps 1 and 2; discriminator: real and
        # fake rows). DDP handles that without static_graph: autograd accumulates every parameter's gradient once
        # per backward, which fires DDP's all-reduce hook once (tests/test_distributed.py checks the gradients
        # against one process).
        models.student = dist.ddp(models.student, device)
        models.discriminator = dist.ddp(models.discriminator, device)

    batches = BatchSchedule(len(prepared.train), cfg.batch_size, seed=cfg.seed)
    bar = tqdm(total=cfg.steps, initial=start, desc="distill", disable=not (cfg.progress and ctx.is_main),
               dynamic_ncols=True)
    say = bar.write if ctx.is_main else (lambda message: None)
    metrics_path = out / "metrics.jsonl"
    skipped = 0
    last = time.perf_counter()
    interrupted = None
    with dist.StopRequest() as stop:
        for step in range(start, cfg.steps):
            x = prepared.train.batch(shard(batches.indices(step), ctx.rank, ctx.world_size))
            # randomness private to this rank's rows: rollouts and corruption (generator), dropout (global RNG)
            generator = torch.Generator(device=device).manual_seed(dist.rank_seed(cfg.seed, step, ctx.rank, 2))
            torch.manual_seed(dist.rank_seed(cfg.seed, step, ctx.rank, 3))
            try:
                metrics = distill_step(models, x, step, cfg, generator)
            except TrainingError as exc:
                # NaN guard (agreed by all ranks): the step's updates were not applied; go on from the current weights
                skipped += 1
                say(f"step {step}: skipped ({exc})")
                _zero_grads(models)
                if skipped > max(10, cfg.steps // 20):
                    raise TrainingError(f"too many non-finite steps ({skipped}); last good snapshot kept in {out}") \
                        from exc
                metrics = {"skipped": 1.0}
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                metrics = dist.mean_over_ranks(metrics)
                now = time.perf_counter()
                metrics["samples_per_s"] = cfg.log_every * cfg.batch_size * cfg.group_size / max(1e-9, now - last)
                last = now
                bar.set_postfix({k: f"{metrics[k]:.3g}" for k in ("disc_loss", "reward", "advantage_std", "kl",
                                                                 "entropy", "samples_per_s") if k in metrics})
                if ctx.is_main:
                    with open(metrics_path, "a") as fh:
                        fh.write(json.dumps({"step": done, **metrics}) + "\n")
            bar.update(1)
            stopping = stop.agreed()
            if done % cfg.save_every == 0 or done == cfg.steps or stopping:
                _save(out, done, models, cfg)
                if stopping and done < cfg.steps:
                    interrupted = stop.interrupted(done, cfg.steps, f"didi distill --resume {out}")
                    break
    bar.close()
    dist.barrier()
    if interrupted is not None:
        raise interrupted
    return out


def _zero_grads(models: DistillModels) -> None:
    models.opt_student.zero_grad(set_to_none=True)
    models.opt_disc.zero_grad(set_to_none=True)


def _save(out: Path, step: int, models: DistillModels, cfg: DistillConfig) -> None:
    """Rank 0 writes student, EMA, discriminator and both optimisers (DDP keeps them identical on all ranks).

    No RNG state is saved: every step reseeds from ``(seed, step, rank)``.
    """
    if not dist.is_main():
        return
    tensors = {"model": dist.unwrap(models.student).state_dict(), "ema": models.ema.state_dict(),
               "discriminator": dist.unwrap(models.discriminator).state_dict()}
    state = {"opt_student": models.opt_student.state_dict(), "opt_disc": models.opt_disc.state_dict(),
             "distill_config": to_dict(cfg)}
    save_snapshot(out, step, tensors, state, keep=cfg.keep_checkpoints)


def _restore(snapshot: Path, models: DistillModels) -> int:
    """Load a snapshot into the (not yet DDP-wrapped) networks and optimisers; every rank reads the same files."""
    dev = models.device
    load_state_dict_strict(models.student, load_tensors(snapshot / "model.safetensors", dev), str(snapshot))
    load_state_dict_strict(models.ema, load_tensors(snapshot / "ema.safetensors", dev), str(snapshot))
    load_state_dict_strict(models.discriminator, load_tensors(snapshot / "discriminator.safetensors", dev),
                           str(snapshot))
    state = load_trainer_state(snapshot)
    models.opt_student.load_state_dict(state["opt_student"])
    models.opt_disc.load_state_dict(state["opt_disc"])
    return int(state["step"])
