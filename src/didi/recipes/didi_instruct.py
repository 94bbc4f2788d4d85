"""DiDi-Instruct as a distillation method (Zheng et al., ICLR 2026): its options, networks and one iteration.

The maths is :mod:`didi.diffusion.instruct` (one function per equation, in the order of Algorithm 1); this module
holds what the loop of :func:`didi.recipes.distill.distill` runs: :class:`InstructConfig` (the published
hyper-parameters as defaults) and :class:`DiDiInstruct` (student, teacher, EMA, discriminator, their optimisers and
:meth:`DiDiInstruct.step`).

Choices where the sources disagree (notes §8) are documented on :class:`InstructConfig` and in docs/method.md.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn

from ..config import helpfield
from ..diffusion import instruct
from ..diffusion.process import LogLinearSchedule, forward_mask
from ..diffusion.sampling import ancestral_sample
from ..errors import ConfigError, TrainingError, require
from ..models.discriminator import build_discriminator, default_trainable_blocks
from ..runtime import distributed as dist
from ..runtime.cache import announce, cache_root
from ..runtime.checkpoint import atomic_write, load_state_dict_strict, load_tensors, load_trainer_state, write_json
from ..runtime.devices import autocast
from ..runtime.progress import say, track
from ..version import __version__
from .loop import ema_decay_at, ema_update, lr_at, set_lr
from .method import DistillConfig, student_from_teacher, student_optimizer


@dataclass
class InstructConfig(DistillConfig):
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

    WARMUPS: ClassVar[tuple[str, ...]] = ("warmup_steps", "disc_warmup_steps")

    group_size: int = helpfield(4, "G: student samples per real row, for grouped reward normalisation (>= 2)")
    disc_lr: float = helpfield(1e-5, "discriminator learning rate")
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
    reward_clip: float = helpfield(instruct.REWARD_CLIP, "clip per-token discriminator log-odds to ±this")
    advantage_clip: float = helpfield(3.0, "clip advantages to ±this")
    log_odds_eps: float = helpfield(instruct.LOG_ODDS_EPS, "ε in log(σ(d)+ε) - log(1-σ(d)+ε)")
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
    real_source: str = helpfield("data", "what the discriminator treats as real: data or teacher samples (pure "
                                         "distillation)")
    teacher_nfe: int = helpfield(64, "steps of the teacher sampler when --real-source teacher")
    teacher_pool: int = helpfield(4096, "with --real-source teacher: sample this many teacher rows once (kept in the "
                                        "run and in the cache, so every seed of a teacher reuses them) and draw "
                                        "each iteration's real rows from them; 0: fresh teacher samples every "
                                        "iteration (--teacher-nfe calls per iteration)")
    teacher_pool_seed: int = helpfield(0, "seed of the teacher pool's samples (not the distillation's --seed: the "
                                          "seeds of a teacher share one pool)")
    sigma_mode: str = helpfield("disc", "who is told the noise level σ_τ: disc (the discriminator's trainable "
                                        "blocks), released (teacher and every discriminator block), or zero")
    regularize: bool = helpfield(True, "apply the KL and entropy regularisers (ablation switch)")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.method == "didi-instruct", "method", f"an InstructConfig is didi-instruct (got {self.method!r})")
        require(self.group_size >= 2, "group_size", f"must be >= 2 for grouped normalisation (got {self.group_size})")
        require(self.disc_lr > 0, "disc_lr", f"must be > 0 (got {self.disc_lr})")
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
        require(self.disc_positions in ("masked", "all"), "disc_positions",
                f"must be masked or all (got {self.disc_positions!r})")
        require(self.real_source in ("data", "teacher"), "real_source", "must be data or teacher")
        require(self.teacher_nfe >= 1, "teacher_nfe", "must be >= 1")
        require(self.teacher_pool >= 0, "teacher_pool", f"must be >= 0 (got {self.teacher_pool})")
        require(self.sigma_mode in ("disc", "released", "zero"), "sigma_mode", "must be disc, released or zero")
        require(self.disc_warmup_steps >= 0, "disc_warmup_steps", "must be >= 0")
        require(self.disc_updates >= 1, "disc_updates", f"must be >= 1 (got {self.disc_updates})")
        require(self.student_update_every >= 1, "student_update_every", "must be >= 1")

    @property
    def tau_distribution(self) -> dict[str, float]:
        """The ``a, b, lo, hi`` of :func:`didi.diffusion.instruct.sample_tau`."""
        return dict(a=self.tau_a, b=self.tau_b, lo=self.tau_min, hi=self.tau_max)


def student_updates_before(step: int, cfg: InstructConfig) -> int:
    """How many student updates happened before iteration ``step`` (the discriminator warm-up and
    ``student_update_every`` skip iterations)."""
    if step <= cfg.disc_warmup_steps:
        return 0
    first = cfg.disc_warmup_steps + (-cfg.disc_warmup_steps) % cfg.student_update_every
    return max(0, -(-(step - first) // cfg.student_update_every))


def _sanitize_grads(module: nn.Module) -> None:
    """Replace NaN/inf gradient entries by 0 (as the released trainer does) so one bad element cannot poison
    the Adam moments; a non-finite *loss* is caught before this and stops the step."""
    for p in module.parameters():
        if p.grad is not None:
            torch.nan_to_num_(p.grad, nan=0.0, posinf=0.0, neginf=0.0)


@dataclass
class DiDiInstruct:
    """Everything an iteration touches: networks, optimisers and fixed settings, and the iteration itself.

    Under ``torchrun`` :meth:`distribute` wraps ``student`` and ``discriminator`` (the networks that train) in
    ``DistributedDataParallel``; the teacher and the EMA stay local (identical on every rank).

    After each :meth:`step`, ``last_rollout`` holds the student's clean samples (N, L) and ``last_token_rewards`` the
    per-token rewards (N, L) of the iteration (``None`` when the student did not update): hooks for diagnostics.
    """

    cfg: InstructConfig
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
    last_rollout: torch.Tensor | None = None
    last_token_rewards: torch.Tensor | None = None
    pool: torch.Tensor | None = None  # teacher samples the real rows are drawn from (real_source=teacher)

    shown: ClassVar[tuple[str, ...]] = ("disc_loss", "reward", "advantage_std", "kl", "entropy", "samples_per_s")

    @property
    def samples_per_row(self) -> int:
        return self.cfg.group_size

    @classmethod
    def from_teacher(cls, teacher: nn.Module, cfg: InstructConfig, mask_index: int, eps: float,
                     device: torch.device, precision: torch.dtype | None = None) -> DiDiInstruct:
        teacher, student, ema = student_from_teacher(teacher, device)
        k = default_trainable_blocks(len(teacher.blocks)) if cfg.disc_blocks < 0 else cfg.disc_blocks
        if k > len(teacher.blocks):
            raise ConfigError(f"--disc-blocks: the teacher has only {len(teacher.blocks)} blocks (got {k})")
        time_blocks = {"disc": k, "released": len(teacher.blocks), "zero": 0}[cfg.sigma_mode]
        disc = build_discriminator(teacher, k, time_blocks, cfg.disc_window, cfg.disc_normalize).to(device).train()
        opt_s = student_optimizer(student, cfg)
        opt_d = torch.optim.AdamW([p for p in disc.parameters() if p.requires_grad], lr=cfg.disc_lr,
                                  betas=(cfg.beta1, cfg.beta2), eps=1e-8, weight_decay=cfg.weight_decay)
        return cls(cfg, student, teacher, disc, ema, opt_s, opt_d, LogLinearSchedule(eps), mask_index, device,
                   precision, frozen_disc_blocks=len(teacher.blocks) - k)

    # ------------------------------------------------------------------------------------------- networks

    def disc_logits(self, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Discriminator logits (N, L); the frozen lower blocks run without autograd (they never train)."""
        with autocast(self.device, self.precision):
            return self.discriminator(z, sigma, no_grad_blocks=self.frozen_disc_blocks)

    def forward(self, net: nn.Module, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.precision):
            return net(z, sigma)

    def zero_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """The student's (and, unless ``sigma_mode=released``, the teacher's) noise input: none."""
        return torch.zeros(t.shape, device=self.device)

    def time_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.schedule.sigma(t.double()).float()

    def teacher_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.time_sigma(t) if self.cfg.sigma_mode == "released" else self.zero_sigma(t)

    def rollout(self, n: int, seq_len: int, tau: torch.Tensor, generator: torch.Generator) -> instruct.Rollout:
        """``n`` student rollouts along :func:`~didi.diffusion.instruct.rollout_times` (τ: the 2-step middle)."""
        return instruct.rollout(lambda z, t: self.forward(self.student, z, self.zero_sigma(t)),
                                instruct.rollout_times(self.cfg.student_steps, tau, self.cfg.t0), seq_len=seq_len,
                                mask_index=self.mask_index, schedule=self.schedule, generator=generator,
                                fill_remaining=self.cfg.fill_remaining, remask_prob=self.cfg.remask_prob)

    @torch.no_grad()
    def teacher_samples(self, n: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
        """Teacher ancestral samples at ``teacher_nfe`` steps (``real_source=teacher``)."""
        return ancestral_sample(lambda z, sigma: self.forward(self.teacher, z, sigma), batch_size=n,
                                seq_len=seq_len, num_steps=self.cfg.teacher_nfe, mask_index=self.mask_index,
                                schedule=self.schedule, generator=generator, device=self.device).tokens

    def real_rows_from_teacher(self, n: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` teacher samples as the real rows: drawn from the pool (:meth:`prepare`), else sampled now."""
        if self.pool is None:
            return self.teacher_samples(n, seq_len, generator)
        rows = torch.randint(len(self.pool), (n,), generator=generator, device=generator.device)
        return self.pool[rows.cpu()].to(self.device)

    def prepare(self, run_dir: Path, seq_len: int, progress: bool = True) -> None:
        """Before the first iteration (new or resumed run): with ``real_source=teacher`` and a ``teacher_pool``,
        load the run's pool or build it (:func:`teacher_pool`)."""
        if self.cfg.real_source == "teacher" and self.cfg.teacher_pool > 0:
            self.pool = teacher_pool(self, Path(run_dir), seq_len, progress=progress)

    # ---------------------------------------------------------------------------------------- one iteration

    def step(self, x_real: torch.Tensor, step: int, generator: torch.Generator,
             reward_fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
        """One DiDi-Instruct iteration on a batch of real rows (B, L); returns scalar metrics.

        ``reward_fn`` (optional) maps the student's clean samples (N, L) to per-row rewards (N,), or per-token
        rewards (N, L) for ``credit=local``, and replaces the discriminator's reward (the discriminator still
        trains): a diagnostic that asks whether the policy gradient follows a known reward, e.g. an AR model's
        log-likelihood (``benchmarks/reward_diagnostics.py``).

        Raises :class:`TrainingError` on a non-finite loss *before* any weight is changed by it.
        """
        cfg, G, sched, dev = self.cfg, self.cfg.group_size, self.schedule, self.device
        self.last_rollout = self.last_token_rewards = None
        x_real = x_real.to(dev)
        if cfg.real_source == "teacher":
            x_real = self.real_rows_from_teacher(x_real.shape[0], x_real.shape[1], generator)
        x_real = x_real.repeat_interleave(G, dim=0)
        n, seq_len = x_real.shape

        tau, pi_tau = instruct.draw_tau(n, G, per_group=cfg.tau_per == "group", generator=generator, device=dev,
                                        **cfg.tau_distribution)
        update_student = step >= cfg.disc_warmup_steps and step % cfg.student_update_every == 0
        schedule = dict(warmup=cfg.warmup_steps, total=cfg.steps, schedule=cfg.lr_schedule,
                        final_ratio=cfg.min_lr_ratio)
        set_lr(self.opt_student, lr_at(student_updates_before(step, cfg), peak=cfg.lr, **schedule))
        set_lr(self.opt_disc, lr_at(step, peak=cfg.disc_lr, **schedule))  # the student's warm-up: its 1st update

        # 1. student generation with the policy log-probability
        self.student.train(cfg.rollout_dropout)
        with torch.set_grad_enabled(update_student):  # no graph when only the discriminator learns from it
            rollout = self.rollout(n, seq_len, tau, generator)
        x_fake = rollout.x_fake
        self.last_rollout = x_fake.detach()

        # 2. coupled corruption of real and student rows at the same time
        if cfg.coupled_time:
            t_corr = tau
        else:
            t_corr = cfg.tau_min + (cfg.tau_max - cfg.tau_min) * torch.rand(n, generator=generator, device=dev,
                                                                             dtype=torch.float64)
        alpha_corr = sched.alpha(t_corr.double())[:, None]
        sigma_corr = self.time_sigma(t_corr)  # the discriminator decides (time_blocks) which blocks see it

        # 3. discriminator update(s), each on a fresh corruption; the reward below reuses the last one
        d_loss, z_fake, pos_fake = self._update_discriminator(x_real, x_fake, alpha_corr, sigma_corr, generator, step)
        metrics = {"disc_loss": float(d_loss.detach()), "tau": float(tau.mean())}

        if not update_student:
            self.opt_student.zero_grad(set_to_none=True)
            return metrics

        # 4. rewards from the updated discriminator, 5. grouped normalisation
        with torch.no_grad():
            rewards, per_token, pos_fake = self._rewards(x_fake, z_fake, pos_fake, alpha_corr, sigma_corr, generator,
                                                         reward_fn)
            omega = instruct.omega_weight(t_corr, pi_tau, sched, constant=cfg.omega == "constant",
                                          lo=cfg.omega_min, hi=cfg.omega_max,
                                          importance=cfg.importance_weight).float()
            if cfg.credit == "local" and per_token is not None:
                advantage = instruct.local_advantages(per_token, pos_fake, G, window=cfg.credit_window,
                                                      clip=cfg.advantage_clip, mode=cfg.advantage)
            else:
                advantage = instruct.group_advantages(rewards, G, mode=cfg.advantage, clip=cfg.advantage_clip)

        # 6. student loss: policy gradient + regularisers
        pg_loss = instruct.policy_gradient_loss(omega, advantage, rollout)
        kl, ent = self._regularisers(rollout)
        loss = pg_loss + kl - cfg.entropy_weight * ent
        if not dist.all_finite(loss):
            self.opt_student.zero_grad(set_to_none=True)
            raise TrainingError(f"non-finite student loss at step {step}")
        self.opt_student.zero_grad(set_to_none=True)
        loss.backward()
        _sanitize_grads(self.student)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.student.parameters(), cfg.grad_clip)
        self.opt_student.step()
        updates = student_updates_before(step, cfg)
        ema_update(self.ema, dist.unwrap(self.student),
                   ema_decay_at(cfg.ema_decay, updates) if cfg.ema_warmup else cfg.ema_decay)
        metrics.update(reward=float(rewards.mean()), reward_std=float(rewards.std()) if n > 1 else 0.0,
                       advantage_std=float(advantage.std()) if n > 1 else 0.0, pg_loss=float(pg_loss.detach()),
                       kl=float(kl.detach()), entropy=float(ent.detach()), grad_norm=float(grad_norm),
                       omega=float(omega.mean()))
        return metrics

    def _update_discriminator(self, x_real: torch.Tensor, x_fake: torch.Tensor, alpha_corr: torch.Tensor,
                              sigma_corr: torch.Tensor, generator: torch.Generator, step: int
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``disc_updates`` steps of the discriminator (label 1 = real), each on a fresh corruption of the same rows
        at the coupled time; returns the last loss, corrupted student rows and their scored positions."""
        cfg, mask, dev = self.cfg, self.mask_index, self.device
        self.discriminator.train()
        for _ in range(cfg.disc_updates):
            z_real = forward_mask(x_real, alpha_corr, mask, torch.rand(x_real.shape, generator=generator,
                                                                       device=dev, dtype=torch.float64))
            z_fake = forward_mask(x_fake.detach(), alpha_corr, mask,
                                  torch.rand(x_fake.shape, generator=generator, device=dev, dtype=torch.float64))
            pos_real, pos_fake = instruct.scored_positions(z_real, z_fake, x_fake, mask, cfg.disc_positions)
            d_loss = instruct.discriminator_loss(self.disc_logits(z_real, sigma_corr), pos_real,
                                                 self.disc_logits(z_fake, sigma_corr), pos_fake, cfg.label_smoothing)
            if not dist.all_finite(d_loss):  # collective: every rank skips the step together
                raise TrainingError(f"non-finite discriminator loss at step {step}")
            self.opt_disc.zero_grad(set_to_none=True)
            d_loss.backward()
            _sanitize_grads(self.discriminator)
            torch.nn.utils.clip_grad_norm_([p for p in self.discriminator.parameters() if p.requires_grad],
                                           cfg.disc_grad_clip)
            self.opt_disc.step()
        return d_loss, z_fake, pos_fake

    def _rewards(self, x_fake: torch.Tensor, z_fake: torch.Tensor, pos_fake: torch.Tensor, alpha_corr: torch.Tensor,
                 sigma_corr: torch.Tensor, generator: torch.Generator,
                 reward_fn: Callable[[torch.Tensor], torch.Tensor] | None
                 ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Per-row rewards (N,), per-token rewards (N, L) (or None) and the positions they score."""
        cfg, mask = self.cfg, self.mask_index
        if reward_fn is not None:  # a given reward: (N,) per sample, or (N, L) per token (every position scored)
            given = reward_fn(x_fake.detach()).float().to(self.device)
            per_token = given if given.dim() == 2 else None
            return (given.mean(-1) if given.dim() == 2 else given), per_token, torch.ones_like(x_fake, dtype=torch.bool)
        if cfg.reward_corruption == "fresh":  # a corruption the discriminator has not just been trained on
            z_fake = forward_mask(x_fake.detach(), alpha_corr, mask, torch.rand(
                x_fake.shape, generator=generator, device=self.device, dtype=torch.float64))
            _, pos_fake = instruct.scored_positions(z_fake, z_fake, x_fake, mask, cfg.disc_positions)
        self.discriminator.eval()
        per_token = instruct.token_rewards(self.disc_logits(z_fake, sigma_corr), clip=cfg.reward_clip,
                                           eps=cfg.log_odds_eps)
        self.discriminator.train()
        self.last_token_rewards = per_token
        return (per_token * pos_fake).sum(-1) / (pos_fake.sum(-1) + 1e-8), per_token, pos_fake

    def _regularisers(self, rollout: instruct.Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """``Σ_k w_k · D(student ‖ teacher at step k)`` and the mean entropy of the student's predictions."""
        cfg = self.cfg
        kl = torch.zeros((), device=self.device)
        ent = torch.zeros((), device=self.device)
        if not cfg.regularize:
            return kl, ent
        entropies = []
        for k, (st, z_in, t_in) in enumerate(zip(rollout.steps, rollout.inputs, rollout.times)):
            with torch.no_grad():  # the step-1 input is shared by all rows: one teacher call
                teacher_lp = instruct.student_log_probs(
                    self.forward(self.teacher, z_in, self.teacher_sigma(t_in[: len(z_in)])), self.mask_index)
            weight = instruct.kl_weight(k, len(rollout.steps), hi=cfg.kl_hi, lo=cfg.kl_lo, one_step=cfg.kl_one_step)
            kl = kl + weight * instruct.divergence(st.log_x_hat, teacher_lp, st.was_masked, cfg.divergence,
                                                   cfg.jeffrey_beta)
            entropies.append(instruct.entropy(st.log_x_hat, st.was_masked))
        return kl, torch.stack(entropies).mean()

    # --------------------------------------------------------------------------------- the loop's interface

    def run_extra(self) -> dict[str, Any]:
        return {"discriminator": dist.unwrap(self.discriminator).spec()}

    def distribute(self, device: torch.device) -> None:
        # Each network is called twice before its backward (student: steps 1 and 2; discriminator: real and
        # fake rows). DDP handles that without static_graph: autograd accumulates every parameter's gradient once
        # per backward, which fires DDP's all-reduce hook once (tests/test_distributed.py checks the gradients
        # against one process).
        self.student = dist.ddp(self.student, device)
        self.discriminator = dist.ddp(self.discriminator, device)

    def state(self) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
        """Student, EMA, discriminator and both optimisers (DDP keeps them identical on all ranks). No RNG state:
        every step reseeds from ``(seed, step, rank)``."""
        tensors = {"model": dist.unwrap(self.student).state_dict(), "ema": self.ema.state_dict(),
                   "discriminator": dist.unwrap(self.discriminator).state_dict()}
        return tensors, {"opt_student": self.opt_student.state_dict(), "opt_disc": self.opt_disc.state_dict()}

    def restore(self, snapshot: Path) -> int:
        dev = self.device
        load_state_dict_strict(self.student, load_tensors(snapshot / "model.safetensors", dev), str(snapshot))
        load_state_dict_strict(self.ema, load_tensors(snapshot / "ema.safetensors", dev), str(snapshot))
        load_state_dict_strict(self.discriminator, load_tensors(snapshot / "discriminator.safetensors", dev),
                               str(snapshot))
        state = load_trainer_state(snapshot)
        self.opt_student.load_state_dict(state["opt_student"])
        self.opt_disc.load_state_dict(state["opt_disc"])
        return int(state["step"])

    def zero_grads(self) -> None:
        self.opt_student.zero_grad(set_to_none=True)
        self.opt_disc.zero_grad(set_to_none=True)


POOL_FILE = "teacher_pool.npy"
POOL_BATCH = 256


def _fingerprint(module: nn.Module) -> str:
    """SHA-256 of a network's tensors (names, dtypes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _save_pool(path: Path, tokens: np.ndarray, spec: dict[str, Any]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, tokens)
    atomic_write(path, write)
    write_json(path.with_suffix(".json"), spec)


def teacher_pool(method: DiDiInstruct, run_dir: Path, seq_len: int, progress: bool = True) -> torch.Tensor:
    """The teacher samples a pure-distillation run (``--real-source teacher``) draws its real rows from.

    ``teacher_pool`` rows sampled once by the teacher's ancestral sampler at ``teacher_nfe`` steps (seed
    ``teacher_pool_seed``, batches of 256). They are kept in the run (``teacher_pool.npy`` and its settings in
    ``teacher_pool.json``: a resumed run trains on the same rows) and in the cache under ``teacher-pools/``, keyed by
    the teacher's weights and the settings, so that every distillation seed of one teacher reuses one pool. Before
    sampling, a line gives the pool's size and, after the first batch, its estimated time.
    """
    cfg = method.cfg
    own = run_dir / POOL_FILE
    if own.exists():  # a resumed run: the rows it trained on
        return torch.from_numpy(np.load(own).astype(np.int64))
    spec = {"teacher": str(Path(cfg.teacher)), "weights_sha256": _fingerprint(method.teacher), "nfe": cfg.teacher_nfe,
            "size": cfg.teacher_pool, "seed": cfg.teacher_pool_seed, "seq_len": seq_len,
            "mask_index": method.mask_index, "didi_version": __version__}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    cached = cache_root() / "teacher-pools" / f"{key}.npy"
    if cached.exists():
        tokens = np.load(cached)
        print(f"[didi] teacher pool: {len(tokens)} samples from the cache ({cached})", file=sys.stderr)
    else:
        tokens = _sample_pool(method, seq_len, progress)
        if dist.is_main():
            _save_pool(cached, tokens, spec)
            announce(f"teacher pool ({cfg.teacher_pool} samples at {cfg.teacher_nfe} NFE)", [cached])
    if dist.is_main():
        _save_pool(own, tokens, {**spec, "cache_key": key})
    return torch.from_numpy(tokens.astype(np.int64))


def _sample_pool(method: DiDiInstruct, seq_len: int, progress: bool) -> np.ndarray:
    cfg = method.cfg
    generator = torch.Generator(device=method.device).manual_seed(cfg.teacher_pool_seed)
    sizes = [min(POOL_BATCH, cfg.teacher_pool - start) for start in range(0, cfg.teacher_pool, POOL_BATCH)]
    say(f"[didi] teacher pool: sampling {cfg.teacher_pool} rows of {seq_len} tokens at {cfg.teacher_nfe} NFE "
        f"({cfg.teacher_pool * seq_len * 4 / 2**20:.1f} MiB) in {len(sizes)} batches")
    rows, started = [], time.perf_counter()
    for i, size in enumerate(track(sizes, "teacher pool", enabled=progress, unit="batch")):
        rows.append(method.teacher_samples(size, seq_len, generator).cpu().numpy().astype(np.int32))
        if i == 0 and len(sizes) > 1:
            first = time.perf_counter() - started
            say(f"[didi] teacher pool: first batch {first:.1f}s, about {first * len(sizes) / 60:.1f} min in all")
    return np.concatenate(rows)
