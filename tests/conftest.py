"""Shared fixtures: tiny configurations that keep the suite fast on 2 CPU cores."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("DIDI_CACHE", os.path.join(os.environ.get("TMPDIR", "/tmp"), "didi-test-cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from didi.config import ModelConfig  # noqa: E402

# Tiny models are dominated by per-op overhead: one thread per test process is several times faster than two
# threads contending (the suite runs with pytest-xdist, one process per core).
torch.set_num_threads(1)


@pytest.fixture
def tiny_model_config() -> ModelConfig:
    """A DiT small enough for unit tests (vocab 11 = 10 tokens + mask)."""
    return ModelConfig(vocab_size=11, hidden_size=32, n_blocks=2, n_heads=2, cond_dim=16, max_seq_len=16, dropout=0.0)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def randomize_output_layer(model: torch.nn.Module, scale: float = 1.0, seed: int = 0) -> None:
    """DiT output layers are zero-initialised (uniform predictions); give them random weights for tests."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * scale * 0.5)
