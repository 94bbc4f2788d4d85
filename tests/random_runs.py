"""Run directories with random weights, for tests that need a model of a given kind and tokenizer but not a trained
one (a trained tiny model is the ``teacher_run`` fixture of conftest.py)."""
from __future__ import annotations

from pathlib import Path

import torch

from didi.config import DiffusionConfig, ModelConfig
from didi.data.tokenizer import Tokenizer
from didi.models.discriminator import empty_discriminator
from didi.models.dit import DiT
from didi.runtime.checkpoint import RunConfig, save_tensors, write_run_config


def make_random_run(path: Path, tokenizer: Tokenizer, *, kind: str, seed: int, seq_len: int = 24) -> Path:
    """A diffusion run directory (``kind`` mdlm or didi) whose every parameter is random, the DiT's zero-initialised
    layers included (peaked distributions that differ at every position), with a discriminator for a student."""
    config = ModelConfig(vocab_size=tokenizer.model_vocab_size, hidden_size=32, n_blocks=2, n_heads=2, cond_dim=16,
                         max_seq_len=seq_len, dropout=0.0)
    g = torch.Generator().manual_seed(seed)
    networks = {"model": DiT(config)} | ({"discriminator": empty_discriminator(config)} if kind == "didi" else {})
    for stem, network in networks.items():
        with torch.no_grad():
            for p in network.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        save_tensors(path / f"{stem}.safetensors", network.state_dict())
    write_run_config(path, RunConfig(kind=kind, model=config, tokenizer=tokenizer.save(path),
                                     diffusion=DiffusionConfig(mask_index=tokenizer.diffusion_mask_id),
                                     training={"seq_len": seq_len}))
    return path
