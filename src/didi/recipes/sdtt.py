"""SDTT, self-distillation through time (Deschenaux & Gulcehre, ICLR 2025), as a distillation method.

The student, initialised from the teacher, learns to do in one ancestral step what the teacher does in two. A
round distils a teacher that samples with ``K`` steps into a student that samples with ``K/2``; after the round the
student (its EMA) becomes the teacher and the step count halves again: ``--rounds 4`` from ``--start-nfe 128`` gives
an 8-step student (the release ran 7 rounds from 1024).

One iteration of round ``r`` (teacher grid ``K_r = start_nfe / 2^r`` steps, student grid ``K_r / 2``):

1. a real row ``x`` is corrupted at a time ``t`` of the student's grid: ``z_t ~ q_t(·|x)``;
2. the teacher takes two ancestral steps of size ``1/K_r`` from ``z_t``. The target of a position masked in
   ``z_t`` is the teacher's distribution ``x̂_θ`` at the step that revealed it, or, if neither step revealed it,
   the teacher's prediction at the second step (its latest): a one-sample estimate of where the teacher's two
   steps put that position (:func:`teacher_targets`);
3. the student's ``x̂_ν(z_t)`` is pulled towards the target with ``--divergence`` ``kld`` = KL(target ‖ student),
   ``mse`` = the squared error of the probability vectors or ``tvd`` = their total variation, averaged over the
   positions masked in ``z_t`` (:func:`divergence`).

Between rounds the optimiser and the learning-rate schedule restart; the teacher of round ``r > 0`` is snapshotted
with the student (``teacher.safetensors``), so a run resumes inside any round.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn as nn

from ..config import helpfield
from ..diffusion.instruct import student_log_probs
from ..diffusion.process import LogLinearSchedule, forward_mask
from ..diffusion.sampling import ancestral_transition
from ..errors import TrainingError, require
from ..runtime import distributed as dist
from ..runtime.checkpoint import load_state_dict_strict, load_tensors, load_trainer_state
from ..runtime.devices import autocast
from .loop import ema_update, lr_at, set_lr
from .method import DistillConfig, student_from_teacher, student_optimizer

DIVERGENCES = ("kld", "mse", "tvd")


@dataclass
class SDTTConfig(DistillConfig):
    """Options of SDTT. ``steps`` is ``rounds x round_steps`` (set from them)."""

    WARMUP_SPAN: ClassVar[str] = "round_steps"  # the learning-rate warm-up restarts with every round

    method: str = helpfield("sdtt", "distillation method")
    lr: float = helpfield(6e-5, "student peak learning rate (SDTT release: 6e-5)")
    lr_schedule: str = helpfield("constant", "after warm-up, within each round: constant, linear or cosine")
    warmup_steps: int = helpfield(50, "linear learning-rate warm-up at the start of each round")
    batch_size: int = helpfield(32, "real rows per iteration")
    ema_decay: float = helpfield(0.999, "student EMA decay (the EMA samples and becomes the next round's teacher)")
    steps: int = helpfield(0, "total iterations: rounds x round_steps (set from them)")
    rounds: int = helpfield(4, "distillation rounds; each halves the sampling steps")
    round_steps: int = helpfield(1000, "iterations per round")
    start_nfe: int = helpfield(128, "sampling steps of the first round's teacher; the student samples with "
                                    "start_nfe / 2^rounds")
    divergence: str = helpfield("kld", "student-target divergence: kld (KL(target‖student)), mse or tvd (of the "
                                       "probability vectors)")

    def __post_init__(self) -> None:
        require(self.rounds >= 1, "rounds", f"must be >= 1 (got {self.rounds})")
        require(self.round_steps >= 1, "round_steps", f"must be >= 1 (got {self.round_steps})")
        total = self.rounds * self.round_steps
        require(self.steps in (0, total), "steps", f"SDTT runs --rounds x --round-steps = {total} iterations; leave "
                                                   f"--steps out (got {self.steps})")
        self.steps = total
        super().__post_init__()
        require(self.method == "sdtt", "method", f"an SDTTConfig is sdtt (got {self.method!r})")
        require(self.start_nfe >= 2 ** self.rounds and self.start_nfe % 2 ** self.rounds == 0, "start_nfe",
                f"must be a multiple of 2^rounds = {2 ** self.rounds} (got {self.start_nfe})")
        require(self.divergence in DIVERGENCES, "divergence",
                f"must be one of {', '.join(DIVERGENCES)} (got {self.divergence!r})")

    @property
    def student_nfe(self) -> int:
        """The sampling steps of the final student."""
        return self.start_nfe // 2 ** self.rounds

    def teacher_nfe(self, round_index: int) -> int:
        """The sampling steps of round ``round_index``'s teacher."""
        return self.start_nfe // 2 ** round_index


