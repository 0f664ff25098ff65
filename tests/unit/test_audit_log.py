"""ppmlops.audit.AuditLog on SQLite and PostgreSQL: full decisions recorded, hash chain, tamper
detection, anchors, and a log that is missing or empty never reads as intact."""

from __future__ import annotations

import json
import multiprocessing
import socket

import pytest
import sqlalchemy as sa

from ppmlops import cli, db
from ppmlops.audit import AuditLog
from ppmlops.audit.log import GENESIS, BadAnchor, ChainHead, canonical_json, chain_hash, chain_head
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


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    """An audit log database that does not hold the table yet, on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'nested' / 'ppmlops.db'}"  # parent folder does not exist yet
    pg = request.getfixturevalue("pg_url")
    sql(pg, "DROP TABLE IF EXISTS audit_log")
    return pg


@pytest.fixture()
def filled(url):
    log = AuditLog(url)
    for n in range(1, 6):
        log.record(decision(n, "allow" if n % 2 else "deny"), run_id=f"run-{n % 2}",
                   dataset_id="demo_customers", stage="gate")
    return url, log


def sql(url: str, statement: str, **params) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(statement), params)
    finally:
        engine.dispose()


def body_of(rec: dict) -> str:
    return canonical_json({k: v for k, v in rec.items() if k not in ("hash", "prev_hash")})


def test_records_hold_the_full_decision_in_order(url):
    log = AuditLog(url)
    d = decision(1, "deny")
    assert log.record(d, run_id="run-a", dataset_id="demo_customers", stage="gate") == 1
    assert log.record(decision(2), run_id="run-b", dataset_id="other", stage="plan") == 2

    [rec] = log.records(run_id="run-a")
    assert rec["seq"] == 1 and rec["stage"] == "gate" and rec["dataset_id"] == "demo_customers"
    assert rec["decision"] == d.to_dict()
    assert rec["prev_hash"] == GENESIS
    assert rec["hash"] == chain_hash(GENESIS, body_of(rec))

    assert [r["seq"] for r in log.records()] == [1, 2]
    assert [r["seq"] for r in log.records(dataset_id="other")] == [2]
    assert log.records()[1]["prev_hash"] == rec["hash"]
    assert log.verify() == []


def test_every_outcome_is_recorded(url):
    log = AuditLog(url)
    for n, outcome in enumerate(("deny", "needs_approval", "allow", "rejected"), start=1):
        log.record(decision(n, outcome), run_id="run-x", stage="gate")
    assert [r["decision"]["outcome"] for r in log.records()] == ["deny", "needs_approval", "allow", "rejected"]


def test_a_second_instance_continues_the_chain(url):
    AuditLog(url).record(decision(1))
    log = AuditLog(url)
    assert log.record(decision(2)) == 2
    assert log.verify() == []


def test_edited_record_is_named(filled):
    url, log = filled
    rec = log.records()[2]
    rec["decision"]["input"]["privacy"]["epsilon_spent"] = 0.5
    sql(url, "UPDATE audit_log SET record = :r WHERE seq = 3", r=body_of(rec))
    assert log.verify() == [f"audit record seq 3 (decision {3:032x}): content does not match its hash: edited"]


def test_edited_column_is_named(filled):
    url, log = filled
    sql(url, "UPDATE audit_log SET outcome = 'allow' WHERE seq = 2")
    [problem] = log.verify()
    assert problem.startswith("audit record seq 2")
    assert "column outcome says 'allow' but the hashed record says 'deny'" in problem


def test_rehashed_edit_still_breaks_the_next_link(filled):
    url, log = filled
    rec = log.records()[1]
    rec["decision"]["outcome"] = "allow"
    text = body_of(rec)
    sql(url, "UPDATE audit_log SET record = :r, outcome = 'allow', hash = :h WHERE seq = 2",
        r=text, h=chain_hash(rec["prev_hash"], text))
    [problem] = log.verify()
    assert problem.startswith("audit record seq 3 ") and "prev_hash does not match" in problem


def test_the_hash_covers_prev_hash(filled):
    """Edit record 2, rehash it, and point record 3 at the new hash: record 3's own hash was made
    over the old prev_hash, so the chain still breaks there (it would not if the hash ignored it)."""
    url, log = filled
    rec = log.records()[1]
    rec["decision"]["outcome"] = "allow"
    text = body_of(rec)
    new_hash = chain_hash(rec["prev_hash"], text)
    sql(url, "UPDATE audit_log SET record = :r, outcome = 'allow', hash = :h WHERE seq = 2", r=text, h=new_hash)
    sql(url, "UPDATE audit_log SET prev_hash = :h WHERE seq = 3", h=new_hash)
    assert log.verify() == [f"audit record seq 3 (decision {3:032x}): content does not match its hash: edited"]


def test_deleted_record_is_named(filled):
    url, log = filled
    sql(url, "DELETE FROM audit_log WHERE seq = 3")
    problems = log.verify()
    assert "audit records seq 3 are missing: deleted" in problems
    assert any(p.startswith("audit record seq 4 ") and "prev_hash does not match" in p for p in problems)


def test_reordered_records_are_named(filled):
    url, log = filled
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        rows = {r.seq: r for r in conn.execute(sa.text(
            "SELECT seq, id, outcome, run_id, record, prev_hash, hash FROM audit_log WHERE seq IN (2, 3)"))}
        for seq, other in ((2, 3), (3, 2)):
            o = rows[other]
            conn.execute(sa.text("UPDATE audit_log SET id=:id, outcome=:outcome, run_id=:run_id, record=:record, "
                                 "prev_hash=:prev_hash, hash=:hash WHERE seq=:seq"),
                         {"id": o.id, "outcome": o.outcome, "run_id": o.run_id, "record": o.record,
                          "prev_hash": o.prev_hash, "hash": o.hash, "seq": seq})
    engine.dispose()
    problems = log.verify()
    assert any(p.startswith("audit record seq 2 ") and "written as seq 3: reordered" in p for p in problems)
    assert any(p.startswith("audit record seq 3 ") and "written as seq 2: reordered" in p for p in problems)


# --------------------------------------------------------------------------- the head and anchors


def test_head_counts_records_and_names_the_newest_hash(filled):
    url, log = filled
    head = log.chain_head()
    assert head == ChainHead(5, 5, log.records()[-1]["hash"])
    assert chain_head(url) == head  # what the pipeline calls after recording
    assert log.head() == {"count": 5, "seq": 5, "hash": head.hash}
    assert ChainHead.parse(str(head)) == head and ChainHead.parse(json.dumps(head.to_dict())) == head
    assert log.verify(anchor=head) == []
    log.record(decision(6))
    assert log.verify(anchor=head) == []  # later appends keep an old anchor valid


def test_deleting_the_newest_record_is_caught_with_an_anchor(filled):
    url, log = filled
    anchor = log.head()
    sql(url, "DELETE FROM audit_log WHERE seq = 5")
    assert log.verify() == []  # a chain alone cannot tell that its tail is gone
    assert log.verify(anchor=anchor) == ["anchored audit record seq 5 is missing: the log was cut back to seq 4"]


def test_an_anchor_with_another_hash_is_reported(filled):
    _, log = filled
    head = log.chain_head()
    forged = ChainHead(head.count, head.seq, "f" * 64)
    assert log.verify(anchor=forged) == [
        f"audit record seq 5 (decision {5:032x}) does not have the anchored hash ffffffffffff...: the chain was rewritten"]


def test_a_rewritten_chain_is_caught_with_an_anchor(filled):
    """Someone recomputes every hash after an edit: the chain verifies, the anchor does not."""
    url, log = filled
    anchor = log.chain_head()
    prev = GENESIS
    for rec in log.records():
        if rec["seq"] == 2:
            rec["decision"]["outcome"] = "allow"
        text = body_of(rec)
        new = chain_hash(prev, text)
        sql(url, "UPDATE audit_log SET record = :r, outcome = :o, prev_hash = :p, hash = :h WHERE seq = :s",
            r=text, o=rec["decision"]["outcome"], p=prev, h=new, s=rec["seq"])
        prev = new
    assert log.verify() == []
    [problem] = log.verify(anchor=anchor)
    assert problem.startswith("audit record seq 5 ") and "the chain was rewritten" in problem


@pytest.mark.parametrize("text", ["", "12", "x:" + "a" * 64, "0:" + "a" * 64, "3:abc", '{"count": 2}'])
def test_a_malformed_anchor_says_what_one_looks_like(text):
    with pytest.raises(BadAnchor, match="an audit anchor is COUNT:HASH"):
        ChainHead.parse(text)


# --------------------------------------------------------------------------- missing and empty logs


def test_every_record_deleted_fails_verify(filled):
    url, log = filled
    anchor = log.chain_head()
    sql(url, "DELETE FROM audit_log")
    [problem] = log.verify()
    assert "holds no records: nothing to verify" in problem and "--allow-empty" in problem
    assert log.verify(allow_empty=True) == []
    [problem] = log.verify(anchor=anchor, allow_empty=True)  # an anchor says there were records
    assert "holds no records, but the anchor says it held 5 record(s)" in problem


def test_a_dropped_table_fails_verify_and_is_not_recreated(filled):
    url, log = filled
    sql(url, "DROP TABLE audit_log")
    [problem] = AuditLog(url).verify()
    assert "has no audit_log table: nothing to verify" in problem
    assert AuditLog(url).verify(allow_empty=True) == []
    assert AuditLog(url).records() == [] and AuditLog(url).chain_head() is None
    assert not sa.inspect(sa.create_engine(url)).has_table("audit_log")


def test_a_missing_sqlite_file_is_an_error_and_is_not_created(tmp_path):
    path = tmp_path / "typo" / "ppmlops.db"
    log = AuditLog(f"sqlite:///{path}")
    for call in (log.verify, log.records, log.chain_head, lambda: log.verify(allow_empty=True)):
        with pytest.raises(db.DatabaseUnavailable, match=r"no database at sqlite:///.*typo/ppmlops\.db: the file does not exist"):
            call()
    assert not path.exists() and not path.parent.exists()


def test_a_missing_postgres_database_is_an_error(pg_url):
    wrong = sa.engine.make_url(pg_url).set(database="no_such_db").render_as_string(hide_password=False)
    with pytest.raises(db.DatabaseUnavailable) as err:
        AuditLog(wrong).verify(allow_empty=True)
    message = str(err.value)
    assert "no_such_db" in message and "does not exist" in message
    assert sa.engine.make_url(pg_url).password not in message and "***" in message


def test_an_unreachable_server_is_named_without_its_password():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    with pytest.raises(db.DatabaseUnavailable, match=r"cannot read the audit log in the database at "
                       rf"postgresql\+psycopg2://u:\*\*\*@127\.0\.0\.1:{port}/x\?connect_timeout=3: .*Connection refused.*the server cannot be reached") as err:
        AuditLog(f"postgresql+psycopg2://u:s3cret@127.0.0.1:{port}/x?connect_timeout=3").records()
    assert "s3cret" not in str(err.value)


def test_a_read_only_sqlite_database_is_named(tmp_path):
    path = tmp_path / "ro.db"
    AuditLog(f"sqlite:///{path}").record(decision(1))
    ro = AuditLog(f"sqlite:///file:{path}?mode=ro&uri=true")
    assert ro.verify() == []
    with pytest.raises(db.DatabaseUnavailable, match=r"cannot append to the audit log in the database at "
                       r"sqlite:///file.*ro\.db.*readonly.*the database is read-only for this process"):
        ro.record(decision(2))


def test_a_read_only_postgres_database_is_named(pg_url):
    AuditLog(pg_url).record(decision(1))
    name = sa.engine.make_url(pg_url).database
    admin = sa.engine.make_url(pg_url).set(database="postgres").render_as_string(hide_password=False)
    sql(admin, f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    try:
        with pytest.raises(db.DatabaseUnavailable, match=r"cannot append to the audit log in the database at "
                           r"postgresql\+psycopg2://ppmlops:\*\*\*@.*read-only transaction.*read-only for this process"):
            AuditLog(pg_url).record(decision(2))
    finally:
        sql(admin, f'ALTER DATABASE "{name}" SET default_transaction_read_only = off')
        sql(pg_url, "DROP TABLE IF EXISTS audit_log")


def test_record_refuses_something_that_is_not_a_decision(url):
    with pytest.raises(ValueError, match="decision lacks"):
        AuditLog(url).record({"outcome": "allow"})


# --------------------------------------------------------------------------- concurrency


def _append_many(url: str, start: int, count: int) -> None:
    log = AuditLog(url)
    for n in range(start, start + count):
        log.record(decision(n), stage="concurrent")


def test_concurrent_writers_keep_one_chain(url):
    """Processes appending at once (the table is created by whichever comes first)."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(url, 100 * i, 15)) for i in range(1, 5)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0
    log = AuditLog(url)
    records = log.records()
    assert [r["seq"] for r in records] == list(range(1, 61))
    assert log.verify() == []
    assert len({r["decision"]["id"] for r in records}) == 60


