"""How a stage's record is kept (`timed`). The RunContext every stage gets lives in
ppmlops.run.context only: one home, one import path."""

from __future__ import annotations

import time
from functools import wraps
from typing import Callable, TypeVar

from ppmlops.run.context import RunContext
from ppmlops.run.records import Record, RunIdentity

R = TypeVar("R", bound=Record)


def _identify(ctx: RunContext) -> None:
    """Write the run's identity (its Airflow run id, pipeline, DAG, dataset) before its first
    record, so the dashboard names even a run that stopped at ingest."""
    store = ctx.store
    if not store.path_of(RunIdentity).exists():
        store.write(RunIdentity(run_id=ctx.run_id, pipeline=ctx.spec.name, dag_id=ctx.spec.dag_id,
                                dataset_id=ctx.spec.dataset.id))


def timed(fn: Callable[[RunContext], R]) -> Callable[[RunContext], R]:
    """Record a stage's wall time in its record and write the record."""

    @wraps(fn)
    def wrapper(ctx: RunContext) -> R:
        start = time.perf_counter()
        _identify(ctx)
        record = fn(ctx)
        return ctx.store.write(record.model_copy(update={"seconds": round(time.perf_counter() - start, 3)}))

    return wrapper
