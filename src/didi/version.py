"""The package version, in a module of its own so that every layer can record it without importing ``didi``, and a
fingerprint of the package's source code (the version alone does not change when the code does)."""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

__version__ = "0.1.0"


@functools.lru_cache(maxsize=1)
def source_fingerprint() -> str:
    """SHA-256 (16 hex digits) of every ``.py`` file of the installed ``didi`` package, by path and content: results
    cached by code (``didi eval``'s saved rows) are recomputed when any of it changed."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
