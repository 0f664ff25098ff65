"""The privacy ledger: every DP release charged against a dataset, composed for life.

Budgets belong to a dataset, not to a run: the ledger adds the RDP curves of all entries on a
dataset (across runs and steps) and converts to (epsilon, delta) once, for the total, at the
dataset's registered delta. Entries are written ahead of the steps they pay for ("reserved",
committed before reserve() returns) and marked "completed" afterwards; totals count both, so
a crash between the two can only over-count.

Partitions are disjoint row sets (e.g. "train" and a held-out "validation" split chosen
without looking at the data). A row is in exactly one partition, so the dataset's guarantee is
the worst partition's (parallel composition): curves are summed within a partition and the
maximum is taken across partitions.

SQLAlchemy Core; an SQLite file by default (WAL, busy timeout, write transactions taken with
BEGIN IMMEDIATE so concurrent Ray workers and Airflow tasks serialise), Postgres by URL.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import (
    Column,
    Double,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    select,
    update,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError
from sqlalchemy.pool import StaticPool

from ppmlops.errors import BudgetExceeded, PpmlopsError
from ppmlops.privacy.accountant import (
    ORDERS,
    Segment,
    check_delta,
    epsilon_from_rdp,
    segment_rdp,
)

MECHANISMS = ("subsampled_gaussian", "gaussian")
RESERVED, COMPLETED = "reserved", "completed"

_metadata = MetaData()

datasets_table = Table(
    "privacy_datasets",
    _metadata,
    Column("dataset_id", String(200), primary_key=True),
    Column("epsilon_budget", Double, nullable=False),
    Column("delta", Double, nullable=False),
    Column("created_at", String(40), nullable=False),
    Column("updated_at", String(40), nullable=False),
)

ledger_table = Table(
    "privacy_ledger",
    _metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("dataset_id", String(200), nullable=False, index=True),
    Column("run_id", String(200), nullable=False, index=True),
    Column("partition", String(100), nullable=False),
    Column("mechanism", String(64), nullable=False),
    Column("noise_multiplier", Double, nullable=False),
    Column("sample_rate", Double, nullable=False),
    Column("steps", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", String(40), nullable=False),
    Column("completed_at", String(40), nullable=True),
    Column("note", Text, nullable=False, default=""),
    # JSON text rather than a JSON column: curves may hold Infinity (orders where the RDP
    # series has no finite bound), which strict JSON types reject.
    Column("orders", Text, nullable=False),
    Column("rdp", Text, nullable=False),
)


@dataclass(frozen=True)
class LedgerEntry:
    id: int
    dataset_id: str
    run_id: str
    partition: str
    mechanism: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    status: str
    created_at: str
    note: str
    rdp: np.ndarray = field(compare=False, repr=False)  # read-only, on ORDERS
    completed_at: str | None = None

    @property
    def segment(self) -> Segment:
        return Segment(self.noise_multiplier, self.sample_rate, self.steps)

    def to_dict(self) -> dict[str, Any]:
        """The entry's fields without its RDP curve."""
        return {
            "id": self.id, "dataset_id": self.dataset_id, "run_id": self.run_id,
            "partition": self.partition, "mechanism": self.mechanism,
            "noise_multiplier": self.noise_multiplier, "sample_rate": self.sample_rate,
            "steps": self.steps, "status": self.status, "created_at": self.created_at,
            "completed_at": self.completed_at, "note": self.note,
        }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _name(value: object, field_name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PpmlopsError(f"{field_name} must be a non-empty string, got {value!r}")
    if len(value) > 200:
        raise PpmlopsError(f"{field_name} is longer than 200 characters: {value[:40]!r}...")
    return value


def _is_sqlite_file(db_url: str) -> tuple[bool, Path | None]:
    url = make_url(db_url)
    if url.get_backend_name() != "sqlite":
        return False, None
    db = url.database
    if not db or db == ":memory:" or db.startswith("file:"):
        return True, None
    return True, Path(db).expanduser()


def sqlite_file_missing(db_url: str) -> bool:
    """True when db_url names an SQLite file that does not exist (read-only callers skip it)."""
    is_sqlite, path = _is_sqlite_file(db_url)
    return is_sqlite and path is not None and not path.exists()


def _make_engine(db_url: str) -> Engine:
    try:
        is_sqlite, path = _is_sqlite_file(db_url)
    except ArgumentError:
        raise PpmlopsError(f"ledger database URL is not a valid SQLAlchemy URL: {db_url!r}") from None
    if not is_sqlite:
        try:
            return create_engine(db_url, pool_pre_ping=True)
        except ImportError as err:
            raise PpmlopsError(f"the database driver for the ledger URL is not installed: {err}") from None

    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(db_url, connect_args={"timeout": 60})
    else:
        # One shared connection, or every checkout would see a different empty database.
        engine = create_engine(db_url, poolclass=StaticPool, connect_args={"check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from pysqlite so "begin" below decides the BEGIN kind.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout = 60000")
        if path is not None:
            cur.execute("PRAGMA journal_mode = WAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers lock at BEGIN, so a read-check-insert cannot interleave with another writer's.
        mode = conn.get_execution_options().get("ppmlops_sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


class Ledger:
    """Write-ahead privacy ledger on a SQLAlchemy URL (tables privacy_ledger, privacy_datasets)."""

    def __init__(self, db_url: str):
        self.db_url = db_url
        self._engine = _make_engine(db_url)
        self._writer = self._engine.execution_options(ppmlops_sqlite_begin="IMMEDIATE")
        for attempt in range(2):
            try:
                with self._writer.begin() as conn:
                    _metadata.create_all(conn)
                break
            except DBAPIError as err:
                # Two processes creating the tables at once: the loser finds them on retry.
                if attempt:
                    raise PpmlopsError(f"cannot open the privacy ledger at {self._safe_url()}: {err.orig}") from None

    def _safe_url(self) -> str:
        return make_url(self.db_url).render_as_string(hide_password=True)

    def close(self) -> None:
        self._engine.dispose()

    # -- datasets --------------------------------------------------------------------------

    def register_dataset(self, dataset_id: str, *, epsilon_budget: float, delta: float) -> None:
        """Create or update a dataset's lifetime budget; totals are converted at this delta."""
        dataset_id = _name(dataset_id, "dataset_id")
        try:
            budget = float(epsilon_budget)
        except (TypeError, ValueError):
            raise PpmlopsError(f"epsilon_budget must be a number, got {epsilon_budget!r}") from None
        if not (math.isfinite(budget) and budget > 0):
            raise PpmlopsError(f"epsilon_budget must be a finite number > 0, got {epsilon_budget!r}")
        delta = check_delta(delta)
        now = _now()
        for attempt in range(2):
            try:
                with self._writer.begin() as conn:
                    exists = conn.execute(
                        select(datasets_table.c.dataset_id).where(datasets_table.c.dataset_id == dataset_id)
                    ).first()
                    if exists:
                        conn.execute(update(datasets_table).where(datasets_table.c.dataset_id == dataset_id)
                                     .values(epsilon_budget=budget, delta=delta, updated_at=now))
                    else:
                        conn.execute(datasets_table.insert().values(
                            dataset_id=dataset_id, epsilon_budget=budget, delta=delta,
                            created_at=now, updated_at=now))
                return
            except IntegrityError:
                # Postgres: another process inserted the row between our select and insert.
                if attempt:
                    raise

    def dataset(self, dataset_id: str) -> dict | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(datasets_table).where(datasets_table.c.dataset_id == dataset_id)).first()
        if row is None:
            return None
        return {"dataset_id": row.dataset_id, "epsilon_budget": row.epsilon_budget, "delta": row.delta}

    def datasets(self) -> list[str]:
        """Registered datasets and any that have entries, sorted."""
        with self._engine.connect() as conn:
            registered = conn.execute(select(datasets_table.c.dataset_id)).scalars().all()
            charged = conn.execute(select(ledger_table.c.dataset_id).distinct()).scalars().all()
        return sorted(set(registered) | set(charged))

    # -- writing ---------------------------------------------------------------------------

    def reserve(self, *, dataset_id: str, run_id: str, segment: Segment, partition: str = "train",
                mechanism: str = "subsampled_gaussian", note: str = "",
                enforce_budget: bool = True) -> int:
        """Record a charge BEFORE its steps run; committed when this returns. Returns the entry id.

        With enforce_budget (the default), the reservation is refused with BudgetExceeded if it
        would take the dataset's total epsilon over its registered budget; the check and the
        insert are one transaction, so concurrent reservations cannot jointly overspend.
        """
        dataset_id = _name(dataset_id, "dataset_id")
        run_id = _name(run_id, "run_id")
        partition = _name(partition, "partition")
        if not isinstance(segment, Segment):
            raise PpmlopsError(f"segment must be a Segment, got {type(segment).__name__}: {segment!r}")
        if mechanism not in MECHANISMS:
            raise PpmlopsError(f"mechanism must be one of {list(MECHANISMS)}, got {mechanism!r}")
        if mechanism == "gaussian" and segment.sample_rate != 1.0:
            raise PpmlopsError(f"mechanism 'gaussian' needs sample_rate 1 (no subsampling), got {segment.sample_rate}")
        rdp = segment_rdp(segment)

        with self._writer.begin() as conn:
            ds = conn.execute(
                select(datasets_table).where(datasets_table.c.dataset_id == dataset_id).with_for_update()
            ).first()
            if ds is None:
                raise PpmlopsError(
                    f"dataset {dataset_id!r} is not registered in the privacy ledger; "
                    "register_dataset() it with its epsilon budget and delta first")
            if enforce_budget:
                curves = self._partition_curves(conn, dataset_id)
                curves[partition] = curves.get(partition, np.zeros(len(ORDERS))) + rdp
                total, worst = self._max_epsilon(curves, ds.delta)
                if total > ds.epsilon_budget:
                    raise BudgetExceeded(
                        f"ledger refused run {run_id!r}: dataset {dataset_id!r} would reach epsilon "
                        f"{total:.6g} (partition {worst!r}) at delta {ds.delta:g}, over its budget "
                        f"{ds.epsilon_budget:g}")
            result = conn.execute(ledger_table.insert().values(
                dataset_id=dataset_id, run_id=run_id, partition=partition, mechanism=mechanism,
                noise_multiplier=segment.noise_multiplier, sample_rate=segment.sample_rate,
                steps=segment.steps, status=RESERVED, created_at=_now(), completed_at=None,
                note=str(note), orders=json.dumps(list(ORDERS)), rdp=json.dumps([float(x) for x in rdp])))
            return int(result.inserted_primary_key[0])

    def complete(self, entry_id: int) -> None:
        """Mark a reserved entry as run. Completing twice is harmless."""
        with self._writer.begin() as conn:
            status = conn.execute(select(ledger_table.c.status).where(ledger_table.c.id == entry_id)).scalar()
            if status is None:
                raise PpmlopsError(f"privacy ledger has no entry with id {entry_id!r}")
            if status == RESERVED:
                conn.execute(update(ledger_table).where(ledger_table.c.id == entry_id)
                             .values(status=COMPLETED, completed_at=_now()))

    # -- reading ---------------------------------------------------------------------------

    def entries(self, dataset_id: str | None = None, run_id: str | None = None) -> list[LedgerEntry]:
        with self._engine.connect() as conn:
            return self._entries(conn, dataset_id, run_id)

    def _entries(self, conn: Connection, dataset_id: str | None, run_id: str | None,
                 partition: str | None = None) -> list[LedgerEntry]:
        query = select(ledger_table).order_by(ledger_table.c.id)
        if dataset_id is not None:
            query = query.where(ledger_table.c.dataset_id == dataset_id)
        if run_id is not None:
            query = query.where(ledger_table.c.run_id == run_id)
        if partition is not None:
            query = query.where(ledger_table.c.partition == partition)
        return [self._entry(row) for row in conn.execute(query)]

    @staticmethod
    def _entry(row: Any) -> LedgerEntry:
        segment = Segment(row.noise_multiplier, row.sample_rate, row.steps)
        stored_orders = tuple(float(a) for a in json.loads(row.orders))
        if stored_orders == ORDERS:
            rdp = np.asarray(json.loads(row.rdp), dtype=np.float64)
        else:
            # Written by a version with another order grid: the parameters are the record.
            rdp = segment_rdp(segment)
        rdp.setflags(write=False)
        return LedgerEntry(
            id=row.id, dataset_id=row.dataset_id, run_id=row.run_id, partition=row.partition,
            mechanism=row.mechanism, noise_multiplier=segment.noise_multiplier,
            sample_rate=segment.sample_rate, steps=segment.steps, status=row.status,
            created_at=row.created_at, note=row.note or "", rdp=rdp, completed_at=row.completed_at)

    def _partition_curves(self, conn: Connection, dataset_id: str,
                          run_id: str | None = None) -> dict[str, np.ndarray]:
        curves: dict[str, np.ndarray] = {}
        for e in self._entries(conn, dataset_id, run_id):
            curves[e.partition] = curves.get(e.partition, np.zeros(len(ORDERS))) + e.rdp
        return curves

    @staticmethod
    def _max_epsilon(curves: dict[str, np.ndarray], delta: float) -> tuple[float, str | None]:
        best, worst = 0.0, None
        for name in sorted(curves):
            eps = epsilon_from_rdp(curves[name], delta)[0]
            if worst is None or eps > best:
                best, worst = eps, name
        return best, worst

    def rdp_spent(self, dataset_id: str, partition: str | None = None, run_id: str | None = None) -> np.ndarray:
        """RDP curve spent on a dataset (reserved and completed entries).

        With a partition: that partition's entries summed. Without: the per-order maximum over
        partitions, a valid curve for the whole dataset by parallel composition (use it as
        calibrate_noise's prior_rdp when a run touches every partition).
        """
        with self._engine.connect() as conn:
            if partition is not None:
                total = np.zeros(len(ORDERS))
                for e in self._entries(conn, dataset_id, run_id, partition):
                    total = total + e.rdp
                return total
            curves = self._partition_curves(conn, dataset_id, run_id)
        if not curves:
            return np.zeros(len(ORDERS))
        return np.max(np.stack(list(curves.values())), axis=0)

    def _delta_for(self, dataset_id: str, delta: float | None) -> float:
        if delta is not None:
            return check_delta(delta)
        ds = self.dataset(dataset_id)
        if ds is None:
            raise PpmlopsError(f"dataset {dataset_id!r} is not registered in the privacy ledger; pass delta explicitly")
        return ds["delta"]

    def epsilon_by_partition(self, dataset_id: str, delta: float | None = None,
                             run_id: str | None = None) -> dict[str, float]:
        delta = self._delta_for(dataset_id, delta)
        with self._engine.connect() as conn:
            curves = self._partition_curves(conn, dataset_id, run_id)
        return {name: epsilon_from_rdp(curves[name], delta)[0] for name in sorted(curves)}

    def epsilon_spent(self, dataset_id: str, delta: float | None = None, run_id: str | None = None) -> float:
        """Epsilon of everything charged to the dataset (or one run of it): the worst partition,
        each partition's curves composed and converted once. delta defaults to the registered one."""
        by_partition = self.epsilon_by_partition(dataset_id, delta, run_id)
        return max(by_partition.values(), default=0.0)

    def summary(self, dataset_id: str | None = None) -> dict:
        """Per dataset: budget, spend, remaining, per-partition epsilon, runs and entries."""
        ids = [dataset_id] if dataset_id is not None else self.datasets()
        out = []
        with self._engine.connect() as conn:
            for ds_id in ids:
                row = conn.execute(select(datasets_table).where(datasets_table.c.dataset_id == ds_id)).first()
                entries = self._entries(conn, ds_id, None)
                if row is None and not entries:
                    raise PpmlopsError(f"dataset {ds_id!r} is not in the privacy ledger")
                budget = row.epsilon_budget if row is not None else None
                delta = row.delta if row is not None else None
                curves: dict[str, np.ndarray] = {}
                for e in entries:
                    curves[e.partition] = curves.get(e.partition, np.zeros(len(ORDERS))) + e.rdp
                partitions = ({name: epsilon_from_rdp(curves[name], delta)[0] for name in sorted(curves)}
                              if delta is not None else {})
                spent = max(partitions.values(), default=0.0) if delta is not None else None
                out.append({
                    "dataset_id": ds_id,
                    "epsilon_budget": budget,
                    "delta": delta,
                    "epsilon_spent": spent,
                    "epsilon_remaining": (max(0.0, budget - spent) if budget is not None else None),
                    "partitions": partitions,
                    "runs": list(dict.fromkeys(e.run_id for e in entries)),
                    "entries": [e.to_dict() for e in entries],
                })
        return {"datasets": out, "accountant": "rdp", "orders": list(ORDERS)}
