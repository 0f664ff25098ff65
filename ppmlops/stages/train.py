"""train: Opacus DP-SGD on Ray Train workers under the run's privacy filter.

With a Ray job server configured the stage runs as a Ray job (`python -m ppmlops.training`) and
this process only follows it (and imports neither torch nor Ray Train); otherwise this process
is the Ray driver.
"""

from __future__ import annotations

from ppmlops.run.records import TrainRecord
from ppmlops.stages.context import RunContext, timed


@timed
def run(ctx: RunContext) -> TrainRecord:
    if ctx.settings.ray_jobs_url:
        from ppmlops.training.jobs import train_as_ray_job

        return train_as_ray_job(ctx)
    from ppmlops.training.driver import train_here

    return train_here(ctx)
