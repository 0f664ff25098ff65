"""Privacy blocks: the ledger's unit is (block, split); a run charges exactly the blocks its window reads."""

from __future__ import annotations

import copy
import csv
import multiprocessing
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, text

from ppmlops.data.ingest import ingest
from ppmlops.errors import BudgetExceeded, PpmlopsError, SpecError
from ppmlops.privacy.accountant import Segment, segment_rdp
from ppmlops.privacy.blocks import ALL, BlockCalendar, BlockError
from ppmlops.privacy.ledger import BlockMismatch, Charge, Ledger
from ppmlops.privacy.lifetime import LifetimeBudget
from ppmlops.spec import parse_spec
from ppmlops.window import DataInterval

UTC = timezone.utc
WEEK = timedelta(days=7)
WEEKLY = BlockCalendar(WEEK)
DELTA = 1e-5
MONDAY = datetime(2026, 11, 2, tzinfo=UTC)
GAUSS = Segment(3.0, 1.0, 1)


def ledger_with(tmp_path: Path, epsilon: float = 3.0, calendar: BlockCalendar = WEEKLY) -> tuple[Ledger, LifetimeBudget]:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    return ledger, ledger.register_dataset("ds", epsilon_budget=epsilon, delta=DELTA, order=8.0, calendar=calendar)


def at_order(budget: LifetimeBudget, segment: Segment, times: int = 1) -> float:
    return times * float(segment_rdp(segment)[budget.index])


def fitting(budget: LifetimeBudget, share: float) -> Segment:
    """A Gaussian release whose RDP at the dataset's order is `share` of a block's budget."""
    # RDP of a Gaussian at order a: a / (2 sigma^2).
    sigma = (budget.order / (2 * share * budget.rdp)) ** 0.5
    return Segment(sigma, 1.0, 1)


# -- the calendar ------------------------------------------------------------------------------

def test_a_rows_block_is_fixed_by_its_event_time_and_the_origin():
    assert WEEKLY.block_of(datetime(2026, 12, 2, 5, tzinfo=UTC)) == "2026-11-30"
    assert WEEKLY.block_of(datetime(2026, 11, 30, tzinfo=UTC)) == "2026-11-30"
    assert WEEKLY.block_of(datetime(2026, 11, 30, tzinfo=UTC) - timedelta(microseconds=1)) == "2026-11-23"
    # A zone is converted to UTC first: 01:00 at +02:00 is Sunday 23:00 UTC.
    assert WEEKLY.block_of(datetime.fromisoformat("2026-11-30T01:00:00+02:00")) == "2026-11-23"
    # Another public origin (a Wednesday) moves every block; the data never does.
    wednesday = BlockCalendar(WEEK, datetime(2000, 1, 5, tzinfo=UTC))
    assert wednesday.block_of(datetime(2026, 12, 2, 5, tzinfo=UTC)) == "2026-12-02"
    assert WEEKLY.bounds("2026-11-30") == (datetime(2026, 11, 30, tzinfo=UTC), datetime(2026, 12, 7, tzinfo=UTC))
    # Blocks that do not start at midnight are named by their UTC date-time.
    six_hours = BlockCalendar(timedelta(hours=6))
    assert six_hours.block_of(datetime(2026, 11, 30, 13, tzinfo=UTC)) == "2026-11-30T12:00:00Z"
    assert BlockCalendar().block_of(MONDAY) == ALL
    with pytest.raises(BlockError, match="not the start of a block"):
        WEEKLY.parse("2026-12-01")


def test_a_window_touches_the_blocks_that_intersect_it():
    eight_weeks = WEEKLY.touching(datetime(2026, 10, 5, tzinfo=UTC), datetime(2026, 11, 30, tzinfo=UTC))
    assert eight_weeks == ("2026-10-05", "2026-10-12", "2026-10-19", "2026-10-26",
                           "2026-11-02", "2026-11-09", "2026-11-16", "2026-11-23")
    # A window one second past a block boundary on each side touches one more block at each end.
    shifted = WEEKLY.touching(datetime(2026, 10, 5, 0, 0, 1, tzinfo=UTC), datetime(2026, 11, 30, 0, 0, 1, tzinfo=UTC))
    assert shifted == eight_weeks[:] + ("2026-11-30",)
    assert BlockCalendar().touching(None, MONDAY) == (ALL,)
    with pytest.raises(BlockError, match="needs a window with a start"):
        WEEKLY.touching(None, MONDAY)


