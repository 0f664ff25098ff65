"""What a backfill will cost, from public facts, before it starts (issue 30, item 5)."""

from __future__ import annotations

import copy
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml

from ppmlops.backfill_cost import estimate, intervals
from ppmlops.privacy.accountant import Segment
from ppmlops.privacy.blocks import calendar_of
from ppmlops.privacy.ledger import TRAIN, Charge, Ledger
from ppmlops.privacy.lifetime import expected_budget
from ppmlops.spec import parse_spec

REPO = Path(__file__).resolve().parents[2]
UTC = timezone.utc
NOW = datetime(2026, 12, 9, 12, tzinfo=UTC)  # a Wednesday


def weekly(**privacy):
    doc = copy.deepcopy(yaml.safe_load((REPO / "tests" / "e2e" / "e2e_small.yaml").read_text()))
    doc.update(name="weekly", schedule="0 0 * * 1")
    doc["dataset"].update(id="weekly_events", window={"column": "event_time", "lookback": "P14D"}, expected_rows=700)
    doc["privacy"].update({"epsilon": 1.9, "run_epsilon": 1.0, "blocks": "P7D"} | privacy)
    return parse_spec(doc, "weekly.yaml")


def test_a_range_makes_the_schedules_intervals_that_start_in_it_and_have_ended():
    spec = weekly()
    got = intervals(spec, datetime(2026, 11, 9, tzinfo=UTC), datetime(2026, 12, 7, tzinfo=UTC), now=NOW)
    assert [(i.start.date().isoformat(), i.end.date().isoformat()) for i in got] == [
        ("2026-11-09", "2026-11-16"), ("2026-11-16", "2026-11-23"), ("2026-11-23", "2026-11-30"),
        ("2026-11-30", "2026-12-07")]  # the week from Dec 7 has not ended on Dec 9: not backfilled
    assert intervals(spec, datetime(2026, 11, 10, tzinfo=UTC), datetime(2026, 11, 15, tzinfo=UTC), now=NOW) == []


def test_each_block_holds_what_its_remainder_pays_for_and_runs_fit_oldest_first(tmp_path):
    """Four weekly runs over two-week windows read five blocks, the middle ones twice. Before any
    run, each is priced at the spec's run on its declared rows: the runs a block holds is the
    lifetime RDP over that run's RDP at the order, and a run fits while every block it reads holds
    one more. A block charged by an earlier run holds fewer."""
    spec = weekly()
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    wanted = intervals(spec, datetime(2026, 11, 9, tzinfo=UTC), datetime(2026, 12, 7, tzinfo=UTC), now=NOW)
    fresh = estimate(spec, ledger, wanted)
    assert "no run of this pipeline yet" in fresh.basis
    budget = expected_budget(spec)
    from ppmlops.privacy.lifetime import spec_run_curve

    per_block = math.floor(budget.rdp / float(spec_run_curve(spec)[budget.index]))
    assert [b.runs_reading for b in fresh.blocks] == [1, 2, 2, 2, 1]
    assert {b.runs_it_holds for b in fresh.blocks} == {per_block} and all(b.share_used == 0 for b in fresh.blocks)
    assert per_block == 3 and fresh.fitting == len(wanted) and "all 4 runs fit" in fresh.verdict()

    # an earlier run charged the block of the week from Nov 16 to 75% of its budget, less than a run
    # is left: the two runs whose window reads it do not fit
    ledger.register_dataset(spec.dataset.id, epsilon_budget=1.9, delta=spec.privacy.delta, order=budget.order,
                            calendar=calendar_of(spec.privacy))
    block = [b.block for b in fresh.blocks][2]
    start = datetime(2026, 11, 16, tzinfo=UTC)
    ledger.charge(dataset_id=spec.dataset.id, run_id="earlier", kind="release", key="counts", randomness="secure",
                  charges=[Charge(TRAIN, Segment(2.6, 1.0, 1))], blocks=list(calendar_of(spec.privacy).touching(start, start + timedelta(days=7))))
    later = estimate(spec, ledger, wanted)
    charged = {b.block: b for b in later.blocks}[block]
    assert round(charged.share_used, 2) == 0.75 and charged.runs_it_holds == 0
    assert [r.fits for r in later.runs] == [True, False, False, True]
    assert "2 of the 4 runs fit" in later.verdict()

    # once a run of the pipeline is in the ledger, runs are priced at what it was charged
    ledger.register_run(spec.dataset.id, "earlier", spec.name, start + timedelta(days=7))
    priced = estimate(spec, ledger, wanted)
    assert "the pipeline's last run, earlier" in priced.basis
    assert {b.block: b.runs_it_holds for b in priced.blocks}[fresh.blocks[0].block] == 1  # 0.98 // 0.74
