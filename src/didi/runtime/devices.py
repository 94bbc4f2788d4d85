"""Where and in which precision the networks run: device choice, bf16 autocast, synchronisation for timings."""
from __future__ import annotations

import contextlib
import os

import torch

from ..errors import option_error


def pick_device(preference: str = "auto") -> torch.device:
    """Return the device to run on: ``auto`` picks cuda > mps > cpu; otherwise the named device."""
    if preference in (None, "", "auto"):
        if torch.cuda.is_available():
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(preference)
    except RuntimeError as exc:
        raise option_error("device", f"unknown device {preference!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise option_error("device", "CUDA was requested but is not available on this machine")
    return device


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Map ``auto|bf16|fp32`` to an autocast dtype (``None`` = full fp32).

    ``auto`` uses bf16 autocast on CUDA devices that support it and fp32 elsewhere (on CPU, fp32 keeps runs
    deterministic and tests exact).
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    raise option_error("precision", f"must be one of auto, bf16, fp32 (got {precision!r})")


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast context for ``dtype`` on ``device``; a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels so that wall-clock timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
