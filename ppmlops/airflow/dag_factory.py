"""One retraining DAG per pipeline spec: what a project's DAG file builds with `pipeline_dags()`.

Thin wiring only: each task calls one stage of ppmlops.pipeline. The specs are the YAML files in
`$PPMLOPS_PIPELINES`, by default the project's `dags/pipelines/` (ppmlops.settings: the source
checkout, `$PPMLOPS_PROJECT_ROOT`, or the Airflow home a project was set up in by `ppmlops init`).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

import pendulum
from airflow.sdk import CronDataIntervalTimetable, dag, task
from airflow.sdk.exceptions import AirflowFailException

from ppmlops.airflow import trigger_form
from ppmlops.airflow.approval import APPROVAL_EXTRA_TRIES, DeployApproval
from ppmlops.airflow.ray_job import TrainOperator
from ppmlops.airflow.tasks import finish, run_context, run_stage
from ppmlops.run.records import ApprovalRecord, GateRecord
from ppmlops.spec import PipelineSpec, dag_id_of, load_each, pipelines_folder
from ppmlops.stages import gate as gate_stage

log = logging.getLogger(__name__)


def pipeline_dags(folder: Path | None = None) -> dict:
    """dag_id -> DAG for every spec in `folder` (default: pipelines_folder()); an invalid spec becomes
    a DAG that says what is wrong. A DAG file registers them with `globals().update(pipeline_dags())`."""
    # The DAGs belong to the calling DAG file, as Airflow's @dag records them when called there:
    # dag.test() and the UI's code view read it (the DAG processor sets it to the same file).
    dag_file = sys._getframe(1).f_globals.get("__file__")
    built = {}
    for dag_id, (path, spec, error) in _load_all(folder or pipelines_folder()).items():
        built[dag_id] = _dag_for(dag_id, path, spec, error)
        if dag_file:
            built[dag_id].fileloc = os.path.abspath(dag_file)
    return built


def _timetable(schedule: str | None):
    """A cron expression or preset as a schedule of data intervals: each run covers [the previous
    tick, its own tick) and reads that window. (Airflow 3's default for a cron string is a trigger
    timetable, whose runs have an empty interval.)"""
    if schedule is None or schedule in ("@once", "@continuous"):
        return schedule
    return CronDataIntervalTimetable(schedule, timezone=pendulum.UTC)


def build_dag(spec: PipelineSpec):
    @dag(
        dag_id=spec.dag_id,
        description=spec.description or None,
        schedule=_timetable(spec.schedule),
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,  # one scheduled run at a time (backfills take --max-active-runs; grants keep any safe)
        tags=["ppmlops", spec.dataset.id, spec.dataset.regulation],
        # Titles, descriptions and the spec's limits (refused, not clamped); no figure from the
        # ledger (it would make a new DAG version whenever a run moved it: ppmlops.airflow.trigger_form).
        params=trigger_form.params(spec),
        # Retries are safe: every release is idempotent per run and training resumes from its
        # checkpoint; run_stage fails a problem the user must fix at once, without them.
        default_args={"retries": spec.retries.count, "retry_delay": spec.retries.delay},
        doc_md=trigger_form.doc_md(spec),
    )
    def retrain():
        @task
        def ingest():
            return run_stage(spec, "ingest")

        @task
        def validate():
            return run_stage(spec, "validate")

        @task
        def assess():
            return run_stage(spec, "assess")

        @task
        def plan():
            return run_stage(spec, "plan")

        @task
        def evaluate():
            return run_stage(spec, "evaluate")

        @task.branch
        def gate():
            return gate_stage.next_task(GateRecord.model_validate(run_stage(spec, "gate")))

        # Reached from the gate (allow) or from a person's approval: one success is enough.
        @task(trigger_rule="none_failed_min_one_success")
        def deploy():
            out = run_stage(spec, "deploy")
            finish(spec)
            return out

        @task
        def withhold():
            ctx = run_context(spec)
            decision = ctx.store.read(GateRecord)
            finish(spec)
            # Fail the run so a denied or unapproved model is visible, not a quiet green run.
            raise AirflowFailException(f"deployment {decision.outcome} by policy: " + "; ".join(decision.reasons))

        @task
        def rejected():
            ctx = run_context(spec)
            answer = ctx.store.read(ApprovalRecord)
            finish(spec)
            raise AirflowFailException(f"deployment rejected by {answer.by} at {answer.at}")

        decided = ingest() >> validate() >> assess() >> plan() >> TrainOperator(task_id="train", spec=spec) >> evaluate() >> gate()
        # Airflow 3.3's LocalExecutor can report a deferring task "finished" before its deferral is
        # recorded, and the scheduler then retries it ("state attribute is running"); under load
        # that happens to the approval's deferral now and then. Asking again is harmless (nobody
        # had answered), so the approval gets a few tries more than the spec's.
        approve = DeployApproval(task_id="approve", spec=spec, retries=spec.retries.count + APPROVAL_EXTRA_TRIES)
        deployed = deploy()
        decided >> [deployed, withhold(), approve]
        approve >> [deployed, rejected()]

    return retrain()


class InvalidPipelineSpecs(Exception):
    """Raised by a project's spec-errors DAG file (dags/ppmlops_spec_errors.py), so that Airflow
    lists the invalid specs under Import Errors."""


def report_spec_errors(folder: Path | None = None) -> None:
    """Raise InvalidPipelineSpecs naming every invalid spec in `folder` (default: pipelines_folder()).

    Airflow lists import errors per DAG *file*, and one error marks every DAG of that file stale
    (see invalid_spec_dag), so the DAG file that builds the pipelines must never raise. A second
    DAG file that builds no DAG calls this: the errors show in Airflow's Import Errors under its
    name, and the pipelines' own file, with its placeholder for each bad spec, stays healthy.
    """
    folder = folder or pipelines_folder()
    problems = []
    for path, spec, error in _load_all(folder, log_errors=False).values():
        if error is None and (why := _schedule_problem(spec)):
            error = f"{path}: {why}"
        if error is not None:
            problems.append(f"- {error}")
    if problems:
        raise InvalidPipelineSpecs(
            f"{len(problems)} invalid pipeline spec(s) in {folder}; each one's DAG fails until its file is fixed "
            f"(`ppmlops spec check FILE`), and the other pipelines run as usual:\n" + "\n".join(problems))


def _schedule_problem(spec: PipelineSpec) -> str | None:
    """Why Airflow cannot read the spec's schedule, or None (what _dag_for finds by building it)."""
    timetable = _timetable(spec.schedule)
    if timetable is None or isinstance(timetable, str):
        return None
    try:
        timetable.validate()
    except Exception as err:  # noqa: BLE001 - AirflowTimetableInvalid, named in the message
        return (f"schedule {spec.schedule!r} is not a schedule Airflow reads (a cron expression, a preset such as "
                f"@daily, or null): {type(err).__name__}: {err}")
    return None


