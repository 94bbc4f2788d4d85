"""Thin helpers over PyTorch's own distributed engine (``torchrun`` + DDP, optionally FSDP2).

Nothing here re-implements communication: :func:`init` reads the environment ``torchrun`` sets (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) and calls ``torch.distributed.init_process_group``
(NCCL on CUDA, gloo on CPU); gradients are averaged by ``DistributedDataParallel`` or sharded by FSDP2's
``fully_shard``; full state dicts for checkpoints come from ``torch.distributed.checkpoint.state_dict``. Without
``torchrun`` every helper degrades to the single-process behaviour, so the recipes have one code path.

Conventions the recipes rely on:

* every rank computes the same global-batch randomness and keeps its slice (:func:`didi.data.corpora.shard`); randomness
  that is private to a rank's rows (dropout, DiDi-Instruct rollouts) comes from :func:`rank_seed`;
* rank 0 prepares data and run directories first (:func:`main_process_first`), writes every file, and decides
  which snapshot all ranks resume from (:func:`broadcast_object`);
* decisions that change control flow (stop on a signal, skip a non-finite step) are collective
  (:meth:`StopRequest.agreed`, :func:`all_finite`) so that no rank waits in a collective the others skipped.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist
import torch.nn as nn

from ..errors import ConfigError, DidiError, RunInterrupted
from .devices import pick_device

PREPARE_TIMEOUT = timedelta(hours=24)
"""How long the other ranks wait for rank 0 to download and tokenize a corpus (hours for OpenWebText)."""


@dataclass
class Context:
    enabled: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_CONTEXT = Context()
_PREPARE_GROUP: Any = None  # a gloo group with PREPARE_TIMEOUT, used only by main_process_first


def init(device: str = "auto") -> Context:
    """The process context: under ``torchrun`` (``WORLD_SIZE`` > 1) initialise the process group once.

    ``device`` is the ``--device`` preference; under ``torchrun`` a CUDA choice becomes ``cuda:LOCAL_RANK``
    (NCCL) and a CPU choice uses gloo.
    """
    global _CONTEXT, _PREPARE_GROUP
    if _CONTEXT.enabled:
        return _CONTEXT
    world = int(os.environ.get("WORLD_SIZE", "1"))
    preferred = pick_device(device)
    if world <= 1:
        _CONTEXT = Context(device=preferred)
        return _CONTEXT
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if preferred.type == "cuda":
        dev, backend = torch.device("cuda", local_rank), "nccl"
        torch.cuda.set_device(dev)
    elif preferred.type == "cpu":
        dev, backend = preferred, "gloo"
    else:
        raise ConfigError(f"--device: {preferred.type} is not supported under torchrun (use cuda or cpu)")
    if not tdist.is_initialized():
        tdist.init_process_group(backend=backend)
        atexit.register(_shutdown)
    _PREPARE_GROUP = tdist.new_group(backend="gloo", timeout=PREPARE_TIMEOUT)
    _CONTEXT = Context(enabled=True, rank=rank, world_size=world, local_rank=local_rank, device=dev)
    return _CONTEXT


def _shutdown() -> None:
    """At interpreter exit, while Python is still whole: destroy every process group and drop this module's
    reference to the prepare group. A group still referenced here would be destroyed during finalisation, where a
    gloo worker thread can abort the process ("terminate called without an active exception", exit -6) after
    the run itself finished."""
    global _PREPARE_GROUP
    _PREPARE_GROUP = None
    if tdist.is_initialized():
        tdist.destroy_process_group()


def context() -> Context:
    return _CONTEXT


def is_main() -> bool:
    return _CONTEXT.rank == 0


def barrier() -> None:
    if _CONTEXT.enabled:
        tdist.barrier()


# ------------------------------------------------------------------------------------------ coordination

@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Run the body on rank 0, then on the other ranks (rank 0 tokenizes into the cache and writes the run
    directory; the others then read both). If rank 0 fails, the others raise the same error instead of waiting."""
    if not _CONTEXT.enabled:
        yield
        return
    if _CONTEXT.is_main:
        try:
            yield
        except Exception as exc:
            failure = exc if isinstance(exc, DidiError) else DidiError(f"rank 0 failed: {exc!r}")
            tdist.broadcast_object_list([failure], src=0, group=_PREPARE_GROUP)
            raise
        tdist.broadcast_object_list([None], src=0, group=_PREPARE_GROUP)
        return
    box: list[Any] = [None]
    tdist.broadcast_object_list(box, src=0, group=_PREPARE_GROUP)
    if box[0] is not None:
        raise box[0]
    yield


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (picklable objects, e.g. the snapshot to resume from)."""
    if not _CONTEXT.enabled:
        return value
    box = [value]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (identity without torchrun)."""
    if _CONTEXT.enabled:
        value = value.clone()
        tdist.all_reduce(value, op=tdist.ReduceOp.SUM)
    return value


