"""The didi cache: token blocks of tokenized corpora (``tokens/``), converted copies of checkpoints that
``didi sample`` / ``didi.load`` were given in another layout (``converted/``) and the teacher samples that
``didi distill --real-source teacher`` trains on (``teacher-pools/``).

Where: ``$DIDI_CACHE``, else ``$XDG_CACHE_HOME/didi``, else ``~/.cache/didi``. Every new entry is announced on
stderr with its path when it is written (:func:`announce`); ``didi cache list`` shows the entries with their
sizes (:func:`entries`) and ``didi cache clear`` removes them (:func:`clear`). Only the folders didi writes
are ever listed or removed, so a cache root shared with other files is safe. Imports nothing heavy (no torch).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

SECTIONS = ("tokens", "converted", "teacher-pools")
"""The folders didi writes under the cache root."""


def cache_root() -> Path:
    """``$DIDI_CACHE``, else ``$XDG_CACHE_HOME/didi``, else ``~/.cache/didi`` (empty variables are ignored). A
    root that cannot be a directory (it, or a folder above it, is a file) is one clear error naming the variable."""
    if os.environ.get("DIDI_CACHE"):
        root, source = Path(os.environ["DIDI_CACHE"]).expanduser(), "$DIDI_CACHE"
    elif os.environ.get("XDG_CACHE_HOME"):
        root, source = Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "didi", "$XDG_CACHE_HOME"
    else:
        root, source = Path.home() / ".cache" / "didi", "the didi cache"
    check_directory(root, source)
    return root


def check_directory(path: Path, what: str) -> None:
    """Raise a one-line :class:`~didi.errors.ConfigError` naming ``what`` (an option or variable) when ``path``
    cannot be created as a directory because it, or a folder above it, is a file."""
    blocker = Path(path)
    while not blocker.exists() and blocker != blocker.parent:
        blocker = blocker.parent
    if blocker.exists() and not blocker.is_dir():
        where = "is a file" if blocker == Path(path) else f"is below {blocker}, a file"
        raise ConfigError(f"{what}: {path} {where}; it must be a directory")


def ensure_directory(path: Path, what: str) -> None:
    """Create the directory ``path`` (with its parents) or raise :func:`check_directory`'s one-line error."""
    check_directory(path, what)
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{what}: cannot create {path} ({exc.strerror or exc})") from None


def size_of(path: Path) -> int:
    """Bytes of a file, or of every file below a directory (links are not followed)."""
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    return sum(f.lstat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def format_size(size: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def announce(what: str, paths: list[Path]) -> None:
    """One line on stderr for a new cache entry: what it is, where, how large, and how to list or clear it."""
    size = sum(size_of(p) for p in paths if p.exists())
    where = paths[0] if len(paths) == 1 else f"{paths[0].parent}/ ({', '.join(p.name for p in paths)})"
    print(f"[didi] cached {what}: {where} ({format_size(size)}); `didi cache list` shows the cache, "
          "`didi cache clear` empties it, $DIDI_CACHE moves it", file=sys.stderr)


@dataclass
class Entry:
    """One cache entry: a tokenized split (the ``.npy`` blocks and their ``.json``) or a converted checkpoint."""

    section: str
    name: str
    paths: list[Path]
    size: int
    about: str


def _npy_entries(folder: Path, section: str, describe) -> list[Entry]:
    """The ``.npy`` files of ``folder`` with their ``.json`` manifests, described by ``describe(manifest)``."""
    out = []
    for npy in sorted(folder.glob("*.npy")):
        meta = npy.with_suffix(".json")
        paths = [npy] + ([meta] if meta.exists() else [])
        about = ""
        try:
            about = describe(json.loads(meta.read_text()))
        except (OSError, ValueError, AttributeError, KeyError, TypeError):
            pass
        out.append(Entry(section, npy.name, paths, sum(size_of(p) for p in paths), about))
    return out


def _describe_tokens(info: dict) -> str:
    stats = info.get("stats", {})
    return f"{info.get('corpus')} {info.get('split')}, seq_len {info.get('seq_len')}, {stats.get('blocks', '?')} blocks"


def _describe_pool(info: dict) -> str:
    return f"{info['size']} samples of {info['teacher']} at {info['nfe']} NFE"


def _converted_entries(folder: Path) -> list[Entry]:
    out = []
    for run in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        about = ""
        try:
            about = "from " + json.loads((run / "config.json").read_text())["extra"]["converted_from"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
        out.append(Entry("converted", run.name, [run], size_of(run), about))
    return out


def entries(root: Path | None = None) -> list[Entry]:
    """The entries of the cache at ``root`` (default :func:`cache_root`), tokens first."""
    root = cache_root() if root is None else Path(root)
    found = []
    if (root / "tokens").is_dir():
        found += _npy_entries(root / "tokens", "tokens", _describe_tokens)
    if (root / "converted").is_dir():
        found += _converted_entries(root / "converted")
    if (root / "teacher-pools").is_dir():
        found += _npy_entries(root / "teacher-pools", "teacher-pools", _describe_pool)
    return found


def clear(root: Path | None = None) -> int:
    """Remove the folders of :data:`SECTIONS` from the cache; return the bytes freed."""
    root = cache_root() if root is None else Path(root)
    freed = 0
    for section in SECTIONS:
        folder = root / section
        if folder.is_dir():
            freed += size_of(folder)
            shutil.rmtree(folder)
    return freed
