"""DPF unlocking and fair sharing of privacy blocks (issue 27, items 3 and 4), through the real
ledger (SQLite) and the real planner: weekly runs with an 8-week lookback that each ask for far
more than a block holds, so that only the unlocking and the pipelines' parts limit them."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from ppmlops.errors import BudgetExceeded
from ppmlops.privacy.accountant import Segment
from ppmlops.privacy.blocks import BlockCalendar, unlock_horizon, unlocked_fraction
from ppmlops.privacy.ledger import HOLDOUT, TRAIN, Charge, Ledger, PipelineRun, sharing_pipelines, charge_curves
from ppmlops.privacy.planning import EpochShape, Room, RunRequest, plan_run, runs_left

DS, DELTA = "events", 1e-5
WEEK = timedelta(days=7)
LOOKBACK = 8 * WEEK
FIRST_END = datetime(2025, 3, 3, tzinfo=timezone.utc)  # a Monday: weeks align with the default origin
GREEDY = 50.0  # a run epsilon far above what any block can give: the room decides


@pytest.fixture()
def ledger(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield ledger
    ledger.close()


def _register(ledger: Ledger, calendar: BlockCalendar):
    return ledger.register_dataset(DS, epsilon_budget=3.0, delta=DELTA, order=8.0, calendar=calendar)


def _run(ledger: Ledger, budget, pipeline: str, run_id: str, end: datetime, lookback=LOOKBACK,
         run_epsilon: float = GREEDY):
    """One run as the stages make it: registered, its count release charged, then planned against
    the rooms the ledger gives and its grant reserved. Returns the plan (BudgetExceeded if none)."""
    cal = budget.calendar
    blocks = list(cal.touching(end - lookback, end)) if cal.blocked else ["all"]
    ledger.register_run(DS, run_id, pipeline, end)
    counts = [Charge(p, Segment(40.0, 1.0, 1), "gaussian", "noisy counts") for p in (TRAIN, HOLDOUT)]
    ledger.charge(dataset_id=DS, run_id=run_id, charges=counts, kind="release", key="counts",
                  randomness="reproducible", blocks=blocks)
    rooms = ledger.block_rooms(DS, blocks, pipeline=pipeline, end=end, horizon=unlock_horizon(cal, lookback))
    charged = ledger.charged_curves(DS, blocks=blocks)
    req = RunRequest(DS, DELTA, 2, EpochShape.of(12_000, 0, 256), False, run_epsilon, charge_curves(counts), "split")
    planned = plan_run(budget, charged, req, run_epsilon, Room.of_blocks(budget, rooms))
    ledger.charge(dataset_id=DS, run_id=run_id, charges=list(planned.charges), kind="grant", key="grant",
                  randomness="reproducible", blocks=blocks)
    return planned, rooms


def _shares(ledger: Ledger) -> dict[str, float]:
    return {b: max(s.values()) for b, s in ledger.block_shares(DS).items()}


def test_unlocked_fraction_follows_the_calendar():
    cal = BlockCalendar(WEEK)
    horizon = unlock_horizon(cal, LOOKBACK)
    block = cal.block_of(FIRST_END - timedelta(days=1))  # the week before FIRST_END
    start = cal.bounds(block)[0]
    assert [unlocked_fraction(cal, block, start + k * WEEK, horizon) for k in (1, 4, 8, 9)] == [1 / 8, 0.5, 1.0, 1.0]
    assert unlock_horizon(cal, timedelta(days=1)) == WEEK  # shorter lookback: spread over the block's own runs
    assert unlock_horizon(cal, None) is None and unlocked_fraction(cal, block, start, None) == 1.0
    assert unlock_horizon(BlockCalendar(), LOOKBACK) is None


def test_a_manual_run_inside_the_newest_block_finds_its_first_share_unlocked():
    # A manual run's window ends now, inside the block that began minutes ago: that block unlocks
    # its first share at once (else the run would be sized to nothing); one not yet begun, nothing.
    cal = BlockCalendar(WEEK)
    horizon = unlock_horizon(cal, LOOKBACK)
    block = cal.block_of(FIRST_END)
    start = cal.bounds(block)[0]
    assert unlocked_fraction(cal, block, start + timedelta(minutes=30), horizon) == 1 / 8
    assert unlocked_fraction(cal, block, start + 3 * WEEK / 2, horizon) == 1.5 / 8
    assert unlocked_fraction(cal, block, start, horizon) == 0.0


def test_a_first_run_takes_at_most_its_unlocked_share_and_later_runs_still_find_budget(ledger):
    budget = _register(ledger, BlockCalendar(WEEK))
    planned, rooms = _run(ledger, budget, "churn", "w0", FIRST_END)
    first = _shares(ledger)
    # The newest block of the window is 1/8 unlocked: the greedy run is held to it on every block.
    assert rooms[-1].unlocked == pytest.approx(1 / 8) and rooms[0].unlocked == 1.0
    assert max(first.values()) <= 1 / 8 + 1e-12
    assert max(first.values()) > 0.9 / 8  # and it takes what is unlocked, not much less
    epsilons = [planned.epsilon]
    for week in range(1, 20):
        p, _ = _run(ledger, budget, "churn", f"w{week}", FIRST_END + week * WEEK)
        epsilons.append(p.epsilon)
    # Every week trains with a sizeable epsilon, and no block goes over its lifetime budget.
    assert min(epsilons) > 0.5 * max(epsilons)
    assert max(_shares(ledger).values()) <= 1.0
    # A block read by all eight of its runs used (nearly) all of its budget: nothing is wasted.
    assert max(_shares(ledger).values()) > 0.95


def test_a_second_run_in_the_same_week_finds_no_unlocked_budget(ledger):
    """Unlocking is by time, not by reads: runs triggered again and again do not unlock more."""
    budget = _register(ledger, BlockCalendar(WEEK))
    _run(ledger, budget, "churn", "a", FIRST_END)
    with pytest.raises(BudgetExceeded, match="privacy block '2025-02-24' has none of its unlocked share"):
        _run(ledger, budget, "churn", "b", FIRST_END)


def test_two_pipelines_share_every_block_fairly(ledger):
    budget = _register(ledger, BlockCalendar(WEEK))
    trained = {"churn": 0, "upsell": 0}
    for week in range(16):
        end = FIRST_END + week * WEEK
        # Both weekly runs are registered (at plan, after their assess) before either sizes itself,
        # as two scheduled DAG runs of the same week are; a pipeline counts from its first run on.
        for pipeline in ("churn", "upsell"):
            ledger.register_run(DS, f"{pipeline}-{week}", pipeline, end)
        for pipeline in ("churn", "upsell"):  # churn always asks first: it must not take upsell's part
            _, rooms = _run(ledger, budget, pipeline, f"{pipeline}-{week}", end)
            assert all(r.pipelines == 2 for r in rooms)
            trained[pipeline] += 1
    assert trained == {"churn": 16, "upsell": 16}
    pipelines = ledger.summary(DS)["datasets"][0]["pipelines"]
    dominant = {name: p["dominant_share"] for name, p in pipelines.items()}
    assert min(dominant.values()) >= 0.4 * max(dominant.values())
    assert max(dominant.values()) <= 0.5 + 1e-9  # each at most its half of a fully unlocked block
    assert len(pipelines["churn"]["runs"]) == 16


def test_the_pipeline_with_the_smaller_dominant_share_may_take_more_than_its_part(ledger):
    """DPF serves the smallest dominant share first: a pipeline that has had less than the other
    is not held to its half of what is unlocked; the one that has had more is. (A one-week
    lookback: each run reads one block, whole unlocked at the week's end.)"""
    budget = _register(ledger, BlockCalendar(WEEK))
    ledger.register_run(DS, "u0", "upsell", FIRST_END)
    # churn's count release puts it above upsell (nothing used): it keeps off upsell's half.
    _, rooms = _run(ledger, budget, "churn", "c0", FIRST_END, lookback=WEEK)
    assert [(r.unlocked, r.pipelines) for r in rooms] == [(1.0, 2)]
    assert rooms[0].reserved[TRAIN] == pytest.approx(0.5 * budget.rdp)
    churn = max(_shares(ledger).values())
    assert 0.45 < churn <= 0.5 + 1e-9
    # upsell has had less: nothing is kept for churn, and upsell takes the rest, past its half.
    _, rooms = _run(ledger, budget, "upsell", "u0", FIRST_END, lookback=WEEK)
    assert rooms[0].reserved == {TRAIN: 0.0, HOLDOUT: 0.0}
    upsell = ledger.summary(DS)["datasets"][0]["pipelines"]["upsell"]["dominant_share"]
    assert upsell > 0.45 and max(_shares(ledger).values()) > 0.95  # nothing idles


def test_a_modest_pipeline_keeps_what_it_asks_and_its_unused_part_flows_to_the_other(ledger):
    """Work-conserving: a pipeline whose runs ask for little keeps that much of its part for its
    next run, and the rest of its part goes to the pipeline that asks for more (the equal split
    left it idle); both train every week."""
    budget = _register(ledger, BlockCalendar(WEEK))
    trained, epsilons = {"churn": 0, "upsell": 0}, {"churn": [], "upsell": []}
    for week in range(16):
        end = FIRST_END + week * WEEK
        for pipeline in ("upsell", "churn"):
            ledger.register_run(DS, f"{pipeline}-{week}", pipeline, end)
        for pipeline, eps in (("upsell", 0.3), ("churn", GREEDY)):  # the modest one asks first
            planned, _ = _run(ledger, budget, pipeline, f"{pipeline}-{week}", end, run_epsilon=eps)
            trained[pipeline] += 1
            epsilons[pipeline].append(planned.epsilon)
    assert trained == {"churn": 16, "upsell": 16}
    # upsell always got what it asked for (its run epsilon, counts included)...
    assert min(epsilons["upsell"]) == pytest.approx(0.3, rel=1e-3)
    dominant = {n: p["dominant_share"] for n, p in ledger.summary(DS)["datasets"][0]["pipelines"].items()}
    # ... and churn used far more than the half an equal split would have held it to.
    assert dominant["churn"] > 0.7 and dominant["upsell"] < 0.3
    assert max(_shares(ledger).values()) <= 1.0 + 1e-9


def test_unused_share_flows_to_the_other_pipeline_after_a_horizon(ledger):
    budget = _register(ledger, BlockCalendar(WEEK))
    ledger.register_run(DS, "u0", "upsell", FIRST_END)
    _run(ledger, budget, "churn", "c0", FIRST_END)
    _run(ledger, budget, "upsell", "u0", FIRST_END)
    end = FIRST_END + WEEK
    _, rooms = _run(ledger, budget, "churn", "c1", end)
    assert {r.pipelines for r in rooms} == {2}  # upsell ran within the horizon
    later = FIRST_END + 9 * WEEK  # upsell has not run for more than the 8-week horizon
    _, rooms = _run(ledger, budget, "churn", "c9", later)
    assert {r.pipelines for r in rooms} == {1}
    runs = [PipelineRun("u0", "upsell", FIRST_END)]
    assert sharing_pipelines(runs, "churn", FIRST_END + LOOKBACK - timedelta(seconds=1), LOOKBACK) == ["churn", "upsell"]
    assert sharing_pipelines(runs, "churn", FIRST_END + LOOKBACK, LOOKBACK) == ["churn"]


def test_a_whole_table_dataset_keeps_the_lifetime_rule_and_counts_runs_left(ledger):
    budget = _register(ledger, BlockCalendar())
    planned, rooms = _run(ledger, budget, "churn", "r0", FIRST_END)
    assert [(r.block, r.unlocked, r.pipelines) for r in rooms] == [("all", 1.0, 1)]
    # Held only by the lifetime filter: the greedy run takes (nearly) the whole budget, as before.
    assert max(_shares(ledger).values()) > 0.95
    charged = ledger.charged_curves(DS)
    cost = charge_curves(planned.charges)
    assert runs_left(budget, charged, cost) == 0
    # Two of three equal runs' worth left: the count is the remaining RDP over the run's cost.
    half = {p: c / 3 for p, c in cost.items()}
    spent = {p: c / 3 for p, c in cost.items()}
    assert runs_left(budget, spent, half) == math.floor((budget.rdp - float(spent[TRAIN][budget.index]))
                                                       / float(half[TRAIN][budget.index]))


def test_a_run_cannot_change_pipeline(ledger):
    _register(ledger, BlockCalendar(WEEK))
    ledger.register_run(DS, "r", "churn", FIRST_END)
    ledger.register_run(DS, "r", "churn", FIRST_END)  # idempotent
    with pytest.raises(Exception, match="registered for pipeline 'churn'"):
        ledger.register_run(DS, "r", "upsell", FIRST_END)
