"""Libraries' own log records into files of the run, so a task's log holds what a person reads.

Ray's driver-side records (token and state-API warnings, worker-group lines) and Great
Expectations' (decorator INFO lines, about 100 KB a validation) go at their own levels to
`<run>/private/logs/ray.log` and `gx.log`: inside the run folder, since a library's line may
quote a value. Opacus runs in the Ray workers, whose output stays in Ray's own worker logs
(`$TMPDIR/ppmlops-ray-<uid>/session_*/logs` on the embedded runtime, a folder only this user can
enter: ppmlops.training.launch.ray_temp_dir). The task log keeps the stage lines, the per-epoch
lines and the summary; PPMLOPS_VERBOSE=1 (./dev demo --verbose) leaves every record where it was
and forwards the workers' output, in which nothing counts a private search's trials (the
workers quiet Ray Train's per-report lines: ppmlops.training.ray_worker).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Iterator

LIBRARIES = {"ray": ("ray",), "gx": ("great_expectations",)}


def verbose() -> bool:
    return os.environ.get("PPMLOPS_VERBOSE", "") not in ("", "0")


@contextlib.contextmanager
def redirected(path: Path, names: tuple[str, ...], level: int = logging.INFO) -> Iterator[None]:
    """While the block runs, records of the loggers `names` go to `path` only."""
    if verbose():
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in names]
    saved = [(lg.handlers[:], lg.propagate, lg.level) for lg in loggers]
    for lg in loggers:
        lg.handlers, lg.propagate = [handler], False
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, (handlers, propagate, old) in zip(loggers, saved):
            lg.handlers, lg.propagate = handlers, propagate
            lg.setLevel(old)
        handler.close()


def library_logs(private_dir: Path, library: str):
    return redirected(Path(private_dir) / "logs" / f"{library}.log", LIBRARIES[library])
