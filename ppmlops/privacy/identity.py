"""Which rows a dataset id stands for: its public source identity, so that a rename cannot reset
the rows' lifetime budget.

The ledger keeps a budget per dataset id. Budgets belong to the rows, not to a name: a spec that
renames `demo_customers` to `demo_customers_v2` over the same file would start a fresh budget for
the same people, and their privacy loss would be the sum of both. So every dataset id records the
sources it reads, by their public identity: the resolved path of its source and test source (for
a partitioned window, the resolved partition template, not one interval's file), with the label
column kept beside them for the officer. A second id whose source another id already covers is
refused, naming that id, unless an officer approved it:

    ppmlops ledger link NEW --to OLD --approve-new-budget --reason "..." [--by WHO]

which records (audited, in the same transaction) that NEW may have its own budget over rows
that OLD covers: a decision that their loss adds up, made by a person and kept in the audit
log. Aliasing (NEW charging OLD's budget) is not offered: every stage charges the spec's
dataset id, so the way to share OLD's budget is to keep OLD's id in the spec.

A SQL source's identity is `sql://host:port/database <normalized query>` (comments and layout
removed, unquoted words lower-cased; ppmlops.sql_query): two specs over the same query on the
same server are recognised whether they name a connection or a URL, and whoever connects.

Matching is on sources, not on labels: a second pipeline with another label over the same rows
trains on the same people (it shares their budget by using the same id). A source is matched by
its resolved path or template text, so two different templates over the same files, or a copy
of a file under another name, are not recognised: this catches renames, not every duplicate.
Tables `dataset_sources` and `dataset_source_approvals`, in the ledger's database (ppmlops.db).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

from sqlalchemy import Column, MetaData, PrimaryKeyConstraint, String, Table, Text, and_, insert, inspect, or_, select
from sqlalchemy.engine import Connection

from ppmlops import db
from ppmlops.errors import PpmlopsError

_metadata = MetaData()
sources_table = Table(
    "dataset_sources",
    _metadata,
    Column("dataset_id", String(200), nullable=False),
    Column("source", String(1000), nullable=False),  # resolved path or partition template
    Column("label_column", String(200), nullable=False),
    Column("created_at", String(40), nullable=False),
    PrimaryKeyConstraint("dataset_id", "source"),
)
approvals_table = Table(
    "dataset_source_approvals",
    _metadata,
    Column("dataset_id", String(200), nullable=False),  # the new id
    Column("over", String(200), nullable=False),  # the id whose rows it may also budget
    Column("reason", Text, nullable=False),
    Column("approved_by", String(200), nullable=False),
    Column("created_at", String(40), nullable=False),
    PrimaryKeyConstraint("dataset_id", "over"),
)


class SourceAlreadyCovered(PpmlopsError):
    """A new dataset id over a source another dataset id already covers."""


@dataclass(frozen=True)
class SourceIdentity:
    """A dataset's public source identity: what it reads, never what the data holds."""

    dataset_id: str
    sources: tuple[str, ...]  # resolved paths or partition templates, sorted
    label_column: str


def source_identity(spec: Any, connections: Mapping[str, str] | None = None) -> SourceIdentity:
    """The identity of a pipeline spec's dataset (its sources resolved like ingest resolves them,
    without an interval: a partitioned source stays its template). A SQL source is the server
    (host:port/database: no user, no password) and its normalized query, whether it is reached
    through a connection (resolved from `connections`, id -> URL) or a URL."""
    ds = spec.dataset
    paths = {_identity_of(ds.source, connections)}
    if ds.test_source is not None:
        paths.add(_identity_of(ds.test_source, connections))
    return SourceIdentity(ds.id, tuple(sorted(paths)), ds.label.column)


# The sources column's width: a longer normalized query is recorded by its SHA-256.
_QUERY_CHARS = 900


