"""Networks from configs and run directories: the one place that knows which class a run's weights belong to.

``config.json`` says the architecture (``model.arch``: ``dit`` for diffusion teachers and students, ``gpt`` for AR
models) and, for students, how the discriminator was built (``extra["discriminator"]``,
:meth:`~didi.models.discriminator.Discriminator.spec`). Weights are loaded with the strict key and shape check of
:func:`didi.runtime.checkpoint.load_state_dict_strict`.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..config import ModelConfig
from ..runtime.checkpoint import RunConfig, load_state_dict_strict, load_tensors, weights_file
from .discriminator import Discriminator, empty_discriminator
from .dit import DiT
from .gpt import GPT

DISCRIMINATOR_FILE = "discriminator.safetensors"


def build_network(config: ModelConfig) -> nn.Module:
    """A freshly initialised network of ``config.arch`` (``gpt``: the causal GPT; else the DiT)."""
    return GPT(config) if config.arch == "gpt" else DiT(config)


def load_network(run_dir: str | Path, config: RunConfig, weights: str = "ema",
                 device: torch.device | str = "cpu") -> nn.Module:
    """The network of a run directory in eval mode on ``device``: its EMA weights (``weights="ema"``, the raw ones
    when the run has no EMA) or its raw ones (``"model"``)."""
    network = build_network(config.model)
    path = weights_file(Path(run_dir), weights)
    load_state_dict_strict(network, load_tensors(path), str(path))
    return network.to(device).eval()


def discriminator_for(config: RunConfig) -> Discriminator:
    """An empty discriminator shaped like the one a student run saved (its ``config.json`` spec; a released
    checkpoint has none and gets :func:`~didi.models.discriminator.empty_discriminator`'s defaults)."""
    spec = config.extra.get("discriminator", {})
    return empty_discriminator(config.model, spec.get("time_blocks"), window=spec.get("window", 0),
                               normalize=spec.get("normalize", False), trainable_blocks=spec.get("trainable_blocks"))


def load_discriminator(run_dir: str | Path, config: RunConfig,
                       device: torch.device | str = "cpu") -> Discriminator | None:
    """A student run's discriminator in eval mode on ``device``; ``None`` when the run has none."""
    path = Path(run_dir) / DISCRIMINATOR_FILE
    if not path.exists():
        return None
    discriminator = discriminator_for(config)
    load_state_dict_strict(discriminator, load_tensors(path), str(path))
    return discriminator.to(device).eval()
