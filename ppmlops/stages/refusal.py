"""How a stage refuses a run: one rule, kept in one place.

The Refusal record says why (the dashboard and the model card read it), MLflow's copy of the run
is brought up to date so that its tracking UI shows the refusal too, and then the stage's error
is raised, which fails the Airflow task.
"""

from __future__ import annotations

from typing import NoReturn

from ppmlops.db import DatabaseUnavailable
from ppmlops.registry import tracking
from ppmlops.run.context import RunContext
from ppmlops.run.records import Refusal


def refuses(err: BaseException) -> bool:
    """Whether a stage's error refuses the run. A database that is down for now (a server down, a
    lock held: DatabaseUnavailable, transient) refuses nothing: the task fails for Airflow to
    retry, and a Refusal record would outlive the retry that passes and mark the run refused."""
    return not (isinstance(err, DatabaseUnavailable) and err.transient)


def refuse(ctx: RunContext, stage: str, reasons: list[str], error: BaseException, *,
           decision_id: str | None = None) -> NoReturn:
    """Record that `stage` refuses the run for `reasons` (the policy decision's id when a decision
    refused), sync the run to MLflow without failing on it, and raise `error`."""
    ctx.store.write(Refusal(stage=stage, reasons=list(reasons), decision_id=decision_id))
    tracking.sync_quietly(ctx)
    raise error
