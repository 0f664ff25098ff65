"""The privacy ledger: every DP release charged against a dataset, composed for life.

Budgets belong to a dataset, not to a run. Three kinds of entry:

* ``release``: a noisy statistic released now (the counts a run publishes at assess), charged
  to every partition it touches;
* ``grant``: a run's whole budget, its privacy filter's fixed RDP curve per partition, reserved
  at plan before any step runs, so runs planned at the same time (a backfill) never plan on the
  same remainder. Under adaptive settings the run's filter guarantees that curve, not the curve
  the run happens to spend: the grant is the run's epsilon on its card;
* ``usage``: what a run actually spent under its grant (an epoch of DP-SGD, a noisy holdout
  accuracy), written ahead of the step it pays for. Usage rows are the run filter's state and
  the dashboard's "used of the run's budget".

When a run ends its grant is closed: released where the run used none of it, else trimmed to its
usage. A private search's piece (mechanism ``private_search``) is neither: its bound holds for
the released best trial only while K stays secret, so its usage is never recorded and the piece
stays counted in full (``completed``) whatever the run did. Trimming is sound for the dataset's
totals because the lifetime filter works at one Renyi order: there, the sequence of mechanisms
may be chosen adaptively (Feldman & Zrnic 2021) and the usage rows are exactly the mechanisms
that ran, each below the grant that admitted it (the run's filter holds usage under the grant at
every order). A trimmed grant asked for again (a task cleared after its run ended) is admitted
afresh by the lifetime filter.

Every entry carries the randomness mode of the run that made it ("secure" or "reproducible").

The unit of accounting is (block, partition): a dataset's rows are divided into blocks of event
time (ppmlops.privacy.blocks; one block, "all", without privacy.blocks) and into the training and
held-out partitions, all disjoint row sets. Every entry stores the list of blocks its run's window
read (column `blocks`, JSON, once per entry rather than a row per block: a run's usage rows stay
the run filter's state one for one, and one logical charge is one row whatever its blocks) and
counts in full against each of them and against no other block (parallel composition). Dataset
totals add the RDP curves of every counted entry within a (block, partition) and take the worst
one. Entries written before blocks existed (no block list) count against every block that had
begun when they were made (the block's start before the entry's created_at): a one-pot run read
the whole table, so conservatively it read every block then open. Admission is the lifetime
filter of ppmlops.privacy.lifetime in every (block, partition) the charge touches: one Renyi
order fixed at registration, checked in the same transaction as the insert (under the dataset
row's lock), so concurrent runs cannot jointly overspend any block. Block length and origin are
fixed at registration like the budget. The lifetime budget and delta are fixed at registration; `set_budget`
changes them explicitly (the CLI records that in the audit log).

SQLAlchemy Core through ppmlops.db: an SQLite file by default (writers take BEGIN IMMEDIATE),
PostgreSQL by URL (the dataset row is locked FOR UPDATE).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Mapping

import numpy as np
from sqlalchemy import Column, Double, Integer, MetaData, String, Table, Text, inspect, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError

from ppmlops import db

from ppmlops.errors import BudgetExceeded, PpmlopsError
from ppmlops.privacy.accountant import ORDERS, Segment, check_delta, epsilon_from_rdp, segment_rdp
from ppmlops.privacy.blocks import ALL, BlockCalendar, BlockError, as_utc, unlocked_fraction
from ppmlops.privacy.lifetime import LifetimeBudget, choose_order
from ppmlops.privacy.randomness import MODES as RANDOMNESS_MODES
from ppmlops.privacy import split
from ppmlops.privacy.search import TrialCount, search_rdp

MECHANISMS = ("subsampled_gaussian", "gaussian", "private_search")
SEARCH = "private_search"
KINDS = ("release", "grant", "usage")
COUNTED = ("release", "grant")
RESERVED, COMPLETED, RELEASED, TRIMMED = "reserved", "completed", "released", "trimmed"
LIVE = (RESERVED, COMPLETED)
TRAIN, HOLDOUT = "train", "holdout"

_metadata = MetaData()

datasets_table = Table(
    "privacy_datasets",
    _metadata,
    Column("dataset_id", String(200), primary_key=True),
    Column("epsilon_budget", Double, nullable=False),
    Column("delta", Double, nullable=False),
    Column("accounting_order", Double, nullable=True),  # NULL only in databases from before 0.2
    # Block length in seconds (0: one block, "all") and origin (ISO); NULL: registered before
    # blocks existed (the first spec that states its blocks records them).
    Column("block_seconds", Double, nullable=True),
    Column("block_origin", String(40), nullable=True),
    # The unit of privacy (privacy.unit): the person column (NULL: one row) and k rows a person;
    # unit_max_rows NULL: registered before units were recorded (the first spec records it).
    Column("unit_column", String(200), nullable=True),
    Column("unit_max_rows", Integer, nullable=True),
    # The split rule that puts each row in train or test (ppmlops.privacy.split); NULL: registered
    # before rules were recorded, which is the legacy rule.
    Column("split_rule", String(40), nullable=True),
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
    Column("kind", String(16), nullable=False, server_default="release"),
    Column("key", String(200), nullable=True),  # the release's name within its run, for idempotence
    Column("mechanism", String(64), nullable=False),
    Column("noise_multiplier", Double, nullable=False),
    Column("sample_rate", Double, nullable=False),
    Column("steps", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("randomness", String(16), nullable=False, server_default="unrecorded"),
    Column("created_at", String(40), nullable=False),
    Column("completed_at", String(40), nullable=True),
    Column("note", Text, nullable=False, default=""),
    # JSON text rather than a JSON column: curves may hold Infinity (orders where the RDP
    # series has no finite bound), which strict JSON types reject.
    Column("orders", Text, nullable=False),
    Column("rdp", Text, nullable=False),
    # private_search: the trial count's distribution (ppmlops.privacy.search.TrialCount); the
    # segment is one trial's.
    Column("search_mean", Double, nullable=True),
    Column("search_shape", Double, nullable=True),
    # JSON list of the block ids the entry counts against; NULL: written before blocks existed.
    Column("blocks", Text, nullable=True),
)

# Which pipeline (the spec's name) each run belongs to, and where its data window ends: registered
# at plan (public: the spec's name and the run's data interval). Several pipelines on one dataset
# share each block's unlocked budget by it (see Ledger.block_rooms).
runs_table = Table(
    "privacy_runs",
    _metadata,
    Column("dataset_id", String(200), primary_key=True),
    Column("run_id", String(200), primary_key=True),
    Column("pipeline", String(200), nullable=False, index=True),
    Column("window_end", String(40), nullable=True),  # ISO, UTC; NULL: the whole table up to now
    Column("registered_at", String(40), nullable=False),
)

# Columns added since the first schema; existing databases get them on open (ALTER TABLE ADD).
_ADDED = {
    "privacy_datasets": {"accounting_order": "DOUBLE PRECISION", "block_seconds": "DOUBLE PRECISION",
                         "block_origin": "VARCHAR(40)", "unit_column": "VARCHAR(200)",
                         "unit_max_rows": "INTEGER", "split_rule": "VARCHAR(40)"},
    "privacy_ledger": {"kind": "VARCHAR(16) NOT NULL DEFAULT 'release'", "key": "VARCHAR(200)",
                       "randomness": "VARCHAR(16) NOT NULL DEFAULT 'unrecorded'",
                       "search_mean": "DOUBLE PRECISION", "search_shape": "DOUBLE PRECISION",
                       "blocks": "TEXT"},
}


class BudgetMismatch(PpmlopsError):
    """A spec asks for another lifetime budget than the dataset was registered with."""


class BlockMismatch(BudgetMismatch):
    """A spec asks for another block length or origin than the dataset was registered with."""


class SplitRuleMismatch(BudgetMismatch):
    """A run's ingest split rows by another rule than the dataset was registered with."""


