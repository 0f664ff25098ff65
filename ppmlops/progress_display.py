"""Progress of long work counted in units (rows, bytes): a rich progress bar on a terminal, plain
lines every few seconds anywhere else (a task log, a pipe), and one line when it ends (when it
printed any: a quick piece of work stays quiet).

    with ProgressDisplay("risk scan", total=size, unit="bytes") as shown:
        for chunk in chunks:
            ...
            shown.advance(len(chunk))

A plain line reads `risk scan: 1,200,000 rows, 410,000 rows/s, 37% (of 3,240,000)`. Where the
count itself must not be shown (an exact row count of private data in a log readers of the
log may not see), pass `show_counts=False`: the lines then say only the percent done, the time
taken and the time left, from a total that is public (the file's size, say).
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Callable, TextIO

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TaskProgressColumn,
                           TextColumn, TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

from ppmlops.terminal import is_terminal


class _Rate(ProgressColumn):
    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        return Text("" if task.speed is None else f"{task.speed:,.0f} {self.unit}/s")


class ProgressDisplay:
    """`total`: how many units the work has (None: unknown, no percent). `emit`: where plain lines
    go (a logger's info, say); by default `stream`, stderr unless given (stdout stays the
    command's output). `terminal`: draw a bar (default: when the stream is a terminal and no
    `emit` was given)."""

    def __init__(self, what: str, total: float | None = None, *, unit: str = "rows", show_counts: bool = True,
                 every_s: float = 5.0, stream: TextIO | None = None, emit: Callable[[str], None] | None = None,
                 terminal: bool | None = None, clock: Callable[[], float] = time.monotonic):
        self.what, self.total, self.unit, self.show_counts, self.every_s = what, total, unit, show_counts, every_s
        self.done = 0.0
        self._clock = clock
        self._stream = stream or sys.stderr
        self._emit = emit or (lambda line: print(line, file=self._stream, flush=True))
        self._terminal = (emit is None and is_terminal(self._stream)) if terminal is None else terminal
        self._start = self._last = clock()
        self._bar: Progress | None = None
        self._task = None
        self._closed = False
        self._lines = 0
        if self._terminal:
            columns = [TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn()]
            if show_counts:
                columns += [MofNCompleteColumn(), _Rate(unit)]
            columns += [TimeElapsedColumn(), TimeRemainingColumn()]
            self._bar = Progress(*columns, console=Console(file=self._stream, force_terminal=True))
            self._bar.start()
            self._task = self._bar.add_task(what, total=total)

    # -- counting ---------------------------------------------------------------------------------
    def advance(self, units: float) -> None:
        self.update(self.done + units)

    def update(self, done: float, total: float | None = None) -> None:
        """`total`: a new estimate of the whole (e.g. rows read over the share of a file read)."""
        self.done = done
        if total is not None:
            self.total = total
        if self._bar is not None:
            self._bar.update(self._task, completed=done, **({"total": total} if total is not None else {}))
            return
        now = self._clock()
        if now - self._last >= self.every_s:
            self._last = now
            self._lines += 1
            self._emit(self.line(now))

    def close(self) -> None:
        """The last line (or the bar's last state), once."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.stop()
        elif self._lines:  # work that ended before its first line needs no last one (a quick command stays quiet)
            self._emit(self.line(self._clock(), finished=True))

    def __enter__(self) -> "ProgressDisplay":
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- words -------------------------------------------------------------------------------------
    def line(self, now: float, finished: bool = False) -> str:
        elapsed = max(now - self._start, 1e-9)
        parts = []
        if self.show_counts:
            parts += [f"{self.done:,.0f} {self.unit}", f"{self.done / elapsed:,.0f} {self.unit}/s"]
        if self.total:
            fraction = min(1.0, self.done / self.total)
            parts.append(f"{fraction:.0%}" + (f" (of {self.total:,.0f})" if self.show_counts else ""))
            if not finished and 0 < fraction < 1:
                parts.append(f"about {_seconds(elapsed * (1 - fraction) / fraction)} left")
        parts.append(f"{'done in' if finished else 'after'} {_seconds(elapsed)}")
        return f"{self.what}: " + ", ".join(parts)


def _seconds(s: float) -> str:
    if s < 120:
        return f"{s:.0f}s"
    return f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"
