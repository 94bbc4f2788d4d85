"""What every training loop of didi shares (``didi train``, ``didi train-ar``, ``didi distill`` and every method):
the learning-rate schedule, the EMA of the weights, and :class:`StepLoop`, the loop's frame (progress, metrics
files, snapshots, graceful stop).

Everything here takes plain values, never a recipe's config.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from ..runtime import distributed as dist
from ..runtime.checkpoint import resumed_options
from ..runtime.metrics_log import MetricsLog, parse_log_to
from ..runtime.progress import Progress, step_line

SCHEDULES = ("cosine", "linear", "constant")


def lr_at(step: int, *, peak: float, warmup: int, total: int, schedule: str, final_ratio: float) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then ``schedule`` (cosine, linear or constant) down to
    ``final_ratio * peak`` at step ``total``."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    floor = peak * final_ratio
    if schedule == "linear":
        return floor + (peak - floor) * (1.0 - progress)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def ema_decay_at(decay: float, updates: int) -> float:
    """EMA warm-up: ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so short runs are not dominated by
    the initial weights (with 0.999, 82% of the average would still be the initialisation after 200 steps)."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model`` for parameters; buffers are copied."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach().to(e.dtype), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def resumed_config(cls: type, saved: dict[str, Any], overrides: dict[str, Any], resumable: Iterable[str],
                   out: str | Path, ignore: tuple[str, ...] = ("out",)) -> Any:
    """``cls`` (a config dataclass) from a run's saved options with ``overrides``: only the names in ``resumable``
    may differ from the saved values (one clear error otherwise); ``None`` overrides are ignored."""
    names = {f.name for f in fields(cls)}
    options = resumed_options(saved, overrides, tuple(resumable), names, ignore=ignore)
    options["out"] = str(out)
    return cls(**options)


class StepLoop:
    """The frame of a training loop: progress, ``metrics.jsonl`` (and ``--log-to``'s writers), snapshots, and a
    graceful stop.

    ::

        with StepLoop(run_dir, ...) as loop:
            for step in range(start, steps):
                ...one optimisation step...
                loop.log(record, show)              # every log_every steps: the metrics file, and the bar or a line
                if loop.end_step(step + 1):         # snapshot when due; True after a SIGINT/SIGTERM
                    break
        # leaving the block re-raises the interruption (RunInterrupted) after every rank is done

    Progress: a bar with ``show`` beside it when ``progress`` and stderr is a terminal; otherwise (a log file, or
    ``--progress false``) one plain line per :meth:`log` with ``show`` in it (:func:`~didi.runtime.progress.step_line`).
    ``save(step)`` writes a snapshot (every rank calls it: gathering FSDP2 weights is a collective). Only the main
    process writes the metrics and prints.
    """

    def __init__(self, run_dir: Path, *, desc: str, start: int, steps: int, save_every: int, progress: bool,
                 save: Callable[[int], None], resume_command: str, log_to: str | Sequence[str] = ""):
        self.run_dir, self.desc, self.start, self.steps, self.save_every = Path(run_dir), desc, start, steps, save_every
        self.save, self.resume_command = save, resume_command
        self.is_main = dist.is_main()
        self.metrics = MetricsLog(run_dir, parse_log_to(log_to), start=start) if self.is_main else None
        self.bar = Progress(steps, desc, initial=start, enabled=progress and self.is_main, unit="step", lines=False,
                            leave=True)
        self.lines = self.is_main and not self.bar.is_bar  # off a terminal, or --progress false
        self.stop = dist.StopRequest()
        self.interrupted: Exception | None = None

    def __enter__(self) -> StepLoop:
        self.stop.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.__exit__(*exc)
        self.bar.close()
        if self.metrics is not None:
            self.metrics.close()
        if exc[0] is None:
            dist.barrier()
            if self.interrupted is not None:
                raise self.interrupted

    def say(self, message: str) -> None:
        """``[didi] DESC message``, above the progress bar if there is one (main process only)."""
        if self.is_main:
            self.bar.write(f"[didi] {self.desc} {message}")

    def log(self, record: dict[str, Any], show: dict[str, str] | None = None) -> None:
        """Append ``record`` (with its ``step``) to ``metrics.jsonl`` and show ``show`` beside the bar, or print it
        as a line."""
        if self.metrics is not None:
            self.metrics.write(record)
        if show and self.lines:
            self.bar.write(step_line(self.desc, record["step"], self.steps, show, elapsed=self.bar.elapsed,
                                     done=record["step"] - self.start))
        elif show:
            self.bar.set_postfix(show)

    def end_step(self, done: int) -> bool:
        """After step ``done`` (1-based): advance the bar, snapshot when due; ``True`` when the run must stop now."""
        self.bar.update(1)
        stopping = self.stop.agreed()
        if done % self.save_every == 0 or done == self.steps or stopping:
            self.save(done)
            if self.metrics is not None:
                self.metrics.flush()
            if stopping and done < self.steps:
                self.interrupted = self.stop.interrupted(done, self.steps, self.resume_command)
                return True
        return False
