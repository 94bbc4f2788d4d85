"""A training run's metrics: ``metrics.jsonl`` in its folder, one JSON object per logged step, and on request the
same records as TensorBoard scalars and as a CSV table (``--log-to tensorboard,csv``).

* ``RUN_DIR/metrics.jsonl``: always; appended as the run goes (a resume first cuts it back to its snapshot,
  :func:`didi.runtime.checkpoint.trim_metrics`).
* ``RUN_DIR/tensorboard/``: one scalar per numeric key of every record, at the record's ``step`` (``tensorboard
  --logdir RUN_DIR``, or the folder above several runs); a resume hides the events past its snapshot
  (``purge_step``). Needs the ``tensorboard`` extra.
* ``RUN_DIR/metrics.csv``: ``metrics.jsonl`` as a table (one column per key, empty where a record has none),
  rewritten from it at every snapshot and at the end.
"""
from __future__ import annotations

import csv
import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import require
from .checkpoint import METRICS, atomic_write

WRITERS = ("tensorboard", "csv")
TENSORBOARD_DIR = "tensorboard"
CSV_FILE = "metrics.csv"


def parse_log_to(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """The writers of ``--log-to`` (comma-separated, e.g. ``tensorboard,csv``; empty: none), checked."""
    if not value:
        return ()
    names = value.split(",") if isinstance(value, str) else list(value)
    writers = tuple(dict.fromkeys(n.strip().lower() for n in names if n.strip()))
    for name in writers:
        require(name in WRITERS, "log_to", f"unknown writer {name!r} (choose from {', '.join(WRITERS)})")
    if "tensorboard" in writers:
        require(importlib.util.find_spec("tensorboard") is not None, "log_to",
                "tensorboard needs the tensorboard extra: pip install 'didi[tensorboard]'")
    return writers


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl`` (a line cut by a crash is skipped)."""
    path = Path(run_dir) / METRICS
    records = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def write_csv(run_dir: str | Path) -> Path:
    """``RUN_DIR/metrics.csv`` from ``metrics.jsonl``: ``step`` first, then every key in order of appearance."""
    records = read_metrics(run_dir)
    columns = list(dict.fromkeys(["step", *(k for r in records for k in r)]))
    path = Path(run_dir) / CSV_FILE

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(records)

    atomic_write(path, write)
    return path


class MetricsLog:
    """Appends each record to ``RUN_DIR/metrics.jsonl`` and feeds the ``writers`` (:data:`WRITERS`). ``start``: the
    step a resumed run continues from (TensorBoard hides its events from there on)."""

    def __init__(self, run_dir: str | Path, writers: Sequence[str] = (), *, start: int = 0):
        self.run_dir, self.writers = Path(run_dir), parse_log_to(writers)
        self.tensorboard = None
        if "tensorboard" in self.writers:
            from torch.utils.tensorboard import SummaryWriter

            # records up to ``start`` are kept (as metrics.jsonl's): a resume hides the events after them
            self.tensorboard = SummaryWriter(str(self.run_dir / TENSORBOARD_DIR),
                                             purge_step=start + 1 if start else None, flush_secs=30)

    def write(self, record: dict[str, Any]) -> None:
        with open(self.run_dir / METRICS, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tensorboard.add_scalar(key, value, global_step=record["step"])

    def flush(self) -> None:
        """Called at every snapshot: the event file and the CSV table catch up with ``metrics.jsonl``."""
        if self.tensorboard is not None:
            self.tensorboard.flush()
        if "csv" in self.writers:
            write_csv(self.run_dir)

    def close(self) -> None:
        self.flush()
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
