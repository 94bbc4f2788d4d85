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


WORDS = ("the king queen lord lady night day love death sword crown heart blood fair sweet good noble gentle "
         "speak come go hath doth thou thee thy my mine art shall will must would know see hear bid tell "
         "and or but if when where why how what who not no yes o alas ay nay").split()


def write_corpus(path, sentences: int = 1500, seed: int = 0) -> None:
    """A deterministic play-like text (speaker lines of random words) large enough for a 300-token BPE."""
    import random

    rng = random.Random(seed)
    lines = []
    for i in range(sentences):
        speaker = rng.choice(["KING", "QUEEN", "FOOL", "LEAR", "PUCK"])
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12)))
        lines.append(f"{speaker}. {words.capitalize()}.")
        if i % 40 == 39:
            lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


TINY_TRAIN_ARGS = ["--tokenizer", "bpe", "--vocab-size", "300", "--seq-len", "32", "--hidden-size", "32",
                   "--n-blocks", "2", "--n-heads", "2", "--cond-dim", "16", "--global-batch-size", "8",
                   "--eval-every", "0", "--eval-batches", "1", "--progress", "false", "--warmup-steps", "2"]


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "play.txt"
    write_corpus(path)
    return path


@pytest.fixture(scope="session")
def teacher_run(tmp_path_factory, corpus_file):
    """A tiny MDLM teacher trained for a few dozen steps on the synthetic corpus (shared by many tests)."""
    from didi.cli import main

    out = tmp_path_factory.mktemp("runs") / "teacher"
    assert main(["train", "--out", str(out), "--data", str(corpus_file), "--steps", "40", "--lr", "3e-3",
                 "--save-every", "40", *TINY_TRAIN_ARGS]) == 0
    return out
