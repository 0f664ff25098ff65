"""Train through a Ray Jobs submission: the Airflow worker needs neither torch nor a Ray driver.

The task submits ``python -m ppmlops.training REQUEST`` to the cluster's job server
(``PPMLOPS_RAY_JOBS_URL``, the dashboard address such as ``http://ray-head:8265``), streams the
job's log (the per-epoch progress lines) into its own log, and returns the record the job wrote
to the run directory. A job that fails or is stopped fails the task with Ray's message and the
end of the job's log; a task that is killed stops its job.

The run directory and the ledger must be the same for the task and the job: both read
``PPMLOPS_HOME`` (shared storage on a cluster) and ``PPMLOPS_DB_URL``, which are passed on in
the job's runtime environment. Ray Train's storage is the run's ``private/ray`` on that storage
(a private search's progress and K live there): the cluster's operator must keep PPMLOPS_HOME,
and the Ray nodes' own session folders (``/tmp/ray`` unless started with ``--temp-dir``), out of
reach of anyone but the Airflow and Ray service users.

What reaches the task log: the job's output, in which the workers log nothing that counts a
search's trials (ppmlops.training.ray_worker); `forwarded` also drops Ray Train's per-report lines
in case a Ray version logs them elsewhere.
"""

from __future__ import annotations

import os
import re
import shlex
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ppmlops.errors import TrainingError
from ppmlops.run.records import TrainRecord
from ppmlops.run.store import REQUEST_FILE

if TYPE_CHECKING:
    from ppmlops.run.context import RunContext

# Passed to the job so that it writes where this task reads; Ray sets RAY_ADDRESS for the job
# itself, and PPMLOPS_RAY_JOBS_URL stays out so the job trains in place.
# Nothing secret goes here: the dashboard shows a job's runtime environment.
FORWARDED_ENV = ("PPMLOPS_HOME", "PPMLOPS_DB_URL", "PPMLOPS_RANDOMNESS", "PPMLOPS_PROJECT_ROOT")
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
# Ray Train's lines that count reports or checkpoints: one per trial would tell a search's K.
_COUNTING = re.compile(r"Reporting training result \d|Checkpoint successfully created at|current_report_index")


def forwarded(line: str) -> bool:
    """Whether a line of the job's log may go to the task log."""
    return _COUNTING.search(line) is None


def submission_id(ctx: "RunContext") -> str:
    """A stable id per run, so a retried task finds the job its last attempt started."""
    return f"ppmlops-{ctx.spec.name}-{ctx.run_dir.name}"


def write_request(ctx: "RunContext") -> str:
    """Everything the job needs to rebuild this run's context; the job reads it from shared storage."""
    from dataclasses import asdict

    path = ctx.store.write_document(REQUEST_FILE, {"spec": ctx.spec.model_dump(mode="json"), "run_id": ctx.run_id,
                                                   "params": asdict(ctx.params)})
    return str(path)


def client_for(url: str):
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(url)
    except Exception as e:  # ConnectionError, or RuntimeError for a server that is not Ray's
        raise TrainingError(f"cannot reach the Ray job server at {url!r} (the Airflow connection "
                            f"ppmlops_ray, or PPMLOPS_RAY_JOBS_URL): {type(e).__name__}: {e}") from None


def status_of(job_or_status) -> str:
    status = getattr(job_or_status, "status", job_or_status)
    return str(getattr(status, "value", status))


def _earlier_attempt(client, base_id: str):
    """The latest job an earlier attempt of this task submitted for the run, if any."""
    mine = [j for j in client.list_jobs()
            if j.submission_id == base_id or (j.submission_id or "").startswith(base_id + "--attempt")]
    return (max(mine, key=lambda j: j.start_time or 0), len(mine)) if mine else (None, 0)


def follow(client, job_id: str, *, echo: Callable[[str], None] = print, poll_s: float = 1.0) -> str:
    """Stream the job's new log text until it ends; return its final status."""
    shown = 0
    while True:
        status = status_of(client.get_job_status(job_id))
        logs = client.get_job_logs(job_id)
        if len(logs) > shown:
            for line in logs[shown:].rstrip("\n").split("\n"):
                if forwarded(line):
                    echo(f"[ray job {job_id}] {line}")
            shown = len(logs)
        if status in TERMINAL:
            return status
        time.sleep(poll_s)