SPEC = {
    "name": "weekly",
    "schedule": "@weekly",
    "dataset": {
        "id": "weekly",
        "source": {"path": "PLACEHOLDER"},
        "label": {"column": "y", "positive": "yes", "values": ["yes", "no"]},
        "features": [{"name": "age", "type": "numeric", "range": [18, 90]}],
        "window": {"column": "seen_at", "lookback": "P21D"},
    },
    "privacy": {"epsilon": 3.0, "delta": 1e-5, "run_epsilon": 1.0, "blocks": "P7D"},
    "training": {"test_fraction": 0.5, "seed": 0},
    "deploy": {"model_name": "weekly"},
}


def spec_for(path: Path, **privacy):
    doc = copy.deepcopy(SPEC)
    doc["dataset"]["source"] = {"path": str(path)}
    doc["privacy"].update(privacy)
    return parse_spec(doc)


def test_blocks_need_a_window_column(tmp_path):
    doc = copy.deepcopy(SPEC)
    doc["dataset"]["source"] = {"path": str(tmp_path / "x.csv")}
    doc["dataset"]["window"] = {"whole_table": True}
    with pytest.raises(SpecError, match="privacy.blocks .* needs dataset.window.column"):
        parse_spec(doc)
    spec = spec_for(tmp_path / "x.csv")
    assert spec.privacy.blocks == WEEK and spec.privacy.block_origin == datetime(2000, 1, 3, tzinfo=UTC)


# -- registration ------------------------------------------------------------------------------

def test_block_length_and_origin_are_registered_and_immutable(tmp_path):
    ledger, budget = ledger_with(tmp_path)
    assert ledger.budget("ds").calendar == WEEKLY and budget.calendar == WEEKLY
    for other in (BlockCalendar(2 * WEEK), BlockCalendar(WEEK, datetime(2000, 1, 5, tzinfo=UTC)), BlockCalendar()):
        with pytest.raises(BlockMismatch, match="restore privacy.blocks"):
            ledger.register_dataset("ds", epsilon_budget=3.0, delta=DELTA, calendar=other)
    assert ledger.register_dataset("ds", epsilon_budget=3.0, delta=DELTA, calendar=WEEKLY).calendar == WEEKLY
    # A one-block dataset cannot take blocks later either (its charges name no block).
    ledger.register_dataset("pot", epsilon_budget=3.0, delta=DELTA, calendar=BlockCalendar())
    with pytest.raises(BlockMismatch):
        ledger.register_dataset("pot", epsilon_budget=3.0, delta=DELTA, calendar=WEEKLY)


# -- charging ----------------------------------------------------------------------------------

def test_a_run_charges_exactly_the_blocks_its_window_touches_on_both_splits(tmp_path):
    ledger, budget = ledger_with(tmp_path)
    blocks = ("2026-11-02", "2026-11-09")
    ledger.charge(dataset_id="ds", run_id="r1", kind="release", key="counts", randomness="secure", blocks=blocks,
                  charges=[Charge("train", GAUSS, "gaussian"), Charge("holdout", GAUSS, "gaussian")])
    per_block = ledger.block_curves("ds", ["2026-10-26", *blocks, "2026-11-16"])
    one = segment_rdp(GAUSS)
    for b in blocks:
        assert set(per_block[b]) == {"train", "holdout"}
        assert np.array_equal(per_block[b]["train"], one) and np.array_equal(per_block[b]["holdout"], one)
    assert per_block["2026-10-26"] == {} and per_block["2026-11-16"] == {}
    assert set(ledger.block_curves("ds")) == set(blocks)
    # The grant and its usage: the usage counts (after trimming) against the grant's blocks only.
    ledger.charge(dataset_id="ds", run_id="r1", kind="grant", key="grant", randomness="secure", blocks=blocks,
                  charges=[Charge("train", Segment(1.0, 0.01, 100))])
    ledger.record_usage(dataset_id="ds", run_id="r1", key="epoch-1", randomness="secure",
                        charge=Charge("train", Segment(1.0, 0.01, 50)))
    assert all(e.blocks == blocks for e in ledger.entries("ds"))
    ledger.close_grant(dataset_id="ds", run_id="r1")
    per_block = ledger.block_curves("ds", ["2026-10-26", *blocks])
    trained = one + segment_rdp(Segment(1.0, 0.01, 50))
    assert all(np.array_equal(per_block[b]["train"], trained) for b in blocks)
    assert per_block["2026-10-26"] == {}


