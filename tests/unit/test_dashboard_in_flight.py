"""Runs in flight on the dashboard (issue 30, item 3): a run still going reads "running" with the
stage it is at and, while it trains, epoch k of n, from its public records and the epoch lines
rank 0 writes; never from its private/ folder. Built on tests/dashboard_data.py's home (real
ledger, audit log, policy and registry) plus a run written the way the stages write it."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from ppmlops import settings
from ppmlops.dashboard import create_app
from ppmlops.dashboard.runs import state_of
from ppmlops.run import records as rec

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
import dashboard_data  # noqa: E402

RUN = "manual__2026-03-23T09:00:00+00:00"
SECRET = "31337"  # an exact count only private/ holds


@pytest.fixture()
def built(tmp_path, monkeypatch):
    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PPMLOPS_DB_URL", raising=False)
    monkeypatch.delenv("PPMLOPS_RUN_STALE_AFTER_S", raising=False)
    return dashboard_data.build(settings.load())


@pytest.fixture()
def client():
    return TestClient(create_app())


def _in_flight_rows(page: str) -> str:
    return page[page.index("<h2>Runs in flight</h2>"):].split("<h2>", 2)[1]


def test_a_run_still_training_reads_running_with_its_epoch(built, client):
    store = dashboard_data.in_flight_run(built.settings, RUN, epochs_done=2)
    (store.private_dir / "counts.json").write_text(f'{{"rows_in": {SECRET}}}')  # never read by the dashboard

    [listed] = [r for r in client.get("/api/runs").json()["runs"] if r["run_id"] == RUN]
    state = listed["state"]
    assert (state["state"], state["stage"], state["epoch"], state["epochs"], state["epochs_done"]) == \
        ("running", "train", 3, len(dashboard_data.EPOCHS), 2)
    assert state["in_flight"] and state["words"] == "training: epoch 3 of 4 (2 finished)"

    overview = client.get("/").text
    rows = _in_flight_rows(overview)
    assert RUN in rows and 'class="badge b-running"' in rows and ">train</td>" in rows
    assert '<td class="num">3 of 4</td>' in rows
    # the finished runs are not in flight: deployed, denied at the gate, refused at plan
    for other in (built.good_run, built.denied_run, built.refused_run):
        assert other not in rows
    # the approved and deployed run's gate reads the person's answer, not a standing needs_approval
    recent = overview[overview.index("<h2>Recent runs</h2>"):].split("<h2>", 2)[1]
    [row] = [line for line in recent.splitlines() if built.good_run in line]
    assert row.endswith('<td><span class="badge b-allow">approved</span></td></tr>') and "needs_approval" not in row
    finished = {r["run_id"]: r["state"]["state"] for r in client.get("/api/runs").json()["runs"]}
    assert finished == {RUN: "running", built.good_run: "deployed", built.denied_run: "denied",
                        built.refused_run: "refused"}

    dataset = client.get(f"/datasets/{dashboard_data.DATASET}").text
    assert RUN in _in_flight_rows(dataset) and "training: epoch 3 of 4" in dataset

    page = client.get(f"/runs/{dashboard_data.PIPELINE}/{quote(RUN, safe='')}").text
    line = page[page.index('class="run-state"'):].split("</p>", 1)[0]
    assert ">running</span>" in line and "stage <b>train</b>" in line and "epoch <b>3</b> of 4" in line
    # the two finished epochs, live, with the settings they ran with; the tuner's reason comes later
    table = page[page.index("Training, epoch by epoch"):page.index("Where tuning started")]
    assert table.count("recorded when training ends") == 2
    assert "clip norm ↓ 1 → 0.45" in table
    for path in ("/", f"/datasets/{dashboard_data.DATASET}", f"/runs/{dashboard_data.PIPELINE}/{quote(RUN, safe='')}",
                 "/api/runs"):
        assert SECRET not in client.get(path).text, path


def test_the_stage_follows_the_records_and_the_end_is_not_running(built):
    store = dashboard_data.in_flight_run(built.settings, RUN, epochs_done=0)
    stale = built.settings.run_stale_after_s
    assert state_of(store.root, stale).words == "training: epoch 1 of 4"
    (store.root / "plan.json").unlink()
    assert (state_of(store.root, stale).state, state_of(store.root, stale).stage) == ("running", "ingest")
    store.write(dashboard_data._plan(RUN, 0.55, 0.8))
    store.write(dashboard_data._train(0.0))  # training ended: the next stage runs, no epoch is shown
    s = state_of(store.root, stale)
    assert (s.state, s.stage, s.epoch) == ("running", "evaluate", None)
    store.write(rec.GateRecord(outcome="needs_approval", allowed=False, reasons=["risk"], decision_id="d",
                               policy_hash="ab" * 32, engine="embedded-regorus"))
    assert (state_of(store.root, stale).state, state_of(store.root, stale).in_flight) == ("waiting", True)
    store.write(rec.ApprovalRecord(approved=False, outcome="rejected", by="officer", at="2026-03-23T10:00:00+00:00",
                                   channel="airflow-hitl", gate_decision_id="d", gate_reasons=["risk"]))
    assert (state_of(store.root, stale).state, state_of(store.root, stale).in_flight) == ("rejected", False)


def test_a_run_that_wrote_nothing_for_long_is_stalled_not_running(built, client, monkeypatch):
    store = dashboard_data.in_flight_run(built.settings, RUN, epochs_done=1)
    hours_ago = time.time() - 2 * 3600
    for p in store.root.iterdir():
        if p.is_file():
            os.utime(p, (hours_ago, hours_ago))
    [listed] = [r for r in client.get("/api/runs").json()["runs"] if r["run_id"] == RUN]
    assert listed["state"]["state"] == "stalled" and not listed["state"]["in_flight"]
    assert "nothing written for 2 h" in listed["state"]["words"]
    assert RUN not in _in_flight_rows(client.get("/").text)
    monkeypatch.setenv("PPMLOPS_RUN_STALE_AFTER_S", str(3 * 3600))  # the operator's limit, read per request
    assert RUN in _in_flight_rows(client.get("/").text)


def test_a_private_search_shows_no_epoch_or_trial(built, client):
    dashboard_data.in_flight_run(built.settings, RUN, search=True)
    [listed] = [r for r in client.get("/api/runs").json()["runs"] if r["run_id"] == RUN]
    assert listed["state"]["state"] == "running" and listed["state"]["epoch"] is None
    assert "private search" in listed["state"]["words"]
    page = client.get(f"/runs/{dashboard_data.PIPELINE}/{quote(RUN, safe='')}").text
    line = page[page.index('class="run-state"'):].split("</p>", 1)[0]
    assert "epoch <b>" not in line and not re.search(r"\d+ of \d+", _in_flight_rows(client.get("/").text))
