"""Training recipe for the teacher MDLM (``didi train``) and the autoregressive baseline (``didi train-ar``).

One readable loop (nanoGPT style) over reusable parts:

* data: :func:`didi.data.corpora.prepare_data` packs the corpus; :class:`didi.data.corpora.BatchSchedule` gives
  the global batch of every step as a pure function of ``(seed, step)``;
* objective: MDLM continuous-time NELBO (:func:`didi.diffusion.process.mdlm_token_losses`, antithetic times over the
  global batch) or next-token cross-entropy for ``ar``;
* AdamW, linear warm-up then cosine/linear/constant schedule, gradient clipping, EMA weights, bf16 autocast where
  supported, periodic validation, atomic snapshots, exact resume.

Distributed (``torchrun``, see :mod:`didi.runtime.distributed`): the model is wrapped in ``DistributedDataParallel`` (or
sharded with FSDP2, ``--fsdp``); every rank draws the same global-batch randomness and keeps its contiguous slice,
accumulates ``--micro-batch-size`` slices without synchronising, and the loss is normalised by the *global* token
count, so N processes compute the same update as one process with the same global batch (and a run may resume on
a different number of processes). Dropout masks come from a per-step, per-rank seed. Rank 0 tokenizes first,
logs and writes every file; all ranks resume from the snapshot rank 0 picks; SIGTERM/SIGINT on any rank stop
every rank after the same step with a final snapshot.
"""
from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import DiffusionConfig, ModelConfig, fit_warmups, helpfield, to_dict
from ..data.corpora import BatchSchedule, DataConfig, PreparedData, TokenBlocks, prepare_data, shard
from ..data.tokenizer import Tokenizer, load_tokenizer
from ..diffusion.process import LogLinearSchedule, mdlm_token_losses, sample_times
from ..errors import CheckpointError, ConfigError, TrainingError, require
from ..models.load import build_network
from ..runtime import distributed as dist
from ..runtime.checkpoint import (
    RunConfig,
    check_new_run_dir,
    claim_new_run,
    claim_run,
    clean_stale_tmp,
    completed_steps,
    config_section,
    latest_snapshot,
    load_state_dict_strict,
    load_tensors,
    load_trainer_state,
    read_run_config,
    resume_snapshot,
    save_snapshot,
    trim_metrics,
    write_run_config,
    write_run_files,
)
from ..runtime.devices import autocast, resolve_precision
from ..runtime.lock import RunLock
from ..runtime.randomness import seed_everything, step_generator
from .loop import SCHEDULES, StepLoop, ema_decay_at, ema_update, lr_at, parse_log_to, resumed_config, set_lr


