"""``didi.load``: any model as its ready-to-use pipeline (a diffusion teacher or student, or an AR model)."""
from __future__ import annotations

from pathlib import Path

from ..interop.convert import as_run_dir
from ..runtime.checkpoint import read_run_config
from .ar import ARPipeline
from .diffusion import DiffusionPipeline


def load(path_or_repo: str | Path, device: str = "auto", weights: str = "ema",
         precision: str = "auto") -> DiffusionPipeline | ARPipeline:
    """Load a run directory (any kind) as a pipeline.

    A Lightning ``.ckpt``, a Hugging Face style directory or a Hub repo id is converted once into the cache
    (``$DIDI_CACHE``, see :func:`didi.interop.convert.as_run_dir`) and loaded from there.
    """
    path = as_run_dir(path_or_repo)
    config = read_run_config(path)
    pipeline = ARPipeline if config.kind == "ar" else DiffusionPipeline
    return pipeline.from_pretrained(path, device=device, weights=weights, precision=precision)