def test_records_survive_a_json_round_trip(filled):
    _, log = filled
    for rec in log.records():
        assert json.loads(json.dumps(rec)) == rec


# --------------------------------------------------------------------------- the command line


def test_cli_verify_fails_on_a_wrong_url_and_creates_nothing(tmp_path, capsys):
    path = tmp_path / "elsewhere.db"
    assert cli.main(["audit", "verify", "--db-url", f"sqlite:///{path}"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("audit log NOT verified: no database at") and "the file does not exist" in out
    assert not path.exists()


def test_cli_verify_an_empty_log_needs_allow_empty(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'new.db'}"
    sql(url, "CREATE TABLE unrelated (x INTEGER)")  # the database exists, the log does not yet
    assert cli.main(["audit", "verify", "--db-url", url]) == 1
    assert "has no audit_log table: nothing to verify" in capsys.readouterr().out
    assert cli.main(["audit", "verify", "--db-url", url, "--allow-empty"]) == 0
    assert "is empty (accepted: --allow-empty)" in capsys.readouterr().out


def test_cli_head_and_verify_with_an_anchor(filled, tmp_path, capsys):
    url, log = filled
    assert cli.main(["audit", "head", "--db-url", url, "--json"]) == 0
    printed = capsys.readouterr().out
    doc = json.loads(printed)
    assert {k: doc[k] for k in ("count", "seq", "hash")} == log.head() and "***" in doc["database"] or url.startswith("sqlite")
    anchor_file = tmp_path / "head.json"
    anchor_file.write_text(printed)
    assert cli.main(["audit", "head", "--db-url", url]) == 0
    text_anchor = capsys.readouterr().out.splitlines()[0]
    assert text_anchor == f"5:{doc['hash']}"

    assert cli.main(["audit", "verify", "--db-url", url, "--anchor", str(anchor_file)]) == 0
    assert capsys.readouterr().out.startswith(f"audit log intact: 5 record(s), head 5:{doc['hash']}, matches the anchor")
    sql(url, "DELETE FROM audit_log WHERE seq = 5")
    assert cli.main(["audit", "verify", "--db-url", url]) == 0  # without the anchor the cut cannot show
    capsys.readouterr()
    assert cli.main(["audit", "verify", "--db-url", url, "--anchor", text_anchor]) == 1
    out = capsys.readouterr().out
    assert "anchored audit record seq 5 is missing: the log was cut back to seq 4" in out
    assert "audit log NOT intact: 1 problem(s)" in out


def test_cli_head_refuses_a_broken_chain(filled, capsys):
    url, _ = filled
    sql(url, "UPDATE audit_log SET outcome = 'allow' WHERE seq = 2")
    assert cli.main(["audit", "head", "--db-url", url]) == 2
    err = capsys.readouterr().err
    assert "column outcome says 'allow'" in err and "does not verify; a head of it would anchor the damage" in err


def test_cli_bad_anchor_is_a_usage_error(filled, capsys):
    url, _ = filled
    assert cli.main(["audit", "verify", "--db-url", url, "--anchor", "latest"]) == 2
    assert "an audit anchor is COUNT:HASH" in capsys.readouterr().err


def test_append_in_commits_and_rolls_back_with_the_callers_transaction(tmp_path):
    """append_in writes on the caller's connection: a change and its audit record land together."""
    from ppmlops.audit.log import append_in

    url = f"sqlite:///{tmp_path / 'a.db'}"
    db.ensure_parent(url)
    engine = db.make_engine(url)
    with pytest.raises(RuntimeError, match="the change failed"):
        with db.transaction(engine, url, write=True) as conn:
            append_in(conn, decision(1), run_id="r", stage="ledger")
            raise RuntimeError("the change failed")
    log = AuditLog(url)
    assert log.records() == []  # rolled back with the caller (the table may exist, empty)
    with db.transaction(engine, url, write=True) as conn:
        assert append_in(conn, decision(2), run_id="r", stage="ledger") == 1
    record(log, 3)
    assert [r["seq"] for r in log.records()] == [1, 2] and log.verify() == []
    engine.dispose()


def record(log: AuditLog, n: int) -> int:
    return log.record(decision(n), run_id="r", stage="x")
