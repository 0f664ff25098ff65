"""Progress of reading a run's sources, for ingest and the risk scan (issue 30, item 3).

The caller says how it is shown, the readers' loops report each batch:

    with read_progress.shown("ingest: reading the source", public=True, emit=log.info):
        ...  # ppmlops.data.ingest and ppmlops.risk.scan call read_progress.step(n, reader, readers)

`public=True` is for a task log, which people who may not see the data read: it says only the
share of the source read and the time (never a count of private rows: counts leave a run only
noisy). `public=False` is for the data owner's own terminal (`ppmlops risk scan FILE`): rows,
rows/s and the share read. The share comes from the reader itself (the bytes of a CSV read, the
rows of a Parquet or NPZ file against its metadata); a SQL source's is unknown, and only the time
is shown. Nothing is shown when no caller asked (tests, the library).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from typing import Callable, Iterator, Sequence

from ppmlops.progress_display import ProgressDisplay

_current: contextvars.ContextVar[ProgressDisplay | None] = contextvars.ContextVar("read_progress", default=None)


@contextlib.contextmanager
def shown(what: str, *, public: bool, emit: Callable[[str], None] | None = None,
          every_s: float = 5.0) -> Iterator[ProgressDisplay]:
    display = ProgressDisplay(what, total=1.0 if public else None, unit="rows", show_counts=not public,
                              every_s=every_s, emit=emit)
    token = _current.set(display)
    try:
        yield display
    finally:
        _current.reset(token)
        display.close()


def in_task_log(what: str) -> contextlib.AbstractContextManager[ProgressDisplay]:
    """Shown in the task's log, as the train task's progress lines are: public only."""
    return shown(what, public=True, emit=logging.getLogger("ppmlops.progress").info)


def step(index: int, reader, readers: Sequence) -> None:
    """After a batch of reader `index` of `readers`: the display's share read (each source an equal
    part) and, on a terminal, its rows."""
    display = _current.get()
    if display is None:
        return
    fraction = getattr(reader, "fraction_read", lambda: None)()
    share = None if fraction is None else (index + fraction) / max(1, len(readers))
    if not display.show_counts:
        if share is not None:
            display.update(share)
        else:
            display.update(display.done)  # the time alone, periodically
        return
    rows = sum(r.rows_in for r in readers[:index + 1])
    display.update(rows, total=rows / share if share else None)