def test_a_charge_must_name_blocks_of_the_calendar(tmp_path):
    ledger, _ = ledger_with(tmp_path)
    kw = dict(dataset_id="ds", run_id="r1", kind="release", key="counts", randomness="secure",
              charges=[Charge("train", GAUSS, "gaussian")])
    with pytest.raises(PpmlopsError, match="must name the blocks its window reads"):
        ledger.charge(**kw)
    with pytest.raises(PpmlopsError, match="run 'r1' on dataset 'ds'.*not the start of a block"):
        ledger.charge(**kw, blocks=["2026-11-03"])
    ledger.charge(**kw, blocks=["2026-11-02"])
    with pytest.raises(PpmlopsError, match="other parameters"):  # a retried stage cannot move its blocks
        ledger.charge(**kw, blocks=["2026-11-09"])


def test_admission_is_per_block(tmp_path):
    ledger, budget = ledger_with(tmp_path)
    big = fitting(budget, 0.6)

    def charge(run, *blocks):
        return ledger.charge(dataset_id="ds", run_id=run, kind="release", key="counts", randomness="secure",
                             blocks=blocks, charges=[Charge("train", big, "gaussian")])

    charge("a", "2026-11-02", "2026-11-09")
    # Any run reading a block that "a" read goes over it; the refusal names the block.
    with pytest.raises(BudgetExceeded, match="block '2026-11-09', partition 'train'"):
        charge("b", "2026-11-09", "2026-11-16")
    with pytest.raises(BudgetExceeded, match="block '2026-11-02'"):
        charge("b", "2026-10-26", "2026-11-02")
    assert [e.run_id for e in ledger.entries("ds")] == ["a"]  # a refusal charges nothing
    # Blocks that "a" did not read are untouched by it.
    charge("c", "2026-11-16", "2026-11-23")
    charge("d", "2026-10-19", "2026-10-26")


def test_the_worst_block_is_the_datasets_guarantee(tmp_path):
    ledger, budget = ledger_with(tmp_path)
    small = fitting(budget, 0.2)
    for run, blocks in (("a", ["2026-11-02", "2026-11-09"]), ("b", ["2026-11-09", "2026-11-16"]),
                        ("c", ["2026-11-16"])):
        ledger.charge(dataset_id="ds", run_id=run, kind="release", key="counts", randomness="secure",
                      blocks=blocks, charges=[Charge("train", small, "gaussian"), Charge("holdout", small, "gaussian")])
    twice = {"train": 2 * segment_rdp(small)}
    summary = ledger.summary("ds")["datasets"][0]
    assert summary["worst_block"] == {"holdout": "2026-11-09", "train": "2026-11-09"}
    assert summary["share_used"] == pytest.approx(0.4)
    assert summary["blocks"]["2026-11-02"]["train"] == pytest.approx(0.2)
    assert summary["partitions"]["train"] == pytest.approx(budget.spent_epsilon(twice))
    assert ledger.spent("ds") == pytest.approx(budget.spent_epsilon(twice))
    assert ledger.epsilon_by_partition("ds")["holdout"] == pytest.approx(budget.spent_epsilon(twice))
    # One pot would have composed all three runs.
    assert ledger.spent("ds") < budget.spent_epsilon({"train": 3 * segment_rdp(small)})
    assert ledger.charged_curves("ds", blocks=["2026-11-02"])["train"][budget.index] == pytest.approx(
        segment_rdp(small)[budget.index])


