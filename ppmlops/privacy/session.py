"""One run's privacy: its grant in the ledger, its filters, and every release it makes.

A PrivacySession is what training and evaluation call instead of doing accounting inline. It
is built from the run's plan (the grant: a fixed RDP budget curve per partition) and the
ledger, and its state IS the ledger: the filter of each partition starts from the usage rows
the run already wrote, so a session opened after a crash or on another machine continues
exactly where the last one stopped (`recover` needs nothing else; `state_dict` is only a
summary for checkpoints and progress lines).

For every step or release the order is always: the partition's filter admits it (at every
Renyi order, Feldman & Zrnic 2021), the usage row is written (write-ahead), the caller
computes and draws its noise, then the row is completed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from ppmlops.errors import PpmlopsError
from ppmlops.privacy.accountant import ORDERS, Segment, epsilon_from_rdp, segment_rdp
from ppmlops.privacy.filter import PrivacyFilter
from ppmlops.privacy.ledger import Charge, Ledger, charge_curves
from ppmlops.privacy.randomness import NoiseSource
from ppmlops.privacy.releases import CountGroup, NoisyCounts, noisy_counts, release_segment
from ppmlops.privacy.unit import unit_scaled


@dataclass(frozen=True)
class Grant:
    """What a run may spend, fixed at plan: the pieces of each partition's budget curve."""

    dataset_id: str
    run_id: str
    delta: float
    randomness: str
    charges: tuple[Charge, ...]
    # The privacy blocks the run's window reads (its retired blocks left out): every piece is
    # charged to each of them. ("all",): a dataset without blocks.
    blocks: tuple[str, ...] = ("all",)
    # k of the unit of privacy (ppmlops.privacy.unit): every step and release the run spends is
    # row-level and charged as unit_scaled(segment, k), as the plan's charges were (1: one row).
    unit_rows: int = 1

    def curves(self) -> dict[str, np.ndarray]:
        return charge_curves(self.charges)

    def epsilon(self) -> dict[str, float]:
        """The run's guarantee per partition: its fixed curve's epsilon at the best order."""
        return {p: epsilon_from_rdp(c, self.delta)[0] for p, c in sorted(self.curves().items())}


@dataclass
class Admission:
    """A step the filter admitted and the ledger holds (reserved until `complete`)."""

    entry_id: int
    partition: str
    key: str
    segment: Segment


@dataclass
class PrivacySession:
    ledger: Ledger
    grant: Grant
    filters: dict[str, PrivacyFilter] = field(default_factory=dict)

    # -- opening ----------------------------------------------------------------------------
    @classmethod
    def open(cls, ledger: Ledger, grant: Grant) -> "PrivacySession":
        """Reserve the grant if it is not already in the ledger, then recover the filters."""
        reserve(ledger, grant)
        return cls(ledger, grant).recover()

    def recover(self) -> "PrivacySession":
        used = self.ledger.usage_curves(self.grant.dataset_id, self.grant.run_id)
        self.filters = {}
        for partition, budget in self.grant.curves().items():
            spent = used.get(partition, np.zeros(len(ORDERS)))
            self.filters[partition] = PrivacyFilter(budget, spent)
        stray = sorted(set(used) - set(self.filters))
        if stray:
            raise PpmlopsError(f"run {self.grant.run_id!r} has usage on partition(s) {stray} outside its grant")
        return self

    # -- the filter ---------------------------------------------------------------------------
    def _filter(self, partition: str) -> PrivacyFilter:
        if partition not in self.filters:
            raise PpmlopsError(f"run {self.grant.run_id!r} has no budget on partition {partition!r}")
        return self.filters[partition]

    def reserved(self, key: str):
        """The usage row already written under `key` (a step that crashed before it finished), if any."""
        return next((e for e in self.ledger.entries(self.grant.dataset_id, self.grant.run_id, kind="usage")
                     if e.key == key), None)

    def admits(self, partition: str, segment: Segment, key: str | None = None) -> bool:
        """Whether the filter admits `segment`; a step re-run under the key of a reserved row is
        admitted (that row is already in the filter's spend)."""
        segment = unit_scaled(segment, self.grant.unit_rows)
        if key is not None:
            row = self.reserved(key)
            if row is not None and row.status == "reserved" and row.segment == segment and row.partition == partition:
                return True
        return self._filter(partition).admits(segment_rdp(segment))

    def remaining(self, partition: str) -> np.ndarray:
        return self._filter(partition).remaining()

    def spend(self, partition: str, segment: Segment, *, key: str, note: str,
              mechanism: str = "subsampled_gaussian") -> Admission:
        """Admit `segment` on `partition` and write it ahead; BudgetExceeded (nothing written)
        when any order would go over. A key already reserved (a step that crashed before it
        finished) is adopted rather than charged twice: its draws were never released.
        `segment` is row-level; the filter and the ledger see it under the run's unit of privacy."""
        segment = unit_scaled(segment, self.grant.unit_rows)
        if self.reserved(key) is None:
            self._filter(partition).spend(segment_rdp(segment))  # BudgetExceeded leaves the filter as it was
        entry = self.ledger.record_usage(
            dataset_id=self.grant.dataset_id, run_id=self.grant.run_id, key=key,
            charge=Charge(partition, segment, mechanism, note), randomness=self.grant.randomness)
        return Admission(entry, partition, key, segment)

    def complete(self, admission: Admission) -> None:
        self.ledger.complete(admission.entry_id)

    def release_counts(self, partition: str, exact: Mapping[str, Mapping[str, int]],
                       groups: Mapping[str, CountGroup], source: NoiseSource, *, key: str, note: str) -> NoisyCounts:
        """A noisy release of counts about `partition`'s rows, charged under the grant."""
        admission = self.spend(partition, release_segment(list(groups.values())), key=key, note=note,
                               mechanism="gaussian")
        released = noisy_counts(exact, groups, source)
        self.complete(admission)
        return released

    # -- reporting ----------------------------------------------------------------------------
    def used_epsilon(self, partition: str) -> float:
        return epsilon_from_rdp(self._filter(partition).spent, self.grant.delta)[0]

    def budget_epsilon(self, partition: str) -> float:
        return epsilon_from_rdp(self._filter(partition).budget, self.grant.delta)[0]

    def state_dict(self) -> dict:
        return {"run_id": self.grant.run_id,
                "used": {p: [float(x) for x in f.spent] for p, f in sorted(self.filters.items())}}

    def close(self) -> str:
        """End the run's grant: "trimmed" to what it used, or "released" if it used nothing."""
        return self.ledger.close_grant(dataset_id=self.grant.dataset_id, run_id=self.grant.run_id)


def reserve(ledger: Ledger, grant: Grant) -> list[int]:
    """Reserve the run's grant under the dataset's lifetime filter (idempotent per run)."""
    if not grant.charges:
        raise PpmlopsError(f"run {grant.run_id!r} has an empty grant")
    return ledger.charge(dataset_id=grant.dataset_id, run_id=grant.run_id, charges=list(grant.charges),
                         kind="grant", key="grant", randomness=grant.randomness, blocks=grant.blocks)