class UnitMismatch(BudgetMismatch):
    """A spec asks for another unit of privacy than the dataset was registered with."""


@dataclass(frozen=True)
class PrivacyUnit:
    """Who a dataset's guarantee protects: one row (column None, max_rows 1) or one person of
    `column` with at most `max_rows` rows. Fixed at registration: the ledger's past charges were
    calibrated to it, and under another unit their sum would mean something else."""

    column: str | None = None
    max_rows: int = 1

    def describe(self) -> str:
        return "one row" if self.column is None else f"one person ({self.column}) with at most {self.max_rows} rows"


@dataclass(frozen=True)
class Charge:
    """One piece of a charge: a segment of a mechanism on one partition."""

    partition: str
    segment: Segment
    mechanism: str = "subsampled_gaussian"
    note: str = ""
    trials: TrialCount | None = None  # private_search: the best of K trials of `segment`

    def rdp(self) -> np.ndarray:
        return piece_rdp(self.segment, self.trials)


def piece_rdp(segment: Segment, trials: TrialCount | None) -> np.ndarray:
    base = segment_rdp(segment)
    return base if trials is None else search_rdp(base, trials)


@dataclass(frozen=True)
class LedgerEntry:
    id: int
    dataset_id: str
    run_id: str
    partition: str
    kind: str
    key: str | None
    mechanism: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    status: str
    randomness: str
    created_at: str
    note: str
    rdp: np.ndarray = field(compare=False, repr=False)  # read-only, on ORDERS
    completed_at: str | None = None
    trials: TrialCount | None = None
    blocks: tuple[str, ...] | None = None  # None: written before blocks existed (see module docstring)

    @property
    def segment(self) -> Segment:
        return Segment(self.noise_multiplier, self.sample_rate, self.steps)

    def to_dict(self) -> dict[str, Any]:
        """The entry's fields without its RDP curve."""
        return {
            "id": self.id, "dataset_id": self.dataset_id, "run_id": self.run_id, "partition": self.partition,
            "kind": self.kind, "key": self.key, "mechanism": self.mechanism,
            "noise_multiplier": self.noise_multiplier, "sample_rate": self.sample_rate, "steps": self.steps,
            "status": self.status, "randomness": self.randomness, "created_at": self.created_at,
            "completed_at": self.completed_at, "note": self.note,
            "search_mean": self.trials.mean if self.trials else None,
            "search_shape": self.trials.eta if self.trials else None,
            "blocks": list(self.blocks) if self.blocks is not None else None,
        }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _name(value: object, field_name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PpmlopsError(f"{field_name} must be a non-empty string, got {value!r}")
    if len(value) > 200:
        raise PpmlopsError(f"{field_name} is longer than 200 characters: {value[:40]!r}...")
    return value


def sqlite_file_missing(db_url: str) -> bool:
    """True when db_url names an SQLite file that does not exist (read-only callers skip it)."""
    path = db.sqlite_file(db_url)
    return path is not None and not path.exists()


def counted(entries: Iterable[LedgerEntry]) -> list[LedgerEntry]:
    """What a dataset's totals add: its releases, its live grants, and the usage under trimmed grants."""
    entries = list(entries)
    trimmed = {(e.run_id, e.partition) for e in entries if e.kind == "grant" and e.status == TRIMMED}
    return [e for e in entries if (e.kind in COUNTED and e.status in LIVE)
            or (e.kind == "usage" and (e.run_id, e.partition) in trimmed)]


def guaranteed(entries: Iterable[LedgerEntry]) -> list[LedgerEntry]:
    """A run's own guarantee: its releases and its whole grant (the run filter's fixed curve),
    trimmed or not; a grant released unused is no part of it."""
    return [e for e in entries if e.kind in COUNTED and e.status != RELEASED]


def _curves(entries: Iterable[LedgerEntry]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for e in entries:
        out[e.partition] = out.get(e.partition, np.zeros(len(ORDERS))) + e.rdp
    return out


def charge_curves(charges: Iterable[Charge]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for c in charges:
        out[c.partition] = out.get(c.partition, np.zeros(len(ORDERS))) + c.rdp()
    return out


def _one_pot(e: LedgerEntry) -> bool:
    return e.blocks is None or e.blocks == (ALL,)


def _applies(e: LedgerEntry, block: str, calendar: BlockCalendar) -> bool:
    """Whether entry e counts against `block`: it names it, or it is a one-pot entry (made
    before blocks) and the block had begun when it was made."""
    if not calendar.blocked:
        return True
    return calendar.existed_at(block, e.created_at) if _one_pot(e) else block in e.blocks


def block_curves(entries: Iterable[LedgerEntry], calendar: BlockCalendar,
                 blocks: Iterable[str] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Per block, per partition: the RDP the dataset's totals count there (see `counted`).

    `blocks` None: every block some entry counts against, where one-pot entries (which count
    against unboundedly many earlier blocks) are represented by the block holding the earliest
    of them: it and every earlier block carry all of them, and nothing else unless named."""
    entries = counted(entries)
    if not calendar.blocked:
        return {ALL: _curves(entries)}
    if blocks is None:
        wanted = {b for e in entries if not _one_pot(e) for b in e.blocks}
        pots = [datetime.fromisoformat(e.created_at) for e in entries if _one_pot(e)]
        if pots:
            # The block that began strictly before the earliest one-pot entry.
            wanted.add(calendar.block_id(calendar.index(min(pots) - timedelta(microseconds=1))))
        blocks = sorted(wanted, key=calendar.parse)
    return {b: _curves(e for e in entries if _applies(e, b, calendar)) for b in blocks}


def worst_curves(per_block: Mapping[str, Mapping[str, np.ndarray]], order_index: int) -> dict[str, np.ndarray]:
    """Per partition, the curve of the block with the most RDP at the dataset's order: what the
    lifetime filter compares (it looks at that one order), so planning against these curves is
    planning against every block at once."""
    out: dict[str, np.ndarray] = {}
    for curves in per_block.values():
        for partition, curve in curves.items():
            if partition not in out or curve[order_index] > out[partition][order_index]:
                out[partition] = curve
    return out


def worst_blocks(per_block: Mapping[str, Mapping[str, np.ndarray]], order_index: int) -> dict[str, str]:
    """Per partition, the block whose spend is the dataset's guarantee (the earliest on ties)."""
    out: dict[str, tuple[float, str]] = {}
    for block, curves in per_block.items():
        for partition, curve in curves.items():
            if partition not in out or curve[order_index] > out[partition][0]:
                out[partition] = (float(curve[order_index]), block)
    return {p: b for p, (_, b) in sorted(out.items())}


@dataclass(frozen=True)
class PipelineRun:
    """A run registered with the dataset it reads (public)."""

    run_id: str
    pipeline: str
    window_end: datetime | None


@dataclass(frozen=True)
class BlockRoom:
    """One block as a run of one pipeline sees it at plan: DPF unlocking and dominant-share sharing.

    RDP values are at the dataset's order. `unlocked` is the share of the block's lifetime budget
    unlocked at the run's window end (ppmlops.privacy.blocks.unlocked_fraction). The `pipelines`
    pipelines reading the dataset each have a fair part of it, an equal share of what is unlocked
    (DPF's fair share). Who may take more is decided by dominant share (DPF, Luo et al. OSDI 2021,
    after Dominant Resource Fairness; a pipeline's dominant share is the largest share of a block's
    budget its runs have used, over the blocks this run reads): `reserved` is, per partition, what
    this pipeline leaves for every other pipeline whose dominant share is no larger than its own,
    namely the part of their fair part they have not used, up to what their last run cost (their
    demand as public facts tell it; all of it for a pipeline with no granted run). The room is the unlocked budget left
    over by every run, less that reservation. So the pipeline that has had strictly the least may
    take more than its part (nothing idles while it asks), one that has had more keeps off the
    others' parts, and pipelines level with each other each keep to their part: runs that arrive
    one after the other share as DPF's queue would serve them had they waited for each other, and
    no run has to wait (an Airflow worker slot is not held for it)."""

    block: str
    unlocked: float
    pipelines: int
    lifetime_rdp: float  # the block's lifetime RDP budget (each (block, partition) has it)
    spent: dict[str, float]  # per partition, counted RDP of every run
    own: dict[str, float]  # per partition, counted RDP of this pipeline's runs
    reserved: dict[str, float] = field(default_factory=dict)  # per partition, kept for pipelines below

    def room(self, partition: str) -> float:
        open_ = self.unlocked * self.lifetime_rdp
        return max(0.0, open_ - self.spent.get(partition, 0.0) - self.reserved.get(partition, 0.0))

    @property
    def share_used(self) -> float:
        """Of the block's lifetime budget, by every run (worst partition)."""
        return max(self.spent.values(), default=0.0) / self.lifetime_rdp

    @property
    def pipeline_share_used(self) -> float:
        """Of the block's lifetime budget, by this pipeline's runs (worst partition)."""
        return max(self.own.values(), default=0.0) / self.lifetime_rdp


def _last_ask(entries: list[LedgerEntry], order_index: int) -> dict[str, float]:
    """Per partition, what a pipeline's latest granted run counts (its releases and grant, RDP at
    the dataset's order; a trimmed grant at its usage): the pipeline's demand, as far as public
    facts tell. Empty when none of its runs has a grant yet."""
    granted = [e for e in entries if e.kind == "grant"]
    if not granted:
        return {}
    last = max(granted, key=lambda e: (e.created_at, e.id)).run_id
    return {p: float(c[order_index]) for p, c in _curves(counted(e for e in entries if e.run_id == last)).items()}


def sharing_pipelines(runs: Iterable[PipelineRun], pipeline: str, end: datetime,
                      horizon: timedelta | None) -> list[str]:
    """The pipelines that share a dataset's blocks for a run of `pipeline` ending at `end`, sorted:
    this one and every other that registered a run whose window ends within one horizon of `end`
    (before or after: a backfill runs out of order). A pipeline that has not run for a horizon
    drops out, so nothing stays reserved for it. Without a horizon (a dataset without blocks or
    without a lookback) every pipeline that ever registered counts."""
    names = {pipeline}
    for r in runs:
        if horizon is None or r.window_end is None or abs(r.window_end - end) < horizon:
            names.add(r.pipeline)
    return sorted(names)


def best_order_epsilon(curves: Mapping[str, np.ndarray], delta: float) -> float:
    """Worst partition's epsilon at its best order: valid for ONE run's fixed (non-adaptive)
    budget curve, which is exactly what a grant is."""
    return max((epsilon_from_rdp(c, delta)[0] for c in curves.values()), default=0.0)


class Ledger:
    """Write-ahead privacy ledger on a SQLAlchemy URL (tables privacy_ledger, privacy_datasets)."""

    def __init__(self, db_url: str):
        self.db_url = db_url
        db.ensure_parent(db_url)
        self._engine = db.make_engine(db_url)
        for attempt in range(2):
            try:
                with db.transaction(self._engine, db_url, write=True, doing="open the privacy ledger in") as conn:
                    _metadata.create_all(conn)
                    _add_missing_columns(conn)
                break
            except DBAPIError:
                # Two processes creating the tables at once: the loser finds them on retry.
                if attempt:
                    raise

    @classmethod
    def reading(cls, db_url: str) -> "Ledger":
        """A ledger over tables that already exist: creates nothing and writes nothing (for DAG
        parsing, which runs every few seconds beside the tasks that write)."""
        ledger = cls.__new__(cls)
        ledger.db_url, ledger._engine = db_url, db.make_engine(db_url)
        return ledger

    def safe_url(self) -> str:
        return db.redact(self.db_url)

    def _write(self):
        return db.transaction(self._engine, self.db_url, write=True, doing="write to the privacy ledger in")

    def _read(self):
        return db.transaction(self._engine, self.db_url, doing="read the privacy ledger in")

    def close(self) -> None:
        self._engine.dispose()

    # -- datasets --------------------------------------------------------------------------

    def register_dataset(self, dataset_id: str, *, epsilon_budget: float, delta: float,
                         order: float | None = None, run_curve: np.ndarray | None = None,
                         calendar: BlockCalendar | None = None, unit: PrivacyUnit | None = None,
                         split_rule: str | None = None) -> LifetimeBudget:
        """Fix a dataset's lifetime budget and blocks on first use; later calls must ask for the same.

        `order` fixes the accounting order; otherwise it is chosen from `run_curve` (a typical
        run from public facts) or by the heuristic. A later call with another epsilon or delta
        raises BudgetMismatch: budgets change only through `set_budget`. `calendar` is the
        spec's blocks (None: not stated, a new dataset is one block); a later call with another
        raises BlockMismatch. A dataset registered before blocks existed takes the first
        calendar stated (its earlier entries then count conservatively, see block_curves).
        `unit` is the spec's unit of privacy (None: not stated); another than the registered one
        raises UnitMismatch (one registered before units were recorded takes the first stated).
        `split_rule` is the rule the run's ingest split rows by (None: not known yet); a new
        dataset records it (or the default), and another than the registered one raises
        SplitRuleMismatch (see ppmlops.privacy.split: the rule never changes for a dataset).
        """
        dataset_id = _name(dataset_id, "dataset_id")
        epsilon_budget, delta = _check_budget(epsilon_budget, delta)
        for attempt in range(2):
            try:
                with self._write() as conn:
                    existing = self._budget(conn, dataset_id, lock=True)
                    if existing is None:
                        chosen = float(order) if order is not None else choose_order(epsilon_budget, delta, run_curve)
                        cal = calendar if calendar is not None else BlockCalendar()
                        budget = LifetimeBudget(dataset_id, epsilon_budget, delta, chosen, cal)
                        now = _now()
                        conn.execute(datasets_table.insert().values(
                            dataset_id=dataset_id, epsilon_budget=epsilon_budget, delta=delta,
                            accounting_order=chosen, created_at=now, updated_at=now, **_calendar_values(cal),
                            **_unit_values(unit or PrivacyUnit()), split_rule=split_rule or split.DEFAULT_RULE))
                        return budget
                    if unit is not None:
                        self._check_unit(conn, dataset_id, unit)
                    if split_rule is not None:
                        self._check_split_rule(conn, dataset_id, split_rule)
                    if (calendar is not None and existing.epsilon == epsilon_budget and existing.delta == delta
                            and self._stored_calendar(conn, dataset_id) is None):
                        # Registered before blocks: the spec's blocks are recorded now, once.
                        conn.execute(update(datasets_table).where(datasets_table.c.dataset_id == dataset_id)
                                     .values(updated_at=_now(), **_calendar_values(calendar)))
                        return LifetimeBudget(dataset_id, existing.epsilon, existing.delta, existing.order, calendar)
                if existing.epsilon != epsilon_budget or existing.delta != delta:
                    raise BudgetMismatch(
                        f"dataset {dataset_id!r} is registered in the privacy ledger with a lifetime budget of "
                        f"epsilon {existing.epsilon:g} at delta {existing.delta:g}, and the spec asks for epsilon "
                        f"{epsilon_budget:g} at delta {delta:g}. A lifetime budget never changes silently: restore "
                        f"the spec, or change the budget with `ppmlops ledger set-budget {dataset_id} --epsilon "
                        f"{epsilon_budget:g} --delta {delta:g} --reason ...` (recorded in the audit log)")
                if calendar is not None and existing.calendar != calendar:
                    raise BlockMismatch(
                        f"dataset {dataset_id!r} is registered in the privacy ledger with "
                        f"{existing.calendar.describe()}, and the spec asks for {calendar.describe()}. Block "
                        "length and origin fix which rows each block's budget protects and never change: restore "
                        "privacy.blocks and privacy.block_origin in the spec")
                return existing
            except IntegrityError:
                # PostgreSQL: another process registered it between our select and insert.
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def set_budget(self, dataset_id: str, *, epsilon_budget: float, delta: float | None = None,
                   order: float | None = None,
                   on_change: Callable[[Connection, LifetimeBudget, LifetimeBudget], None] | None = None,
                   ) -> tuple[LifetimeBudget, LifetimeBudget]:
        """Change a registered dataset's lifetime budget; returns (before, after).

        Entries already charged stay; the filter now admits up to the new budget. The accounting
        order is fixed at registration and never changes: `order`, if given, must be the
        registered one (a filter read at an order picked after the charges is not a filter).
        `on_change(conn, before, after)` runs inside the same transaction after the update, so
        what it writes there (`ppmlops ledger set-budget`: the audit record) commits with the
        change or not at all.
        """
        dataset_id = _name(dataset_id, "dataset_id")
        with self._write() as conn:
            before = self._budget(conn, dataset_id, lock=True)
            if before is None:
                raise PpmlopsError(f"dataset {dataset_id!r} is not registered in the privacy ledger")
            if order is not None and float(order) != before.order:
                raise BudgetMismatch(
                    f"dataset {dataset_id!r}: the accounting order of its lifetime filter is fixed at registration "
                    f"({before.order:g}) and cannot become {float(order):g}: choosing the order after charges "
                    f"were made would let the ledger pick the order that hides them")
            eps, dlt = _check_budget(epsilon_budget, before.delta if delta is None else delta)
            after = LifetimeBudget(dataset_id, eps, dlt, before.order, before.calendar)
            curves = worst_curves(block_curves(self._entries(conn, dataset_id), before.calendar), after.index)
            spent = after.spent_epsilon(curves)
            if spent > after.epsilon:
                raise BudgetExceeded(
                    f"dataset {dataset_id!r} has already spent epsilon {spent:.6g} at delta {after.delta:g} "
                    f"(order {after.order:g}); a lifetime budget of {after.epsilon:g} would be below it")
            conn.execute(update(datasets_table).where(datasets_table.c.dataset_id == dataset_id).values(
                epsilon_budget=eps, delta=dlt, accounting_order=after.order, updated_at=_now()))
            if on_change is not None:
                on_change(conn, before, after)
        return before, after

    def budget(self, dataset_id: str) -> LifetimeBudget | None:
        with self._read() as conn:
            return self._budget(conn, dataset_id)

    def _budget(self, conn: Connection, dataset_id: str, *, lock: bool = False) -> LifetimeBudget | None:
        query = select(datasets_table).where(datasets_table.c.dataset_id == dataset_id)
        row = conn.execute(query.with_for_update() if lock else query).first()
        if row is None:
            return None
        # Registered before accounting orders were stored: the heuristic is what 0.2 would pick.
        order = row.accounting_order if row.accounting_order is not None else choose_order(row.epsilon_budget, row.delta)
        calendar = BlockCalendar.stored(row.block_seconds, row.block_origin) or BlockCalendar()
        return LifetimeBudget(row.dataset_id, row.epsilon_budget, row.delta, float(order), calendar)

    def _check_unit(self, conn: Connection, dataset_id: str, unit: PrivacyUnit) -> None:
        """Refuse another unit than the registered one; record it where none was (older databases)."""
        registered = self._stored_unit(conn, dataset_id)
        if registered is None:
            conn.execute(update(datasets_table).where(datasets_table.c.dataset_id == dataset_id)
                         .values(updated_at=_now(), **_unit_values(unit)))
            return
        if registered != unit:
            raise UnitMismatch(
                f"dataset {dataset_id!r} is registered in the privacy ledger with the unit of privacy "
                f"{registered.describe()}, and the spec asks for {unit.describe()}. The ledger's charges so far "
                "were calibrated to the registered unit and never change meaning: restore privacy.unit in the spec")

    def _check_split_rule(self, conn: Connection, dataset_id: str, rule: str) -> None:
        registered = self._stored_split_rule(conn, dataset_id)
        if registered != rule:
            raise SplitRuleMismatch(
                f"dataset {dataset_id!r} is registered in the privacy ledger with the split rule {registered!r}, "
                f"and this run's ingest split its rows by {rule!r}. A row must keep its partition (train or "
                "holdout) for the dataset's life, or parallel composition would not hold: run again, so that "
                "ingest reads the registered rule")

    def split_rule(self, dataset_id: str) -> str | None:
        """The dataset's split rule (ppmlops.privacy.split); None: not registered yet."""
        with self._read() as conn:
            if self._budget(conn, dataset_id) is None:
                return None
            return self._stored_split_rule(conn, dataset_id)

    def _stored_split_rule(self, conn: Connection, dataset_id: str) -> str:
        rule = conn.execute(select(datasets_table.c.split_rule)
                            .where(datasets_table.c.dataset_id == dataset_id)).scalar()
        return rule or split.LEGACY_RULE

    def unit(self, dataset_id: str) -> PrivacyUnit | None:
        """The registered unit of privacy (None: not registered, or before units were recorded)."""
        with self._read() as conn:
            return self._stored_unit(conn, dataset_id)

    def _stored_unit(self, conn: Connection, dataset_id: str) -> PrivacyUnit | None:
        row = conn.execute(select(datasets_table.c.unit_column, datasets_table.c.unit_max_rows)
                           .where(datasets_table.c.dataset_id == dataset_id)).first()
        return None if row is None or row.unit_max_rows is None else PrivacyUnit(row.unit_column, int(row.unit_max_rows))

    def _stored_calendar(self, conn: Connection, dataset_id: str) -> BlockCalendar | None:
        row = conn.execute(select(datasets_table.c.block_seconds, datasets_table.c.block_origin)
                           .where(datasets_table.c.dataset_id == dataset_id)).first()
        return None if row is None else BlockCalendar.stored(row.block_seconds, row.block_origin)

    def datasets(self) -> list[str]:
        """Registered datasets and any that have entries, sorted."""
        with self._read() as conn:
            registered = conn.execute(select(datasets_table.c.dataset_id)).scalars().all()
            charged = conn.execute(select(ledger_table.c.dataset_id).distinct()).scalars().all()
        return sorted(set(registered) | set(charged))

    # -- writing ---------------------------------------------------------------------------

    def charge(self, *, dataset_id: str, run_id: str, charges: list[Charge], kind: str, key: str,
               randomness: str, blocks: Iterable[str] | None = None) -> list[int]:
        """Admit and record a counted charge (a release or a run's grant) before anything is drawn.

        `blocks`: the privacy blocks the run's window reads (None: the one block of a dataset
        without blocks); every piece counts in full against each of them, and admission is each
        (block, partition)'s lifetime filter, all in this one transaction.
        Idempotent by (run_id, kind, key): asking again for the same charge returns the entries
        already recorded (a retried task must not pay twice) and re-admits a closed grant.
        Raises BudgetExceeded, charging nothing, when the lifetime filter refuses.
        """
        if kind not in COUNTED:
            raise PpmlopsError(f"charge kind must be one of {list(COUNTED)}, got {kind!r}")
        dataset_id, run_id = _name(dataset_id, "dataset_id"), _name(run_id, "run_id")
        for c in charges:  # bad input is refused before the transaction (as before blocks)
            _entry_values(dataset_id, run_id, c, kind, key, randomness, None)
        with self._write() as conn:
            budget = self._budget(conn, dataset_id, lock=True)
            if budget is None:
                raise PpmlopsError(f"dataset {dataset_id!r} is not registered in the privacy ledger; "
                                   "register_dataset() it with its epsilon budget and delta first")
            touched = _run_blocks(budget, run_id, blocks)
            rows = [_entry_values(dataset_id, run_id, c, kind, key, randomness, touched) for c in charges]
            same = [e for e in self._entries(conn, dataset_id, run_id) if e.kind == kind and e.key == key]
            if same and _same_charge(same, charges) and all(e.blocks == touched for e in same):
                if all(e.status in LIVE for e in same):
                    return [e.id for e in same]
            elif same:
                raise PpmlopsError(
                    f"run {run_id!r} already has a {kind} {key!r} with other parameters; a run's {kind} "
                    "cannot change once recorded (start a new run)")
            asked = charge_curves(charges)
            per_block = block_curves(self._entries(conn, dataset_id), budget.calendar, touched)
            for block in touched:
                refusal = budget.refusal(per_block[block], asked, block if budget.calendar.blocked else None)
                if refusal:
                    raise BudgetExceeded(f"ledger refused run {run_id!r}: {refusal}")
            if same:  # a closed grant asked for again: admitted on top of its usage, then counted in full
                conn.execute(update(ledger_table).where(ledger_table.c.id.in_([e.id for e in same]))
                             .values(status=RESERVED, completed_at=None))
                return [e.id for e in same]
            return [int(conn.execute(ledger_table.insert().values(**r)).inserted_primary_key[0]) for r in rows]

    def record_usage(self, *, dataset_id: str, run_id: str, charge: Charge, key: str, randomness: str) -> int:
        """Write what a run is about to spend under its grant (write-ahead). Idempotent by key:
        a reserved row of the same key is adopted (its step never finished, so nothing it drew
        was released); a completed one is an error (that release happened already)."""
        dataset_id, run_id = _name(dataset_id, "dataset_id"), _name(run_id, "run_id")
        with self._write() as conn:
            entries = self._entries(conn, dataset_id, run_id)
            grant = next((e for e in entries if e.kind == "grant" and e.partition == charge.partition
                          and e.status in LIVE), None)
            if grant is None:
                raise PpmlopsError(f"run {run_id!r} has no open grant on partition {charge.partition!r} of dataset "
                                   f"{dataset_id!r}; plan the run first")
            for e in entries:
                if e.kind == "usage" and e.key == key:
                    if e.status == COMPLETED:
                        raise PpmlopsError(f"run {run_id!r} already completed release {key!r}")
                    if e.segment != charge.segment or e.partition != charge.partition:
                        raise PpmlopsError(f"run {run_id!r} reserved {key!r} with other parameters")
                    return e.id
            # Usage counts (under a trimmed grant) against exactly the blocks its grant was admitted on.
            values = _entry_values(dataset_id, run_id, charge, "usage", key, randomness, grant.blocks)
            return int(conn.execute(ledger_table.insert().values(**values)).inserted_primary_key[0])

    def complete(self, entry_id: int) -> None:
        """Mark a reserved entry as done. Completing twice is harmless."""
        with self._write() as conn:
            status = conn.execute(select(ledger_table.c.status).where(ledger_table.c.id == entry_id)).scalar()
            if status is None:
                raise PpmlopsError(f"privacy ledger has no entry with id {entry_id!r}")
            if status == RESERVED:
                conn.execute(update(ledger_table).where(ledger_table.c.id == entry_id)
                             .values(status=COMPLETED, completed_at=_now()))

    def close_grant(self, *, dataset_id: str, run_id: str) -> str:
        """End a run's grant, per partition: "trimmed" to the run's usage where it used any (the
        dataset's totals then count the usage), "released" (it stops counting) where it used
        none. Returns "trimmed" if any partition was used, else "released"."""
        with self._write() as conn:
            entries = self._entries(conn, dataset_id, run_id)
            used = {e.partition for e in entries if e.kind == "usage"}
            grants = [e for e in entries if e.kind == "grant" and e.status in LIVE]
            searches = [e for e in grants if e.mechanism == SEARCH]
            grants = [e for e in grants if e.mechanism != SEARCH]
            for status, ids in ((COMPLETED, [e.id for e in searches if e.status == RESERVED]),
                                (TRIMMED, [e.id for e in grants if e.partition in used]),
                                (RELEASED, [e.id for e in grants if e.partition not in used])):
                if ids:
                    conn.execute(update(ledger_table).where(ledger_table.c.id.in_(ids))
                                 .values(status=status, completed_at=_now()))
            return TRIMMED if used or searches else RELEASED

    # -- reading ---------------------------------------------------------------------------

    def entries(self, dataset_id: str | None = None, run_id: str | None = None,
                kind: str | None = None) -> list[LedgerEntry]:
        with self._read() as conn:
            return [e for e in self._entries(conn, dataset_id, run_id) if kind is None or e.kind == kind]

    def _entries(self, conn: Connection, dataset_id: str | None, run_id: str | None = None) -> list[LedgerEntry]:
        query = select(ledger_table).order_by(ledger_table.c.id)
        if dataset_id is not None:
            query = query.where(ledger_table.c.dataset_id == dataset_id)
        if run_id is not None:
            query = query.where(ledger_table.c.run_id == run_id)
        return [_entry(row) for row in conn.execute(query)]

    def charged_curves(self, dataset_id: str, run_id: str | None = None,
                       blocks: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Per partition, the RDP the dataset's totals count (see `counted`): of one run (its own
        entries, whatever blocks they name), else of the worst of `blocks` (None: of every block)
        at the dataset's order, which is what its lifetime filter compares."""
        if run_id is not None:
            return _curves(counted(self.entries(dataset_id, run_id)))
        budget = self._require(dataset_id)
        return worst_curves(self.block_curves(dataset_id, blocks), budget.index)

    def block_curves(self, dataset_id: str, blocks: Iterable[str] | None = None) -> dict[str, dict[str, np.ndarray]]:
        """Per block (of `blocks`, None: every block with a charge), per partition, the counted RDP."""
        with self._read() as conn:
            budget = self._budget(conn, dataset_id)
            if budget is None:
                raise PpmlopsError(f"dataset {dataset_id!r} is not registered in the privacy ledger")
            if blocks is not None:
                blocks = budget.calendar.checked(blocks)
            return block_curves(self._entries(conn, dataset_id), budget.calendar, blocks)

    def block_shares(self, dataset_id: str, blocks: Iterable[str] | None = None) -> dict[str, dict[str, float]]:
        """Per block, per partition, the share of the block's lifetime RDP budget used."""
        budget = self._require(dataset_id)
        return {b: {p: float(c[budget.index]) / budget.rdp for p, c in sorted(curves.items())}
                for b, curves in self.block_curves(dataset_id, blocks).items()}

    # -- pipelines and unlocking -------------------------------------------------------------

    def register_run(self, dataset_id: str, run_id: str, pipeline: str, window_end: datetime | None) -> None:
        """Record which pipeline a run belongs to and where its window ends (idempotent; a run
        cannot change pipeline)."""
        dataset_id, run_id, pipeline = (_name(dataset_id, "dataset_id"), _name(run_id, "run_id"),
                                        _name(pipeline, "pipeline"))
        end = _iso(window_end) if window_end is not None else None
        for attempt in range(2):
            try:
                with self._write() as conn:
                    row = conn.execute(select(runs_table).where(runs_table.c.dataset_id == dataset_id,
                                                                runs_table.c.run_id == run_id)).first()
                    if row is None:
                        conn.execute(runs_table.insert().values(dataset_id=dataset_id, run_id=run_id, pipeline=pipeline,
                                                                window_end=end, registered_at=_now()))
                    elif row.pipeline != pipeline or row.window_end != end:
                        raise PpmlopsError(
                            f"run {run_id!r} on dataset {dataset_id!r} is registered for pipeline {row.pipeline!r} "
                            f"with window end {row.window_end}; it cannot become pipeline {pipeline!r} ending {end}")
                return
            except IntegrityError:
                if attempt:  # another process registered the same run between our select and insert
                    raise

    def pipeline_runs(self, dataset_id: str) -> list[PipelineRun]:
        with self._read() as conn:
            return self._pipeline_runs(conn, dataset_id)

    def _pipeline_runs(self, conn: Connection, dataset_id: str) -> list[PipelineRun]:
        rows = conn.execute(select(runs_table).where(runs_table.c.dataset_id == dataset_id)
                            .order_by(runs_table.c.registered_at, runs_table.c.run_id))
        return [PipelineRun(r.run_id, r.pipeline, datetime.fromisoformat(r.window_end) if r.window_end else None)
                for r in rows]

    def block_rooms(self, dataset_id: str, blocks: Iterable[str], *, pipeline: str, end: datetime,
                    horizon: timedelta | None) -> list[BlockRoom]:
        """Each of `blocks` as a run of `pipeline` whose window ends at `end` sees it (BlockRoom):
        the share unlocked over `horizon` (ppmlops.privacy.blocks.unlock_horizon), the pipelines
        sharing it, what every run and this pipeline's runs have counted there, and what it
        keeps for the pipelines below it in dominant share."""
        with self._read() as conn:
            budget = self._budget(conn, dataset_id)
            if budget is None:
                raise PpmlopsError(f"dataset {dataset_id!r} is not registered in the privacy ledger")
            try:
                blocks = budget.calendar.checked(blocks)
            except BlockError as err:
                raise PpmlopsError(f"dataset {dataset_id!r}, pipeline {pipeline!r}: {err}") from None
            entries = self._entries(conn, dataset_id)
            runs = self._pipeline_runs(conn, dataset_id)
        end = as_utc(end)
        at, lifetime = budget.index, budget.rdp
        every = block_curves(entries, budget.calendar, blocks)
        sharing = sharing_pipelines(runs, pipeline, end, horizon)
        # Each sharing pipeline's counted RDP per (block, partition) and its dominant share over
        # the blocks this run reads (the resources it asks for): the largest share it has used.
        own: dict[str, dict[str, dict[str, float]]] = {}
        asks: dict[str, dict[str, float]] = {}
        for name in sharing:
            ids = {r.run_id for r in runs if r.pipeline == name}
            mine = [e for e in entries if e.run_id in ids]
            curves = block_curves(mine, budget.calendar, blocks)
            own[name] = {b: {p: float(c[at]) for p, c in sorted(curves[b].items())} for b in blocks}
            asks[name] = _last_ask(mine, at)
        dominant = {name: max((v / lifetime for b in blocks for v in own[name][b].values()), default=0.0)
                    for name in sharing}
        # DPF serves the smallest dominant share first: this pipeline keeps off the unused fair
        # part of every pipeline that has had no more than it (ties keep off each other's parts),
        # but no more of it than that pipeline's last run cost: what it will ask again. The rest
        # would idle (DPF is work-conserving); a pipeline with no granted run yet keeps its part.
        below = [q for q in sharing if q != pipeline and dominant[q] <= dominant[pipeline]]
        rooms = []
        for b in blocks:
            unlocked = unlocked_fraction(budget.calendar, b, end, horizon)
            fair = unlocked * lifetime / len(sharing)
            spent = {p: float(c[at]) for p, c in sorted(every[b].items())}
            reserved = {p: sum(min(max(0.0, fair - own[q][b].get(p, 0.0)), asks[q].get(p, math.inf)) for q in below)
                        for p in (TRAIN, HOLDOUT)}
            rooms.append(BlockRoom(b, unlocked, len(sharing), lifetime, spent, own[pipeline][b], reserved))
        return rooms

    def usage_curves(self, dataset_id: str, run_id: str) -> dict[str, np.ndarray]:
        """Per partition, what the run's usage rows say it spent under its grant."""
        return _curves(self.entries(dataset_id, run_id, kind="usage"))

    def spent(self, dataset_id: str) -> float:
        """The dataset's spend under its lifetime filter (epsilon at its order and delta)."""
        budget = self._require(dataset_id)
        return budget.spent_epsilon(self.charged_curves(dataset_id))

    def epsilon_by_partition(self, dataset_id: str, run_id: str | None = None) -> dict[str, float]:
        """Per partition: for a run, its guarantee (releases and whole grant, a curve fixed before
        it started) at the best order; for the dataset, epsilon at the lifetime order."""
        budget = self._require(dataset_id)
        if run_id is not None:
            curves = _curves(guaranteed(self.entries(dataset_id, run_id)))
            return {p: epsilon_from_rdp(c, budget.delta)[0] for p, c in sorted(curves.items())}
        curves = self.charged_curves(dataset_id)
        return {p: budget.spent_epsilon({p: c}) for p, c in sorted(curves.items())}

    def _require(self, dataset_id: str) -> LifetimeBudget:
        budget = self.budget(dataset_id)
        if budget is None:
            raise PpmlopsError(f"dataset {dataset_id!r} is not registered in the privacy ledger")
        return budget

    def summary(self, dataset_id: str | None = None) -> dict:
        """Per dataset: budget, spend, remaining, per-partition epsilon, runs and entries."""
        ids = [dataset_id] if dataset_id is not None else self.datasets()
        out = []
        with self._read() as conn:
            for ds_id in ids:
                budget = self._budget(conn, ds_id)
                entries = self._entries(conn, ds_id)
                if budget is None and not entries:
                    raise PpmlopsError(f"dataset {ds_id!r} is not in the privacy ledger")
                per_block = block_curves(entries, budget.calendar) if budget else {}
                curves = worst_curves(per_block, budget.index) if budget else {}
                partitions = {p: budget.spent_epsilon({p: c}) for p, c in sorted(curves.items())} if budget else {}
                spent = max(partitions.values(), default=0.0) if budget else None
                out.append({
                    "dataset_id": ds_id,
                    "epsilon_budget": budget.epsilon if budget else None,
                    "delta": budget.delta if budget else None,
                    "accounting_order": budget.order if budget else None,
                    "share_used": budget.share_used(curves) if budget else None,
                    "epsilon_spent": spent,  # at the dataset's order: information, see LifetimeBudget
                    "epsilon_remaining": max(0.0, budget.epsilon - spent) if budget else None,
                    "partitions": partitions,  # the worst block's, per partition
                    "block_length_seconds": budget.calendar.seconds if budget else None,
                    "block_origin": budget.calendar.origin.isoformat() if budget and budget.calendar.blocked else None,
                    "worst_block": worst_blocks(per_block, budget.index) if budget else {},
                    "blocks": {b: {p: float(c[budget.index]) / budget.rdp for p, c in sorted(cs.items())}
                               for b, cs in per_block.items()} if budget else {},
                    "runs": list(dict.fromkeys(e.run_id for e in entries)),
                    "pipelines": _pipeline_summary(entries, self._pipeline_runs(conn, ds_id), budget),
                    "entries": [e.to_dict() for e in entries],
                })
        return {"datasets": out, "accountant": "rdp", "filter": "renyi, one order per dataset, per (block, partition)",
                "orders": list(ORDERS)}


def _pipeline_summary(entries: list[LedgerEntry], runs: list[PipelineRun], budget: LifetimeBudget | None) -> dict:
    """Per pipeline (the spec's name): its runs, its share of each block's lifetime budget (worst
    partition) and its dominant share (the largest of them, DPF's measure of what a pipeline got).
    Entries of runs no pipeline registered (made before pipelines were recorded, or refused before
    plan) count in the dataset's totals only."""
    if budget is None:
        return {}
    by_pipeline: dict[str, list[str]] = {}
    for r in runs:
        by_pipeline.setdefault(r.pipeline, []).append(r.run_id)
    out = {}
    for name, run_ids in sorted(by_pipeline.items()):
        ids = set(run_ids)
        per_block = block_curves([e for e in entries if e.run_id in ids], budget.calendar)
        shares = {b: max((float(c[budget.index]) / budget.rdp for c in cs.values()), default=0.0)
                  for b, cs in per_block.items()}
        out[name] = {"runs": run_ids, "blocks": shares, "dominant_share": max(shares.values(), default=0.0)}
    return out


def _iso(t: datetime) -> str:
    return as_utc(t).isoformat(timespec="microseconds")


def _check_budget(epsilon_budget: object, delta: object) -> tuple[float, float]:
    try:
        eps = float(epsilon_budget)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise PpmlopsError(f"epsilon_budget must be a number, got {epsilon_budget!r}") from None
    if not (math.isfinite(eps) and eps > 0):
        raise PpmlopsError(f"epsilon_budget must be a finite number > 0, got {epsilon_budget!r}")
    return eps, check_delta(delta)


def _unit_values(unit: PrivacyUnit) -> dict:
    return {"unit_column": unit.column, "unit_max_rows": unit.max_rows}


def _calendar_values(calendar: BlockCalendar) -> dict:
    return {"block_seconds": calendar.seconds,
            "block_origin": calendar.origin.isoformat() if calendar.blocked else None}


def _run_blocks(budget: LifetimeBudget, run_id: str, blocks: Iterable[str] | None) -> tuple[str, ...]:
    """A charge's blocks, checked against the dataset's calendar (errors name the run)."""
    if blocks is None:
        if budget.calendar.blocked:
            raise PpmlopsError(f"dataset {budget.dataset_id!r} has privacy blocks ({budget.calendar.describe()}): "
                               f"a charge of run {run_id!r} must name the blocks its window reads")
        blocks = (ALL,)
    try:
        return budget.calendar.checked(blocks)
    except BlockError as err:
        raise PpmlopsError(f"run {run_id!r} on dataset {budget.dataset_id!r}: {err}") from None


def _entry_values(dataset_id: str, run_id: str, c: Charge, kind: str, key: str, randomness: str,
                  blocks: tuple[str, ...] | None) -> dict:
    if not isinstance(c, Charge):
        raise PpmlopsError(f"expected a Charge, got {type(c).__name__}")
    _name(c.partition, "partition")
    if c.mechanism not in MECHANISMS:
        raise PpmlopsError(f"mechanism must be one of {list(MECHANISMS)}, got {c.mechanism!r}")
    if c.mechanism == "gaussian" and c.segment.sample_rate != 1.0:
        raise PpmlopsError(f"mechanism 'gaussian' needs sample_rate 1 (no subsampling), got {c.segment.sample_rate}")
    if (c.mechanism == SEARCH) != (c.trials is not None):
        raise PpmlopsError(f"a trial count goes with mechanism {SEARCH!r} and only with it (got {c.mechanism!r})")
    if randomness not in RANDOMNESS_MODES:
        raise PpmlopsError(f"randomness must be one of {list(RANDOMNESS_MODES)}, got {randomness!r}")
    rdp = c.rdp()
    return dict(dataset_id=dataset_id, run_id=run_id, partition=c.partition, kind=kind, key=_name(key, "key"),
                mechanism=c.mechanism, noise_multiplier=c.segment.noise_multiplier,
                sample_rate=c.segment.sample_rate, steps=c.segment.steps, status=RESERVED,
                randomness=randomness, created_at=_now(), completed_at=None, note=str(c.note),
                orders=json.dumps(list(ORDERS)), rdp=json.dumps([float(x) for x in rdp]),
                search_mean=c.trials.mean if c.trials else None, search_shape=c.trials.eta if c.trials else None,
                blocks=json.dumps(list(blocks)) if blocks is not None else None)


def _same_charge(entries: list[LedgerEntry], charges: list[Charge]) -> bool:
    def key(x):
        t = (x.trials.mean, x.trials.eta) if x.trials else ()
        return (x.partition, x.mechanism, x.segment.noise_multiplier, x.segment.sample_rate, x.segment.steps, t)

    return sorted(map(key, entries)) == sorted(map(key, charges))


def _entry(row: Any) -> LedgerEntry:
    segment = Segment(row.noise_multiplier, row.sample_rate, row.steps)
    trials = TrialCount(row.search_mean, row.search_shape) if row.search_mean is not None else None
    stored_orders = tuple(float(a) for a in json.loads(row.orders))
    if stored_orders == ORDERS:
        rdp = np.asarray(json.loads(row.rdp), dtype=np.float64)
    else:
        # Written by a version with another order grid: the parameters are the record.
        rdp = piece_rdp(segment, trials)
    rdp.setflags(write=False)
    return LedgerEntry(
        id=row.id, dataset_id=row.dataset_id, run_id=row.run_id, partition=row.partition,
        kind=row.kind or "release", key=row.key, mechanism=row.mechanism,
        noise_multiplier=segment.noise_multiplier, sample_rate=segment.sample_rate, steps=segment.steps,
        status=row.status, randomness=row.randomness or "unrecorded", created_at=row.created_at,
        note=row.note or "", rdp=rdp, completed_at=row.completed_at, trials=trials,
        blocks=tuple(json.loads(row.blocks)) if row.blocks else None)


def _add_missing_columns(conn: Connection) -> None:
    """Bring a database made by an earlier version up to this schema (entries are never lost:
    old per-epoch entries become counted releases, exactly what they were charged as)."""
    found = inspect(conn)
    for table, columns in _ADDED.items():
        have = {c["name"] for c in found.get_columns(table)}
        for name, ddl in columns.items():
            if name not in have:
                conn.execute(text(f'ALTER TABLE {table} ADD COLUMN "{name}" {ddl}'))