def student_times(n: int, student_nfe: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` times drawn uniformly from the student's grid ``{1/K, 2/K, ..., 1}`` (float64): the times at which
    the deployed K-step sampler calls the network."""
    k = torch.randint(1, student_nfe + 1, (n,), generator=generator, device=generator.device)
    return k.double() / student_nfe


def teacher_targets(teacher_logits: Any, z: torch.Tensor, t: torch.Tensor, teacher_nfe: int, *, mask_index: int,
                    schedule: LogLinearSchedule, generator: torch.Generator) -> torch.Tensor:
    """SDTT's targets (N, L, V) for ``z`` (N, L) at ``t`` (N,): two teacher ancestral steps of size ``1/K``
    (``teacher_logits(z) -> logits``): ``z → z_1 → z_2``. A position revealed by the first step gets ``x̂_θ(z)``;
    a position still masked in ``z_1`` (revealed by the second step or not at all) gets ``x̂_θ(z_1)``.
    Probabilities (float32), 0 on the [MASK] column; the rows of positions unmasked in ``z`` are not used."""
    t_mid = (t - 1.0 / teacher_nfe).clamp_min(0.0)
    logits = teacher_logits(z)
    z_mid = ancestral_transition(z, logits, schedule.alpha(t), schedule.alpha(t_mid), mask_index=mask_index,
                                 generator=generator)
    first = student_log_probs(logits, mask_index).exp()
    second = student_log_probs(teacher_logits(z_mid), mask_index).exp()
    return torch.where((z_mid == mask_index)[..., None], second, first)


def divergence(target: torch.Tensor, student_log_p: torch.Tensor, positions: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean over ``positions`` of ``kld`` = KL(target ‖ student), ``mse`` = Σ_v (p_target - p_student)² or
    ``tvd`` = ½ Σ_v |p_target - p_student|; ``target`` probabilities, ``student_log_p`` log-probabilities."""
    if not positions.any():
        return student_log_p.sum() * 0.0
    p, log_q = target[positions], student_log_p[positions]
    if kind == "kld":
        return (p * (torch.log(p.clamp_min(1e-30)) - log_q)).sum(-1).mean()
    q = log_q.exp()
    if kind == "mse":
        return ((p - q) ** 2).sum(-1).mean()
    return 0.5 * (p - q).abs().sum(-1).mean()


@dataclass
class SDTT:
    """The networks of SDTT (student, EMA, the current round's teacher), the optimiser and one iteration."""

    cfg: SDTTConfig
    student: nn.Module
    teacher: nn.Module
    ema: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LogLinearSchedule
    mask_index: int
    device: torch.device
    precision: torch.dtype | None = None
    round: int = 0

    samples_per_row: ClassVar[int] = 1
    shown: ClassVar[tuple[str, ...]] = ("loss", "round", "samples_per_s")

    @classmethod
    def from_teacher(cls, teacher: nn.Module, cfg: SDTTConfig, mask_index: int, eps: float, device: torch.device,
                     precision: torch.dtype | None = None) -> SDTT:
        teacher, student, ema = student_from_teacher(teacher, device)
        return cls(cfg, student, teacher, ema, student_optimizer(student, cfg), LogLinearSchedule(eps), mask_index,
                   device, precision)

    def forward(self, net: nn.Module, z: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.precision):
            return net(z, torch.zeros(z.shape[0], device=self.device))

    def _next_round(self) -> None:
        """The EMA becomes the teacher and the student; the optimiser (and the schedule) restart."""
        self.round += 1
        self.teacher = copy.deepcopy(self.ema).eval().requires_grad_(False)
        dist.unwrap(self.student).load_state_dict(self.ema.state_dict())
        self.optimizer = student_optimizer(self.student, self.cfg)

    def step(self, x_real: torch.Tensor, step: int, generator: torch.Generator) -> dict[str, float]:
        cfg = self.cfg
        while step // cfg.round_steps > self.round:
            self._next_round()
        within = step - self.round * cfg.round_steps
        set_lr(self.optimizer, lr_at(within, peak=cfg.lr, warmup=cfg.warmup_steps, total=cfg.round_steps,
                                     schedule=cfg.lr_schedule, final_ratio=cfg.min_lr_ratio))
        teacher_nfe = cfg.teacher_nfe(self.round)
        x = x_real.to(self.device)
        t = student_times(len(x), teacher_nfe // 2, generator).to(self.device)
        z = forward_mask(x, self.schedule.alpha(t)[:, None], self.mask_index,
                         torch.rand(x.shape, generator=generator, dtype=torch.float64, device=generator.device
                                    ).to(self.device))
        with torch.no_grad():
            target = teacher_targets(lambda zz: self.forward(self.teacher, zz), z, t, teacher_nfe,
                                     mask_index=self.mask_index, schedule=self.schedule, generator=generator)
        self.student.train()
        log_q = student_log_probs(self.forward(self.student, z), self.mask_index)
        loss = divergence(target, log_q, z == self.mask_index, cfg.divergence)
        if not dist.all_finite(loss):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingError(f"non-finite SDTT loss at step {step}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.student.parameters(), cfg.grad_clip)
        self.optimizer.step()
        ema_update(self.ema, dist.unwrap(self.student), cfg.ema_decay)
        return {"loss": float(loss.detach()), "round": float(self.round), "teacher_nfe": float(teacher_nfe),
                "grad_norm": float(grad_norm), "t": float(t.mean())}

    # --------------------------------------------------------------------------------- the loop's interface

    def run_extra(self) -> dict[str, Any]:
        return {"sdtt": {"student_nfe": self.cfg.student_nfe,
                         "teacher_nfe": [self.cfg.teacher_nfe(r) for r in range(self.cfg.rounds)]}}

    def prepare(self, run_dir: Path, seq_len: int, progress: bool = True) -> None:
        pass  # nothing to prepare: the targets come from the current teacher, every iteration

    def distribute(self, device: torch.device) -> None:
        self.student = dist.ddp(self.student, device)

    def state(self) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
        tensors = {"model": dist.unwrap(self.student).state_dict(), "ema": self.ema.state_dict()}
        if self.round > 0:  # round 0's teacher is the --teacher run itself
            tensors["teacher"] = self.teacher.state_dict()
        return tensors, {"optimizer": self.optimizer.state_dict(), "round": self.round}

    def restore(self, snapshot: Path) -> int:
        dev = self.device
        load_state_dict_strict(self.student, load_tensors(snapshot / "model.safetensors", dev), str(snapshot))
        load_state_dict_strict(self.ema, load_tensors(snapshot / "ema.safetensors", dev), str(snapshot))
        state = load_trainer_state(snapshot)
        self.round = int(state["round"])
        if self.round > 0:
            load_state_dict_strict(self.teacher, load_tensors(snapshot / "teacher.safetensors", dev), str(snapshot))
        self.optimizer.load_state_dict(state["optimizer"])
        return int(state["step"])

    def zero_grads(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
