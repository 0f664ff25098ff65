"""Nothing is spent on a run that cannot train (issue 27, item 7).

assess asks the train and budget rules first, on public facts only, and refuses a run whose cap,
regulation minimum, randomness or ledger rules out training before its noisy counts are charged.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ppmlops.audit.log import AuditLog
from ppmlops.errors import PolicyRefused
from ppmlops.privacy.ledger import Ledger
from ppmlops.run.records import CountsRelease, Refusal
from ppmlops.spec import parse_spec
from ppmlops.stages import assess, ingest, precheck
from ppmlops.run.context import RunContext, RunParams

REPO = Path(__file__).resolve().parents[2]


def _spec(tmp_path, test_data: bool = False, **privacy):
    src = tmp_path / "train.csv"
    src.write_text("age,y\n" + "\n".join(f"{20 + i % 50},{'yes' if i % 3 else 'no'}" for i in range(300)) + "\n")
    return parse_spec({
        "name": "pre",
        "dataset": {"id": "pre", "source": {"path": str(src)}, "test_data": test_data,
                    "label": {"column": "y", "positive": "yes", "values": ["yes", "no"]},
                    "features": [{"name": "age", "type": "numeric", "range": [18, 90]}]},
        "privacy": {"epsilon": 3.0, "delta": 1e-5, "run_epsilon": 1.0} | privacy,
        "deploy": {"model_name": "pre"},
    })


def _ingested(tmp_path, monkeypatch, spec, **params) -> RunContext:
    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path / "home"))
    # Built directly: an API caller's params that skipped RunParams.check (the training job
    # rebuilds its params this way too); the pre-check must not rely on the form.
    ctx = RunContext(spec=spec, run_id="run-1", params=RunParams(**(vars(RunParams.defaults(spec)) | params)))
    ingest.run(ctx)
    return ctx


def _nothing_spent(ctx) -> None:
    ledger = Ledger(ctx.settings.db_url)
    assert ledger.entries(ctx.spec.dataset.id) == []
    assert ledger.budget(ctx.spec.dataset.id) is None  # refused before registration, too
    assert ctx.store.read_optional(CountsRelease) is None
    assert ctx.store.read(Refusal).stage == "assess"


def test_a_cap_below_the_counts_cost_is_refused_before_any_ledger_entry(tmp_path, monkeypatch):
    spec = _spec(tmp_path)
    ctx = _ingested(tmp_path, monkeypatch, spec, epsilon_cap=0.01)
    with pytest.raises(PolicyRefused, match=r"before any release, on public facts: epsilon_cap 0\.01 is used up "
                                            r"by the run's noisy counts alone"):
        assess.run(ctx)
    _nothing_spent(ctx)
    assert "epsilon_cap 0.01" in ctx.store.read(Refusal).reasons[0]


def test_a_cap_the_counts_leave_too_little_of_is_refused_by_the_policy(tmp_path, monkeypatch):
    """0.22 is above the counts' 0.2 but leaves less than the GDPR minimum 0.05 for training: the
    policy's own rule refuses it, asked before the counts, and its decision is in the audit log."""
    spec = _spec(tmp_path)
    ctx = _ingested(tmp_path, monkeypatch, spec, epsilon_cap=0.22)
    with pytest.raises(PolicyRefused, match=r"policy refused to train: before any release.*below the gdpr minimum 0\.05"):
        assess.run(ctx)
    _nothing_spent(ctx)
    [record] = AuditLog(ctx.settings.db_url).records(run_id="run-1")
    assert record["stage"] == "assess" and record["decision"]["query"] == "data.ppmlops.train"
    assert record["decision"]["outcome"] == "deny"


def test_a_regulation_minimum_above_the_cap_is_refused_before_any_ledger_entry(tmp_path, monkeypatch):
    policy = (REPO / "policies.rego").read_text()
    # The GDPR profile's minimum run epsilon raised to 0.9 by the compliance officer.
    edited, n = re.subn(r'("gdpr": \{[^}]*?"min_epsilon": )0\.05', r"\g<1>0.9", policy, flags=re.S)
    assert n == 1
    path = tmp_path / "policies.rego"
    path.write_text(edited)
    monkeypatch.setenv("PPMLOPS_POLICY", str(path))
    spec = _spec(tmp_path)
    ctx = _ingested(tmp_path, monkeypatch, spec, epsilon_cap=0.8)
    with pytest.raises(PolicyRefused, match=r"below the gdpr minimum 0\.9"):
        assess.run(ctx)
    _nothing_spent(ctx)
    assert precheck.policy_minimum("gdpr", ctx.settings) == 0.9


