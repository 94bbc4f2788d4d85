"""Thin helpers over PyTorch's own distributed engine (``torchrun`` + DDP, optionally FSDP).

Nothing here re-implements communication: :func:`init` reads the environment ``torchrun`` sets
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and calls ``torch.distributed.init_process_group`` (NCCL on CUDA,
gloo on CPU); :func:`wrap_model` returns ``DistributedDataParallel`` or ``FullyShardedDataParallel``.
Without ``torchrun`` every helper degrades to the single-process behaviour.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist
import torch.nn as nn

from .utils import pick_device


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


def init(device: str = "auto") -> Context:
    """Initialise the process group once if launched by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    global _CONTEXT
    if _CONTEXT.enabled:
        return _CONTEXT
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        _CONTEXT = Context(device=pick_device(device))
        return _CONTEXT
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        dev, backend = torch.device("cuda", local_rank), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not tdist.is_initialized():
        tdist.init_process_group(backend=backend)
    _CONTEXT = Context(enabled=True, rank=rank, world_size=world, local_rank=local_rank, device=dev)
    return _CONTEXT


def context() -> Context:
    return _CONTEXT


def is_main() -> bool:
    return _CONTEXT.rank == 0


def barrier() -> None:
    if _CONTEXT.enabled:
        tdist.barrier()


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (identity without torchrun)."""
    if _CONTEXT.enabled:
        value = value.clone()
        tdist.all_reduce(value, op=tdist.ReduceOp.SUM)
    return value


def all_gather_cat(value: torch.Tensor) -> torch.Tensor:
    """Concatenate equally shaped tensors from all ranks along dim 0 (identity without torchrun)."""
    if not _CONTEXT.enabled:
        return value
    parts = [torch.empty_like(value) for _ in range(_CONTEXT.world_size)]
    tdist.all_gather(parts, value.contiguous())
    return torch.cat(parts, dim=0)


def wrap_model(model: nn.Module, device: torch.device, *, fsdp: bool = False) -> nn.Module:
    """``DistributedDataParallel`` (default) or ``FullyShardedDataParallel`` around ``model``."""
    if fsdp:
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel(model, device_id=device if device.type == "cuda" else None,
                                        use_orig_params=True)
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimiser state to checkpoint (identical on all DDP ranks; rank 0 writes it)."""
    return optimizer.state_dict()