def test_a_one_pot_ledger_migrates_conservatively(tmp_path):
    """Entries from before blocks count against every block that had begun when they were made."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(url)
    ledger.register_dataset("ds", epsilon_budget=3.0, delta=DELTA, order=8.0)
    old = ledger.budget("ds")
    heavy = fitting(old, 0.7)
    ledger.charge(dataset_id="ds", run_id="old", kind="release", key="counts", randomness="secure",
                  charges=[Charge("train", heavy, "gaussian")])
    # What an earlier version's database looks like once the new columns are added: no blocks.
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE privacy_datasets SET block_seconds = NULL, block_origin = NULL"))
        conn.execute(text("UPDATE privacy_ledger SET blocks = NULL, created_at = '2026-11-04T12:00:00+00:00'"))
    engine.dispose()
    ledger = Ledger(url)
    assert ledger.entries("ds")[0].blocks is None
    budget = ledger.register_dataset("ds", epsilon_budget=3.0, delta=DELTA, calendar=WEEKLY)  # adopts the blocks
    assert budget.calendar == WEEKLY and ledger.budget("ds").calendar == WEEKLY and budget.order == 8.0
    per_block = ledger.block_curves("ds", ["2026-10-26", "2026-11-02", "2026-11-09"])
    assert per_block["2026-10-26"]["train"][budget.index] == pytest.approx(0.7 * budget.rdp)
    assert per_block["2026-11-02"]["train"][budget.index] == pytest.approx(0.7 * budget.rdp)  # began before the entry
    assert per_block["2026-11-09"] == {}  # began after it: fresh
    assert ledger.summary("ds")["datasets"][0]["share_used"] == pytest.approx(0.7)
    half = fitting(budget, 0.5)

    def charge(run, block):
        ledger.charge(dataset_id="ds", run_id=run, kind="release", key="counts", randomness="secure",
                      blocks=[block], charges=[Charge("train", half, "gaussian")])

    with pytest.raises(BudgetExceeded, match="block '2026-11-02'"):
        charge("new", "2026-11-02")
    charge("new", "2026-11-09")
    with pytest.raises(BlockMismatch):  # the adopted blocks are now fixed
        ledger.register_dataset("ds", epsilon_budget=3.0, delta=DELTA, calendar=BlockCalendar(2 * WEEK))


def _race(url: str, worker: int, blocks: list[str], share_sigma: float, out) -> None:
    ledger = Ledger(url)
    admitted = 0
    for i in range(6):
        pair = [blocks[(worker + i) % len(blocks)], blocks[(worker + i + 1) % len(blocks)]]
        try:
            ledger.charge(dataset_id="ds", run_id=f"w{worker}-{i}", kind="release", key="counts",
                          randomness="secure", blocks=pair, charges=[Charge("train", Segment(share_sigma, 1.0, 1),
                                                                            "gaussian")])
            admitted += 1
        except BudgetExceeded:
            pass
    out.put(admitted)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_processes_charging_overlapping_blocks_never_overspend_a_block(tmp_path, request, backend):
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        url = request.getfixturevalue("pg_url")
        engine = create_engine(url)
        with engine.begin() as conn:  # the module's database: start from no ledger tables
            conn.execute(text("DROP TABLE IF EXISTS privacy_ledger, privacy_datasets, privacy_runs"))
        engine.dispose()
    ledger = Ledger(url)
    budget = ledger.register_dataset("ds", epsilon_budget=3.0, delta=DELTA, order=8.0, calendar=WEEKLY)
    blocks = ["2026-11-02", "2026-11-09", "2026-11-16"]
    sigma = fitting(budget, 0.3).noise_multiplier  # three charges fit a block, a fourth does not
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(url, w, blocks, sigma, out)) for w in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    admitted = sum(out.get(timeout=10) for _ in procs)
    per_block = ledger.block_curves("ds", blocks)
    for b in blocks:  # a block no admitted charge touched has no curve
        assert per_block[b].get("train", np.zeros(budget.index + 1))[budget.index] <= budget.rdp
    # Each charge takes two of the three blocks and each block fits three, so the race admits 3
    # (three charges on one pair fill both its blocks) or 4, never more; and it stops only when
    # every pair holds a full block: one more charge on any pair is refused.
    assert admitted == len(ledger.entries("ds"))
    assert admitted in (3, 4)
    for i, first in enumerate(blocks):
        with pytest.raises(BudgetExceeded):
            ledger.charge(dataset_id="ds", run_id=f"after-{i}", kind="release", key="counts",
                          randomness="secure", blocks=[first, blocks[(i + 1) % len(blocks)]],
                          charges=[Charge("train", Segment(sigma, 1.0, 1), "gaussian")])


# -- retirement --------------------------------------------------------------------------------

def _events(path: Path) -> Path:
    """Ten rows in each of the three weeks from MONDAY; age 20 + week shows the week in the snapshot."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["seen_at", "age", "y"])
        for week in range(3):
            for i in range(10):
                w.writerow([(MONDAY + week * WEEK + timedelta(hours=7 * i)).isoformat(), 20 + week,
                            "yes" if i % 2 else "no"])
        w.writerow(["not a time", 40, "yes"])
    return path


