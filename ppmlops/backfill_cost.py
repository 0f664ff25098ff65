"""What a backfill will cost, before it starts: the runs it makes, the privacy blocks each reads,
and how many of them the dataset's lifetime budget still holds.

Airflow's backfill form says how many runs a date range makes, not what they spend. This answers
from public facts only (the spec, the schedule, the ledger's charges): each run is priced at the
pipeline's last run (what the ledger charged it, counts included), or, before any run, at the
spec's run epsilon on its declared row count (the curve the ledger fixes its accounting order
from). Runs are taken oldest first, as a backfill starts them; a run fits while every block its
window reads still holds one more such run at the dataset's order, worst partition deciding.

An estimate, and says so: a run is sized when it plans, to what is left then (unlocked shares and
sharing between pipelines included, ppmlops.privacy.ledger.block_rooms), so a run marked as not
fitting may still train, smaller, or be refused by the policy's minimum; one marked as fitting
costs at most the basis when its cap is the spec's.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

import numpy as np
from pydantic import BaseModel

from ppmlops.privacy.accountant import ORDERS
from ppmlops.privacy.blocks import as_utc
from ppmlops.privacy.ledger import HOLDOUT, TRAIN, Ledger
from ppmlops.privacy.lifetime import LifetimeBudget, expected_budget, typical_run_curve
from ppmlops.spec import PipelineSpec
from ppmlops.window import DataInterval

# A range that makes more runs than this is refused: a page lists each one.
MAX_RUNS = 1000


class BackfillRun(BaseModel):
    interval_start: datetime
    interval_end: datetime
    blocks: list[str]
    fits: bool


class BlockCost(BaseModel):
    block: str
    share_used: float  # of its lifetime budget, now (worst partition)
    runs_reading: int  # runs of this backfill whose window reads it
    runs_it_holds: int | None  # more runs at the basis' cost it holds (None: the basis costs nothing here)


class BackfillCost(BaseModel):
    pipeline: str
    dataset_id: str
    run_epsilon: float  # the most a run may spend (the trigger form's cap may ask for less)
    basis: str  # what each run is priced at
    runs: list[BackfillRun]
    blocks: list[BlockCost]

    @property
    def fitting(self) -> int:
        return sum(r.fits for r in self.runs)

    def verdict(self) -> str:
        n = len(self.runs)
        if n == 0:
            return "this range makes no run: no interval of the schedule starts in it and has ended"
        if self.fitting == n:
            return f"all {n} runs fit in what is left of the dataset's lifetime budget"
        return (f"{self.fitting} of the {n} runs fit; the other {n - self.fitting} will be sized down to what is "
                "left when they plan, or refused by the policy when that is below its minimum")


def intervals(spec: PipelineSpec, start: datetime, end: datetime, now: datetime | None = None) -> list[DataInterval]:
    """The data intervals a backfill of [start, end] makes (Airflow's rule: each interval whose
    start is in the range and that has ended), oldest first."""
    from airflow.timetables.base import TimeRestriction
    from airflow.timetables.interval import CronDataIntervalTimetable

    if spec.schedule is None or spec.schedule.startswith("@once") or spec.schedule == "@continuous":
        return []
    now = now or datetime.now(timezone.utc)
    table = CronDataIntervalTimetable(spec.schedule, timezone="UTC")
    restriction = TimeRestriction(earliest=as_utc(start), latest=as_utc(end), catchup=True)
    out: list[DataInterval] = []
    last = None
    while len(out) <= MAX_RUNS:
        info = table.next_dagrun_info(last_automated_data_interval=last, restriction=restriction)
        if info is None or info.data_interval.end > now:
            break
        last = info.data_interval
        out.append(DataInterval(last.start, last.end))
    if len(out) > MAX_RUNS:
        raise ValueError(f"the range makes more than {MAX_RUNS} runs: estimate a shorter one")
    return out


def estimate(spec: PipelineSpec, ledger: Ledger | None, wanted: list[DataInterval]) -> BackfillCost:
    """The cost of backfilling `wanted`; `ledger` None: a ledger that does not exist yet (nothing charged)."""
    registered = ledger.budget(spec.dataset.id) if ledger is not None else None
    budget = registered or expected_budget(spec)
    basis, cost = _basis(spec, ledger if registered else None, budget)
    calendar = budget.calendar
    lookback = spec.dataset.window.lookback if spec.dataset.window else None
    per_run = [tuple(calendar.touching(i.start if lookback is None else i.end - lookback, i.end)) for i in wanted]
    touched = sorted({b for blocks in per_run for b in blocks})
    curves = ledger.block_curves(spec.dataset.id, touched) if registered else {}
    holds = {b: _holds(budget, curves.get(b, {}), cost) for b in touched}
    left = dict(holds)
    runs = []
    for i, blocks in zip(wanted, per_run):
        fits = all(left[b] is None or left[b] > 0 for b in blocks)
        if fits:
            left.update({b: left[b] - 1 for b in blocks if left[b] is not None})
        runs.append(BackfillRun(interval_start=i.start, interval_end=i.end, blocks=list(blocks), fits=fits))
    blocks = [BlockCost(block=b, share_used=budget.share_used(curves.get(b, {})),
                        runs_reading=sum(b in r for r in per_run), runs_it_holds=holds[b]) for b in touched]
    return BackfillCost(pipeline=spec.name, dataset_id=spec.dataset.id, run_epsilon=spec.privacy.run_epsilon,
                        basis=basis, runs=runs, blocks=blocks)


def _holds(budget: LifetimeBudget, charged: dict[str, np.ndarray], cost: dict[str, np.ndarray]) -> int | None:
    """How many more runs of `cost` fit in a block charged `charged` (None: the cost is nothing)."""
    fits = [math.floor(budget.remaining_rdp(charged, p) / float(c[budget.index]))
            for p, c in cost.items() if float(c[budget.index]) > 0]
    return max(0, min(fits)) if fits else None


def _basis(spec: PipelineSpec, ledger: Ledger | None, budget: LifetimeBudget) -> tuple[str, dict[str, np.ndarray]]:
    """What a run costs: the pipeline's last charged run, else the spec's run on its declared rows."""
    runs = [r for r in ledger.pipeline_runs(spec.dataset.id) if r.pipeline == spec.name] if ledger else []
    for r in reversed(runs):
        charged = ledger.charged_curves(spec.dataset.id, r.run_id)
        if any(float(c[budget.index]) > 0 for c in charged.values()):
            return f"the pipeline's last run, {r.run_id} (its charges, counts included)", charged
    p, rows = spec.privacy, spec.dataset.expected_rows or 10_000
    curve = typical_run_curve(p.run_epsilon, p.delta, rows, spec.training.batch_size, spec.training.epochs)
    return (f"no run of this pipeline yet: a run at its run_epsilon {p.run_epsilon:g} on "
            f"{rows} rows{'' if spec.dataset.expected_rows else ' (dataset.expected_rows not given)'}, "
            "training rows only", {TRAIN: curve, HOLDOUT: np.zeros(len(ORDERS))})


__all__ = ["BackfillCost", "BackfillRun", "BlockCost", "estimate", "intervals"]
