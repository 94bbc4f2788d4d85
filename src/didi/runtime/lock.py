"""One writer per run directory: an exclusive lock on ``RUN_DIR/.didi-lock``, held by the process that writes the
run (``didi train``, ``train-ar``, ``distill``; under ``torchrun`` rank 0, the only rank that writes) for the run's
whole life and released when it ends.

The lock is ``fcntl.flock`` on the file, and the file holds a record of its holder (pid, host, command, start time)
so that a refused second writer can name it. The kernel drops a flock when its holder exits in any way (``kill -9``
included), so a dead writer never blocks the next one; what it leaves is its holder record, which the next writer
reports in one line ("ended without releasing the run") before replacing it. A clean exit empties the record.

Why ``flock`` and not the ``filelock`` package or a pid file: ``filelock`` opens its file with ``O_TRUNC`` before
trying the lock, which would erase the record of a live holder; a pid file needs guesses about liveness (recycled
pids, other hosts). Linux implements ``flock`` on NFS with byte-range locks, so a run folder on a shared filesystem
is protected across nodes too. The lock file is never deleted (deleting a lock file that another process has open
would let two processes lock two different files).
"""
from __future__ import annotations

import errno
import json
import os
import shlex
import socket
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

try:
    import fcntl
except ImportError:  # Windows: no flock; the holder record is still written, the exclusion is not enforced
    fcntl = None

LOCK_FILE = ".didi-lock"


def command_line() -> str:
    """The command of this process as the user typed it (``didi train --out ...``), at most 300 characters."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    name = "didi" if name in ("cli.py", "__main__.py", "didi") else name
    text = shlex.join([name, *sys.argv[1:]]).replace("\n", " ")
    return text if len(text) <= 300 else text[:297] + "..."


def describe_holder(record: dict[str, Any] | None) -> str:
    """``pid 123 on host, started 2026-12-01T10:00:00+00:00: didi train --out run`` (or why it is unknown)."""
    if not record:
        return "holder not recorded yet"
    return (f"pid {record.get('pid', '?')} on {record.get('host', '?')}, started {record.get('started', '?')}: "
            f"`{record.get('command', '?')}`")


def _read_record(fd: int) -> dict[str, Any] | None:
    try:
        size = os.fstat(fd).st_size
        data = json.loads(os.pread(fd, min(size, 65536), 0).decode()) if size else None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class RunLock:
    """The write lock of ``run_dir`` (a context manager that releases it; :meth:`acquire` takes it).

    ::

        with RunLock(run_dir) as lock:
            lock.acquire()            # raises CheckpointError naming the holder if another process writes
            lock.report_takeover()    # once the caller's own checks passed: "the previous writer ... (killed?)"
            ...write the run...
    """

    def __init__(self, run_dir: str | Path, command: str | None = None):
        self.run_dir = Path(run_dir)
        self.command = command or command_line()
        self._fd: int | None = None
        self.previous: dict[str, Any] | None = None
        """The record a writer that ended without releasing the lock left (killed?), once :meth:`acquire` took it."""

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, *, create: bool = True) -> None:
        """Take the lock (a no-op when this object holds it already). ``create``: make ``run_dir`` if missing
        (a new run); otherwise a missing directory is an error (a resume)."""
        if self._fd is not None:
            return
        if not self.run_dir.is_dir():
            if self.run_dir.exists():
                raise CheckpointError(f"{self.run_dir}: exists and is not a directory")
            if not create:
                raise CheckpointError(f"{self.run_dir}: run directory not found")
            self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):  # no locks on this filesystem
                print(f"[didi] warning: {self.run_dir}: cannot lock {LOCK_FILE} ({exc.strerror}); a second writer "
                      "would not be refused", file=sys.stderr)
            else:
                holder = describe_holder(_read_record(fd))
                os.close(fd)
                raise CheckpointError(f"{self.run_dir}: another didi process is writing this run ({holder}); wait "
                                      "for it to finish or stop it, then --resume") from None
        previous = _read_record(fd)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                  "started": datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd, self.previous = fd, previous

    def report_takeover(self) -> None:
        """One line on stderr when the lock was left by a writer that did not release it (see :attr:`previous`)."""
        if self.previous:
            print(f"[didi] {self.run_dir}: its previous writer ({describe_holder(self.previous)}) ended without "
                  "releasing the run (killed?); taking it over", file=sys.stderr)
            self.previous = None

    def release(self) -> None:
        """Empty the holder record (or put back that of a dead writer whose run was not taken over) and drop the
        lock (the process exiting drops it too)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
            if self.previous:  # taken only to look (never announced): the dead writer's record stays for the next
                os.pwrite(fd, (json.dumps(self.previous) + "\n").encode(), 0)
        finally:
            os.close(fd)  # closing the last descriptor of the file drops its flock

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