def test_ingest_leaves_a_retired_blocks_rows_out_and_names_it(tmp_path):
    import pandas as pd

    spec = spec_for(_events(tmp_path / "events.csv"))
    interval = DataInterval(MONDAY + 2 * WEEK, MONDAY + 3 * WEEK)  # with the lookback: three weeks
    r = ingest(spec, tmp_path / "run", interval=interval, retired=["2026-11-09"])
    staged = pd.concat([pd.read_parquet(p) for p in (r.snapshot_train, r.snapshot_test)])
    assert set(staged["age"].astype(int)) == {20, 22}
    q = pd.read_csv(r.quarantine_path, dtype=str)
    retired = q[q["_reason"].str.contains("retired")]
    assert len(retired) == 10 and retired["_reason"].str.contains("privacy block 2026-11-09").all()
    assert q["_reason"].str.contains("belongs to no privacy block").sum() == 1
    # Neither is in the reasons the count release bins: no block the run is charged to holds them.
    assert r.quarantine_reasons == {} and r.rows_outside_open_blocks == 11 and r.retired_blocks == ["2026-11-09"]
    assert r.rows_in == r.rows_staged + r.rows_quarantined + r.rows_outside_window


def _stage_ctx(tmp_path, monkeypatch, run_id: str, spec):
    from ppmlops.run.context import RunParams
    from ppmlops.run.context import RunContext

    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PPMLOPS_DB_URL", f"sqlite:///{tmp_path / 'home' / 'ppmlops.db'}")
    return RunContext(spec, run_id, RunParams.defaults(spec), interval=DataInterval(MONDAY + 2 * WEEK, MONDAY + 3 * WEEK))


def test_the_ingest_stage_retires_a_spent_block_and_records_it(tmp_path, monkeypatch):
    from ppmlops.pipeline import stage_line
    from ppmlops.run.records import Refusal, Staged
    from ppmlops.stages import ingest as stage

    spec = spec_for(_events(tmp_path / "events.csv"))
    ctx = _stage_ctx(tmp_path, monkeypatch, "run-1", spec)
    ledger = Ledger(ctx.settings.db_url)
    from ppmlops.stages.assess import register

    budget = register(ctx, ledger)
    # An earlier run spent most of the middle week's budget on its training rows.
    ledger.charge(dataset_id="weekly", run_id="earlier", kind="release", key="counts", randomness="secure",
                  blocks=["2026-11-09"], charges=[Charge("train", fitting(budget, 0.9), "gaussian")])
    staged = stage.run(ctx)
    assert isinstance(staged, Staged)
    assert staged.blocks == ["2026-11-02", "2026-11-16"]
    assert [b.block for b in staged.retired_blocks] == ["2026-11-09"]
    assert staged.retired_blocks[0].start == "2026-11-09T00:00:00+00:00" and "train rows 90.0%" in staged.retired_blocks[0].why
    assert "retired blocks (left out, rows quarantined): 2026-11-09" in stage_line("ingest", staged)
    # Every block spent: refused before anything is read, with the reason.
    for b in ("2026-11-02", "2026-11-16"):
        ledger.charge(dataset_id="weekly", run_id=f"spent-{b}", kind="release", key="counts", randomness="secure",
                      blocks=[b], charges=[Charge("holdout", fitting(budget, 0.999), "gaussian")])
    ctx2 = _stage_ctx(tmp_path, monkeypatch, "run-2", spec)
    with pytest.raises(BudgetExceeded, match="every privacy block of its window is retired"):
        stage.run(ctx2)
    assert "every privacy block" in ctx2.store.read(Refusal).reasons[0]
