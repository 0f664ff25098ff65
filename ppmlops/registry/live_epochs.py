"""Each epoch's public values logged to the run's MLflow run while training runs.

Rank 0 appends one JSON line per finished epoch to the run folder's epochs.jsonl
(ppmlops.training.progress); the process that follows the training (the train stage's driver,
whether it trains in process, on Ray Train or as a Ray job) logs each line as it appears, so the
worker never needs MLflow access or credentials. Tracking never stops training: a failed call is
logged once as a warning and the rest of the epochs are logged by the train stage's sync at the
end (ppmlops.registry.tracking.log_epochs skips those already there).
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Iterator

from ppmlops.registry import backend, tracking
from ppmlops.run.context import RunContext
from ppmlops.run.records import TrackedRun
from ppmlops.training.progress import followed

log = logging.getLogger(__name__)


@contextlib.contextmanager
def logged_live(ctx: RunContext, poll_s: float = 0.5) -> Iterator[None]:
    """Log every epoch line appended while the block runs (the MLflow run was opened at plan)."""
    tracked = ctx.store.read_optional(TrackedRun)
    if tracked is None:  # no MLflow run to log to: the train stage's sync opens one and logs them all
        yield
        return
    uri = backend.resolve_uri(ctx.settings.registry_dir)
    failed = False

    def emit(line: str) -> None:
        nonlocal failed
        if failed:
            return
        try:
            epoch = json.loads(line)
            with backend.network_errors(uri):
                tracking.log_metrics(backend.client(uri), tracked.mlflow_run_id, tracking.epoch_metrics(epoch))
        except Exception as err:  # noqa: BLE001 - any tracking failure; training goes on
            failed = True
            log.warning("could not log run %s's epochs to MLflow as they ran (%s); they are logged when training "
                        "ends", ctx.run_id, backend.scrub(str(err)))

    with followed(ctx.store.epochs_path, emit, poll_s):
        yield
