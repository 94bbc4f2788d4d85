"""Rows of ``didi eval --samples FILE``: the records of `didi sample --out` files, scored without their model.

A file's records carry where they came from (:func:`didi.interop.sample_files.sample_records`): the model run,
the seed, the sampler and its settings. Files of one model and settings that differ only in their seed make one row
(:func:`group_files`) whose metrics are the mean ± std over those seeds, as ``--seeds`` gives for a model; files that
differ in anything else, or that record no seed, stay rows of their own.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...data.markov import MarkovLanguage
from ...data.tokenizer import load_tokenizer
from ...runtime.checkpoint import is_run_dir, read_run_config
from .markov import markov_language, markov_rows
from .metrics import log, mean_sample_entropy
from .report import EvalRow
from .scoring import Scoring

SampleFile = tuple[Path, list[dict[str, Any]]]
PROVENANCE = ("model", "kind", "tokenizer", "num_steps", "sampler", "controls", "settings")
"""The record fields that, with the number of records and the prompts, must agree for files to share a row."""


def provenance(records: Sequence[dict[str, Any]]) -> str | None:
    """What determines a file's samples besides its seed, as a comparable string; ``None`` when the file records
    no seed (older files: it cannot be told apart from a repeat of the same seed)."""
    first = records[0]
    if first.get("seed") is None:
        return None
    prompts = sorted({str(r.get("prompt", r.get("infill", ""))) for r in records})
    return json.dumps({**{k: first.get(k) for k in PROVENANCE}, "records": len(records), "prompts": prompts},
                      sort_keys=True, default=str)


def group_files(files: Sequence[SampleFile]) -> list[list[SampleFile]]:
    """The files in rows, in the order given: a file joins the first earlier row of the same :func:`provenance`
    whose files have other seeds; every other file starts a row."""
    groups: list[list[SampleFile]] = []
    for path, records in files:
        key = provenance(records)
        group = next((g for g in groups if key is not None and provenance(g[0][1]) == key
                      and records[0]["seed"] not in {r[0]["seed"] for _, r in g}), None)
        if group is None:
            groups.append([(path, records)])
        else:
            group.append((path, records))
    return groups


def _batches(records: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """A file's batches: consecutive runs of ``batch_size`` records."""
    batches, i = [], 0
    while i < len(records):
        size = max(1, int(records[i].get("batch_size", 1)))
        batches.append(records[i:i + size])
        i += size
    return batches


def file_row(group: list[SampleFile], scoring: Scoring) -> EvalRow:
    """The row of a group of sample files (:func:`group_files`): one set of samples per file and seed."""
    first = group[0][1][0]
    kind = str(first.get("kind") or "?")
    records = [r for _, rs in group for r in rs]
    batches = [b for _, rs in group for b in _batches(rs)]
    tokens = [r["tokens"] for r in records] if all("tokens" in r for r in records) else None
    seq_len = max(len(t) for t in tokens) if tokens else None
    timed = all("seconds" in b[0] for b in batches)
    extra_keys = sorted({k for b in batches for k in b[0].get("extra_calls", {})})
    row = EvalRow(model=Path(str(first.get("model") or group[0][0].stem)).name, kind=kind,
                  sampler=str(first.get("sampler", "n/a")), nfe=None if kind == "ar" else first.get("num_steps"),
                  source=", ".join(str(path) for path, _ in group), num_samples=len(group[0][1]), seq_len=seq_len,
                  generated_tokens=0 if seq_len is None else seq_len - 1 if kind == "ar" else seq_len,
                  nfe_per_batch=[int(b[0]["nfe"]) for b in batches if "nfe" in b[0]],
                  extra_calls={k: [int(b[0].get("extra_calls", {}).get(k, 0)) for b in batches] for k in extra_keys},
                  batch_sizes=[len(b) for b in batches],
                  latencies_s=[float(b[0]["seconds"]) for b in batches] if timed else [],
                  timing="recorded by didi sample (no warm-up)" if timed else "not recorded",
                  entropy=mean_sample_entropy(tokens) if tokens else None,
                  temperature=float((first.get("controls") or {}).get("temperature", 1.0)))
    if not all("text" in r for r in records):
        log(f"{row.source}: records without 'text': generative perplexity and protein metrics are not computed")
        return row
    protein = first.get("tokenizer") == "protein"
    copy = scoring.copy_index(first.get("model"))
    per_seed = []
    for _, rs in group:
        ids = [r["tokens"] for r in rs] if tokens else None
        per_seed.append(scoring.seed_metrics([r["text"] for r in rs], ids, rs[0].get("seed"), protein=protein,
                                             markov=_file_markov(rs[0], ids), copy=copy))
    scoring.fill(row, per_seed, protein=protein)
    return row


def _file_markov(first: dict[str, Any], tokens: list[list[int]] | None) -> tuple[MarkovLanguage, list[str]] | None:
    """The Markov language of a sample file's model run (when it still exists and holds ``markov.json``) and the
    file's token ids decoded for it; ``None`` otherwise (text alone would put the letters of ``<|endoftext|>``
    between documents)."""
    model = str(first.get("model") or "")
    if not tokens or not model or not is_run_dir(model):
        return None
    language = markov_language(model)
    if language is None:
        return None
    tokenizer = load_tokenizer(Path(model), read_run_config(Path(model)).tokenizer)
    return language, markov_rows(tokenizer, tokens)
