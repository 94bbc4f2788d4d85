"""Sample files: JSON lines with one record per sample (``tokens``, ``text``, ``nfe``, ``seconds``, ...).

The same records are read back by ``didi eval --samples FILE``. Protein models may also write FASTA.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write
from .errors import DataError
from .sampling import SampleResult


def sample_records(model: Any, results: list[SampleResult]) -> list[dict[str, Any]]:
    """One record per generated sequence; ``nfe``/``seconds`` are those of the batch it was generated in."""
    records = []
    for result in results:
        texts = model.decode(result.tokens)
        for row, text in zip(result.tokens.cpu().tolist(), texts):
            records.append({
                "tokens": row, "text": text, "nfe": result.nfe, "seconds": result.seconds,
                "batch_size": int(result.tokens.shape[0]), "num_steps": result.num_steps, "sampler": result.sampler,
                "extra_calls": dict(result.extra_calls), "model": str(getattr(model, "path", "")),
                "kind": getattr(model, "kind", ""),
            })
    return records


def write_samples(model: Any, results: list[SampleResult], path: Path | None) -> list[dict[str, Any]]:
    """Build the records and, if ``path`` is given, write them atomically (JSONL, or FASTA for ``.fasta``/``.fa``)."""
    records = sample_records(model, results)
    if path is not None:
        path = Path(path)
        if path.name.endswith((".fasta", ".fa", ".faa", ".fasta.gz", ".fa.gz", ".faa.gz")):
            from .protein import write_fasta

            write_fasta(path, [r["text"] for r in records])
        else:
            lines = "".join(json.dumps(r) + "\n" for r in records)
            atomic_write(path, lambda p: p.write_text(lines))
    return records


def read_samples(path: Path) -> list[dict[str, Any]]:
    """Read a JSONL sample file written by :func:`write_samples`; every record needs ``text`` or ``tokens``."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: sample file not found")
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
