"""RunStore is the one reader and writer of a run folder: it names every file, writes private
ones owner-only, and what it publishes (public_records, public_files) never includes private/."""

from __future__ import annotations

import json
import os
import stat

import pytest

from ppmlops.errors import PpmlopsError
from ppmlops.run import records as rec
from ppmlops.run.store import MANIFEST_FILE, REQUEST_FILE, RunStore


@pytest.fixture()
def store(tmp_path):
    s = RunStore.of(tmp_path / "runs", "demo", "manual__2026-01-01T00:00:00+00:00").ensure()
    s.write(rec.RunIdentity(run_id="manual__2026-01-01T00:00:00+00:00", pipeline="demo", dag_id="ppmlops_demo",
                            dataset_id="ds"))
    s.write(rec.Refusal(stage="plan", reasons=["no budget"]))
    s.write(rec.Canaries(n_features=3, units=2, included=[True, False]))  # private
    return s


def test_public_records_are_typed_and_never_private(store):
    found = store.public_records()
    assert list(found) == ["run", "refused"]
    assert isinstance(found["refused"], rec.Refusal) and found["refused"].reasons == ["no budget"]
    assert [p.name for p in store.public_files()] == ["refused.json", "run.json"]
    assert [s.root for s in RunStore.every(store.root.parents[1])] == [store.root]


def test_an_unreadable_record_is_kept_as_its_error_only_when_asked(store):
    store.path_of(rec.Refusal).write_text(json.dumps({"stage": "plan", "reasonz": []}))
    with pytest.raises(PpmlopsError, match="not a valid Refusal"):
        store.public_records()
    kept = store.public_records(unreadable="keep")
    assert isinstance(kept["refused"], PpmlopsError) and isinstance(kept["run"], rec.RunIdentity)


def test_documents_and_private_files_go_where_the_store_says(store):
    path = store.write_document(MANIFEST_FILE, {"run": {"id": "r"}, "n": 1.5})
    assert path == store.manifest_path and path.read_text() == json.dumps({"run": {"id": "r"}, "n": 1.5}, indent=2)
    assert store.read_document(MANIFEST_FILE) == {"run": {"id": "r"}, "n": 1.5}
    assert store.read_document(REQUEST_FILE) is None
    with pytest.raises(PpmlopsError, match="not a public document"):
        store.write_document("canaries.json", {})
    with pytest.raises(PpmlopsError, match="not a public document"):
        store.read_document("private/canaries.json")
    report = store.write_private_text("risk.txt", "exact findings")
    assert report.parent == store.private_dir and stat.S_IMODE(report.stat().st_mode) == 0o600
    with pytest.raises(PpmlopsError):
        store.private_path("../run.json")
    assert "risk.txt" not in [p.name for p in store.public_files()]


def test_last_written_ignores_private_files(store):
    before = store.last_written()
    future = before + 1000
    os.utime(store.path_of(rec.Canaries), (future, future))
    assert store.last_written() == before
    store.epochs_path.write_text('{"epoch": 1}\n{"epo')  # a line being written
    os.utime(store.epochs_path, (future, future))
    assert store.last_written() == future and store.epoch_lines() == [{"epoch": 1}]


def test_the_dashboard_reads_the_manifest_as_the_typed_document_it_is(tmp_path, monkeypatch):
    """A manifest the gate wrote is read back as a DeployManifest (the same document); one that
    does not validate is shown as written, with why (issue 31, item 1)."""
    from ppmlops import settings
    from ppmlops.compliance.documents import DeployManifest
    from ppmlops.compliance.examples import DEPLOY_INPUT
    from ppmlops.dashboard.runs import detail

    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path / "home"))
    s = settings.load()
    store = RunStore.of(s.runs_dir, "demo", "manual__1").ensure()
    store.write(rec.RunIdentity(run_id="manual__1", pipeline="demo", dag_id="ppmlops_demo", dataset_id="ds"))
    store.write_document(MANIFEST_FILE, DeployManifest.model_validate(DEPLOY_INPUT).document())
    shown = detail(s, "demo", "manual__1")["records"]["manifest"]
    assert shown == DeployManifest.model_validate(DEPLOY_INPUT).document() and "schema_error" not in shown
    store.write_document(MANIFEST_FILE, {**DEPLOY_INPUT, "privacy": {"epsilon": "lots"}})
    shown = detail(s, "demo", "manual__1")["records"]["manifest"]
    assert shown["privacy"] == {"epsilon": "lots"} and shown["schema_error"].startswith("not a valid DeployManifest")
