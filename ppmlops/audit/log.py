"""Append-only, hash-chained audit log of policy decisions.

Each record holds a whole Decision (query, input, result, outcome, reasons, engine, policy
hash, error) with the run, dataset and pipeline stage it was made for. Records are chained:
hash = sha256(prev_hash + canonical JSON of the record), the record including its own seq, so
editing, deleting or reordering a record breaks the chain at that record and `verify` names it.

A chain alone cannot reveal that its newest records were cut off, that all were deleted, nor
a wholesale rewrite by someone who recomputes every hash. The chain's head (record count and
newest hash, `chain_head()`) is published outside the database (each run's records, the task
log, `ppmlops audit head`) and passed back as `verify(anchor=...)` to catch those. A missing
table or an empty log is a problem for `verify` unless the caller says the log is new
(`allow_empty`), and nothing that only reads ever creates the database or the table: a wrong
URL must not read as an empty, intact log.

Lives in the same database as the privacy ledger (settings.db_url, opened through ppmlops.db),
table `audit_log`. Appends are serialised: BEGIN IMMEDIATE on SQLite, a table lock (EXCLUSIVE
mode: other appends wait, readers do not) on PostgreSQL; seq is also the primary key, so two
writers that still raced would collide and one would retry rather than fork the chain.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Column, Index, Integer, MetaData, String, Table, Text, func, insert, inspect, select
from sqlalchemy.exc import DBAPIError, IntegrityError

from ppmlops import db
from ppmlops.errors import PpmlopsError

GENESIS = "0" * 64
TABLE = "audit_log"

# Copied out of the hashed record into columns so records can be found without parsing JSON;
# verify() checks each column against the record it was copied from.
_INDEXED = ("run_id", "dataset_id", "stage")
_DECISION_COLUMNS = ("id", "query", "outcome", "engine", "policy_hash")

_metadata = MetaData()
audit_log = Table(
    TABLE,
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
_HEX64 = frozenset("0123456789abcdef")


def canonical_json(doc: Any) -> str:
    """One byte sequence per value: sorted keys, no whitespace, UTF-8 kept as is."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr)


def chain_hash(prev_hash: str, record_json: str) -> str:
    return hashlib.sha256((prev_hash + record_json).encode("utf-8")).hexdigest()


class BadAnchor(PpmlopsError):
    """An anchor that is not COUNT:HASH nor the JSON `ppmlops audit head --json` prints."""


@dataclass(frozen=True)
class ChainHead:
    """What to keep outside the database: how many records the log held and the newest one's hash.

    In an intact chain the newest record's seq equals the count; both are kept so that a head
    read from a damaged log still says what it saw.
    """

    count: int
    seq: int
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "seq": self.seq, "hash": self.hash}

    def __str__(self) -> str:
        return f"{self.count}:{self.hash}"

    @classmethod
    def parse(cls, text: str) -> "ChainHead":
        """COUNT:HASH, or the JSON object printed by `ppmlops audit head --json`."""
        text = text.strip()
        what = ("an audit anchor is COUNT:HASH (e.g. 12:3fa4...), or a file holding what "
                "`ppmlops audit head --json` printed")
        if text.startswith("{"):
            try:
                doc = json.loads(text)
                count, hash_ = int(doc["count"]), str(doc["hash"])
                seq = int(doc.get("seq", count))
            except (ValueError, KeyError, TypeError):
                raise BadAnchor(f"{what}; this JSON lacks count and hash") from None
        else:
            count_text, sep, hash_ = text.partition(":")
            if not sep or not count_text.strip().isdigit():
                raise BadAnchor(what)
            count = seq = int(count_text)
            hash_ = hash_.strip()
        if count < 1 or len(hash_) != 64 or not set(hash_) <= _HEX64:
            raise BadAnchor(f"{what}; the count must be at least 1 and the hash 64 hex digits")
        return cls(count, seq, hash_)


def _as_head(anchor: ChainHead | dict | str) -> ChainHead:
    if isinstance(anchor, ChainHead):
        return anchor
    if isinstance(anchor, str):
        return ChainHead.parse(anchor)
    seq = anchor.get("seq")
    count = anchor.get("count", seq)
    return ChainHead.parse(json.dumps({"count": count, "seq": seq if seq is not None else count,
                                       "hash": anchor.get("hash")}))