@dataclass(frozen=True)
class JobHandle:
    """The Ray job that trains one run: what a deferred task hands to its trigger."""

    job_id: str
    jobs_url: str


def start(ctx: "RunContext", *, echo: Callable[[str], None] = print) -> JobHandle:
    """Submit the run's training job, or find the one an earlier attempt of the task left running."""
    url = ctx.settings.ray_jobs_url
    client = client_for(url)
    request = write_request(ctx)
    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    env.setdefault("PPMLOPS_HOME", str(ctx.settings.home))
    env.setdefault("PPMLOPS_DB_URL", ctx.settings.db_url)
    base_id = submission_id(ctx)
    earlier, attempts = _earlier_attempt(client, base_id)
    if earlier is not None and status_of(earlier) not in {"FAILED", "STOPPED"}:
        # A retried task follows the job its last attempt left running (or finished).
        echo(f"[run {ctx.run_id}] following Ray job {earlier.submission_id} ({status_of(earlier)}) on {url}")
        return JobHandle(earlier.submission_id, url)
    # A failed attempt's job is not reused: the new one resumes from Ray Train's last
    # checkpoint of the same run (same RunConfig name and storage path).
    ctx.store.path_of(TrainRecord).unlink(missing_ok=True)  # only this job's own record may count
    job_id = client.submit_job(
        entrypoint=f"python -m ppmlops.training {shlex.quote(request)}",
        submission_id=base_id if not attempts else f"{base_id}--attempt{attempts + 1}",
        runtime_env={"env_vars": env}, metadata={"ppmlops_run": ctx.run_id})
    echo(f"[run {ctx.run_id}] training as Ray job {job_id} on {url}")
    return JobHandle(job_id, url)


def stop(handle: JobHandle) -> None:
    """Ask the job to stop; a job server that is gone has nothing left to stop."""
    try:
        client_for(handle.jobs_url).stop_job(handle.job_id)
    except Exception:  # noqa: BLE001 - best effort on the way out of a killed task
        pass


def result(ctx: "RunContext", handle: JobHandle, status: str) -> "TrainRecord":
    """The record the job wrote, or a TrainingError with Ray's message and the end of its log."""
    if status != "SUCCEEDED":
        client = client_for(handle.jobs_url)
        info = client.get_job_info(handle.job_id)
        tail = "\n".join([line for line in client.get_job_logs(handle.job_id).rstrip().splitlines()
                          if forwarded(line)][-15:])
        raise TrainingError(f"Ray job {handle.job_id} {status}: {info.message}\n"
                            f"--- last lines of its log ---\n{tail}")
    if not ctx.store.path_of(TrainRecord).exists():
        raise TrainingError(f"Ray job {handle.job_id} succeeded but wrote no train record at "
                            f"{ctx.store.path_of(TrainRecord)}: do the job and this task share PPMLOPS_HOME?")
    record = ctx.store.read(TrainRecord)
    return record.model_copy(update={"seconds": None,
                                     "ray_job": {"submission_id": handle.job_id, "jobs_url": handle.jobs_url}})


def train_as_ray_job(ctx: "RunContext", *, echo: Callable[[str], None] = print) -> "TrainRecord":
    """Run the train stage as a Ray job, following it from this process (the CLI, `stages.train`).

    Airflow tasks defer to `ppmlops.airflow.ray_job.RayJobTrigger` instead of holding a worker slot.
    """
    handle = start(ctx, echo=echo)
    try:
        status = follow(client_for(handle.jobs_url), handle.job_id, echo=echo)
    except BaseException as e:
        # The task was killed or lost the job server: do not leave the job training unwatched.
        stop(handle)
        if isinstance(e, Exception):
            raise TrainingError(f"lost track of Ray job {handle.job_id} on {handle.jobs_url} (asked it to stop): "
                                f"{type(e).__name__}: {e}") from e
        raise
    return result(ctx, handle, status)
