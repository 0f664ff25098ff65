"""Per-epoch progress lines from rank 0 to whoever follows the run: a file in the run folder.

Rank 0 may run on another node than the task that started the run; both see PPMLOPS_HOME (shared
storage on a cluster), so the lines go to `<run>/progress.log` and the driver follows that file
into its own log. Ray's internal worker output stays in Ray's logs. The lines hold only public
values (settings, epsilon used, noisy signals, the tuner's reason).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from ppmlops.run.store import EPOCHS_FILE, PROGRESS_FILE  # noqa: F401  (names in the run folder are RunStore's)

# Beside it, one JSON line per finished epoch for the driver to log to MLflow while training runs
# (ppmlops.registry.live_epochs): the worker itself never needs to reach MLflow.
# What an epoch line holds, all public (they are train.json's history too): the settings, the
# epsilon used so far, and the noisy signals, None when the tuner released none. Never an exact
# metric on private rows.
EPOCH_KEYS = ("noise_multiplier", "max_grad_norm", "learning_rate", "epsilon_used", "sample_rate",
              "holdout_accuracy_noisy", "clipped_fraction_noisy")


def append(path: str | Path, line: str) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line.rstrip("\n") + "\n")


def epochs_path(progress_path: str | Path) -> Path:
    return Path(progress_path).with_name(EPOCHS_FILE)


def append_epoch(progress_path: str | Path, record: dict) -> None:
    """Rank 0's line for one finished epoch, beside the progress file."""
    append(epochs_path(progress_path), json.dumps({"epoch": record["epoch"], **{k: record.get(k) for k in EPOCH_KEYS}}))


@contextlib.contextmanager
def followed(path: str | Path, emit: Callable[[str], None], poll_s: float = 0.5,
             quiet_after_s: float | None = None) -> Iterator[None]:
    """Emit every line appended to `path` while the block runs (and the last ones after it).

    With `quiet_after_s`, a "still working" line is emitted each time that long passes with no new
    line: a task log that stops for minutes cannot otherwise tell a slow start from a hung one.
    """
    path = Path(path)
    stop = threading.Event()
    offset = path.stat().st_size if path.exists() else 0
    started = last = time.monotonic()

    def drain() -> None:
        nonlocal offset, last
        if not path.exists():
            return
        with open(path, encoding="utf-8") as fh:
            fh.seek(offset)
            text = fh.read()
        complete = text[: text.rfind("\n") + 1]
        offset += len(complete.encode("utf-8"))
        for line in complete.splitlines():
            emit(line)
            last = time.monotonic()

    def loop() -> None:
        nonlocal last
        while not stop.wait(poll_s):
            drain()
            now = time.monotonic()
            if quiet_after_s is not None and now - last >= quiet_after_s:
                emit(f"still working: no progress line for {now - last:.0f} s ({now - started:.0f} s since training started)")
                last = now

    thread = threading.Thread(target=loop, name="ppmlops-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        drain()
