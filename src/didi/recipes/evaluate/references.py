"""What samples are compared with: the validation split of a model's corpus (:func:`validation_blocks`, its
likelihood :func:`model_likelihood`), the natural sequences of protein models (:class:`ProteinReference`,
:class:`ProteinScoring`) and the held-out data of the data reference row and of MAUVE (:func:`heldout_data`).
"""
from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...data.markov import MarkovLanguage
from ...data.protein import (
    SWISSPROT_COMPOSITION,
    amino_acid_composition,
    esmfold_scorer,
    protein_metrics,
)
from ...data.tokenizer import Tokenizer, load_tokenizer
from ...errors import require
from ...pipelines.ar import ARPipeline
from ...runtime.checkpoint import RunConfig, is_run_dir, read_run_config
from .markov import markov_language, markov_rows
from .metrics import Likelihood, Model, ar_nll, diffusion_nelbo, log
from .quality import MAX_INDEXED_TOKENS, CopyIndex, default_copy_window
from .report import EvalRow

# ------------------------------------------------------------------------------------------------------ likelihood

def _prepared(config: RunConfig, tokenizer: Tokenizer, seq_len: int, data: str | None) -> tuple[str, Any]:
    """``(corpus, prepared)``: a run's training corpus (or ``data``) packed with its tokenizer and packing at
    ``seq_len`` (:class:`didi.data.corpora.PreparedData`); ``corpus`` is ``""`` and ``prepared`` ``None`` if the run
    records none."""
    from ...data.corpora import DataConfig, prepare_data

    settings = {k: v for k, v in config.data.items() if k in DataConfig.__dataclass_fields__}
    if data:
        settings["data"] = data
    if "data" not in settings:
        return "", None
    settings["seq_len"] = seq_len
    return settings["data"], prepare_data(DataConfig(**settings), tokenizer=tokenizer)


def _validation_split(config: RunConfig, tokenizer: Tokenizer, seq_len: int, data: str | None) -> tuple[str, Any]:
    """``(corpus, blocks)``: the validation blocks of a run's training corpus (or of ``data``), packed with its
    tokenizer and packing at ``seq_len``; ``corpus`` is ``""`` and ``blocks`` ``None`` if the run records none."""
    corpus, prepared = _prepared(config, tokenizer, seq_len, data)
    return corpus, None if prepared is None else prepared.valid


def validation_blocks(model: Model, data: str | None = None) -> Any:
    """The validation split (:class:`didi.data.corpora.TokenBlocks`) of the model's training corpus, or of ``data``,
    packed with the model's tokenizer at its training length."""
    corpus, valid = _validation_split(model.config, model.tokenizer, model.seq_len, data)
    require(valid is not None, "data", f"{model.path} does not record its training corpus; pass --data")
    require(len(valid) > 0, "data", f"{corpus}: the corpus has no validation blocks")
    return valid


def model_likelihood(model: Model, *, data: str | None = None, max_blocks: int = 64, batch_size: int = 8,
                     seed: int = 0) -> Likelihood:
    """Validation NELBO bound (diffusion) or validation perplexity (AR) of a loaded model."""
    blocks = validation_blocks(model, data)
    if isinstance(model, ARPipeline):
        return ar_nll(model, blocks, batch_size=batch_size, max_blocks=max_blocks)
    return diffusion_nelbo(model, blocks, batch_size=batch_size, max_blocks=max_blocks, seed=seed)


# ------------------------------------------------------------------------------------------------------ copy rate

def special_ids(tokenizer: Tokenizer) -> tuple[int, ...]:
    """BOS, EOS, PAD and [MASK]: the ids that are not text (windows across them are never copies)."""
    return tuple(sorted({i for i in (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id,
                                     tokenizer.diffusion_mask_id) if i is not None}))


