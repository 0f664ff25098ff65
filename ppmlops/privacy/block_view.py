"""One figure for a dataset's use of its privacy budget, read the same way by every surface.

The dashboard's overview and dataset page, the run page, the trigger form, `ppmlops ledger show`
and the MLflow tags all call `use_of` (or `dataset_use`) and `percent`: the figure is the worst
(block, split)'s share of the lifetime RDP budget at the dataset's accounting order, the one
number admission compares (ppmlops.privacy.lifetime), with that block and split named. Before
this module each surface computed its own figure (the overview the dataset's worst block now, the
run page the worst of the run's own blocks at its plan, the form one minus that floored to a
tenth), so an officer saw 18%, 9% and "at least 80% left" for one ledger.

Why a share and not an epsilon: the conversion of RDP at one order to epsilon pays its
log(1/delta) / (alpha - 1) term once, so the first small charge converts to a large epsilon (a
0.2 count release reads "epsilon 1.451" at a lifetime order of 14) and ten equal runs do not
read ten equal steps. The share is additive and is what admission checks; the epsilon of one
charge on its own (its best order, the run's own guarantee) is shown beside it where a charge
is listed.

Read only: everything here takes `Ledger.summary()`'s per-dataset dict (or reads it), so the
figures cannot drift from the ledger's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping

from ppmlops.errors import PpmlopsError
from ppmlops.privacy.blocks import ALL, BlockCalendar

PARTITION_WORDS = {"train": "training rows", "holdout": "held-out rows"}


def percent(share: float | None) -> str:
    """A share as every surface prints it: one decimal, never rounded to 0% when something is
    used, never to 100% when something is left (an officer reads "100%" as "spent")."""
    if share is None:
        return "-"
    share = float(share)
    if 0 < share < 0.001:
        return "<0.1%"
    if 0.999 <= share < 1:
        return ">99.9%"
    return f"{share:.1%}"


def partition_words(partition: str | None) -> str:
    return PARTITION_WORDS.get(partition or "", f"{partition} rows")


@dataclass(frozen=True)
class DatasetUse:
    """How much of a dataset's lifetime budget is used: its worst (block, split)'s share."""

    dataset_id: str
    share: float  # of the lifetime RDP budget at the order; 0.0 when nothing is charged
    block: str | None  # the worst block ("all" without blocks); None when nothing is charged
    partition: str | None  # the worst split
    blocked: bool  # the dataset has privacy blocks
    block_count: int  # blocks with a charge (one-pot entries: see Ledger.block_curves)
    epsilon_budget: float
    delta: float
    order: float

    @property
    def left(self) -> float:
        return max(0.0, 1.0 - self.share)

    @property
    def where(self) -> str:
        """The worst (block, split) in words."""
        if self.block is None:
            return "nothing charged yet"
        part = partition_words(self.partition)
        if not self.blocked or self.block == ALL:
            return f"{part}; one block: the whole dataset"
        return f"block {self.block}, {part}"

    def text(self) -> str:
        """The sentence every surface prints."""
        return (f"{percent(self.share)} of the lifetime budget (ε {self.epsilon_budget:g} at δ {self.delta:g}) used "
                f"in the worst block ({self.where})")

    def as_dict(self) -> dict[str, Any]:
        return {"share_used": self.share, "worst_block": self.block, "worst_partition": self.partition,
                "blocked": self.blocked, "block_count": self.block_count, "text": self.text(),
                "share_text": percent(self.share)}


def use_of(d: Mapping[str, Any]) -> DatasetUse | None:
    """The figure from one dataset of `Ledger.summary()`; None when the dataset is not registered
    (entries without a budget: nothing to compare them with)."""
    if d.get("epsilon_budget") is None:
        return None
    block, partition, share = None, None, 0.0
    # Oldest block first, splits in name order: ties go to the earliest, as Ledger.worst_blocks does.
    for b, shares in (d.get("blocks") or {}).items():
        for p in sorted(shares):
            if shares[p] > share:
                block, partition, share = b, p, float(shares[p])
    stated = d.get("share_used")
    if stated is not None and abs(float(stated) - share) > 1e-12 * max(1.0, share):
        # The ledger's own worst and the per-block shares disagree: a bug, not a figure to show.
        raise PpmlopsError(f"dataset {d['dataset_id']!r}: the ledger's share used {stated!r} is not its worst "
                           f"block's {share!r}")
    return DatasetUse(dataset_id=d["dataset_id"], share=share, block=block, partition=partition,
                      blocked=bool(d.get("block_length_seconds")), block_count=len(d.get("blocks") or {}),
                      epsilon_budget=float(d["epsilon_budget"]), delta=float(d["delta"]),
                      order=float(d["accounting_order"]))


def dataset_use(ledger: Any, dataset_id: str) -> DatasetUse:
    """The figure of one registered dataset, read from `ledger` (a ppmlops.privacy.ledger.Ledger)."""
    [d] = ledger.summary(dataset_id)["datasets"]
    use = use_of(d)
    if use is None:
        raise PpmlopsError(f"dataset {dataset_id!r} has ledger entries but is not registered (no lifetime budget)")
    return use


def run_share(ledger: Any, dataset_id: str, run_id: str) -> float:
    """What one run's counted entries add to each block they count against, as a share of a
    block's lifetime budget (worst split): the run's part of the dataset's figure."""
    budget = ledger.budget(dataset_id)
    if budget is None:
        raise PpmlopsError(f"dataset {dataset_id!r} is not registered in the privacy ledger")
    curves = ledger.charged_curves(dataset_id, run_id=run_id)
    return budget.share_used(curves)


@dataclass(frozen=True)
class BlockRow:
    """One block of the dataset as the block chart draws it."""

    block: str
    start: datetime | None  # None: the one block of a dataset without blocks
    end: datetime | None
    shares: dict[str, float]  # per split, of the block's lifetime RDP budget
    worst: bool  # this block holds the dataset's figure
    runs: tuple[str, ...]  # runs whose counted entries name it (one-pot entries: every block then open)


def calendar_of_summary(d: Mapping[str, Any]) -> BlockCalendar:
    return BlockCalendar.stored(d.get("block_length_seconds"), d.get("block_origin")) or BlockCalendar()


def block_rows(d: Mapping[str, Any]) -> list[BlockRow]:
    """The blocks of one dataset of `Ledger.summary()`, oldest first, for the block chart."""
    use = use_of(d)
    calendar = calendar_of_summary(d)
    rows = []
    for b, shares in (d.get("blocks") or {}).items():
        start, end = calendar.bounds(b) if calendar.blocked and b != ALL else (None, None)
        runs = tuple(dict.fromkeys(e["run_id"] for e in d.get("entries") or [] if _reads(e, b, calendar)))
        rows.append(BlockRow(block=b, start=start, end=end, shares=dict(sorted(shares.items())),
                             worst=use is not None and use.block == b, runs=runs))
    return rows


def _reads(e: Mapping[str, Any], block: str, calendar: BlockCalendar) -> bool:
    """Whether a ledger entry (as summary() lists it) was charged to `block`: it names it, or it
    was made before blocks (one pot) while the block was open (the ledger's own rule)."""
    named = e.get("blocks")
    if named is None or named == [ALL] or not calendar.blocked:
        return not calendar.blocked or block == ALL or calendar.existed_at(block, e["created_at"])
    return block in named
