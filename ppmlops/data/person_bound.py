"""The per-person row bound: each run keeps at most k rows of each person (privacy.unit).

Under person adjacency (ppmlops.privacy.unit) a person's loss grows with their number of rows,
so a run must not read more than k of them. Which k are kept is decided WITHOUT looking at any
value but the person id: a row's rank among its person's rows is a keyed hash of (person id,
the row's ordinal among that person's rows in the run, in source order), and the k rows of
smallest hash are kept. Hence:

* changing any other value of a row (a feature, the label, consent) never changes which rows
  are kept, so the bound cannot prefer rows by content (e.g. by label);
* adding or removing another person changes nothing for this person (ordinals are counted per
  person, not per file), which is the stability the person-level sensitivity k relies on;
* the key is random, created once per dataset under PPMLOPS_HOME/keys/<id>.person-bound.key
  (0600), not derived from the data: nobody without it can predict which rows a person keeps.

Rows the bound drops are quarantined with OVER_LIMIT (the quarantine keys rows by HMAC, never
by the raw id) and counted privately: they are in no release, because a person with many rows
would move that count by more than k. A row whose person id is empty cannot be bounded (its
person is unknown) and is quarantined with NO_PERSON, also outside every release.

Two passes: `count` sees the person ids of every row the run would read (pass one, over the
person column only), then `select` decides chunk by chunk while the rows are staged (pass two).
Memory grows with the number of persons (a count per person), not with the rows.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ppmlops.data.keys import dataset_key
from ppmlops.errors import DataError

OVER_LIMIT = "over the per-person row limit"
NO_PERSON = "no person id"
KEEP = 0
OVER = 1
UNKNOWN = 2
_CONTEXT = b"ppmlops-person-bound-v1\x00"


def bound_key(dataset_id: str, home: Path) -> bytes:
    """The dataset's random key for the bound, created with mode 0600 on first use."""
    return dataset_key(home, dataset_id, "person-bound", what=f"dataset {dataset_id}'s per-person bound key",
                       fix="fix the folder's permissions (a new key changes which rows are kept per person)")


def _normalised(ids: Sequence[str]) -> pd.Series:
    return pd.Series(list(ids), dtype="string").str.strip()


@dataclass
class PersonBound:
    """Keeps at most `k` rows per person; see the module docstring."""

    dataset_id: str
    column: str
    k: int
    key: bytes
    totals: pd.Series = field(default_factory=lambda: pd.Series(dtype="int64"))
    _seen: dict[str, int] = field(default_factory=dict)
    _kept: frozenset[tuple[str, int]] | None = None
    dropped: int = 0  # rows over the limit (private)
    unknown: int = 0  # rows without a person id (private)

    def count(self, ids: Sequence[str]) -> None:
        """Pass one: add a chunk's person ids (every row the run reads, in source order)."""
        if self._kept is not None:
            raise RuntimeError("count() after select() began")
        ids = _normalised(ids)
        counts = ids[ids != ""].value_counts()
        self.totals = self.totals.add(counts, fill_value=0).astype("int64")

    def _finish(self) -> frozenset[tuple[str, int]]:
        """The (person, ordinal) pairs to keep for persons with more than k rows."""
        over = self.totals[self.totals > self.k]
        if over.empty:
            return frozenset()
        pairs = pd.DataFrame({"person": over.index.repeat(over.to_numpy())})
        pairs["ordinal"] = pairs.groupby("person").cumcount()
        pairs["rank_key"] = [self._hash(p, o) for p, o in zip(pairs["person"], pairs["ordinal"])]
        pairs = pairs.sort_values(["person", "rank_key", "ordinal"], kind="stable")
        chosen = pairs[pairs.groupby("person").cumcount() < self.k]
        return frozenset(zip(chosen["person"], chosen["ordinal"].astype(int)))

    def _hash(self, person: str, ordinal: int) -> int:
        msg = _CONTEXT + person.encode("utf-8") + b"\x1f" + str(int(ordinal)).encode("ascii")
        return int.from_bytes(hmac.new(self.key, msg, hashlib.sha256).digest()[:8], "big")

    def select(self, ids: Sequence[str]) -> np.ndarray:
        """Pass two: for a chunk's person ids (the same rows as `count` saw, in the same order),
        KEEP, OVER (over the limit) or UNKNOWN (no person id) per row."""
        if self._kept is None:
            self._kept = self._finish()
        ids = _normalised(ids)
        out = np.full(len(ids), KEEP, dtype=np.int8)
        if len(ids) == 0:
            return out
        missing = (ids == "").to_numpy()
        out[missing] = UNKNOWN
        known = ids[~missing]
        offsets = known.map(lambda p: self._seen.get(p, 0)).astype("int64")
        ordinals = offsets + known.groupby(known).cumcount()
        totals = known.map(self.totals).astype("Int64")
        if totals.isna().any():
            raise DataError(f"dataset {self.dataset_id}: column {self.column}: a person id appeared in the second "
                            "read of the source that the first did not see (the source changed while it was read)")
        over = (totals > self.k).to_numpy(dtype=bool)
        kept = np.array([(p, int(o)) in self._kept for p, o in zip(known[over], ordinals[over])], dtype=bool)
        positions = np.flatnonzero(~missing)
        out[positions[over][~kept]] = OVER
        for person, n in known.value_counts().items():
            self._seen[person] = self._seen.get(person, 0) + int(n)
            if self._seen[person] > int(self.totals[person]):
                raise DataError(f"dataset {self.dataset_id}: column {self.column}: a person has more rows in the "
                                "second read of the source than in the first (the source changed while it was read)")
        self.dropped += int((out == OVER).sum())
        self.unknown += int(missing.sum())
        return out

    def over_reason(self) -> str:
        return (f"{OVER_LIMIT} (column {self.column}: at most {self.k} row{'s' if self.k != 1 else ''} per person "
                "per run, chosen by a keyed hash of the person id)")

    def unknown_reason(self) -> str:
        return f"{NO_PERSON} (column {self.column} is empty): the per-person row limit cannot be applied"
