"""The train task on a Ray cluster's job server, deferred: no worker slot held while it trains.

`TrainOperator` submits the run's training job (or finds the one an earlier attempt left
running), then defers to `RayJobTrigger`, which follows the job in the triggerer: it streams the
job's log (the per-epoch lines with epsilon charged) into the task's log and fires when the job
ends. The task then resumes on a worker to read the job's record. Marking the deferred task
failed or clearing it stops the job (`RayJobTrigger.on_kill`); so does killing the task while it
submits (`TrainOperator.on_kill`). Without a job server the operator trains in its own process
as the Ray driver, as the other stages run.

The shape is astro-provider-ray's SubmitRayJob and RayJobTrigger, which target Airflow 2.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

from airflow.sdk import BaseOperator
from airflow.triggers.base import BaseTrigger, TriggerEvent

from ppmlops.errors import PpmlopsError, TrainingError
from ppmlops.spec import PipelineSpec
from ppmlops.training import jobs


class RayJobTrigger(BaseTrigger):
    """Follow one Ray job to its end; the event carries its final status."""

    def __init__(self, job_id: str, jobs_url: str, poll_s: float = 2.0):
        super().__init__()
        self.job_id, self.jobs_url, self.poll_s = job_id, jobs_url, poll_s

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"job_id": self.job_id, "jobs_url": self.jobs_url, "poll_s": self.poll_s})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            client = await asyncio.to_thread(jobs.client_for, self.jobs_url)
            await self._stream_log(client)
            status = await self._until_terminal(client)
        except Exception as err:  # noqa: BLE001 - the task says what went wrong, with the job's id
            yield TriggerEvent({"job_id": self.job_id, "jobs_url": self.jobs_url, "status": "LOST",
                                "error": f"{type(err).__name__}: {err}"})
            return
        yield TriggerEvent({"job_id": self.job_id, "jobs_url": self.jobs_url, "status": status})

    async def _stream_log(self, client) -> None:
        """The job's output, line by line, as it comes (a websocket to the job server)."""
        pending = ""
        try:
            async for chunk in client.tail_job_logs(self.job_id):
                *lines, pending = (pending + chunk).split("\n")
                for line in filter(jobs.forwarded, lines):  # nothing that counts a search's trials
                    self.log.info("[ray job %s] %s", self.job_id, line)
        except Exception as err:  # noqa: BLE001 - a dropped stream only costs the log, not the job
            self.log.warning("[ray job %s] log stream ended early (%s); following its status",
                             self.job_id, type(err).__name__)
        if pending and jobs.forwarded(pending):
            self.log.info("[ray job %s] %s", self.job_id, pending)

    async def _until_terminal(self, client) -> str:
        while True:
            status = jobs.status_of(await asyncio.to_thread(client.get_job_status, self.job_id))
            if status in jobs.TERMINAL:
                return status
            await asyncio.sleep(self.poll_s)

    async def on_kill(self) -> None:
        """A person marked the deferred task failed or cleared it: the job stops too."""
        await asyncio.to_thread(jobs.stop, jobs.JobHandle(self.job_id, self.jobs_url))


class TrainOperator(BaseOperator):
    """The train stage: deferred while a Ray job trains, or run here as the Ray driver."""

    def __init__(self, *, spec: PipelineSpec, **kwargs):
        super().__init__(**kwargs)
        self.spec = spec
        self._handle: jobs.JobHandle | None = None

    def execute(self, context):
        from ppmlops.airflow import tasks

        ctx = tasks.run_context(self.spec)
        if not ctx.settings.ray_jobs_url:
            return tasks.run_stage(self.spec, "train", ctx)
        try:
            self._handle = jobs.start(ctx, echo=self.log.info)
        except PpmlopsError as err:
            raise tasks.failure(err) from err
        self.defer(trigger=RayJobTrigger(self._handle.job_id, self._handle.jobs_url),
                   method_name="execute_complete")

    def execute_complete(self, context, event: dict):
        from ppmlops.airflow import tasks

        ctx = tasks.run_context(self.spec)
        handle = jobs.JobHandle(event["job_id"], event["jobs_url"])
        if event["status"] == "LOST":
            jobs.stop(handle)  # nobody follows it any more; a retry resumes from its checkpoint
            raise TrainingError(f"lost track of Ray job {handle.job_id} on {handle.jobs_url} (asked it to stop): "
                                f"{event.get('error')}")
        try:
            record = jobs.result(ctx, handle, event["status"])
        except PpmlopsError as err:
            raise tasks.failure(err) from err
        ctx.store.write(record)
        return tasks.log_and_hand_on("train", record)

    def on_kill(self) -> None:
        if self._handle is not None:
            jobs.stop(self._handle)
