"""Rows saved as they finish, so that an interrupted or repeated ``didi eval`` resumes instead of recomputing them.

With ``--json FILE`` every finished unit of work is saved at once in ``FILE.rows.jsonl`` beside it (rewritten
atomically after each unit, one JSON line per unit): a model's rows at one NFE and temperature (all its seeds), a
model's likelihood, its conditional rows, a sample-file row, the held-out data row. A later run with the same
settings takes a unit from there when its key matches (:class:`RowStore`), and computes only the others; Ctrl-C
keeps every unit finished so far. The key (:meth:`RowStore.key`, saved readable beside the rows) holds everything
that determines a unit:

* the didi version and a fingerprint of its source code (:func:`didi.version.source_fingerprint`): a code change
  that alters results (a tokenizer fix, a sampler fix) cannot leave stale rows behind;
* what is scored: the unit's kind and coordinates (NFE, temperature), and every file it comes from by resolved path,
  size and modification time: a model run's ``config.json``, weights (``*.safetensors``) and ``markov.json``, each
  run-directory evaluator's the same way (a Hugging Face evaluator by its name), a sample file itself;
* the settings: every :class:`~.runner.EvalConfig` field except those that only choose which rows exist or where the
  report goes (:data:`ROW_SELECTORS`), so a new ``--nfe``, temperature, model or sample file adds rows and reuses the
  others, while e.g. another ``--num-samples``, ``--seeds``, ``--evaluator`` or ``--device`` recomputes them all;
* the held-out data behind MAUVE and the data row: its source and size.

Not in the key: the corpus files (a run records its corpus by name and settings; the token cache is keyed by their
content), the Hugging Face cache, the hardware beyond ``--device``. Reused rows keep the timings measured when they
were computed; ``--no-resume`` computes every row again (and replaces the saved ones).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ...runtime.checkpoint import atomic_write, is_run_dir
from ...version import __version__, source_fingerprint
from .report import EvalRow

ROW_SELECTORS = ("models", "samples", "nfe", "temperatures", "target_entropy", "frontier_entropy", "references",
                 "unconditional", "prefix_tokens", "json", "plot", "resume", "progress")
"""EvalConfig fields that choose which rows exist, where the report goes or how progress shows, not what a row
holds (the conditional rows' key holds their ``prefix_tokens`` and ``nfe``)."""
RUN_FILES = ("config.json", "markov.json")
"""The files of a run directory a row depends on, besides its weights (``*.safetensors``)."""


def rows_path(json_path: str | Path) -> Path:
    """Where the rows of ``--json FILE`` are saved as they finish: ``FILE.rows.jsonl`` (suffix replaced)."""
    path = Path(json_path)
    return path.with_name(path.stem + ".rows.jsonl")


def fingerprint(path: str | Path) -> dict[str, Any]:
    """What a row knows of a file or run directory: its resolved path and, per file it depends on, ``[size,
    mtime_ns]`` (a run: :data:`RUN_FILES` and its weights; a name that is no local path: the name alone)."""
    path = Path(path)
    if is_run_dir(path):
        files = sorted([*(path / name for name in RUN_FILES if (path / name).is_file()), *path.glob("*.safetensors")])
    elif path.is_file():
        files = [path]
    else:
        return {"name": str(path)}
    return {"path": str(path.resolve()), "files": {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in files}}


class RowStore:
    """The saved units of one ``--json`` report (:mod:`.resume`): :meth:`get` a unit's rows by key, :meth:`put`
    them as soon as they are computed. ``path`` ``None``: nothing is saved or reused (no ``--json``)."""

    def __init__(self, path: Path | None, settings: dict[str, Any], *, reuse: bool = True,
                 evaluator_names: list[str] | None = None):
        self.path, self.settings, self.evaluator_names = path, settings, evaluator_names or []
        self.units: dict[str, dict[str, Any]] = {}
        self.reused = 0
        if path is not None and reuse and path.is_file():
            for line in path.read_text().splitlines():
                try:
                    unit = json.loads(line)
                    self.units[unit["key"]] = unit
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line from another version of this file: that unit is computed again

    @classmethod
    def for_config(cls, config: Any, evaluators: list[str], **extra: Any) -> RowStore:
        """The store of ``config`` (an :class:`~.runner.EvalConfig`): ``--json``'s rows file, its settings (the
        fields outside :data:`ROW_SELECTORS`, the fingerprints of the ``evaluators`` used, the default one too, and
        ``extra``), ``--resume``."""
        settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in (*ROW_SELECTORS, "evaluator")}
        settings["evaluators"] = [fingerprint(name) for name in evaluators]  # resolved paths, not --evaluator's
        return cls(rows_path(config.json) if config.json else None, {**settings, **extra}, reuse=config.resume,
                   evaluator_names=evaluators)

    def key(self, kind: str, **coordinates: Any) -> dict[str, Any]:
        """The key of a unit: the didi version, its ``kind`` and ``coordinates`` (file fingerprints included by the
        caller) and the settings."""
        return {"didi_version": __version__, "code": source_fingerprint(), "unit": kind, **coordinates,
                "settings": self.settings}

    @staticmethod
    def _digest(key: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()

    def get(self, key: dict[str, Any]) -> dict[str, Any] | None:
        """The saved unit of ``key``: ``{"rows": [EvalRow, ...], **extra}``, or ``None``. Its rows' evaluator scores
        take this run's evaluator names, by position: the key pins the evaluators' files in order, and a run from
        another directory spells the same files otherwise (``runs/ar`` against ``/home/me/runs/ar``)."""
        unit = self.units.get(self._digest(key))
        if unit is None:
            return None
        self.reused += 1
        rows = [EvalRow.from_json(r) for r in unit["rows"]]
        for row in rows:
            if row.evaluators and len(row.evaluators) == len(self.evaluator_names):
                row.evaluators = dict(zip(self.evaluator_names, row.evaluators.values()))
        return {**unit.get("extra", {}), "rows": rows}

    def put(self, key: dict[str, Any], rows: Iterable[EvalRow], **extra: Any) -> None:
        """Save a finished unit (``extra``: JSON values kept with it, e.g. a likelihood) and rewrite the file."""
        digest = self._digest(key)
        self.units[digest] = {"key": digest, "about": key, "rows": [r.to_json() for r in rows], "extra": extra}
        if self.path is not None:
            lines = "".join(json.dumps(unit, default=str) + "\n" for unit in self.units.values())
            atomic_write(self.path, lambda p: p.write_text(lines))
