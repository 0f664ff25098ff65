"""Append-only, hash-chained audit log of policy decisions.

Each record holds a whole Decision (query, input, result, outcome, reasons, engine, policy
hash, error) with the run, dataset and pipeline stage it was made for. Records are chained:
hash = sha256(prev_hash + canonical JSON of the record), the record including its own seq, so
editing, deleting or reordering a record breaks the chain at that record and `verify` names it.

A chain alone cannot reveal that its newest records were cut off, nor a wholesale rewrite by
someone who recomputes every hash; keep `head()` somewhere else (a task log, a ticket) and
pass it back to `verify(anchor=...)` to check for either.

Lives in the same database as the privacy ledger (settings.db_url), table `audit_log`.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (Column, Index, Integer, MetaData, String, Table, Text, create_engine, event,
                        insert, select)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

GENESIS = "0" * 64

# Copied out of the hashed record into columns so records can be found without parsing JSON;
# verify() checks each column against the record it was copied from.
_INDEXED = ("run_id", "dataset_id", "stage")
_DECISION_COLUMNS = ("id", "query", "outcome", "engine", "policy_hash")

_metadata = MetaData()
audit_log = Table(
    "audit_log",
    _metadata,
    # Assigned by record(), not by the database, so that two writers racing for the same seq
    # collide on the primary key and one retries, instead of forking the chain.
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("id", String(64), nullable=False),
    Column("recorded_at", String(40), nullable=False),
    Column("run_id", String(250)),
    Column("dataset_id", String(250)),
    Column("stage", String(100), nullable=False),
    Column("query", String(250), nullable=False),
    Column("outcome", String(20), nullable=False),
    Column("engine", String(40), nullable=False),
    Column("policy_hash", String(64), nullable=False),
    Column("record", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index("ix_audit_log_run_id", "run_id"),
    Index("ix_audit_log_dataset_id", "dataset_id"),
)

_WRITE_RETRIES = 20


def canonical_json(doc: Any) -> str:
    """One byte sequence per value: sorted keys, no whitespace, UTF-8 kept as is."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr)


def chain_hash(prev_hash: str, record_json: str) -> str:
    return hashlib.sha256((prev_hash + record_json).encode("utf-8")).hexdigest()