def _identity_of(source: Any, connections: Mapping[str, str] | None) -> str:
    if not source.is_sql:
        return str(source.resolved_path())
    from ppmlops import sql_query

    server = sql_query.server_of(sql_query.source_url(source, connections)[0])
    query = sql_query.normalized(source.sql)
    if len(query) > _QUERY_CHARS:
        query = f"sha256:{sql_query.query_sha256(source.sql)}"
    return f"sql://{server} {query}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class DatasetSources:
    """The source identities and approvals at a SQLAlchemy URL (the ledger's database)."""

    def __init__(self, db_url: str):
        self.db_url = db_url
        self._engine = db.make_engine(db_url)

    def close(self) -> None:
        self._engine.dispose()

    def _write(self):
        db.ensure_parent(self.db_url)
        return db.transaction(self._engine, self.db_url, write=True, doing="record dataset sources in")

    @staticmethod
    def _lock(conn: Connection) -> None:
        # Two new ids claiming one source at once must not both see it free: SQLite's write
        # transaction is already exclusive (BEGIN IMMEDIATE); PostgreSQL needs the table lock.
        _metadata.create_all(conn)
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("LOCK TABLE dataset_sources IN EXCLUSIVE MODE")

    @staticmethod
    def _approved(conn: Connection, dataset_id: str) -> set[str]:
        """Ids that an officer approved a separate budget with, in either direction."""
        t = approvals_table
        rows = conn.execute(select(t.c.dataset_id, t.c.over).where(
            or_(t.c.dataset_id == dataset_id, t.c.over == dataset_id))).all()
        return {r.over if r.dataset_id == dataset_id else r.dataset_id for r in rows}

    def claim(self, identity: SourceIdentity) -> None:
        """Record the dataset's sources; SourceAlreadyCovered (nothing recorded) when another id,
        not approved with this one, already covers one of them. Idempotent for its own sources."""
        t = sources_table
        with self._write() as conn:
            self._lock(conn)
            owners = conn.execute(select(t.c.dataset_id, t.c.source).where(
                and_(t.c.source.in_(identity.sources), t.c.dataset_id != identity.dataset_id))).all()
            approved = self._approved(conn, identity.dataset_id)
            clashes = sorted({(r.dataset_id, r.source) for r in owners if r.dataset_id not in approved})
            if clashes:
                other, source = clashes[0]
                raise SourceAlreadyCovered(
                    f"dataset {identity.dataset_id!r} reads {source}, which dataset {other!r} already covers in "
                    f"the privacy ledger: a new dataset id over the same rows would give the same people a second, "
                    f"fresh lifetime budget. Use dataset.id {other!r} in the spec to train within its budget, or "
                    f"have a compliance officer approve a separate budget (the loss on those rows then adds up): "
                    f"`ppmlops ledger link {identity.dataset_id} --to {other} --approve-new-budget --reason ...` "
                    f"(recorded in the audit log)")
            mine = set(conn.execute(select(t.c.source).where(t.c.dataset_id == identity.dataset_id)).scalars())
            # A dataset keeps every source it ever read: a row it charged stays its row, even if
            # its spec later points elsewhere, so a new id cannot take that source over quietly.
            for source in identity.sources:
                if source not in mine:
                    conn.execute(insert(t).values(dataset_id=identity.dataset_id, source=source,
                                                  label_column=identity.label_column, created_at=_now()))

    def sources(self, dataset_id: str) -> list[str]:
        db.must_exist(self.db_url)  # reading never creates the database
        with db.transaction(self._engine, self.db_url, doing="read dataset sources in") as conn:
            if not inspect(conn).has_table(sources_table.name):
                return []
            return list(conn.execute(select(sources_table.c.source).where(
                sources_table.c.dataset_id == dataset_id).order_by(sources_table.c.source)).scalars())

    def approve(self, new: str, over: str, *, reason: str, by: str,
                on_approve: Callable[[Connection, list[str]], None] | None = None) -> list[str]:
        """Record that `new` may have its own budget over rows `over` covers; returns `over`'s
        sources. `on_approve(conn, sources)` runs in the same transaction (the audit record)."""
        if new == over:
            raise PpmlopsError(f"dataset {new!r} cannot be linked to itself")
        if not reason.strip():
            raise PpmlopsError("an approval needs a reason (kept in the audit log)")
        with self._write() as conn:
            self._lock(conn)
            covered = list(conn.execute(select(sources_table.c.source).where(
                sources_table.c.dataset_id == over).order_by(sources_table.c.source)).scalars())
            if not covered:
                raise PpmlopsError(f"dataset {over!r} has no recorded source in the privacy ledger at "
                                   f"{db.redact(self.db_url)}: nothing to approve {new!r} over (a dataset records its "
                                   f"source at its first assess)")
            if over not in self._approved(conn, new):
                conn.execute(insert(approvals_table).values(dataset_id=new, over=over, reason=reason,
                                                            approved_by=by, created_at=_now()))
            if on_approve is not None:
                on_approve(conn, covered)
        return covered


def claim_source(db_url: str, spec: Any, connections: Mapping[str, str] | None = None) -> SourceIdentity:
    """Record the spec's dataset sources, or refuse (SourceAlreadyCovered) before any charge."""
    identity = source_identity(spec, connections)
    sources = DatasetSources(db_url)
    try:
        sources.claim(identity)
    finally:
        sources.close()
    return identity