class AuditLog:
    """The audit log at a SQLAlchemy URL. Constructing one touches nothing; record() creates the
    table on first use, and the reading methods never create the database or the table."""

    def __init__(self, db_url: str):
        self.db_url = db_url
        self._engine = db.make_engine(db_url)
        self._table_ready = False

    @property
    def url(self) -> str:
        """The URL with its password hidden, for messages."""
        return db.redact(self.db_url)

    def close(self) -> None:
        self._engine.dispose()

    # -- writing ---------------------------------------------------------------------------

    def _ensure_table(self) -> None:
        if self._table_ready:
            return
        db.ensure_parent(self.db_url)
        for attempt in range(3):
            try:
                with db.transaction(self._engine, self.db_url, write=True, doing="create the audit log in") as conn:
                    _metadata.create_all(conn, tables=[audit_log])
                break
            except (IntegrityError, DBAPIError):
                # Two processes creating the table at once (PostgreSQL): the loser finds it on retry.
                if attempt == 2:
                    raise
        self._table_ready = True

    def record(self, decision: Any, *, run_id: str | None = None, dataset_id: str | None = None,
               stage: str = "") -> int:
        """Append `decision` (a Decision or its to_dict()), whatever its outcome; return its seq."""
        doc = _decision_doc(decision)
        self._ensure_table()
        for _ in range(_WRITE_RETRIES):
            try:
                with db.transaction(self._engine, self.db_url, write=True, doing="append to the audit log in") as conn:
                    return _append(conn, doc, run_id, dataset_id, stage)
            except IntegrityError:
                continue  # another writer appended seq first; read the new head and go again
        raise PpmlopsError(f"audit log at {self.url}: could not append after {_WRITE_RETRIES} attempts "
                           f"(another writer kept taking the next seq)")

    # -- reading ---------------------------------------------------------------------------

    def _has_table(self, conn: Any) -> bool:
        return inspect(conn).has_table(TABLE)

    def _reading(self):
        db.must_exist(self.db_url)
        return db.transaction(self._engine, self.db_url, doing="read the audit log in")

    def records(self, run_id: str | None = None, dataset_id: str | None = None) -> list[dict]:
        """Records in seq order: the hashed record plus its hash and prev_hash ([] if none yet)."""
        query = select(audit_log).order_by(audit_log.c.seq)
        if run_id is not None:
            query = query.where(audit_log.c.run_id == run_id)
        if dataset_id is not None:
            query = query.where(audit_log.c.dataset_id == dataset_id)
        with self._reading() as conn:
            rows = conn.execute(query).all() if self._has_table(conn) else []
        out = []
        for row in rows:
            body = json.loads(row.record)
            body["hash"] = row.hash
            body["prev_hash"] = row.prev_hash
            out.append(body)
        return out

    def chain_head(self) -> ChainHead | None:
        """The head to publish outside the database; None when nothing has been recorded."""
        with self._reading() as conn:
            if not self._has_table(conn):
                return None
            count = conn.execute(select(func.count()).select_from(audit_log)).scalar_one()
            last = conn.execute(
                select(audit_log.c.seq, audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1)
            ).first()
        return ChainHead(int(count), last.seq, last.hash) if last else None

    def head(self) -> dict | None:
        """chain_head() as a dict: {"count", "seq", "hash"}."""
        h = self.chain_head()
        return h.to_dict() if h else None

    def verify(self, anchor: ChainHead | dict | str | None = None, *, allow_empty: bool = False) -> list[str]:
        """[] when the chain is intact; otherwise one message per problem.

        A missing table or a log without records is a problem unless `allow_empty` (a new log)
        and no anchor says there were records. An unreachable or missing database raises
        DatabaseUnavailable: nothing was verified.
        """
        head = _as_head(anchor) if anchor is not None else None
        with self._reading() as conn:
            rows = conn.execute(select(audit_log).order_by(audit_log.c.seq)).all() if self._has_table(conn) else None
        if not rows:
            return self._empty_problems(rows is None, head, allow_empty)
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
        if head is not None:
            problems.extend(_anchor_problems(head, by_seq, len(rows), expected_seq - 1))
        return problems

    def _empty_problems(self, no_table: bool, head: ChainHead | None, allow_empty: bool) -> list[str]:
        where = (f"the database {self.url} has no audit_log table" if no_table
                 else f"the audit log in {self.url} holds no records")
        if head is not None:
            return [f"{where}, but the anchor says it held {head.count} record(s) up to hash "
                    f"{head.hash[:12]}...: the log was deleted or the URL points at another database"]
        if allow_empty:
            return []
        return [f"{where}: nothing to verify. If PPMLOPS_DB_URL / PPMLOPS_HOME are right and no decision "
                f"has been recorded yet, say so with --allow-empty (allow_empty=True)"]


def _decision_doc(decision: Any) -> dict:
    doc = decision.to_dict() if hasattr(decision, "to_dict") else dict(decision)
    missing = [k for k in _DECISION_COLUMNS if k not in doc]
    if missing:
        raise ValueError(f"decision lacks {', '.join(missing)}; pass a ppmlops.compliance Decision")
    return doc


def _append(conn: Any, doc: dict, run_id: str | None, dataset_id: str | None, stage: str) -> int:
    """Append one record on `conn`, inside the caller's write transaction; return its seq."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"LOCK TABLE {TABLE} IN EXCLUSIVE MODE")
    last = conn.execute(select(audit_log.c.seq, audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1)).first()
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


def append_in(conn: Any, decision: Any, *, run_id: str | None = None, dataset_id: str | None = None,
              stage: str = "") -> int:
    """Append `decision` on `conn`, a connection inside another write transaction on the same
    database (the privacy ledger's), so that the record and the change it records commit or
    roll back together: a budget change can never land without its audit record, nor the
    record without the change. Creates the table on first use, in that same transaction. No
    retry here: the caller's write lock (SQLite's BEGIN IMMEDIATE, the table lock on
    PostgreSQL) already serialises appends, and a failure rolls back the caller's change too."""
    doc = _decision_doc(decision)
    _metadata.create_all(conn, tables=[audit_log])
    return _append(conn, doc, run_id, dataset_id, stage)


def chain_head(db_url: str) -> ChainHead | None:
    """The audit log's head at db_url, e.g. to store in a run's records right after recording."""
    log = AuditLog(db_url)
    try:
        return log.chain_head()
    finally:
        log.close()


def _anchor_problems(head: ChainHead, by_seq: dict, count: int, last_seq: int) -> list[str]:
    problems = []
    anchored = by_seq.get(head.seq)
    if anchored is None:
        problems.append(f"anchored audit record seq {head.seq} is missing: the log was cut back to seq {last_seq}")
    elif anchored.hash != head.hash:
        problems.append(f"audit record seq {anchored.seq} (decision {anchored.id}) does not have the anchored "
                        f"hash {head.hash[:12]}...: the chain was rewritten")
    elif count < head.count:
        problems.append(f"the log holds {count} record(s), the anchor {head.count}: records were deleted")
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
