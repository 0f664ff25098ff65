"""One figure for a dataset's use, the same on every surface; the block chart; a charge's own epsilon.

Built with the product's Ledger (weekly privacy blocks), RunStore records and the dashboard app,
as tests/unit/test_dashboard_views.py does: no mocks.
"""

from __future__ import annotations

import json
import math
import re
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote

import pytest

from ppmlops import settings
from ppmlops.dashboard.access import Reader
from ppmlops.dashboard.html_base import esc
from ppmlops.privacy.accountant import Segment, calibrate_noise, epsilon_from_rdp, segment_rdp
from ppmlops.privacy.block_view import dataset_use, percent, use_of
from ppmlops.privacy.blocks import BlockCalendar
from ppmlops.privacy.ledger import Charge, Ledger
from ppmlops.privacy.lifetime import epsilon_at
from ppmlops.run import records as rec
from ppmlops.run.store import RunStore

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from unit.test_dashboard_views import client_as  # noqa: E402

UTC = timezone.utc
DS, PIPE, DAG = "events", "weekly_churn", "ppmlops_weekly_churn"
WEEKLY = BlockCalendar(timedelta(days=7))
DELTA = 1e-5
OFFICER = Reader("officer", compliance=True)
# Three weekly runs with a 3-week lookback; the third retired its oldest block (2026-11-02).
RUNS = (("scheduled__2026-11-23T00:00:00+00:00", ["2026-11-02", "2026-11-09", "2026-11-16"], []),
        ("scheduled__2026-11-30T00:00:00+00:00", ["2026-11-09", "2026-11-16", "2026-11-23"], []),
        ("scheduled__2026-12-07T00:00:00+00:00", ["2026-11-23", "2026-11-30"], ["2026-11-16"]))


def _run(ledger: Ledger, s, run_id: str, blocks: list[str], retired: list[str], count: Segment) -> None:
    [release] = ledger.charge(dataset_id=DS, run_id=run_id, charges=[Charge("train", count, "gaussian")],
                              kind="release", key="assess/counts", randomness="secure", blocks=blocks)
    ledger.complete(release)
    ledger.charge(dataset_id=DS, run_id=run_id, kind="grant", key="plan/grant", randomness="secure", blocks=blocks,
                  charges=[Charge("train", Segment(2.0, 0.02, 100)), Charge("holdout", Segment(6.0, 1.0, 4), "gaussian")])
    usage = ledger.record_usage(dataset_id=DS, run_id=run_id, key="train/epoch-1", randomness="secure",
                                charge=Charge("train", Segment(2.0, 0.02, 60)))
    ledger.complete(usage)
    ledger.close_grant(dataset_id=DS, run_id=run_id)
    store = RunStore.of(s.runs_dir, PIPE, run_id).ensure()
    store.write(rec.RunIdentity(run_id=run_id, pipeline=PIPE, dag_id=DAG, dataset_id=DS))
    store.write(rec.Staged(data_fingerprint="hmac", columns=["x"], sources=["events.csv"], split="hash", blocks=blocks,
                           retired_blocks=[rec.RetiredBlock(block=b, start=f"{b}T00:00:00+00:00",
                                                            end=(datetime.fromisoformat(b) + timedelta(days=7))
                                                            .date().isoformat() + "T00:00:00+00:00",
                                                            why="its budget cannot afford the run")
                                           for b in retired]))


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PPMLOPS_DB_URL", raising=False)
    s = settings.load()
    ledger = Ledger(s.db_url)
    ledger.register_dataset(DS, epsilon_budget=3.0, delta=DELTA, order=8.0, calendar=WEEKLY)
    # The count release of a run: epsilon 0.2 on its own (its best order), as assess calibrates it.
    count = Segment(calibrate_noise(0.2, DELTA, 1.0, 1), 1.0, 1)
    for run_id, blocks, retired in RUNS:
        _run(ledger, s, run_id, blocks, retired, count)
    yield s, ledger, count
    ledger.close()


def test_the_figure_is_the_worst_block_and_split_as_admission_sees_it(home):
    s, ledger, _ = home
    use = dataset_use(ledger, DS)
    shares = ledger.block_shares(DS)
    top = max(v for per in shares.values() for v in per.values())
    assert use.share == top == ledger.summary(DS)["datasets"][0]["share_used"]
    # 2026-11-09, -16 and -23 are each read by two runs (the most): the earliest of the tie is named.
    tied = [b for b, per in shares.items() if per["train"] == top]
    assert tied == ["2026-11-09", "2026-11-16", "2026-11-23"] and (use.block, use.partition) == ("2026-11-09", "train")
    assert shares["2026-11-09"]["train"] == pytest.approx(2 * shares["2026-11-02"]["train"], rel=1e-12)
    assert use.text().startswith(percent(use.share) + " of the lifetime budget")
    assert "block 2026-11-09, training rows" in use.text()


