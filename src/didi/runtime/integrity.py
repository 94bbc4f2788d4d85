"""Integrity records of large files (token-cache blocks, snapshot weights): their size and a SHA-256 digest that
reads at most :data:`FULL_LIMIT` bytes of the file, whatever its size.

Files up to 64 MiB are hashed whole. Above that, the digest covers the size and :data:`SAMPLES` evenly spaced
64 KiB pieces, the first at the file's start and the last at its end (64 MiB read in all).

Why not a full checksum: records are checked every time a file is used - a token cache at every training start on
every node, a snapshot at every resume - and the token cache of OpenWebText is about 36 GB (9.0 billion GPT-2
tokens as int32): hashing it whole at SHA-256's speed (573 MiB/s on one core of the 2-core development machine)
plus reading it from disk would add a minute or more to every start, against about 0.1 s for the sampled digest.

What the sampled digest catches: truncation and extension (the size), a file overwritten or replaced by another
(same size or not), garbage over any region wider than the spacing of the pieces (a 1,023rd of the file; e.g. a
zeroed or unwritten block range). What it can miss: a few bytes flipped between two pieces of a file over 64 MiB,
which storage checksums (disk, filesystem) are there for.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

FULL_LIMIT = 64 * 2**20
"""Files up to this size are hashed whole."""
SAMPLES = 1024
SAMPLE_BYTES = 64 * 2**10
_READ = 2**20


def file_digest(path: str | Path) -> str:
    """``sha256:HEX`` of the whole file up to :data:`FULL_LIMIT` bytes, else ``sha256-sampled:HEX`` of its size
    and :data:`SAMPLES` pieces of :data:`SAMPLE_BYTES` spread evenly from its first byte to its last."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(size.to_bytes(8, "little"))
    with open(path, "rb") as fh:
        if size <= FULL_LIMIT:
            while piece := fh.read(_READ):
                digest.update(piece)
            return "sha256:" + digest.hexdigest()
        for i in range(SAMPLES):
            fh.seek((size - SAMPLE_BYTES) * i // (SAMPLES - 1))
            digest.update(fh.read(SAMPLE_BYTES))
    return "sha256-sampled:" + digest.hexdigest()


def file_record(path: str | Path) -> dict[str, Any]:
    """``{"bytes": size, "digest": file_digest(path)}``: what a manifest keeps of a file."""
    return {"bytes": Path(path).stat().st_size, "digest": file_digest(path)}


def check_file(path: str | Path, record: dict[str, Any]) -> str | None:
    """Why ``path`` does not match its manifest ``record`` (a short phrase), or ``None`` when it does."""
    path = Path(path)
    if not path.is_file():
        return f"{path.name} is missing"
    size = path.stat().st_size
    if "bytes" in record and size != record["bytes"]:
        return f"{path.name} has {size} bytes, its manifest says {record['bytes']} (truncated or overwritten)"
    if "digest" in record and file_digest(path) != record["digest"]:
        return f"{path.name} does not match its checksum (corrupt)"
    return None