def test_replayable_randomness_to_production_is_refused_before_the_counts(tmp_path, monkeypatch):
    spec = _spec(tmp_path, test_data=True)  # reproducible mode may run, but never deploy to production
    monkeypatch.setenv("PPMLOPS_RANDOMNESS", "reproducible")
    ctx = _ingested(tmp_path, monkeypatch, spec, environment="production")
    with pytest.raises(PolicyRefused, match=r"randomness \"reproducible\" cannot deploy to production"):
        assess.run(ctx)
    _nothing_spent(ctx)


def test_a_normal_run_passes_and_a_retried_assess_is_not_checked_again(tmp_path, monkeypatch):
    spec = _spec(tmp_path)
    ctx = _ingested(tmp_path, monkeypatch, spec)
    assess.run(ctx)
    ledger = Ledger(ctx.settings.db_url)
    assert [e.key for e in ledger.entries("pre")] == ["counts", "counts"]  # both partitions
    assert precheck.refusal(ctx, ledger) == ([], None)
    # Its own counts are not counted twice against it when the stage is retried.
    facts = precheck.public_facts(ctx, ledger)
    assert facts.registered and facts.share_used == 0.0


def test_a_spent_held_out_partition_is_refused_before_the_counts(tmp_path, monkeypatch):
    """Earlier runs left the held-out rows room for the counts but not for an evaluation: the plan
    would refuse after charging the counts; the pre-check refuses first."""
    from ppmlops.privacy.accountant import Segment
    from ppmlops.privacy.ledger import HOLDOUT, Charge

    spec = _spec(tmp_path)
    ctx = _ingested(tmp_path, monkeypatch, spec)
    ledger = Ledger(ctx.settings.db_url)
    budget = ledger.register_dataset("pre", epsilon_budget=3.0, delta=1e-5)
    counts = precheck._counts_rdp(ctx)
    # Leave the counts' RDP at the order and a thousandth more: the counts fit, an evaluation does not.
    target = budget.rdp - 1.001 * float(counts[budget.index])
    sigma = ledger_sigma(target, budget.index)
    ledger.charge(dataset_id="pre", run_id="earlier", kind="release", key="x", randomness="secure",
                  charges=[Charge(HOLDOUT, Segment(sigma, 1.0, 1), "gaussian", "an earlier evaluation")])
    with pytest.raises(PolicyRefused, match=r"held-out rows' lifetime budget is spent"):
        assess.run(ctx)
    assert [e.run_id for e in ledger.entries("pre")] == ["earlier"]  # nothing charged for run-1
    assert ctx.store.read(Refusal).stage == "assess"


def ledger_sigma(rdp_target: float, index: int) -> float:
    """The Gaussian noise whose one release has RDP `rdp_target` at ORDERS[index]."""
    from ppmlops.privacy.accountant import ORDERS

    return (ORDERS[index] / (2 * rdp_target)) ** 0.5


def test_a_spent_block_outside_the_runs_window_does_not_refuse_it(tmp_path, monkeypatch):
    """With weekly blocks, a block an earlier window used up is not one this run reads: the
    pre-check judges the blocks of the run's own window, so the run passes, while the same spend
    in one of its blocks is retired at ingest or refused."""
    from datetime import datetime, timedelta, timezone

    from ppmlops.privacy.accountant import Segment
    from ppmlops.privacy.blocks import BlockCalendar
    from ppmlops.privacy.ledger import HOLDOUT, TRAIN, Charge
    from ppmlops.window import DataInterval

    week = timedelta(days=7)
    monday = datetime(2026, 11, 2, tzinfo=timezone.utc)
    src = tmp_path / "events.csv"
    src.write_text("t,age,y\n" + "\n".join(f"{(monday + timedelta(hours=3 * i)).isoformat()},{20 + i % 50},"
                                         f"{'yes' if i % 3 else 'no'}" for i in range(300)) + "\n")
    spec = parse_spec({
        "name": "pre", "dataset": {"id": "pre", "source": {"path": str(src)}, "window": {"column": "t"},
                                   "label": {"column": "y", "positive": "yes", "values": ["yes", "no"]},
                                   "features": [{"name": "age", "type": "numeric", "range": [18, 90]}]},
        "privacy": {"epsilon": 3.0, "delta": 1e-5, "run_epsilon": 1.0, "blocks": "P7D"},
        "deploy": {"model_name": "pre"},
    })
    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path / "home"))
    ctx = RunContext(spec=spec, run_id="run-1", params=RunParams.defaults(spec),
                     interval=DataInterval(monday, monday + week))
    ledger = Ledger(ctx.settings.db_url)
    budget = ledger.register_dataset("pre", epsilon_budget=3.0, delta=1e-5, calendar=BlockCalendar(week))
    spent = Segment(ledger_sigma(budget.rdp, budget.index), 1.0, 1)  # all of a block's budget
    for p in (TRAIN, HOLDOUT):
        ledger.charge(dataset_id="pre", run_id="earlier", kind="release", key=f"x-{p}", randomness="secure",
                      blocks=["2026-10-26"], charges=[Charge(p, spent, "gaussian", "an earlier run")])
    ingest.run(ctx)
    assert precheck.refusal(ctx, ledger) == ([], None)
    assert precheck.public_facts(ctx, ledger).share_used == 0.0  # the run's own block is fresh