def test_every_surface_shows_the_same_figure_for_the_same_ledger(home, capsys):
    """Overview, dataset page, run page, CLI and MLflow's tag all read block_view (the trigger form
    links to the dataset page: a figure in it would make a new DAG version when it moved)."""
    from ppmlops.cli import main
    from ppmlops.registry.tracking import dataset_use_tags

    s, ledger, _ = home
    use = dataset_use(ledger, DS)
    figure, where = esc(percent(use.share)), f"block {use.block}, training rows"
    c = client_as(OFFICER)
    overview = c.get("/").text
    dataset = c.get(f"/datasets/{DS}").text
    run = c.get(f"/runs/{PIPE}/{quote(RUNS[0][0], safe='')}").text
    for name, page in (("overview", overview), ("dataset", dataset), ("run", run)):
        assert f">{figure}<" in page and where in page, name
        # no other percentage of the dataset's budget competes with it
        assert "of the budget" not in page, name
    assert main(["ledger", "show", "--dataset", DS]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"dataset {DS}: {use.text()} (Renyi filter at order 8)"
    assert main(["ledger", "show", "--dataset", DS, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)["datasets"][0]
    assert doc["use"]["share_used"] == use.share and doc["use"]["worst_block"] == use.block
    tags = dataset_use_tags(ledger, DS)
    assert tags["ppmlops.dataset_share_used"] == use.text() and tags["ppmlops.dataset_worst_block"] == use.block


def test_the_dataset_page_draws_each_blocks_share_runs_and_retirements(home):
    s, ledger, _ = home
    page = client_as(OFFICER).get(f"/datasets/{DS}").text
    chart = page[page.index('<figure class="chart blocks">'):]
    chart = chart[:chart.index("</figure>")]
    shares = ledger.block_shares(DS)
    for block, per in shares.items():  # one bar per (block, split), its share in its hover text
        for p, v in per.items():
            assert f"block {block}, {p} rows: {esc(percent(v))} of its lifetime budget used" in chart
    assert len(re.findall(r'<rect class="bar ', chart)) == sum(len(p) for p in shares.values())
    worst = re.findall(r'<rect class="bar s\d worst"[^>]*><title>([^<]*)</title>', chart)
    assert worst == [f"block 2026-11-09, train rows: {esc(percent(shares['2026-11-09']['train']))} "
                     "of its lifetime budget used"]
    # bars are ordered by block start; a higher share is a taller bar
    xs = {t: float(x) for x, t in re.findall(r'<rect class="bar s1[^"]*" x="([0-9.]+)"[^>]*><title>block ([0-9-]+)', chart)}
    assert list(xs) == sorted(xs) and xs["2026-11-02"] < xs["2026-11-30"]
    heights = {t: float(h) for h, t in re.findall(r'<rect class="bar s1[^"]*"[^>]*height="([0-9.]+)"><title>block ([0-9-]+)', chart)}
    assert heights["2026-11-16"] == pytest.approx(2 * heights["2026-11-02"], abs=0.2)
    assert heights["2026-11-30"] == pytest.approx(heights["2026-11-02"], abs=0.2)
    # each run's lane spans its blocks; the third run's retired block is crossed and named
    assert chart.count('class="lane s1"') == 3  # every run read contiguous blocks
    assert f"{RUNS[2][0]} retired block 2026-11-16: its budget cannot afford the run" in esc(chart) or \
        esc(f"{RUNS[2][0]} retired block 2026-11-16: its budget cannot afford the run") in chart
    # and the glossary says what each figure means
    glossary = page[page.index("What the figures mean"):]
    for term in ("lifetime budget", "share used", "grant", "trimmed", "released", "block", "retired", "worst block"):
        assert f"<dt>{term}</dt>" in glossary


def test_a_count_release_reads_its_own_epsilon_not_the_lifetime_orders(home):
    """A 0.2 count release used to read "ε counted 1.45": its RDP converted at the lifetime order
    on its own, where the conversion's log(1/delta)/(alpha-1) term dominates."""
    s, ledger, count = home
    budget = ledger.budget(DS)
    own = epsilon_from_rdp(segment_rdp(count), DELTA)[0]
    at_lifetime_order = epsilon_at(float(segment_rdp(count)[budget.index]), DELTA, budget.order)
    assert own == pytest.approx(0.2, abs=2e-4) and at_lifetime_order > 1.0  # the figure that misled
    data = client_as(OFFICER).get(f"/api/datasets/{DS}").json()
    first = data["spend_steps"][0]
    assert first["event"] == "release" and first["charge_epsilon"] == pytest.approx(own, rel=1e-12)
    # the figure after it is a share of the block's budget, the release's RDP at the order over the budget
    assert first["share"]["train"] == pytest.approx(float(segment_rdp(count)[budget.index]) / budget.rdp, rel=1e-12)
    page = client_as(OFFICER).get(f"/datasets/{DS}").text
    steps = page[page.index("How the budget was spent"):page.index("Spend per run")]
    assert f'<td class="num">{own:.4g}</td>' in steps and f"{at_lifetime_order:.4g}" not in page


def test_use_of_refuses_a_summary_whose_worst_block_disagrees():
    d = {"dataset_id": "x", "epsilon_budget": 3.0, "delta": DELTA, "accounting_order": 8.0, "share_used": 0.5,
         "block_length_seconds": 604800.0, "blocks": {"2026-11-02": {"train": 0.25}}}
    with pytest.raises(Exception, match="not its worst block"):
        use_of(d)
    assert use_of({**d, "share_used": 0.25}).block == "2026-11-02"
    assert percent(0.0004) == "<0.1%" and percent(0.9996) == ">99.9%" and percent(1.0) == "100.0%"