def invalid_spec_dag(dag_id: str, path: Path, message: str):
    """What an invalid spec becomes: a DAG that says what is wrong and fails with it when run.

    Airflow 3.3 records an import error per DAG *file* and marks every DAG of a file that has one
    stale (dag_processing/collection.py, _update_import_errors), so raising for one bad spec, or
    any per-DAG error, would take every pipeline of this file off the scheduler. Instead the bad
    spec keeps its DAG id (its `name:` when readable), loses its schedule, and shows the error in
    its description, its docs and the log of its one task; the DAG processor's log has it too, and
    Import Errors lists it under the project's other DAG file (report_spec_errors).
    """

    @dag(
        dag_id=dag_id,
        description=f"INVALID pipeline spec {path.name}: fix the file; see Docs or run the DAG for the error",
        doc_md=f"### Invalid pipeline spec\n\n`{path}` could not be loaded; this pipeline does not run "
               f"until it is fixed (`ppmlops spec check {path}`).\n\n```\n{message}\n```\n",
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        tags=["ppmlops", "invalid-spec"],
    )
    def invalid():
        @task(task_id="invalid_spec", retries=0)
        def report():
            raise AirflowFailException(message)

        report()

    return invalid()


def _load_all(folder: Path, log_errors: bool = True) -> dict[str, tuple[Path, PipelineSpec | None, str | None]]:
    """dag_id -> (file, spec or None, error or None) for every spec in `folder`, each on its own."""
    out: dict[str, tuple[Path, PipelineSpec | None, str | None]] = {}
    for r in load_each(sorted(folder.glob("*.yaml"))):
        error = str(r.error) if r.error is not None else None
        dag_id = dag_id_of(r.name) if r.name else None
        if dag_id in out:
            error = (f"{r.path}: pipeline name {r.name!r} is already used by {out[dag_id][0]}; "
                     f"each spec needs its own name (it is the DAG id)")
            dag_id = None
        if dag_id is None:
            dag_id = "ppmlops_invalid_" + re.sub(r"[^A-Za-z0-9_.-]", "_", r.path.stem)
        if error is not None:
            if log_errors:
                log.error("pipeline spec %s is invalid; DAG %s will fail until it is fixed:\n%s", r.path, dag_id, error)
            out[dag_id] = (r.path, None, error)
        else:
            out[dag_id] = (r.path, r.spec, None)
    return out


def _dag_for(dag_id: str, path: Path, spec: PipelineSpec | None, error: str | None):
    if spec is not None:
        why = _schedule_problem(spec)  # as report_spec_errors words it
        if why is None:
            try:
                built = build_dag(spec)
                built.validate()  # what Airflow checks when it bags the DAG
                return built
            except Exception as err:  # noqa: BLE001 - only this spec fails
                why = f"Airflow cannot build the DAG: {type(err).__name__}: {err}"
                _forget(spec.dag_id)
        error = f"{path}: {why}"
        log.error("pipeline spec %s: %s", path, error)
    return invalid_spec_dag(dag_id, path, error or f"{path}: invalid pipeline spec")


def _forget(dag_id: str) -> None:
    """Drop a DAG that failed to build from Airflow's auto-registration (the @dag decorator
    registers it on construction), so the DAG processor does not bag it next to its placeholder."""
    from airflow.sdk.definitions._internal.contextmanager import DagContext

    for entry in [e for e in DagContext.autoregistered_dags if e[0].dag_id == dag_id]:
        DagContext.autoregistered_dags.discard(entry)