def all_finite(value: torch.Tensor) -> bool:
    """Whether ``value`` is finite on every rank: all ranks get the same answer and take the same branch."""
    finite = torch.isfinite(value.detach()).all().float()
    if _CONTEXT.enabled:
        tdist.all_reduce(finite, op=tdist.ReduceOp.MIN)
    return bool(finite)


def mean_over_ranks(metrics: dict[str, float]) -> dict[str, float]:
    """Average scalar metrics over ranks for logging (every rank must pass the same keys)."""
    if not _CONTEXT.enabled:
        return metrics
    keys = sorted(metrics)
    values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=_CONTEXT.device)
    tdist.all_reduce(values, op=tdist.ReduceOp.SUM)
    return dict(zip(keys, (values / _CONTEXT.world_size).tolist()))


def rank_seed(seed: int, step: int, rank: int, stream: int = 0) -> int:
    """A seed that is a pure function of ``(seed, step, rank, stream)`` (NumPy's ``SeedSequence`` hash) for the
    randomness a rank draws for its own rows: runs are reproducible for a given world size and resume exactly,
    and no two ranks, steps or streams share a random stream."""
    return int(np.random.SeedSequence([seed, step, rank, stream]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class StopRequest:
    """SIGTERM/SIGINT set a flag; the training loop asks :meth:`agreed` once per step, writes a final snapshot
    and raises :class:`didi.errors.RunInterrupted` (:meth:`interrupted`), which the CLI turns into exit status
    128 + signal.

    Under ``torchrun`` the flag is all-reduced, so every rank stops after the same step even when only one of
    them was signalled (all ranks then report the highest signal number any of them received). A second signal
    aborts at once in a single process (Ctrl-C twice); under ``torchrun`` it is ignored, because launchers deliver
    duplicates (SLURM signals every task and ``torchrun`` forwards the signal it got); the launcher's own SIGKILL
    after ``--shutdown-timeout`` is the hard stop there.
    """

    def __init__(self) -> None:
        self.requested = False
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and not _CONTEXT.enabled:
            raise KeyboardInterrupt
        self.requested = True
        self.signum = max(self.signum, int(signum))

    def agreed(self) -> bool:
        """Whether any rank has been asked to stop (a collective under ``torchrun``: call it on every rank)."""
        if not _CONTEXT.enabled:
            return self.requested
        flag = torch.tensor(float(self.signum if self.requested else 0), device=_CONTEXT.device)
        tdist.all_reduce(flag, op=tdist.ReduceOp.MAX)
        if flag > 0:
            self.signum = int(flag)
        return bool(flag > 0)

    def interrupted(self, step: int, steps: int, resume: str) -> RunInterrupted:
        """The outcome of a run stopped at ``step`` of ``steps`` (after :meth:`agreed` said so on every rank)."""
        return RunInterrupted(self.signum or int(signal.SIGINT), step, steps, resume)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ----------------------------------------------------------------------------------------------- models

def ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` (parameters broadcast from rank 0, gradients averaged)."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def fully_shard_model(model: nn.Module) -> nn.Module:
    """Shard ``model`` in place with FSDP2 (``torch.distributed.fsdp.fully_shard``): one unit per transformer
    block (``model.blocks``) plus the root for the embeddings and the output layer. Returns ``model``.

    Parameters become DTensors; build the optimiser afterwards, read and load weights through
    :func:`full_state_dict` / :func:`load_optimizer_state`.
    """
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        raise ConfigError(f"--fsdp: needs PyTorch >= 2.6 (FSDP2); this is {torch.__version__}") from None
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (``model`` itself otherwise)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


@contextlib.contextmanager
def gradient_accumulation(model: nn.Module, last: bool) -> Iterator[None]:
    """For all but the ``last`` micro-batch of a step, skip DDP's all-reduce (``no_sync``); gradients then
    accumulate locally and the last backward averages their sum. FSDP2 reduce-scatters every micro-batch, which
    keeps gradients sharded (the memory reason to use it)."""
    if last or not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        yield
        return
    with model.no_sync():
        yield


def clip_grad_norm_(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm (over all ranks' shards under FSDP2) and return it as a plain tensor."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # a replicated DTensor under FSDP2


# -------------------------------------------------------------------------------------------- checkpoints

def _full_options(**kwargs: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The complete, unsharded weights on CPU with the plain module's keys (no ``module.`` prefix), identical for a
    single process, DDP and FSDP2, so snapshots are interchangeable. A collective under FSDP2: call it on every
    rank; ranks other than 0 may receive an empty dict."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(unwrap(model), options=_full_options(cpu_offload=True))


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimiser state to checkpoint, unsharded and keyed by parameter name (the same for a single process,
    DDP and FSDP2). A collective under FSDP2: call it on every rank; rank 0 writes it."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(unwrap(model), optimizer, options=_full_options(cpu_offload=True))


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Inverse of :func:`optimizer_state` on every rank (each rank keeps its shard under FSDP2)."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    if any(isinstance(p, int) for group in state["param_groups"] for p in group["params"]):
        optimizer.load_state_dict(state)  # written before snapshots keyed the state by parameter name
        return
    set_optimizer_state_dict(unwrap(model), optimizer, state, options=_full_options())
