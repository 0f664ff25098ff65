"""Database faults a retry cannot fix: a damaged SQLite file and a full disk are named (the file and
what to do) and fail the task at once; a server that is down is still retried (issue 26, item 8)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from ppmlops.airflow.tasks import failure, retried
from ppmlops.audit.log import AuditLog
from ppmlops.db import DatabaseUnavailable
from ppmlops.privacy.accountant import Segment
from ppmlops.privacy.ledger import Charge, Ledger

RELEASE = Segment(20.0, 1.0, 1)


def _charge(ledger: Ledger, run_id: str = "r") -> None:
    ledger.charge(dataset_id="d", run_id=run_id, charges=[Charge("train", RELEASE, "gaussian")],
                  kind="release", key=f"k-{run_id}", randomness="secure")


def test_a_damaged_sqlite_ledger_names_the_file_and_is_not_retried(tmp_path: Path):
    path = tmp_path / "ppmlops.db"
    path.write_bytes(b"\x17not sqlite at all" * 2000)
    for call in (lambda: Ledger(f"sqlite:///{path}").summary(), lambda: AuditLog(f"sqlite:///{path}").verify()):
        with pytest.raises(DatabaseUnavailable) as err:
            call()
        message = str(err.value)
        assert str(path) in message and "not a database" in message
        assert "restore it from a backup" in message and "Do not delete it" in message
        assert not err.value.transient and not retried(err.value)
    assert type(failure(err.value)).__name__ == "AirflowFailException"


def test_a_full_disk_names_the_file_and_is_not_retried(tmp_path: Path):
    path = tmp_path / "ppmlops.db"
    ledger = Ledger(f"sqlite:///{path}")
    ledger.register_dataset("d", epsilon_budget=1.0, delta=1e-5)
    _charge(ledger, "first")
    pages = path.stat().st_size // 4096 + 1

    # SQLite's own SQLITE_FULL, the error a full disk gives: cap the file at its current size.
    def cap(dbapi_conn, _record):
        dbapi_conn.execute(f"PRAGMA max_page_count = {pages}")

    event.listen(Engine, "connect", cap)
    try:
        with pytest.raises(DatabaseUnavailable) as err:
            for i in range(200):  # each entry needs room; the cap is reached within a few
                _charge(Ledger(f"sqlite:///{path}"), f"run{i}")
    finally:
        event.remove(Engine, "connect", cap)
    message = str(err.value)
    assert str(path) in message and "full" in message and f"df -h {tmp_path}" in message
    assert not retried(err.value)
    # The failed transaction left nothing half-written: every entry is whole, the first is there.
    assert {e.run_id for e in Ledger(f"sqlite:///{path}").entries("d")} >= {"first"}


def test_a_server_that_is_down_is_retried():
    with pytest.raises(DatabaseUnavailable) as err:
        Ledger("postgresql+psycopg2://ppmlops:secret@127.0.0.1:1/ppmlops").summary()
    assert err.value.transient and retried(err.value) and failure(err.value) is err.value
    assert "secret" not in str(err.value)


def test_a_ledger_that_is_down_at_ingest_refuses_nothing(tmp_path, monkeypatch):
    """A server that is down fails the ingest task for a retry and writes no Refusal record, which
    would outlive the retry that passes and mark the run refused; a fault a retry cannot fix
    while the blocks are opened is still recorded as the run's refusal."""
    from plans import demo_table_run

    from ppmlops.run.records import Refusal
    from ppmlops.stages import ingest as ingest_stage

    monkeypatch.setenv("PPMLOPS_DB_URL", "postgresql+psycopg2://ppmlops:secret@127.0.0.1:1/ppmlops")
    ctx = demo_table_run(tmp_path, monkeypatch, "down", rows=200)
    with pytest.raises(DatabaseUnavailable) as err:
        ingest_stage.run(ctx)
    assert err.value.transient and ctx.store.read_optional(Refusal) is None

    monkeypatch.delenv("PPMLOPS_DB_URL")
    for transient in (True, False):
        ctx = demo_table_run(tmp_path, monkeypatch, f"opening-{transient}", rows=200)
        def opening_fails(ctx, ledger, transient=transient):
            raise DatabaseUnavailable("cannot read the privacy ledger in the database at somewhere", transient=transient)

        monkeypatch.setattr(ingest_stage, "open_blocks", opening_fails)
        with pytest.raises(DatabaseUnavailable):
            ingest_stage.run(ctx)
        assert (ctx.store.read_optional(Refusal) is None) == transient


def test_a_ledger_that_is_down_at_assess_refuses_nothing(tmp_path, monkeypatch):
    """The same rule at assess (ppmlops.stages.refusal.refuses), where the ledger is read and
    charged: a fault a retry can pass writes no Refusal; one it cannot is the run's refusal."""
    from plans import demo_table_run

    from ppmlops.run.records import Refusal
    from ppmlops.stages import assess, ingest as ingest_stage

    for transient in (True, False):
        ctx = demo_table_run(tmp_path, monkeypatch, f"assess-{transient}", rows=300)
        ingest_stage.run(ctx)

        def precheck_fails(ctx, ledger, transient=transient):
            raise DatabaseUnavailable("cannot read the privacy ledger in the database at somewhere", transient=transient)

        monkeypatch.setattr(assess.precheck, "run", precheck_fails)
        with pytest.raises(DatabaseUnavailable):
            assess.run(ctx)
        refusal = ctx.store.read_optional(Refusal)
        assert refusal is None if transient else refusal.stage == "assess"
