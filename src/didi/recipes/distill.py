"""``didi distill``: distil a few-step student from a masked-diffusion teacher with a registered method.

One loop for every method (:mod:`.method`): load the teacher and its corpus, build the method from the teacher,
then per iteration draw the real rows and the random streams, call the method's ``step``, log, snapshot, and stop
gracefully. Methods: :mod:`.didi_instruct` (DiDi-Instruct, the default) and :mod:`.sdtt` (SDTT).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..config import fit_warmups, to_dict
from ..errors import CheckpointError, ConfigError, TrainingError, require
from ..models.load import load_network
from ..runtime import distributed as dist
from ..runtime.checkpoint import (
    RunConfig,
    check_new_run_dir,
    claim_new_run,
    claim_run,
    clean_stale_tmp,
    completed_steps,
    config_section,
    read_run_config,
    resume_snapshot,
    save_snapshot,
    trim_metrics,
    write_run_config,
    write_run_files,
)
from ..runtime.devices import resolve_precision
from ..runtime.lock import RunLock
from .didi_instruct import DiDiInstruct, InstructConfig
from .loop import StepLoop, resumed_config
from .method import RESUMABLE_OPTIONS, DistillConfig, DistillMethod
from .sdtt import SDTT, SDTTConfig

METHODS: dict[str, tuple[type[DistillConfig], type]] = {
    "didi-instruct": (InstructConfig, DiDiInstruct),
    "sdtt": (SDTTConfig, SDTT),
}
"""``--method`` name -> (its config class, its :class:`~.method.DistillMethod` class)."""


def method_config(name: str) -> type[DistillConfig]:
    """The config class of ``--method name`` (one clear error for an unknown name)."""
    if name not in METHODS:
        raise ConfigError(f"--method: must be one of {', '.join(METHODS)} (got {name!r})")
    return METHODS[name][0]


def load_teacher(path: str | Path, device: torch.device | str = "cpu") -> tuple[RunConfig, nn.Module]:
    """A teacher run's config and network (its EMA weights when it has them) on ``device``; refuses anything that
    is not a masked-diffusion (mdlm) run."""
    path = Path(path)
    config = read_run_config(path)
    if config.kind != "mdlm" or config.diffusion is None:
        raise CheckpointError(f"{path}: --teacher must be a masked-diffusion (mdlm) run, this one is {config.kind!r}")
    return config, load_network(path, config, "ema", device)


def resume_config(out: str | Path, **overrides: Any) -> DistillConfig:
    """The saved config of the student run ``out`` (of its method's class) with ``overrides`` (only
    :data:`~.method.RESUMABLE_OPTIONS` may change; ``None`` values are ignored). Runs saved before ``--method``
    existed are DiDi-Instruct runs."""
    out = Path(out)
    student_config = read_run_config(out)
    if student_config.kind != "didi":
        raise CheckpointError(f"{out}: is not a distilled student run")
    saved = {"method": "didi-instruct", **student_config.extra.get("distill", {})}
    cls = method_config(saved["method"])
    return resumed_config(cls, saved, overrides, RESUMABLE_OPTIONS, out, ignore=("out", "teacher"))


def distill(cfg: DistillConfig, data_overrides: dict[str, Any] | None = None, *, resume: bool = False,
            force: bool = False) -> Path:
    """Run ``cfg.method`` from ``cfg.teacher`` into ``cfg.out`` (or resume it); returns the student run dir.

    Under ``torchrun`` every rank calls this: ``--batch-size`` real rows per iteration are split over the ranks (a
    method keeps each row's samples on its rank, so grouped normalisation never mixes ranks); the randomness of a
    rank's rows comes from ``(seed, step, rank)``, so a run is reproducible for a given world size. Rank 0 prepares
    the data first, logs rank-averaged metrics and writes every file. A new run scales warm-ups longer than half
    of it (:func:`didi.config.fit_warmups`, recorded in ``config.json``); ``force`` writes into a directory that
    holds other files, or starts again a run that stopped before its first snapshot (``resume`` continues such a
    run from step 0); the writing process (rank 0) holds the run directory's lock until it returns, so a second
    writer is refused; a run stopped by SIGINT/SIGTERM snapshots and raises :class:`didi.errors.RunInterrupted`.
    """
    require(bool(cfg.out), "out", "a student run directory is required")
    with RunLock(cfg.out) as lock:
        return _distill(cfg, data_overrides, resume, force, lock)


def _distill(cfg: DistillConfig, data_overrides: dict[str, Any] | None, resume: bool, force: bool,
             lock: RunLock) -> Path:
    out = Path(cfg.out)
    ctx = dist.init(cfg.device)
    snapshot = None
    with dist.main_process_first():  # rank 0 takes the run directory and tokenizes first
        if resume and ctx.is_main:
            claim_run(out, lock)
        if resume:
            cfg = _resumed(out, cfg, write=ctx.is_main)
            data_overrides = _resumed_data(out, data_overrides)
        elif ctx.is_main:
            check_new_run_dir(out, force, lock)
        teacher_config, teacher, tokenizer, data_cfg, prepared = _teacher_and_data(cfg, data_overrides, ctx.device)
        if ctx.is_main and resume:  # the newest intact snapshot (none: step 0); metrics.jsonl trimmed to it
            snapshot = resume_snapshot(out)
            trim_metrics(out, completed_steps(out))
        elif ctx.is_main:
            claim_new_run(out, lock, force)
    if cfg.batch_size % ctx.world_size:
        raise ConfigError(f"--batch-size: {cfg.batch_size} real rows per iteration cannot be split evenly over "
                          f"{ctx.world_size} processes")
    precision = resolve_precision(cfg.precision, ctx.device)
    cfg, fitted, note = (cfg, {}, None) if resume else fit_warmups(cfg, *cfg.WARMUPS, span=cfg.WARMUP_SPAN)

    torch.manual_seed(cfg.seed)
    method: DistillMethod = METHODS[cfg.method][1].from_teacher(
        teacher, cfg, teacher_config.diffusion.mask_index, teacher_config.diffusion.eps, ctx.device, precision)
    snapshot = dist.broadcast_object(snapshot) if resume else None
    start = 0
    if snapshot is not None:
        start = method.restore(snapshot)
        if ctx.is_main:
            print(f"[didi] resuming from step {start} of {cfg.steps} ({snapshot})", file=sys.stderr)
    elif ctx.is_main and resume:
        print(f"[didi] {out}: no snapshot yet (its start was interrupted): starting from step 0", file=sys.stderr)
        write_run_files(out, prepared.run_files)
    elif ctx.is_main:
        extra = {"distill": to_dict(cfg), "teacher": str(Path(cfg.teacher)), **method.run_extra(),
                 **({"fitted_warmups": fitted} if fitted else {})}
        write_run_files(out, prepared.run_files)  # config.json last: with it, the run has all a resume needs
        write_run_config(out, RunConfig(kind="didi", model=teacher_config.model, tokenizer=tokenizer.save(out),
                                        diffusion=teacher_config.diffusion, training=teacher_config.training,
                                        data=to_dict(data_cfg), extra=extra))
        if note:
            print(f"[didi] {note}", file=sys.stderr)
    if ctx.is_main:
        clean_stale_tmp(out)
    with dist.main_process_first():  # rank 0 writes what the method prepares (a teacher pool); the others read it
        method.prepare(out, data_cfg.seq_len, progress=cfg.progress and ctx.is_main)
    if ctx.enabled:
        method.distribute(ctx.device)
    _run(out, method, cfg, prepared.train, start)
    return out


def _resumed(out: Path, cfg: DistillConfig, write: bool) -> DistillConfig:
    """The saved options of the run in ``out`` with ``cfg``'s resumable ones; an extended ``--steps`` is saved."""
    cfg = resume_config(out, **{name: getattr(cfg, name) for name in RESUMABLE_OPTIONS})
    saved_config = read_run_config(out) if write else None
    if saved_config is not None and saved_config.extra["distill"].get("steps") != cfg.steps:
        saved_config.extra["distill"]["steps"] = cfg.steps  # an extended run resumes to its new length
        write_run_config(out, saved_config)
    return cfg


def _resumed_data(out: Path, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The data settings the student in ``out`` was started with; a data option given again must agree (only
    ``cache_dir`` may move)."""
    saved = read_run_config(out).data
    for key, value in (overrides or {}).items():
        if key != "cache_dir" and key in saved and saved[key] != value:
            raise ConfigError(f"--{key.replace('_', '-')}: cannot change when resuming (saved: {saved[key]!r})")
    return {**saved, **(overrides or {})}


def _teacher_and_data(cfg: DistillConfig, data_overrides: dict[str, Any] | None, device: torch.device) -> tuple:
    """The teacher (config, network, tokenizer) and its corpus prepared with ``data_overrides``."""
    from ..data.corpora import DataConfig, prepare_data
    from ..data.tokenizer import load_tokenizer

    require(bool(cfg.teacher), "teacher", "a teacher run directory is required")
    teacher_config, teacher = load_teacher(cfg.teacher, device)
    tokenizer = load_tokenizer(Path(cfg.teacher), teacher_config.tokenizer)
    data_values = {**teacher_config.data, **(data_overrides or {})}
    if data_values.get("tokenizer") not in (None, "auto", tokenizer.kind):
        raise ConfigError(f"--tokenizer: the teacher uses a {tokenizer.kind} tokenizer, data asks for "
                          f"{data_values['tokenizer']}")
    saved = config_section(DataConfig, teacher_config.data, "data", str(Path(cfg.teacher) / "config.json"))
    data_cfg = DataConfig(**{**to_dict(saved), **{k: v for k, v in (data_overrides or {}).items()
                                                  if k in DataConfig.__dataclass_fields__}})
    if data_cfg.seq_len > teacher_config.model.max_seq_len:
        raise ConfigError(f"--seq-len: {data_cfg.seq_len} exceeds the teacher's maximum "
                          f"{teacher_config.model.max_seq_len}")
    prepared = prepare_data(data_cfg, tokenizer=tokenizer, progress=cfg.progress and dist.is_main())
    return teacher_config, teacher, tokenizer, data_cfg, prepared


def _run(out: Path, method: DistillMethod, cfg: DistillConfig, train: Any, start: int) -> None:
    """The iterations ``start .. cfg.steps`` over the real rows of ``train`` (token blocks)."""
    from ..data.corpora import BatchSchedule, shard

    ctx = dist.context()
    batches = BatchSchedule(len(train), cfg.batch_size, seed=cfg.seed)
    skipped = 0
    last = time.perf_counter()
    with StepLoop(out, desc="distill", start=start, steps=cfg.steps, save_every=cfg.save_every,
                  progress=cfg.progress, save=lambda done: _save(out, done, method, cfg), log_to=cfg.log_to,
                  resume_command=f"didi distill --resume {out}") as loop:
        for step in range(start, cfg.steps):
            x = train.batch(shard(batches.indices(step), ctx.rank, ctx.world_size))
            # randomness private to this rank's rows: rollouts and corruption (generator), dropout (global RNG)
            generator = torch.Generator(device=ctx.device).manual_seed(dist.rank_seed(cfg.seed, step, ctx.rank, 2))
            torch.manual_seed(dist.rank_seed(cfg.seed, step, ctx.rank, 3))
            try:
                metrics = method.step(x, step, generator)
            except TrainingError as exc:
                # NaN guard (agreed by all ranks): the step's updates were not applied; go on from the current weights
                skipped += 1
                loop.say(f"step {step}: skipped ({exc})")
                method.zero_grads()
                if skipped > max(10, cfg.steps // 20):
                    raise TrainingError(f"too many non-finite steps ({skipped}); last good snapshot kept in {out}") \
                        from exc
                metrics = {"skipped": 1.0}
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                metrics = dist.mean_over_ranks(metrics)
                now = time.perf_counter()
                metrics["samples_per_s"] = (cfg.log_every * cfg.batch_size * method.samples_per_row
                                            / max(1e-9, now - last))
                last = now
                loop.log({"step": done, **metrics}, {k: f"{metrics[k]:.3g}" for k in method.shown if k in metrics})
            if loop.end_step(done):
                break


def _save(out: Path, step: int, method: DistillMethod, cfg: DistillConfig) -> None:
    """Rank 0 writes the method's snapshot (its weights files and optimisers) and the options."""
    if not dist.is_main():
        return
    tensors, state = method.state()
    save_snapshot(out, step, tensors, {**state, "distill_config": to_dict(cfg)}, keep=cfg.keep_checkpoints)
