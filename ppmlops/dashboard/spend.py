"""A dataset's use of its budget over time, replayed from its ledger entries.

The ledger keeps each entry's final status and when it got it, which is enough to say what the
dataset's totals counted at any earlier moment: a release counts from its creation; a grant
counts in full from its creation until its run closed it (then, trimmed, the run's usage counts
in its place; released unused, nothing does). `ppmlops.privacy.ledger.counted` is the rule; the
replay applies it at each moment the totals changed, per (block, partition), with the ledger's
own rule for which blocks an entry counts against (`ppmlops.privacy.ledger.block_curves`), and
reports the worst block's share of the lifetime RDP budget at the dataset's order: the figure of
ppmlops.privacy.block_view, so the last step is what every other page shows. Each charge also
carries its own epsilon (best order, the way a run's guarantee is stated): a 0.2 count release
reads 0.2, not the 1.45 its RDP converts to at the lifetime order on its own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Sequence

import numpy as np

from ppmlops.privacy.accountant import epsilon_from_rdp
from ppmlops.privacy.ledger import COMPLETED, COUNTED, LIVE, RELEASED, TRIMMED, LedgerEntry, block_curves
from ppmlops.privacy.lifetime import LifetimeBudget

# What each kind of step means, in words for the chart's table.
EVENTS = {
    "release": "noisy statistics released (counted for good)",
    "grant": "grant reserved: the run's whole budget, before it trains",
    TRIMMED: "grant trimmed: the run ended, only what it used still counts",
    RELEASED: "grant released unused: it stops counting",
}


@dataclass(frozen=True)
class SpendStep:
    at: str  # ISO time of the change
    run_id: str
    event: str  # a key of EVENTS
    partition: str
    share: dict[str, float]  # per partition, the worst block's share of its lifetime budget right after
    block: dict[str, str]  # per partition, that worst block
    charge_epsilon: float | None  # a release or grant: the charge's own epsilon (best order); a close: None

    @property
    def timestamp(self) -> float:
        return datetime.fromisoformat(self.at).timestamp()

    @property
    def words(self) -> str:
        return EVENTS[self.event]

    @property
    def worst(self) -> tuple[str | None, str | None, float]:
        """(block, partition, share) of the dataset's figure right after this step."""
        if not self.share:
            return None, None, 0.0
        p = max(sorted(self.share), key=lambda k: self.share[k])
        return self.block[p], p, self.share[p]


def _incidence(entries: Sequence[LedgerEntry], budget: LifetimeBudget) -> tuple[list[str], np.ndarray]:
    """The blocks any entry counts against, and which entry counts against which block, by the
    ledger's own rule (each entry on its own, as a counted release, through block_curves)."""
    as_counted = [dataclasses.replace(e, kind="release", status=COMPLETED) for e in entries]
    blocks = list(block_curves(as_counted, budget.calendar))
    hit = np.zeros((len(entries), len(blocks)), dtype=bool)
    for i, e in enumerate(as_counted):
        per_block = block_curves([e], budget.calendar, blocks)
        hit[i] = [bool(per_block.get(b)) for b in blocks]
    return blocks, hit


def spend_steps(entries: Sequence[LedgerEntry], budget: LifetimeBudget) -> list[SpendStep]:
    """Every change of the dataset's counted spend, oldest first."""
    if not entries:
        return []
    at_order = np.array([float(e.rdp[budget.index]) for e in entries])
    created = np.array([e.created_at for e in entries], dtype=object)
    parts = np.array([e.partition for e in entries], dtype=object)
    kinds = np.array([e.kind for e in entries], dtype=object)
    # When each grant stopped counting in full (never, for a live one).
    closed = {(e.run_id, e.partition): (e.status, e.completed_at) for e in entries
              if e.kind == "grant" and e.status in (TRIMMED, RELEASED) and e.completed_at}
    ended = np.array([closed.get((e.run_id, e.partition), (None, None))[1] or "~" if e.kind == "grant" else "~"
                      for e in entries], dtype=object)  # "~" sorts after every ISO time
    # A usage row counts once its run's grant on its partition has been trimmed.
    trimmed_at = np.array([closed[(e.run_id, e.partition)][1]
                           if e.kind == "usage" and closed.get((e.run_id, e.partition), ("",))[0] == TRIMMED
                           else "~" for e in entries], dtype=object)
    live = np.array([e.kind in COUNTED and (e.status in LIVE or e.kind == "grant") for e in entries])
    blocks, hit = _incidence(entries, budget)

    changes = [(e.created_at, e.run_id, e.kind, e.partition, epsilon_from_rdp(e.rdp, budget.delta)[0])
               for e in entries if e.kind in COUNTED]
    changes += [(at, run, status, part, None) for (run, part), (status, at) in closed.items()]
    steps = []
    for at, run_id, event, partition, own in sorted(changes, key=lambda c: c[:4]):
        counted = ((created <= at) & live & (ended > at)) | ((kinds == "usage") & (trimmed_at <= at))
        share, worst = {}, {}
        for p in sorted(set(parts)):
            mine = counted & (parts == p)
            if not mine.any():
                continue
            per_block = np.where(mine, at_order, 0.0) @ hit  # RDP at the order counted in each block
            j = int(np.argmax(per_block))  # the earliest block on ties, as the ledger names it
            share[p], worst[p] = float(per_block[j]) / budget.rdp, blocks[j]
        steps.append(SpendStep(at=at, run_id=run_id, event=event, partition=partition, share=share, block=worst,
                               charge_epsilon=own))
    return steps
