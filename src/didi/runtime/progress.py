"""Progress that reads well on a terminal and in a log file.

Every progress display of didi goes through here. On a terminal (stderr is a tty, or a Jupyter kernel) a
:class:`Progress` is a tqdm bar; anywhere else (stderr redirected to a file or a pipe) it prints one plain line every
:data:`LINE_SECONDS` seconds and one when it ends, never a carriage return; ``enabled=False`` shows nothing. The
training loops print their own line every ``--log-every`` steps instead (:func:`step_line`, written by
:class:`didi.recipes.loop.StepLoop`).
"""
from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

LINE_SECONDS = 30.0
"""Off a terminal, a :class:`Progress` prints a line at most this often (and one at the end if it printed any)."""


def bars_work() -> bool:
    """Whether a bar can redraw itself in place: stderr is a terminal, or this is a Jupyter kernel (tqdm's widget).
    The one check every bar of didi goes through."""
    isatty = getattr(sys.stderr, "isatty", None)
    if isatty is not None and isatty():
        return True
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def say(message: str) -> None:
    """One line on stderr that does not break a bar being drawn."""
    tqdm.write(message, file=sys.stderr)
    sys.stderr.flush()


def duration(seconds: float) -> str:
    """``42 s``, ``3.5 min``, ``2.1 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _eta(done: int, total: int | None, elapsed: float) -> str:
    """``~3.5 min left`` from the rate so far (empty when it cannot be told)."""
    if not total or done <= 0 or done >= total:
        return ""
    return f", ~{duration(elapsed / done * (total - done))} left"


class Progress:
    """``total`` units of work (``None``: unknown), advanced by :meth:`update`: a tqdm bar on a terminal, a line
    every ``every_s`` seconds (default :data:`LINE_SECONDS`) elsewhere, nothing when not ``enabled``.

    ``lines=False`` prints no periodic lines off a terminal (the caller prints its own, e.g. one per logged step).
    """

    def __init__(self, total: int | None, desc: str, *, enabled: bool = True, unit: str = "item", initial: int = 0,
                 every_s: float | None = None, lines: bool = True, leave: bool = False):
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self.first = initial
        self.every_s = LINE_SECONDS if every_s is None else every_s
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave, dynamic_ncols=True,
                        file=sys.stderr) if enabled and bars_work() else None
        self.lines = enabled and self.bar is None and lines
        self.start = self.last = time.perf_counter()
        self.printed = False

    @property
    def is_bar(self) -> bool:
        return self.bar is not None

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.lines and time.perf_counter() - self.last >= self.every_s:
            self.last = time.perf_counter()
            self.printed = True
            say(f"[didi] {self.desc}: {self._count()}, {duration(self.elapsed)}"
                f"{_eta(self.n - self.first, None if self.total is None else self.total - self.first, self.elapsed)}")

    def set_postfix(self, values: Mapping[str, str]) -> None:
        """Values shown beside the bar (a terminal only)."""
        if self.bar is not None:
            self.bar.set_postfix(values)

    def write(self, message: str) -> None:
        say(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.printed:  # a log that said "40%" says when the work ended too
            self.printed = False
            say(f"[didi] {self.desc}: {self._count()} in {duration(self.elapsed)}")

    def _count(self) -> str:
        """``40/128 steps (31%)``, or ``400 docs`` when the total is unknown."""
        units = self.unit if (self.total if self.total is not None else self.n) == 1 else plural(self.unit)
        if self.total is None:
            return f"{self.n} {units}"
        return f"{self.n}/{self.total} {units} ({100 * self.n / max(1, self.total):.0f}%)"

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def plural(unit: str) -> str:
    """English plural of a unit name: batch -> batches, step -> steps."""
    return unit + ("es" if unit.endswith(("s", "sh", "ch", "x")) else "s")


def track(items: Iterable[T], desc: str, *, enabled: bool = True, total: int | None = None, unit: str = "item",
          every_s: float | None = None) -> Iterator[T]:
    """``for x in track(items, "sampling", enabled=progress)``: :class:`Progress` over ``items`` (``total``:
    ``len(items)`` when it has one), advanced after each item's work."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, desc, enabled=enabled, unit=unit, every_s=every_s) as progress:
        for item in items:
            yield item
            progress.update()


def step_line(desc: str, step: int, total: int, values: Mapping[str, str], *, elapsed: float, done: int) -> str:
    """The plain line of a training loop's logged step: ``[didi] train mdlm step 20/200 (10%, 12 s, ~1.8 min left):
    loss=3.412 lr=1.00e-03 ...`` (``done``: steps run in this process, for the estimate)."""
    shown = " ".join(f"{k}={v}" for k, v in values.items())
    left = _eta(done, done + total - step, elapsed) if step < total else ""
    return (f"[didi] {desc} step {step}/{total} ({100 * step / max(1, total):.0f}%, {duration(elapsed)}{left})"
            + (f": {shown}" if shown else ""))