def copy_index(run_dir: str | Path, window: int = 0, cache: dict[Any, CopyIndex | None] | None = None
               ) -> CopyIndex | None:
    """The :class:`~.quality.CopyIndex` of a run's training split (its corpus, tokenizer, packing and training
    length, as it was trained) with ``window``-token windows (0: :func:`~.quality.default_copy_window`); ``None``
    when the run records no corpus. ``cache`` keeps the indexes built, keyed by corpus settings, tokenizer, length
    and window (a teacher and its students share one)."""
    from ...data.corpora import resolve_packing, tokenizer_fingerprint

    run = read_run_config(Path(run_dir))
    tokenizer = load_tokenizer(Path(run_dir), run.tokenizer)
    seq_len = int(run.training.get("seq_len", run.model.max_seq_len))
    k = window or default_copy_window(tokenizer.kind)
    key = (json.dumps(run.data, sort_keys=True, default=str), tokenizer_fingerprint(tokenizer), seq_len, k)
    if cache is not None and key in cache:
        return cache[key]
    corpus, prepared = _prepared(run, tokenizer, seq_len, None)
    index = None
    if prepared is not None and len(prepared.train) > 0:
        log(f"indexing the {k}-token windows of the training split of {corpus} (copy rate)")
        blocks = prepared.train.array[:MAX_INDEXED_TOKENS // (seq_len - 2) + 1]  # more than the index keeps, if any
        wrap = resolve_packing(run.data.get("packing", "auto"), tokenizer) == "wrap"
        stream = np.asarray(blocks[:, 1:-1] if wrap else blocks).ravel()  # wrap: [BOS] chunk [EOS] of one stream
        index = CopyIndex.build(stream, k, special_ids(tokenizer), source=f"the {len(prepared.train)} training "
                                f"blocks ({seq_len} tokens) of {corpus}")
    if cache is not None:
        cache[key] = index
    return index


# -------------------------------------------------------------------------------------------------------- proteins

@dataclass
class ProteinReference:
    """The natural sequences protein samples are compared with.

    ``sequences``: the validation blocks of a protein model's corpus, decoded like samples (packed and cropped as
    the model was trained, so a perfect model matches their lengths too); ``composition``: their pooled residue
    composition, or the built-in UniProtKB/Swiss-Prot table when there is no validation data (no ``sequences``).
    """

    name: str
    source: str
    composition: dict[str, float]
    sequences: list[str]
    ids: list[list[int]] | None = None  # the token ids of the blocks behind ``sequences``
    run_dir: Path | None = None  # the run whose corpus they come from


def protein_reference(run_dir: Path | None, data: str | None = None) -> ProteinReference:
    """The :class:`ProteinReference` of a protein run: its training corpus (or ``data``) at its training length;
    the built-in composition if there is no run, or it records no corpus, or the corpus has no validation split."""
    corpus, blocks, seq_len, tokenizer = "", None, 0, None
    if run_dir is not None:
        config = read_run_config(run_dir)
        tokenizer = load_tokenizer(run_dir, config.tokenizer)
        seq_len = int(config.training.get("seq_len", config.model.max_seq_len))
        corpus, blocks = _validation_split(config, tokenizer, seq_len, data)
    if blocks is None or len(blocks) == 0:
        why = "no protein run" if run_dir is None else \
            f"{run_dir} records no corpus" if blocks is None else f"{corpus} has no validation split"
        log(f"{why}: amino-acid composition is compared with the built-in UniProtKB/Swiss-Prot table")
        return ProteinReference(name="", source="UniProtKB/Swiss-Prot composition (built-in table)",
                                composition=SWISSPROT_COMPOSITION, sequences=[])
    ids = np.asarray(blocks.array).tolist()
    sequences = [tokenizer.decode(row) for row in ids]
    return ProteinReference(name=f"{Path(corpus).name} (validation)",
                            source=f"the {len(sequences)} validation sequences of {corpus} "
                                   f"({seq_len}-token blocks, as trained)",
                            composition=amino_acid_composition(sequences), sequences=sequences, ids=ids,
                            run_dir=run_dir)


@dataclass
class ProteinScoring:
    """The protein metrics of ``didi eval``: against ``reference``, with ESMFold pLDDT when ``plddt`` is given."""

    reference: ProteinReference
    plddt: Callable[[Sequence[str]], list[float]] | None = None

    def score(self, row: EvalRow, texts: Sequence[str]) -> None:
        """Set ``row.protein`` (:func:`didi.data.protein.protein_metrics`, plus the mean ``plddt`` over the non-empty
        sequences) and make ``row.entropy`` the residue entropy (special tokens such as PAD excluded)."""
        metrics = protein_metrics(texts, self.reference.composition)
        if self.plddt is not None:
            folded = [t for t in texts if t]
            metrics["plddt"] = statistics.fmean(self.plddt(folded)) if folded else math.nan
        row.protein = metrics
        row.entropy = metrics["entropy"]


def protein_scoring(config: Any, runs: Sequence[RunConfig], files: Sequence[tuple[Path, list[dict[str, Any]]]],
                     device: torch.device) -> ProteinScoring | None:
    """Protein scoring if the report has protein models or protein sample files, else ``None`` (``config``: the
    :class:`~.runner.EvalConfig`). The reference comes from the first protein model, else from the run recorded in
    the first protein sample file."""
    models = [Path(p) for p, run in zip(config.models, runs) if run.tokenizer.get("type") == "protein"]
    recorded = [str(records[0].get("model") or "") for _, records in files
                if records[0].get("tokenizer") == "protein"]
    if not models and not recorded:
        require(not config.plddt, "plddt", "pLDDT scores proteins: no --model or --samples here is a protein model")
        return None
    candidates = models + [Path(m) for m in recorded if m and is_run_dir(m)]
    reference = protein_reference(candidates[0] if candidates else None, config.data)
    if config.plddt:
        log("loading ESMFold for pLDDT")
    return ProteinScoring(reference=reference, plddt=esmfold_scorer(device) if config.plddt else None)


# ------------------------------------------------------------------------------------------------ held-out data

@dataclass
class HeldOut:
    """Held-out text the samples are compared with: ``texts`` (and their ``tokens``, ``None`` for proteins, whose
    entropy is over residues) make the data reference row; ``reference`` is the MAUVE reference set, disjoint from
    ``texts`` when the split holds enough sequences (``disjoint``); ``markov``: the language of a Markov corpus and
    ``texts`` decoded for it (:func:`~.markov.markov_rows`); ``ids``: the token ids of ``texts`` (proteins too) and
    ``run_dir`` the run whose training split they are held out from (the copy rate's "unseen text" baseline)."""

    name: str
    source: str
    texts: list[str]
    tokens: list[list[int]] | None
    reference: list[str]
    disjoint: bool
    markov: tuple[MarkovLanguage, list[str]] | None = None
    ids: list[list[int]] | None = None
    run_dir: Path | None = None


def _split_heldout(name: str, source: str, texts: list[str], tokens: list[list[int]] | None, n: int, *,
                   ids: list[list[int]] | None, run_dir: Path | None) -> HeldOut:
    """The first ``n`` sequences make the data row, the next ``n`` the MAUVE reference (the same ones if the split
    is too small for two sets)."""
    disjoint = len(texts) >= 2 * n
    reference = texts[n:2 * n] if disjoint else texts[:n]
    return HeldOut(name=name, source=source, texts=texts[:n], tokens=None if tokens is None else tokens[:n],
                   reference=reference, disjoint=disjoint, ids=None if ids is None else ids[:n], run_dir=run_dir)


def describe_heldout(heldout: HeldOut, texts: Sequence[str]) -> str:
    return f"{len(texts)} sequences of {heldout.source}"


def heldout_data(config: Any, runs: Sequence[RunConfig], files: Sequence[tuple[Path, list[dict[str, Any]]]],
                 proteins: ProteinScoring | None, n: int) -> HeldOut | None:
    """The validation blocks of the first model's training corpus (diffusion models first; or of ``--data``),
    packed with its tokenizer at the sample length, in a seeded random order; proteins: the natural sequences of
    :func:`protein_reference`. ``None`` when no run records a corpus."""
    if proteins is not None:
        ref = proteins.reference
        if not ref.sequences:
            return None
        return _split_heldout(ref.name, ref.source.removeprefix("the "), list(ref.sequences), None, n, ids=ref.ids,
                              run_dir=ref.run_dir)
    candidates = sorted(((Path(p), run) for p, run in zip(config.models, runs)), key=lambda c: c[1].kind == "ar")
    candidates += [(Path(m), read_run_config(Path(m))) for m in
                   (str(records[0].get("model") or "") for _, records in files) if m and is_run_dir(m)]
    for path, run in candidates:
        tokenizer = load_tokenizer(path, run.tokenizer)
        seq_len = config.seq_len or int(run.training.get("seq_len", run.model.max_seq_len))
        corpus, blocks = _validation_split(run, tokenizer, seq_len, config.data)
        if blocks is None or len(blocks) == 0:
            continue
        order = np.random.default_rng(config.seed).permutation(len(blocks))[:2 * n]
        tokens = np.asarray(blocks.array)[order].tolist()
        texts = [tokenizer.decode(row) for row in tokens]
        heldout = _split_heldout(f"data ({Path(corpus).name} validation)",
                                 f"the {len(blocks)} validation blocks ({seq_len} tokens) of {corpus}, in a seeded "
                                 "random order", texts, tokens, n, ids=tokens, run_dir=path)
        language = markov_language(path) if config.data in (None, run.data.get("data")) else None
        if language is not None:  # the run's own corpus: the language of its markov.json
            heldout.markov = (language, markov_rows(tokenizer, heldout.tokens))
        return heldout
    log("no run records a corpus with validation data (pass --data): no held-out reference row")
    return None

