"""The dashboard's backfill page: what a backfill of a date range will spend, linked from the DAG."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from ppmlops.dashboard import create_app


@pytest.fixture()
def client(tmp_path, monkeypatch):
    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path / "home"))  # no run yet: no ledger database
    return TestClient(create_app())


def test_the_page_asks_for_a_range_then_lists_the_runs_and_the_verdict(client):
    form = client.get("/pipelines/demo_churn/backfill")
    assert form.status_code == 200 and 'name="start"' in form.text and "Runs" not in form.text
    page = client.get("/pipelines/demo_churn/backfill", params={"start": "2026-11-02", "end": "2026-11-23"})
    assert page.status_code == 200
    text = page.text
    assert "all 3 runs fit in what is left of the dataset&#x27;s lifetime budget" in text  # @weekly: Sundays
    assert "no run of this pipeline yet" in text and text.count('class="badge b-allow">fits') == 3
    assert "ppmlops backfill cost demo_churn --from 2026-11-02 --to 2026-11-23" in text


def test_an_unknown_pipeline_or_a_bad_date_is_named(client):
    missing = client.get("/pipelines/nope/backfill", params={"start": "2026-11-02", "end": "2026-11-23"})
    assert missing.status_code == 404 and "no valid pipeline spec named &#x27;nope&#x27;" in missing.text
    bad = client.get("/pipelines/demo_churn/backfill", params={"start": "2 Nov", "end": "2026-11-23"})
    assert bad.status_code == 400 and "dates must read YYYY-MM-DD" in bad.text


def test_the_dags_docs_link_to_it():
    from ppmlops.airflow.trigger_form import budget_words
    from ppmlops.spec import load_spec
    from pathlib import Path

    spec = load_spec(Path(__file__).resolve().parents[2] / "dags" / "pipelines" / "demo.yaml")
    assert "/ppmlops/pipelines/demo_churn/backfill" in budget_words(spec)