def test_a_second_run_in_the_same_week_is_refused_before_its_counts(tmp_path, monkeypatch):
    """With a lookback, the newest block unlocks one share a week: runs of the same week take it,
    and the one that finds nothing unlocked is refused by the pre-check, which sizes the run as the
    plan does, before its counts are charged (nothing of it in the ledger), not after at plan."""
    from datetime import datetime, timedelta, timezone

    from ppmlops.stages import plan
    from ppmlops.window import DataInterval

    monday = datetime(2026, 11, 2, tzinfo=timezone.utc)
    src = tmp_path / "events.csv"
    # 8,000 rows over the 4-week lookback (every 5 minutes): enough that the noisy counts the plan
    # reads (consent coverage, each partition's classes) pass the policy's floors
    src.write_text("t,age,y\n" + "\n".join(f"{(monday - timedelta(minutes=5 * i)).isoformat()},{20 + i % 50},"
                                         f"{'yes' if i % 3 else 'no'}" for i in range(1, 8000)) + "\n")
    spec = parse_spec({
        "name": "pre", "dataset": {"id": "pre", "source": {"path": str(src)},
                                   "window": {"column": "t", "lookback": "P28D"},
                                   "label": {"column": "y", "positive": "yes", "values": ["yes", "no"]},
                                   "features": [{"name": "age", "type": "numeric", "range": [18, 90]}]},
        "privacy": {"epsilon": 3.0, "delta": 1e-5, "run_epsilon": 1.0, "blocks": "P7D"},
        "deploy": {"model_name": "pre"},
    })
    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path / "home"))
    interval = DataInterval(monday - timedelta(days=7), monday)

    def context(run_id):
        ctx = RunContext(spec=spec, run_id=run_id, params=RunParams.defaults(spec), interval=interval)
        ingest.run(ctx)
        return ctx

    planned = []
    for n in range(6):  # runs of the same week, each planned (its grant reserved) until one cannot be
        ctx = context(f"run-{n}")
        try:
            assess.run(ctx)
        except PolicyRefused as refused:
            assert "before any release, on public facts" in str(refused)
            break
        plan.run(ctx)  # a run the pre-check let through is one the plan sizes and admits
        planned.append(ctx.run_id)
    else:
        pytest.fail("six runs of one week all found unlocked budget")
    assert planned  # the first run of the week trains
    ledger = Ledger(ctx.settings.db_url)
    assert {e.run_id for e in ledger.entries("pre")} == set(planned)  # nothing charged for the refused one
    assert ctx.store.read(Refusal).stage == "assess"


def test_a_scheduled_run_the_scheduler_started_late_is_refused_before_any_ledger_entry(tmp_path, monkeypatch):
    """The run Airflow starts when a DAG is unpaused (e.g. by the trigger form's default for a
    trigger it refused) starts long after its interval ended: refused before its counts."""
    from datetime import datetime, timedelta, timezone

    from ppmlops.run.context import RunTrigger

    end = datetime(2026, 11, 30, tzinfo=timezone.utc)  # a Monday: the weekly interval's end
    start = end - timedelta(weeks=1)
    late = RunTrigger.of_airflow("scheduled", end + timedelta(days=2), end, start, end)  # unpaused on Wednesday
    assert (late.late_s, late.grace_s) == (2 * 86400, pytest.approx(0.1 * 7 * 86400))
    on_time = RunTrigger.of_airflow("scheduled", end + timedelta(seconds=40), end, start, end)
    assert on_time.late_s == 40
    # an hourly schedule's tenth (6 minutes) is above the floor; a 10-minute one's is the floor, 5 minutes
    assert RunTrigger.of_airflow("scheduled", end, end, end - timedelta(hours=1), end).grace_s == pytest.approx(360)
    assert RunTrigger.of_airflow("scheduled", end, end, end - timedelta(minutes=10), end).grace_s == 300
    assert RunTrigger.of_airflow("manual", end + timedelta(days=9), end, None, end) == RunTrigger(kind="manual")
    assert RunTrigger.of_airflow("scheduled", end + timedelta(days=2), end, start, end, cleared=True).cleared

    spec = _spec(tmp_path)
    ctx = _ingested(tmp_path, monkeypatch, spec)
    ctx.trigger = late
    with pytest.raises(PolicyRefused, match=r"this scheduled run started 2880 minutes after its interval ended"):
        assess.run(ctx)
    _nothing_spent(ctx)
    ctx.trigger = on_time  # the same run, had the scheduler started it on time, trains
    ctx.store.path_of(Refusal).unlink()
    assess.run(ctx)
    assert ctx.store.read(CountsRelease) is not None
