"""ppmlops.audit.AuditLog: full decisions recorded, hash chain, tamper detection."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3

import pytest

from ppmlops.audit import AuditLog
from ppmlops.audit.log import GENESIS, canonical_json, chain_hash
from ppmlops.compliance.engine import Decision


def decision(n: int, outcome: str = "allow") -> Decision:
    return Decision(
        id=f"{n:032x}", time="2026-01-01T00:00:00+00:00", query="data.ppmlops.deploy",
        input={"run": {"id": f"run-{n}"}, "privacy": {"epsilon_spent": 0.97}},
        result={"outcome": outcome, "reasons": [] if outcome == "allow" else ["accuracy 0.50 is below the required 0.60"]},
        outcome=outcome, allowed=outcome == "allow",
        reasons=[] if outcome == "allow" else ["accuracy 0.50 is below the required 0.60"],
        engine="embedded-regorus", policy_hash="ab" * 32, error=None,
    )


@pytest.fixture()
def db(tmp_path):
    path = tmp_path / "nested" / "ppmlops.db"  # parent folder does not exist yet
    return path, f"sqlite:///{path}"


@pytest.fixture()
def filled(db):
    path, url = db
    log = AuditLog(url)
    for n in range(1, 6):
        log.record(decision(n, "allow" if n % 2 else "deny"), run_id=f"run-{n % 2}",
                   dataset_id="demo_customers", stage="gate")
    return path, log


def sql(path, statement: str, *args) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(statement, args)


def test_records_hold_the_full_decision_in_order(db):
    _, url = db
    log = AuditLog(url)
    d = decision(1, "deny")
    assert log.record(d, run_id="run-a", dataset_id="demo_customers", stage="gate") == 1
    assert log.record(decision(2), run_id="run-b", dataset_id="other", stage="plan") == 2

    [rec] = log.records(run_id="run-a")
    assert rec["seq"] == 1 and rec["stage"] == "gate" and rec["dataset_id"] == "demo_customers"
    assert rec["decision"] == d.to_dict()
    assert rec["prev_hash"] == GENESIS
    body = {k: v for k, v in rec.items() if k not in ("hash", "prev_hash")}
    assert rec["hash"] == chain_hash(GENESIS, canonical_json(body))

    assert [r["seq"] for r in log.records()] == [1, 2]
    assert [r["seq"] for r in log.records(dataset_id="other")] == [2]
    assert log.records()[1]["prev_hash"] == rec["hash"]
    assert log.verify() == []


def test_a_second_instance_continues_the_chain(db):
    _, url = db
    AuditLog(url).record(decision(1))
    log = AuditLog(url)
    assert log.record(decision(2)) == 2
    assert log.verify() == []


def test_edited_record_is_named(filled):
    path, log = filled
    rec = log.records()[2]
    rec["decision"]["input"]["privacy"]["epsilon_spent"] = 0.5
    edited = canonical_json({k: v for k, v in rec.items() if k not in ("hash", "prev_hash")})
    sql(path, "UPDATE audit_log SET record = ? WHERE seq = 3", edited)
    problems = log.verify()
    assert problems == [f"audit record seq 3 (decision {3:032x}): content does not match its hash: edited"]


def test_edited_column_is_named(filled):
    path, log = filled
    sql(path, "UPDATE audit_log SET outcome = 'allow' WHERE seq = 2")
    [problem] = log.verify()
    assert problem.startswith("audit record seq 2")
    assert "column outcome says 'allow' but the hashed record says 'deny'" in problem


def test_rehashed_edit_still_breaks_the_next_link(filled):
    path, log = filled
    rec = log.records()[1]
    rec["decision"]["outcome"] = "allow"
    text = canonical_json({k: v for k, v in rec.items() if k not in ("hash", "prev_hash")})
    sql(path, "UPDATE audit_log SET record = ?, outcome = 'allow', hash = ? WHERE seq = 2",
        text, chain_hash(rec["prev_hash"], text))
    [problem] = log.verify()
    assert problem.startswith("audit record seq 3 ") and "prev_hash does not match" in problem


def test_deleted_record_is_named(filled):
    path, log = filled
    sql(path, "DELETE FROM audit_log WHERE seq = 3")
    problems = log.verify()
    assert "audit records seq 3 are missing: deleted" in problems
    assert any(p.startswith("audit record seq 4 ") and "prev_hash does not match" in p for p in problems)


def test_reordered_records_are_named(filled):
    path, log = filled
    with sqlite3.connect(path) as conn:
        rows = {seq: row for seq, *row in conn.execute(
            "SELECT seq, id, outcome, run_id, record, prev_hash, hash FROM audit_log WHERE seq IN (2, 3)")}
        for seq, other in ((2, 3), (3, 2)):
            conn.execute("UPDATE audit_log SET id=?, outcome=?, run_id=?, record=?, prev_hash=?, hash=? WHERE seq=?",
                         (*rows[other], seq))
    problems = log.verify()
    assert any(p.startswith("audit record seq 2 ") and "written as seq 3: reordered" in p for p in problems)
    assert any(p.startswith("audit record seq 3 ") and "written as seq 2: reordered" in p for p in problems)


def test_truncation_is_caught_with_an_anchor(filled):
    path, log = filled
    anchor = log.head()
    assert anchor["seq"] == 5
    sql(path, "DELETE FROM audit_log WHERE seq = 5")
    assert log.verify() == []  # a chain alone cannot tell that its tail is gone
    assert log.verify(anchor=anchor) == ["anchored audit record seq 5 is missing: the log was cut back to seq 4"]


def test_record_refuses_something_that_is_not_a_decision(db):
    _, url = db
    with pytest.raises(ValueError, match="decision lacks"):
        AuditLog(url).record({"outcome": "allow"})


def _append_many(url: str, start: int, count: int) -> None:
    log = AuditLog(url)
    for n in range(start, start + count):
        log.record(decision(n), stage="concurrent")


def test_concurrent_writers_keep_one_chain(db):
    _, url = db
    AuditLog(url)  # create the table before the writers race
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(url, 100 * i, 15)) for i in range(1, 4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    log = AuditLog(url)
    assert [r["seq"] for r in log.records()] == list(range(1, 46))
    assert log.verify() == []
    assert len({r["decision"]["id"] for r in log.records()}) == 45


def test_records_survive_a_json_round_trip(filled):
    _, log = filled
    for rec in log.records():
        assert json.loads(json.dumps(rec)) == rec
