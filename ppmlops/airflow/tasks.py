"""What each task of a retraining DAG does around its stage: context, errors, logs, XCom.

A problem the user must fix (a spec, the data, a policy refusal) fails the task at once; a fault
that may pass (Ray, the database) is raised as is, so Airflow retries it. Retrying is safe: every
release is idempotent per run, and training resumes from its checkpoint.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace

from ppmlops import pipeline, settings as settings_mod
from ppmlops.airflow import connections, variables
from ppmlops.window import DataInterval
from ppmlops.data.reading import SourceChanged
from ppmlops.db import DatabaseUnavailable
from ppmlops.registry.backend import TrackingUnavailable
from ppmlops.errors import DataError, PpmlopsError, TrainingError
from ppmlops.run.records import Record
from ppmlops.spec import PipelineSpec
from ppmlops.run.context import RunContext, RunParams, RunTrigger

stages_log = logging.getLogger("ppmlops.run")


def data_interval(ctx) -> DataInterval | None:
    """The run's data interval; a manual run's is empty in Airflow 3: then it reaches up to its end."""
    start, end = ctx.get("data_interval_start"), ctx.get("data_interval_end")
    if end is None:
        return None
    return DataInterval(start if start is not None and start < end else None, end)


def run_context(spec: PipelineSpec) -> RunContext:
    """This task's RunContext: its run, Params, data interval, and settings with Airflow's say."""
    from airflow.sdk import get_current_context

    ctx = get_current_context()
    try:
        variables.apply_at_task_start()  # settings changed in Airflow since the scheduler started
        settings = connections.apply(settings_mod.load())
        settings = replace(settings, source_urls=connections.source_urls(spec))
    except (ValueError, PpmlopsError) as err:  # a Variable, connection or setting that cannot be used
        raise failure(err) from err
    params = RunParams.from_mapping(spec, dict(ctx["params"]))
    return RunContext(spec=spec, run_id=ctx["run_id"], params=params, settings=settings,
                      interval=data_interval(ctx), trigger=run_trigger(ctx))


def run_trigger(ctx) -> RunTrigger:
    """How Airflow started this run (its type, and for a scheduled run how late it started)."""
    run = ctx.get("dag_run")
    if run is None:
        return RunTrigger()
    kind = getattr(run.run_type, "value", run.run_type)
    return RunTrigger.of_airflow(str(kind), run.start_date, run.run_after, ctx.get("data_interval_start"),
                                 ctx.get("data_interval_end"), cleared=bool(getattr(run, "clear_number", 0)))


def failure(err: Exception) -> Exception:
    """The exception a task raises for `err`: retried for faults that may pass, else failed at once."""
    from airflow.sdk.exceptions import AirflowFailException

    if retried(err):
        return err
    return AirflowFailException(str(err))


def retried(err: BaseException) -> bool:
    """Whether Airflow should try the task again: only for faults a retry can pass (a worker lost,
    a server down or a lock held); never for a corrupted database file, a full disk or bad input."""
    if isinstance(err, (DatabaseUnavailable, TrackingUnavailable)):
        return err.transient
    if isinstance(err, SourceChanged):  # a file still being written: complete at a later try
        return True
    if isinstance(err, DataError):  # a SQL source's server down or connection dropped: transient
        return bool(getattr(err, "transient", False))
    return isinstance(err, TrainingError)


def log_and_hand_on(name: str, record: Record) -> dict:
    """Log the stage's line and return its public record as the task's XCom."""
    stages_log.info(pipeline.stage_line(name, record))
    return record.model_dump(mode="json")


def run_stage(spec: PipelineSpec, name: str, ctx: RunContext | None = None) -> dict:
    """Run a stage in this task (with `ctx` when the caller has built it) and hand its record on."""
    try:
        record = pipeline.STAGE_RUNNERS[name](ctx or run_context(spec))
    except PpmlopsError as err:
        if retried(err):
            raise
        raise failure(err) from err
    return log_and_hand_on(name, record)


def finish(spec: PipelineSpec) -> dict:
    """The run's summary: a block in the last task's log and the XCom `summary`."""
    from airflow.sdk import get_current_context

    summary = pipeline.summary(run_context(spec))
    logging.getLogger("ppmlops.run.summary").info("\n%s", pipeline.format_summary(summary))
    get_current_context()["ti"].xcom_push(key="summary", value=json.loads(json.dumps(summary, default=str)))
    return summary