@dataclass
class TrainConfig:
    """Options of ``didi train`` / ``didi train-ar`` (data options are in :class:`didi.data.corpora.DataConfig`)."""

    out: str = helpfield("", "run directory to create (or to continue with --resume)")
    preset: str = helpfield("tiny", "model size: tiny, small (169M, the paper's), medium, large")
    steps: int = helpfield(2000, "total optimisation steps")
    global_batch_size: int = helpfield(32, "sequences per optimisation step, summed over all processes")
    micro_batch_size: int = helpfield(0, "sequences per forward pass on one process (0 = global/world size); "
                                         "gradient accumulation makes up the rest")
    lr: float = helpfield(3e-4, "peak learning rate")
    lr_schedule: str = helpfield("cosine", "decay after warm-up: cosine, linear or constant")
    min_lr_ratio: float = helpfield(0.1, "final learning rate as a fraction of --lr")
    warmup_steps: int = helpfield(100, "linear warm-up steps")
    weight_decay: float = helpfield(0.0, "AdamW weight decay")
    beta1: float = helpfield(0.9, "AdamW beta1")
    beta2: float = helpfield(0.999, "AdamW beta2")
    grad_clip: float = helpfield(1.0, "clip the global gradient norm to this value (0 = off)")
    ema_decay: float = helpfield(0.999, "EMA decay of the weights used for sampling (0 = no EMA)")
    dropout: float = helpfield(-1.0, "dropout inside blocks (-1 = preset default: 0.1)")
    hidden_size: int = helpfield(0, "override the preset's width (0 = preset)")
    n_blocks: int = helpfield(0, "override the preset's depth (0 = preset)")
    n_heads: int = helpfield(0, "override the preset's heads (0 = preset)")
    cond_dim: int = helpfield(0, "override the preset's conditioning width (0 = preset)")
    eval_every: int = helpfield(200, "validate every N steps (0 = only at the end)")
    eval_batches: int = helpfield(4, "validation batches (of --global-batch-size sequences) per evaluation")
    save_every: int = helpfield(500, "write a snapshot every N steps (and always at the end)")
    keep_checkpoints: int = helpfield(2, "how many snapshots to keep in RUN_DIR/checkpoints")
    log_every: int = helpfield(10, "metrics interval in steps: a record in RUN_DIR/metrics.jsonl and, off a terminal "
                                   "(or with --progress false), a plain progress line")
    seed: int = helpfield(0, "random seed (data order, diffusion times, masks, init)")
    device: str = helpfield("auto", "auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    precision: str = helpfield("auto", "auto (bf16 autocast on CUDA, fp32 elsewhere), bf16 or fp32")
    compile: bool = helpfield(False, "torch.compile the model")
    grad_checkpointing: bool = helpfield(False, "activation checkpointing (saves memory on large presets)")
    fsdp: bool = helpfield(False, "under torchrun: shard weights, gradients and optimizer state with FSDP2 instead of "
                                  "replicating them with DDP (medium/large presets; no effect in one process)")
    progress: bool = helpfield(True, "a progress bar on a terminal (false, or off a terminal: a plain line every "
                                     "--log-every steps)")
    log_to: str = helpfield("", "also write the metrics records to: tensorboard (RUN_DIR/tensorboard/, needs the "
                                "tensorboard extra), csv (RUN_DIR/metrics.csv), or both: tensorboard,csv")

    def __post_init__(self) -> None:
        require(self.steps >= 1, "steps", f"must be >= 1 (got {self.steps})")
        parse_log_to(self.log_to)
        require(self.global_batch_size >= 1, "global_batch_size", f"must be >= 1 (got {self.global_batch_size})")
        require(self.micro_batch_size >= 0, "micro_batch_size", f"must be >= 0 (got {self.micro_batch_size})")
        require(self.lr > 0, "lr", f"must be > 0 (got {self.lr})")
        require(self.lr_schedule in SCHEDULES, "lr_schedule",
                f"must be cosine, linear or constant (got {self.lr_schedule!r})")
        require(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio", f"must be in [0, 1] (got {self.min_lr_ratio})")
        require(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0 (got {self.warmup_steps})")
        require(0.0 <= self.ema_decay < 1.0, "ema_decay", f"must be in [0, 1) (got {self.ema_decay})")
        require(self.grad_clip >= 0, "grad_clip", f"must be >= 0 (got {self.grad_clip})")
        require(self.save_every >= 1, "save_every", f"must be >= 1 (got {self.save_every})")
        require(self.eval_every >= 0, "eval_every", f"must be >= 0 (got {self.eval_every})")
        require(self.eval_batches >= 0, "eval_batches", f"must be >= 0 (got {self.eval_batches})")
        require(self.dropout == -1.0 or 0.0 <= self.dropout < 1.0, "dropout",
                f"must be in [0, 1) (got {self.dropout})")


def build_model_config(cfg: TrainConfig, kind: str, tokenizer: Tokenizer | None, seq_len: int) -> ModelConfig:
    """The network of a new run; with ``tokenizer=None`` a stand-in vocabulary, to check the shape options
    (``--preset``, ``--n-heads``, ...) before the corpus is tokenized."""
    overrides = dict(hidden_size=cfg.hidden_size or None, n_blocks=cfg.n_blocks or None,
                     n_heads=cfg.n_heads or None, cond_dim=cfg.cond_dim or None)
    vocab_size = 2 if tokenizer is None else tokenizer.vocab_size if kind == "ar" else tokenizer.model_vocab_size
    return ModelConfig.from_preset(
        cfg.preset, **overrides, max_seq_len=seq_len, arch="gpt" if kind == "ar" else "dit",
        vocab_size=vocab_size, dropout=None if cfg.dropout < 0 else cfg.dropout)


# --------------------------------------------------------------------------------------------- objectives

Objective = Callable[[nn.Module, torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]
"""``objective(model, x, noise) -> summed loss over the rows of x`` (normalised by the caller)."""


def mdlm_objective(schedule: LogLinearSchedule, diffusion: DiffusionConfig) -> Objective:
    def objective(model: nn.Module, x: torch.Tensor, noise: dict[str, torch.Tensor]) -> torch.Tensor:
        losses = mdlm_token_losses(model, x, noise["t"], noise["u"], schedule=schedule,
                                   mask_index=diffusion.mask_index, time_conditioning=diffusion.time_conditioning)
        return losses.sum()
    return objective


def ar_objective(model: nn.Module, x: torch.Tensor, noise: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(x[:, :-1])
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")


def tokens_per_row(kind: str, seq_len: int) -> int:
    """Tokens a row contributes to the loss normaliser (AR predicts L-1 tokens, MDLM scores all L)."""
    return seq_len - 1 if kind == "ar" else seq_len


def draw_noise(kind: str, diffusion: DiffusionConfig | None, seed: int, step: int, rows: int, seq_len: int,
               device: torch.device) -> dict[str, torch.Tensor]:
    """All randomness of one global batch, a pure function of (seed, step) (AR training needs none)."""
    if kind == "ar":
        return {}
    gen = step_generator(seed, step, stream=1)
    t = sample_times(rows, gen, sampling_eps=diffusion.sampling_eps, antithetic=diffusion.antithetic)
    u = torch.rand((rows, seq_len), generator=gen)
    return {"t": t.to(device), "u": u.to(device)}


@torch.no_grad()
def validation_loss(model: nn.Module, blocks: TokenBlocks, *, kind: str, objective: Objective,
                    diffusion: DiffusionConfig | None, num_rows: int, micro_batch_size: int, seed: int,
                    device: torch.device, precision: torch.dtype | None) -> float:
    """Mean per-token validation loss (MDLM: NELBO in nats/token, an upper bound; AR: cross-entropy).

    Scores the first ``num_rows`` validation blocks (a multiple of the world size) with noise fixed by ``seed``, so
    values are comparable across the evaluations of a run and across micro-batch and world sizes. Each rank scores
    a contiguous share in micro-batches (all ranks make the same number of forward calls, as FSDP2 requires) and
    the sums are all-reduced.
    """
    ctx = dist.context()
    share = num_rows // ctx.world_size
    noise = draw_noise(kind, diffusion, seed + 10_007, 0, num_rows, blocks.seq_len, device)
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    for start in range(ctx.rank * share, (ctx.rank + 1) * share, micro_batch_size):
        rows = slice(start, min((ctx.rank + 1) * share, start + micro_batch_size))
        x = blocks.batch(np.arange(rows.start, rows.stop)).to(device)
        with autocast(device, precision):
            total += objective(model, x, {k: v[rows] for k, v in noise.items()}).double()
    model.train(was_training)
    return float(dist.all_reduce_sum(total)) / (num_rows * tokens_per_row(kind, blocks.seq_len))


# --------------------------------------------------------------------------------------------- the recipe

def _create_run(cfg: TrainConfig, data_cfg: DataConfig, kind: str, run_dir: Path, progress: bool, lock: RunLock,
                force: bool = False, fitted: dict[str, Any] | None = None) -> tuple[RunConfig, PreparedData]:
    """Tokenize the corpus (or find its cache), then take the run directory (:func:`claim_new_run`: the lock, and
    the checks again under it) and write the tokenizer, the corpus' run files and, last, ``config.json``: a run
    directory with a ``config.json`` has everything a resume from step 0 needs."""
    check_new_run_dir(run_dir, force, lock)
    build_model_config(cfg, kind, None, data_cfg.seq_len)  # a bad --preset / --n-heads fails before tokenizing
    prepared = prepare_data(data_cfg, progress=progress)
    tokenizer = prepared.tokenizer
    model_config = build_model_config(cfg, kind, tokenizer, data_cfg.seq_len)
    diffusion = None if kind == "ar" else DiffusionConfig(mask_index=tokenizer.diffusion_mask_id)
    claim_new_run(run_dir, lock, force)
    run_config = RunConfig(kind=kind, model=model_config, tokenizer=tokenizer.save(run_dir), diffusion=diffusion,
                           training={**to_dict(cfg), "seq_len": data_cfg.seq_len, "data": data_cfg.data,
                                     **({"fitted_warmups": fitted} if fitted else {})},
                           data=to_dict(data_cfg))
    write_run_files(run_dir, prepared.run_files)
    write_run_config(run_dir, run_config)
    return run_config, prepared


def _open_run(run_dir: Path, kind: str, progress: bool) -> tuple[RunConfig, PreparedData]:
    """Read an existing run's configuration and tokenizer and load its token blocks (cached by rank 0)."""
    run_config = read_run_config(run_dir)
    if run_config.kind != kind:
        raise CheckpointError(f"{run_dir}: is a {run_config.kind!r} run; resume it with the matching command")
    tokenizer = load_tokenizer(run_dir, run_config.tokenizer)
    saved = config_section(DataConfig, run_config.data, "data", str(run_dir / "config.json"))
    return run_config, prepare_data(saved, tokenizer=tokenizer, progress=progress)


def _prepare_run(cfg: TrainConfig, data_cfg: DataConfig, kind: str, resume: bool, lock: RunLock, force: bool = False,
                 fitted: dict[str, Any] | None = None) -> tuple[RunConfig, PreparedData, Path | None]:
    """Rank 0 first: it takes the run directory (:class:`~didi.runtime.lock.RunLock`), tokenizes (or finds the
    token cache) and creates a new run directory; the other ranks then read the run directory and load the cached
    blocks. On a resume rank 0 also picks the snapshot every rank starts from (the newest intact one, see
    :func:`resume_snapshot`; none: step 0) and trims ``metrics.jsonl`` to it."""
    run_dir = Path(cfg.out)
    progress = cfg.progress and dist.is_main()
    snapshot = None
    with dist.main_process_first():
        if dist.is_main() and not resume:
            run_config, prepared = _create_run(cfg, data_cfg, kind, run_dir, progress, lock, force, fitted)
        else:
            if dist.is_main():
                claim_run(run_dir, lock)
            run_config, prepared = _open_run(run_dir, kind, progress)
            if resume and dist.is_main():
                snapshot = resume_snapshot(run_dir)
                if snapshot is None:
                    print(f"[didi] {run_dir}: no snapshot yet (its start was interrupted): starting from step 0",
                          file=sys.stderr)
                trim_metrics(run_dir, completed_steps(run_dir))
                if run_config.training.get("steps") != cfg.steps:
                    run_config.training["steps"] = cfg.steps  # an extended run resumes to its new length
                    write_run_config(run_dir, run_config)
    snapshot = dist.broadcast_object(snapshot) if resume else None
    return run_config, prepared, snapshot


def batch_split(global_batch_size: int, micro_batch_size: int, world_size: int) -> tuple[int, int]:
    """``(micro, accumulation)``: sequences per forward pass on one process and micro-batches per step, so that
    ``micro * accumulation * world_size == global_batch_size`` (``micro_batch_size`` 0 = no accumulation)."""
    if global_batch_size % world_size:
        raise ConfigError(f"--global-batch-size: {global_batch_size} is not divisible by the world size {world_size}")
    per_rank = global_batch_size // world_size
    micro = micro_batch_size or per_rank
    if per_rank % micro:
        raise ConfigError(f"--micro-batch-size: {micro} must divide the per-process batch {per_rank} "
                          f"(--global-batch-size {global_batch_size} over {world_size} processes)")
    return micro, per_rank // micro


def train(cfg: TrainConfig, data_cfg: DataConfig, *, kind: str = "mdlm", resume: bool = False,
          force: bool = False) -> Path:
    """Train (or resume) a ``kind`` model (``mdlm`` or ``ar``) into ``cfg.out``; returns the run directory.

    To resume, pass ``resume=True`` with the saved options (:func:`resume_config`); the data settings are read
    from the run directory and ``data_cfg`` is ignored. Under ``torchrun`` every rank calls this function.
    A new run whose ``warmup_steps`` covers more than half of ``steps`` has it scaled to the run
    (:func:`didi.config.fit_warmups`); ``config.json`` records the value used. ``force``: write a new run into an
    existing directory that holds other files, or start again a run that stopped before its first snapshot. The
    writing process (rank 0) holds the run directory's lock until it returns: a second writer is refused. A run
    stopped by SIGINT/SIGTERM writes its snapshot and raises :class:`didi.errors.RunInterrupted`.
    """
    require(kind in ("mdlm", "ar"), "kind", f"must be mdlm or ar (got {kind!r})")
    require(bool(cfg.out), "out", "a run directory is required")
    with RunLock(cfg.out) as lock:
        return _train(cfg, data_cfg, kind, resume, force, lock)


def _train(cfg: TrainConfig, data_cfg: DataConfig, kind: str, resume: bool, force: bool, lock: RunLock) -> Path:
    ctx = dist.init(cfg.device)
    cfg, fitted, note = (cfg, {}, None) if resume else fit_warmups(cfg, "warmup_steps")
    device, world = ctx.device, ctx.world_size
    precision = resolve_precision(cfg.precision, device)
    micro, accumulation = batch_split(cfg.global_batch_size, cfg.micro_batch_size, world)
    per_rank = micro * accumulation
    run_dir = Path(cfg.out)
    run_config, prepared, snapshot = _prepare_run(cfg, data_cfg, kind, resume, lock, force, fitted)
    if note and ctx.is_main:
        print(f"[didi] {note}", file=sys.stderr)
    seq_len = prepared.train.seq_len
    if seq_len > run_config.model.max_seq_len:
        raise ConfigError(f"--seq-len: {seq_len} is longer than the model's maximum {run_config.model.max_seq_len}")

    model, ema, wrapped, optimizer = _networks(run_config.model, cfg, snapshot, device)
    start_step = _load_trainer_state(snapshot, model, optimizer) if snapshot is not None else 0
    if ctx.is_main:
        clean_stale_tmp(run_dir)
        if snapshot is not None:
            print(f"[didi] resuming from step {start_step} of {cfg.steps} ({snapshot})", file=sys.stderr)

    forward = torch.compile(wrapped) if cfg.compile else wrapped
    schedule = LogLinearSchedule(run_config.diffusion.eps) if kind == "mdlm" else None
    objective = mdlm_objective(schedule, run_config.diffusion) if kind == "mdlm" else ar_objective
    batches = BatchSchedule(len(prepared.train), cfg.global_batch_size, seed=cfg.seed)
    tokens_in_global_batch = cfg.global_batch_size * tokens_per_row(kind, seq_len)
    eval_rows = min(len(prepared.valid), cfg.eval_batches * cfg.global_batch_size) // world * world  # 0: no validation

    command = "train" if kind == "mdlm" else "train-ar"
    step = start_step
    last_log = time.perf_counter()
    tokens_since_log = 0
    with StepLoop(run_dir, desc=f"train {kind}", start=start_step, steps=cfg.steps, save_every=cfg.save_every,
                  progress=cfg.progress, resume_command=f"didi {command} --resume {run_dir}", log_to=cfg.log_to,
                  save=lambda done: _save(run_dir, done, model, ema, optimizer, cfg)) as loop:
        while step < cfg.steps:
            torch.manual_seed(dist.rank_seed(cfg.seed, step, ctx.rank))  # dropout masks of this rank's rows
            x_rank = prepared.train.batch(shard(batches.indices(step), ctx.rank, world)).to(device)
            noise = draw_noise(kind, run_config.diffusion, cfg.seed, step, cfg.global_batch_size, seq_len, device)
            lo = ctx.rank * per_rank
            noise = {k: v[lo:lo + per_rank] for k, v in noise.items()}
            lr = lr_at(step, peak=cfg.lr, warmup=cfg.warmup_steps, total=cfg.steps, schedule=cfg.lr_schedule,
                       final_ratio=cfg.min_lr_ratio)
            set_lr(optimizer, lr)
            loss_sum = torch.zeros((), device=device)
            for m in range(accumulation):
                part = slice(m * micro, (m + 1) * micro)
                with dist.gradient_accumulation(wrapped, last=m == accumulation - 1):
                    with autocast(device, precision):
                        loss = objective(forward, x_rank[part], {k: v[part] for k, v in noise.items()})
                    # DDP/FSDP average gradients over ranks: scale so that the update is d(global sum)/d(tokens)
                    (loss * (world / tokens_in_global_batch)).backward()
                loss_sum += loss.detach()
            total_loss = dist.all_reduce_sum(loss_sum) / tokens_in_global_batch
            if not torch.isfinite(total_loss):
                optimizer.zero_grad(set_to_none=True)
                last = latest_snapshot(run_dir)
                raise TrainingError(f"non-finite loss at step {step}; training stopped, last good checkpoint kept"
                                    f" ({last if last else 'none written yet'})")
            grad_norm = dist.clip_grad_norm_(model, cfg.grad_clip) if cfg.grad_clip > 0 else torch.zeros(())
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema_update(ema, model, ema_decay_at(cfg.ema_decay, step))
            step += 1
            tokens_since_log += cfg.global_batch_size * seq_len
            record: dict[str, Any] = {}
            show = None
            if step % cfg.log_every == 0 or step == cfg.steps:
                now = time.perf_counter()
                record = {"step": step, "loss": float(total_loss), "lr": lr, "grad_norm": float(grad_norm),
                          "tokens_per_s": tokens_since_log / max(1e-9, now - last_log)}
                last_log, tokens_since_log = now, 0
                show = dict(loss=f"{record['loss']:.3f}", lr=f"{lr:.2e}", tok_s=f"{record['tokens_per_s']:.0f}",
                            grad_norm=f"{record['grad_norm']:.3g}")
            if eval_rows and ((cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps):
                val = validation_loss(ema if ema is not None else model, prepared.valid, kind=kind,
                                      objective=objective, diffusion=run_config.diffusion, num_rows=eval_rows,
                                      micro_batch_size=micro, seed=cfg.seed, device=device, precision=precision)
                record.update(step=step, val_loss=val, val_ppl=math.exp(min(val, 50.0)))
                label = "val_nelbo" if kind == "mdlm" else "val_loss"
                loop.say(f"step {step}: {label} {val:.4f} (ppl{' bound' if kind == 'mdlm' else ''} "
                         f"{math.exp(min(val, 50.0)):.2f})")
            if record:
                loop.log(record, show)
            if loop.end_step(step):
                break
    return run_dir


def _networks(model_config: ModelConfig, cfg: TrainConfig, snapshot: Path | None, device: torch.device
              ) -> tuple[nn.Module, nn.Module | None, nn.Module, torch.optim.Optimizer]:
    """The model (from ``snapshot`` when resuming), its EMA, the model as wrapped for ``torchrun`` (DDP or FSDP2)
    and its optimiser."""
    seed_everything(cfg.seed)  # identical initial weights on every rank (FSDP2 shards them without a broadcast)
    model = build_network(model_config).to(device)
    model.gradient_checkpointing = cfg.grad_checkpointing
    ema = copy.deepcopy(model).requires_grad_(False) if cfg.ema_decay > 0 else None
    if snapshot is not None:
        _load_weights(snapshot, model, ema, device)
    if dist.context().enabled and cfg.fsdp:
        wrapped = dist.fully_shard_model(model)
        if ema is not None:
            dist.fully_shard_model(ema)  # sharded like the model: the EMA update stays local to each shard
    else:
        wrapped = dist.ddp(model, device) if dist.context().enabled else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                  weight_decay=cfg.weight_decay)
    return model, ema, wrapped, optimizer


RESUMABLE_OPTIONS = ("steps", "device", "progress", "log_to", "compile", "save_every", "eval_every",
                     "log_every", "keep_checkpoints", "fsdp", "micro_batch_size", "grad_checkpointing")
"""Options that may differ when a run is resumed; everything else is taken from the saved run."""


def resume_config(run_dir: str | Path, **overrides: Any) -> TrainConfig:
    """The saved :class:`TrainConfig` of ``run_dir`` with ``overrides`` (only :data:`RESUMABLE_OPTIONS`)."""
    return resumed_config(TrainConfig, read_run_config(Path(run_dir)).training, overrides, RESUMABLE_OPTIONS, run_dir)


def _save(run_dir: Path, step: int, model: nn.Module, ema: nn.Module | None, optimizer: torch.optim.Optimizer,
          cfg: TrainConfig) -> None:
    """Gather the full weights and optimiser state (collective under FSDP2) and write a snapshot on rank 0.

    The global RNG state is not saved: every step reseeds it from ``(seed, step, rank)``.
    """
    tensors = {"model": dist.full_state_dict(model)}
    if ema is not None:
        tensors["ema"] = dist.full_state_dict(ema)
    state = {"optimizer": dist.optimizer_state(model, optimizer), "train_config": to_dict(cfg)}
    if dist.is_main():
        save_snapshot(run_dir, step, tensors, state, keep=cfg.keep_checkpoints)


def _load_weights(snapshot: Path, model: nn.Module, ema: nn.Module | None, device: torch.device) -> None:
    """Load a snapshot's weights into the unwrapped model and EMA (every rank reads the same files)."""
    load_state_dict_strict(model, load_tensors(snapshot / "model.safetensors", device), str(snapshot))
    if ema is not None:
        ema_path = snapshot / "ema.safetensors"
        state = load_tensors(ema_path, device) if ema_path.exists() else model.state_dict()
        load_state_dict_strict(ema, state, str(ema_path))


def _load_trainer_state(snapshot: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Load the optimiser state (into this rank's shard under FSDP2) and return the snapshot's step."""
    state = load_trainer_state(snapshot)
    dist.load_optimizer_state(model, optimizer, state["optimizer"])
    return int(state["step"])
