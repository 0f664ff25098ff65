"""train: Opacus DP-SGD on Ray Train workers under the run's privacy filter.

With a Ray job server configured the stage runs as a Ray job (`python -m ppmlops.training`) and
this process only follows it (and imports neither torch nor Ray Train); otherwise this process
is the Ray driver. Either way this process, not the job nor a worker, logs each epoch to MLflow
as it ends (ppmlops.registry.live_epochs): only the task that runs the stage needs MLflow access.
"""

from __future__ import annotations

from ppmlops.registry import tracking
from ppmlops.registry.live_epochs import logged_live
from ppmlops.run.records import TrainRecord
from ppmlops.run.context import RunContext
from ppmlops.stages.context import timed


@tracking.tracked  # the epochs not logged live, and the record's summary
@timed
def run(ctx: RunContext) -> TrainRecord:
    with logged_live(ctx):
        if ctx.settings.ray_jobs_url:
            from ppmlops.training.jobs import train_as_ray_job

            return train_as_ray_job(ctx)
        from ppmlops.training.driver import train_here

        return train_here(ctx)
