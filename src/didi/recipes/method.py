"""What a distillation method is to the loop of ``didi distill`` (:func:`didi.recipes.distill.distill`).

A method is two things, in one file of its own (:mod:`.didi_instruct`, :mod:`.sdtt`):

* a config, a subclass of :class:`DistillConfig` (the options every method shares: teacher, steps, batch, learning
  rate, EMA, snapshots) with its own options, validated in ``__post_init__``;
* an object built from the teacher (``from_teacher``) that holds the networks and optimisers and does one
  iteration (``step``), the :class:`DistillMethod` protocol below.

The loop loads the teacher and the data, draws each iteration's batch and random streams, calls ``step``, logs what
it returns, snapshots ``state()`` and resumes with ``restore``; it knows nothing else about the method. Registering
a method is one line in :data:`didi.recipes.distill.METHODS`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
import torch.nn as nn

from ..config import helpfield
from ..errors import require
from .loop import SCHEDULES, parse_log_to


@dataclass
class DistillConfig:
    """Options of every distillation method (the defaults are DiDi-Instruct's; a method may change them)."""

    WARMUPS: ClassVar[tuple[str, ...]] = ("warmup_steps",)
    """Fields counted in steps that :func:`didi.config.fit_warmups` scales down in a short run ..."""
    WARMUP_SPAN: ClassVar[str] = "steps"
    """... one longer than half of this field."""

    teacher: str = helpfield("", "run directory of the teacher MDLM")
    out: str = helpfield("", "student run directory to create")
    method: str = helpfield("didi-instruct", "distillation method: didi-instruct or sdtt")
    steps: int = helpfield(10_000, "distillation iterations (DiDi-Instruct paper: 10,000)")
    batch_size: int = helpfield(4, "real rows per iteration, summed over all processes under torchrun")
    lr: float = helpfield(1e-6, "student peak learning rate (DiDi-Instruct paper: 1e-6)")
    lr_schedule: str = helpfield("linear", "after warm-up: linear decay, cosine, or constant")
    warmup_steps: int = helpfield(1000, "linear learning-rate warm-up steps")
    min_lr_ratio: float = helpfield(0.0, "final learning rate as a fraction of the peak")
    beta1: float = helpfield(0.9, "AdamW beta1")
    beta2: float = helpfield(0.999, "AdamW beta2")
    weight_decay: float = helpfield(0.0, "AdamW weight decay")
    grad_clip: float = helpfield(1.0, "student gradient-norm clip")
    ema_decay: float = helpfield(0.999, "student EMA decay (the EMA is used for sampling)")
    ema_warmup: bool = helpfield(False, "EMA warm-up min(decay, (1+n)/(10+n)) over student updates (false: plain "
                                        "--ema-decay, released)")
    save_every: int = helpfield(200, "snapshot every N iterations")
    keep_checkpoints: int = helpfield(2, "snapshots kept")
    log_every: int = helpfield(10, "metrics interval in steps: a record in OUT/metrics.jsonl and, off a terminal (or "
                                   "with --progress false), a plain progress line")
    seed: int = helpfield(0, "random seed")
    device: str = helpfield("auto", "auto (cuda > mps > cpu), cpu, cuda, ...")
    precision: str = helpfield("auto", "auto (bf16 autocast on CUDA), bf16 or fp32")
    progress: bool = helpfield(True, "a progress bar on a terminal (false, or off a terminal: a plain line every "
                                     "--log-every steps)")
    log_to: str = helpfield("", "also write the metrics records to: tensorboard (OUT/tensorboard/, needs the "
                                "tensorboard extra), csv (OUT/metrics.csv), or both: tensorboard,csv")

    def __post_init__(self) -> None:
        require(self.steps >= 1, "steps", f"must be >= 1 (got {self.steps})")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1 (got {self.batch_size})")
        require(self.lr > 0, "lr", f"must be > 0 (got {self.lr})")
        require(self.lr_schedule in SCHEDULES, "lr_schedule",
                f"must be linear, cosine or constant (got {self.lr_schedule!r})")
        require(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0 (got {self.warmup_steps})")
        require(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio", f"must be in [0, 1] (got {self.min_lr_ratio})")
        require(0.0 <= self.ema_decay < 1.0, "ema_decay", f"must be in [0, 1) (got {self.ema_decay})")
        require(self.save_every >= 1, "save_every", "must be >= 1")
        require(self.log_every >= 1, "log_every", f"must be >= 1 (got {self.log_every})")
        parse_log_to(self.log_to)


def student_from_teacher(teacher: nn.Module, device: torch.device) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(teacher, student, EMA): the teacher frozen on ``device``, the student and its EMA copies of it (every
    method starts the student from the teacher's weights)."""
    teacher = teacher.to(device).eval().requires_grad_(False)
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    return teacher, student, copy.deepcopy(teacher).eval().requires_grad_(False)


def student_optimizer(student: nn.Module, cfg: DistillConfig) -> torch.optim.Optimizer:
    """AdamW over the student with the shared options (``lr``, ``beta1``, ``beta2``, ``weight_decay``)."""
    return torch.optim.AdamW(student.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             weight_decay=cfg.weight_decay)


RESUMABLE_OPTIONS = ("steps", "device", "progress", "log_to", "save_every", "log_every", "keep_checkpoints")
"""Options that may differ when a distillation is resumed; everything else is taken from the saved run."""


class DistillMethod(Protocol):
    """One distillation method's networks, optimisers and iteration (see the module docstring)."""

    student: nn.Module  # the network that trains (wrapped in DistributedDataParallel under torchrun)
    ema: nn.Module  # the EMA of the student: what `didi sample` loads
    samples_per_row: int  # student samples per real row of a batch (the loop's samples/s)
    shown: tuple[str, ...]  # metrics shown beside the progress bar

    @classmethod
    def from_teacher(cls, teacher: nn.Module, cfg: Any, mask_index: int, eps: float, device: torch.device,
                     precision: torch.dtype | None = None) -> DistillMethod: ...

    def step(self, x_real: torch.Tensor, step: int, generator: torch.Generator) -> dict[str, float]:
        """One iteration on the real rows ``x_real`` (B, L) of this process; its metrics. Raises
        :class:`didi.errors.TrainingError` on a non-finite loss before any weight changes."""

    def run_extra(self) -> dict[str, Any]:
        """What the student's ``config.json`` records besides the options (e.g. how to rebuild its networks)."""

    def prepare(self, run_dir: Path, seq_len: int, progress: bool = True) -> None:
        """Once before the first iteration, new run or resumed (e.g. a pool of teacher samples kept in the run)."""

    def distribute(self, device: torch.device) -> None:
        """Wrap the networks that train for ``torchrun`` (called once, after a resume)."""

    def state(self) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
        """A snapshot: weights files (``model`` = the raw student, ``ema``, ...) and the optimisers' state."""

    def restore(self, snapshot: Path) -> int:
        """Load a snapshot written from :meth:`state` (before :meth:`distribute`); returns its step."""

    def zero_grads(self) -> None:
        """Drop the gradients of a skipped (non-finite) iteration."""
