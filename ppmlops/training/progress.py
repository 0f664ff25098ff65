"""Per-epoch progress lines from rank 0 to whoever follows the run: a file in the run folder.

Rank 0 may run on another node than the task that started the run; both see PPMLOPS_HOME (shared
storage on a cluster), so the lines go to `<run>/progress.log` and the driver follows that file
into its own log. Ray's internal worker output stays in Ray's logs. The lines hold only public
values (settings, epsilon used, noisy signals, the tuner's reason).
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Callable, Iterator

PROGRESS_FILE = "progress.log"


def append(path: str | Path, line: str) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line.rstrip("\n") + "\n")


@contextlib.contextmanager
def followed(path: str | Path, emit: Callable[[str], None], poll_s: float = 0.5) -> Iterator[None]:
    """Emit every line appended to `path` while the block runs (and the last ones after it)."""
    path = Path(path)
    stop = threading.Event()
    offset = path.stat().st_size if path.exists() else 0

    def drain() -> None:
        nonlocal offset
        if not path.exists():
            return
        with open(path, encoding="utf-8") as fh:
            fh.seek(offset)
            text = fh.read()
        complete = text[: text.rfind("\n") + 1]
        offset += len(complete.encode("utf-8"))
        for line in complete.splitlines():
            emit(line)

    def loop() -> None:
        while not stop.wait(poll_s):
            drain()

    thread = threading.Thread(target=loop, name="ppmlops-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        drain()