def _engine_for(db_url: str) -> Engine:
    if db_url.startswith("sqlite"):
        engine = create_engine(db_url, connect_args={"timeout": 30})
        database = engine.url.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)

        # pysqlite begins transactions lazily, at the first write; two appenders could then both
        # read the same last seq. BEGIN IMMEDIATE takes the write lock before that read.
        @event.listens_for(engine, "connect")
        def _no_implicit_begin(dbapi_conn, _record):  # noqa: ANN001
            dbapi_conn.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin(conn):  # noqa: ANN001
            immediate = conn.get_execution_options().get("ppmlops_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    return create_engine(db_url, pool_pre_ping=True)


class AuditLog:
    def __init__(self, db_url: str):
        self.db_url = db_url
        self._engine = _engine_for(db_url)
        _metadata.create_all(self._engine, tables=[audit_log])

    def record(self, decision: Any, *, run_id: str | None = None, dataset_id: str | None = None,
               stage: str = "") -> int:
        """Append `decision` (a Decision or its to_dict()) and return its seq."""
        doc = decision.to_dict() if hasattr(decision, "to_dict") else dict(decision)
        missing = [k for k in _DECISION_COLUMNS if k not in doc]
        if missing:
            raise ValueError(f"decision lacks {', '.join(missing)}; pass a ppmlops.compliance Decision")
        for _ in range(_WRITE_RETRIES):
            try:
                with self._engine.connect().execution_options(ppmlops_write=True) as conn, conn.begin():
                    last = conn.execute(
                        select(audit_log.c.seq, audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1)
                    ).first()
                    seq = last.seq + 1 if last else 1
                    prev = last.hash if last else GENESIS
                    body = {
                        "seq": seq,
                        "recorded_at": datetime.now(timezone.utc).isoformat(),
                        "run_id": run_id,
                        "dataset_id": dataset_id,
                        "stage": stage,
                        "decision": doc,
                    }
                    text = canonical_json(body)
                    conn.execute(insert(audit_log).values(
                        seq=seq, id=str(doc["id"]), recorded_at=body["recorded_at"], run_id=run_id,
                        dataset_id=dataset_id, stage=stage, query=str(doc["query"]),
                        outcome=str(doc["outcome"]), engine=str(doc["engine"]),
                        policy_hash=str(doc["policy_hash"]), record=text, prev_hash=prev,
                        hash=chain_hash(prev, text),
                    ))
                return seq
            except IntegrityError:
                continue  # another writer appended seq first; read the new head and go again
        raise RuntimeError(f"audit log {self.db_url}: could not append after {_WRITE_RETRIES} attempts")

    def records(self, run_id: str | None = None, dataset_id: str | None = None) -> list[dict]:
        """Records in seq order: the hashed record plus its hash and prev_hash."""
        query = select(audit_log).order_by(audit_log.c.seq)
        if run_id is not None:
            query = query.where(audit_log.c.run_id == run_id)
        if dataset_id is not None:
            query = query.where(audit_log.c.dataset_id == dataset_id)
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        out = []
        for row in rows:
            body = json.loads(row.record)
            body["hash"] = row.hash
            body["prev_hash"] = row.prev_hash
            out.append(body)
        return out

    def head(self) -> dict | None:
        """{"seq", "hash"} of the newest record, to keep outside the database as an anchor."""
        with self._engine.connect() as conn:
            last = conn.execute(
                select(audit_log.c.seq, audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1)
            ).first()
        return {"seq": last.seq, "hash": last.hash} if last else None

    def verify(self, anchor: dict | None = None) -> list[str]:
        """[] when the chain is intact; otherwise one message per broken record."""
        with self._engine.connect() as conn:
            rows = conn.execute(select(audit_log).order_by(audit_log.c.seq)).all()
        problems: list[str] = []
        expected_seq, prev_hash = 1, GENESIS
        by_seq = {}
        for row in rows:
            name = f"audit record seq {row.seq} (decision {row.id})"
            by_seq[row.seq] = row
            if row.seq > expected_seq:
                gap = f"{expected_seq}" if row.seq == expected_seq + 1 else f"{expected_seq}..{row.seq - 1}"
                problems.append(f"audit records seq {gap} are missing: deleted")
            if row.prev_hash != prev_hash:
                problems.append(f"{name}: prev_hash does not match the hash of the record before it: "
                                f"a record was edited, deleted or reordered")
            if chain_hash(row.prev_hash, row.record) != row.hash:
                problems.append(f"{name}: content does not match its hash: edited")
            problems.extend(_column_problems(name, row))
            expected_seq, prev_hash = row.seq + 1, row.hash
        if anchor is not None:
            anchored = by_seq.get(anchor.get("seq"))
            if anchored is None:
                problems.append(f"anchored audit record seq {anchor.get('seq')} is missing: "
                                f"the log was cut back to seq {expected_seq - 1}")
            elif anchored.hash != anchor.get("hash"):
                problems.append(f"audit record seq {anchored.seq} (decision {anchored.id}) does not have "
                                f"the anchored hash: the chain was rewritten")
        return problems


def _column_problems(name: str, row: Any) -> list[str]:
    try:
        body = json.loads(row.record)
        decision = body["decision"]
    except (ValueError, KeyError, TypeError):
        return [f"{name}: record is not the JSON that was written: edited"]
    problems = []
    if body.get("seq") != row.seq:
        problems.append(f"{name}: holds the record written as seq {body.get('seq')}: reordered")
    pairs = [(k, body.get(k), getattr(row, k)) for k in _INDEXED]
    pairs += [(k, decision.get(k), getattr(row, k)) for k in _DECISION_COLUMNS]
    for column, hashed, stored in pairs:
        if hashed != stored and str(hashed) != stored:
            problems.append(f"{name}: column {column} says {stored!r} but the hashed record says {hashed!r}: edited")
    return problems
