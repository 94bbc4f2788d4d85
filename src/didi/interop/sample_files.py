"""Sample files: JSON lines with one record per sample (``tokens``, ``text``, ``nfe``, ``seconds``, ...).

The same records are read back by ``didi eval --samples FILE``. Protein models may also write FASTA (a path ending
in ``.fasta``, ``.fa``, ``.faa`` or ``.fas``, optionally ``.gz``): one record per sample, headed by
:func:`fasta_header`. A ``.txt`` path gets plain text, the samples as ``didi sample`` prints them
(:func:`format_sample`); any other suffix is refused (:func:`check_sample_path`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..data.protein import is_fasta_path, write_fasta
from ..diffusion.sampling import SampleResult
from ..errors import DataError, option_error
from ..runtime.checkpoint import atomic_write


def decode_as_sampled(model: Any, tokens: Any) -> list[str]:
    """Every token of each row of ``tokens`` (B, L) decoded, the [BOS] a sample starts with included: the text that
    sample files record and evaluation scores (an AR pipeline's ``decode`` drops that start token)."""
    return [model.tokenizer.decode(row) for row in tokens.cpu().tolist()]


def sample_records(model: Any, results: list[SampleResult], settings: dict[str, Any] | None = None
                   ) -> list[dict[str, Any]]:
    """One record per generated sequence; ``nfe``/``seconds`` are those of the batch it was generated in.

    Every record says where it came from: the ``model`` path, ``kind`` and ``tokenizer``, the ``sampler``, its
    requested ``num_steps`` and sampling ``controls``, and from ``settings`` (what `didi sample` was given) the
    ``seed`` and the other ``settings`` (cache, weights, length, sampler options); ``didi eval --samples`` puts files
    that differ only in their seed in one row. A conditioned row (``result.info["conditioning"]``, see
    :func:`conditioned_fields`) also records its prompt or template and its generated text; a semi-autoregressive
    batch records its ``windows``.
    """
    settings = dict(settings or {})
    provenance = {**({"seed": settings.pop("seed")} if "seed" in settings else {}),
                  **({"settings": settings} if settings else {})}
    records = []
    for result in results:
        texts = decode_as_sampled(model, result.tokens)
        rows = result.info.get("conditioning") or [None] * len(texts)
        for row, text, conditioning in zip(result.tokens.cpu().tolist(), texts, rows):
            records.append({
                "tokens": row, "text": text, "nfe": result.nfe, "seconds": result.seconds,
                "batch_size": int(result.tokens.shape[0]), "num_steps": result.num_steps, "sampler": result.sampler,
                "extra_calls": dict(result.extra_calls), "model": str(getattr(model, "path", "")),
                "kind": getattr(model, "kind", ""), "tokenizer": model.tokenizer.kind,
                **({"controls": result.info["controls"]} if "controls" in result.info else {}),
                **(conditioned_fields(model.tokenizer, row, conditioning) if conditioning else {}),
                **({"windows": result.info["windows"]} if "windows" in result.info else {}), **provenance,
            })
    return records


def conditioned_fields(tokenizer: Any, tokens: list[int], conditioning: dict[str, Any]) -> dict[str, Any]:
    """``text``: the completed text (after the [BOS] the prompt added); ``generated``: the text of each generated
    span; ``spans``: their ``[start, end)`` token positions; and ``prompt`` or ``infill``: the text given."""
    start = conditioning.get("text_start", 0)
    spans = conditioning["spans"]
    return {"text": tokenizer.decode(tokens[start:]),
            "generated": [tokenizer.decode(tokens[a:b]) for a, b in spans], "spans": spans,
            **{k: conditioning[k] for k in ("prompt", "infill") if k in conditioning}}


def fasta_header(index: int, record: dict[str, Any]) -> str:
    """``sample_<index> nfe=<network calls of its batch> steps=<sampling steps> length=<residues>``."""
    return f"sample_{index} nfe={record['nfe']} steps={record['num_steps']} length={len(record['text'])}"


def format_sample(index: int, record: dict[str, Any]) -> str:
    """How ``didi sample`` prints a record: a FASTA record for proteins, else a header line above the text."""
    if record.get("tokenizer") == "protein":
        return f">{fasta_header(index, record)}\n{record['text']}"
    text = f"--- sample {index} (nfe {record['nfe']}, {record['seconds']:.2f}s for its batch) ---\n{record['text']}"
    if "generated" in record:
        text += "".join(f"\n  [generated {a}:{b}] {g!r}" for (a, b), g in zip(record["spans"], record["generated"]))
    return text


JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
TEXT_SUFFIX = ".txt"


def check_sample_path(path: Path) -> None:
    """Refuse an ``--out`` whose suffix names no format :func:`write_samples` writes (before anything is sampled)."""
    suffix = Path(path).suffix.lower()
    if not (suffix in JSON_SUFFIXES or suffix == TEXT_SUFFIX or is_fasta_path(Path(path).name)):
        raise option_error("out", f"{path}: unknown format {suffix or '(no suffix)'}; use .jsonl (JSON lines, read "
                                  "by didi eval --samples), .txt (plain text) or .fasta (protein models)")


def write_samples(model: Any, results: list[SampleResult], path: Path | None,
                  settings: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Build the records (:func:`sample_records`, with ``settings``) and, if ``path`` is given, write them
    atomically: JSON lines, plain text (``.txt``) or FASTA (protein models)."""
    records = sample_records(model, results, settings)
    if path is not None:
        path = Path(path)
        check_sample_path(path)
        if path.suffix.lower() == TEXT_SUFFIX:
            text = "".join(format_sample(i, r) + "\n" for i, r in enumerate(records))
            atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))
        elif is_fasta_path(path.name):
            if model.tokenizer.kind != "protein":
                raise DataError(f"{path}: FASTA output needs a protein model ({model.tokenizer.kind} tokenizer); "
                                "write JSON lines instead")
            write_fasta(path, [r["text"] for r in records], [fasta_header(i, r) for i, r in enumerate(records)])
        else:
            lines = "".join(json.dumps(r) + "\n" for r in records)
            atomic_write(path, lambda p: p.write_text(lines))
    return records


def read_samples(path: Path) -> list[dict[str, Any]]:
    """Read a JSONL sample file written by :func:`write_samples`; every record needs ``text`` or ``tokens``."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: sample file not found")
    if is_fasta_path(path.name) or path.suffix.lower() == TEXT_SUFFIX:
        raise DataError(f"{path}: a {'FASTA' if is_fasta_path(path.name) else 'plain-text'} file holds the "
                        "sequences only; evaluate the JSON lines of `didi sample --out FILE.jsonl` (or the model "
                        "itself with --model)")
    records = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict) or ("text" not in record and "tokens" not in record):
                raise DataError(f"{path}:{number}: a sample record needs a 'text' or 'tokens' field")
            records.append(record)
    if not records:
        raise DataError(f"{path}: no samples in file")
    return records
