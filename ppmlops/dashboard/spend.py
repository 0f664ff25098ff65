"""A dataset's spend over time, replayed from its ledger entries.

The ledger keeps each entry's final status and when it got it, which is enough to say what the
dataset's totals counted at any earlier moment: a release counts from its creation; a grant
counts in full from its creation until its run closed it (then, trimmed, the run's usage counts
in its place; released unused, nothing does). `ppmlops.privacy.ledger.counted` is the rule; the
replay applies it at each moment the totals changed, per partition, at the dataset's lifetime
order (what its budget is checked at).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Sequence

import numpy as np

from ppmlops.privacy.ledger import COUNTED, LIVE, RELEASED, TRIMMED, LedgerEntry
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
    epsilon: dict[str, float]  # per partition, what the dataset's totals counted right after

    @property
    def timestamp(self) -> float:
        return datetime.fromisoformat(self.at).timestamp()

    @property
    def words(self) -> str:
        return EVENTS[self.event]


def spend_steps(entries: Sequence[LedgerEntry], budget: LifetimeBudget) -> list[SpendStep]:
    """Every change of the dataset's counted spend, oldest first."""
    if not entries:
        return []
    rdp = np.stack([e.rdp for e in entries])
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

    changes = [(e.created_at, e.run_id, e.kind, e.partition) for e in entries if e.kind in COUNTED]
    changes += [(at, run, status, part) for (run, part), (status, at) in closed.items()]
    steps = []
    for at, run_id, event, partition in sorted(changes):
        counted = ((created <= at) & live & (ended > at)) | ((kinds == "usage") & (trimmed_at <= at))
        eps = {p: budget.spent_epsilon({p: rdp[counted & (parts == p)].sum(axis=0)})
               for p in sorted(set(parts)) if (counted & (parts == p)).any()}
        steps.append(SpendStep(at=at, run_id=run_id, event=event, partition=partition, epsilon=eps))
    return steps
