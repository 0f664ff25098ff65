"""Re-identification risk: equivalence classes over the quasi-identifiers, k-anonymity and uniqueness.

Rows that agree on every quasi-identifier form an equivalence class. A table is k-anonymous if
every class has at least k rows; the risk reported is the share of rows in classes smaller than
k (those rows can be singled out among fewer than k people by someone who knows the
quasi-identifiers), and uniqueness is the share of rows alone in their class.

`ClassCounter` counts classes over a stream of any length in bounded memory: each row's
quasi-identifier tuple is hashed to 64 bits (text_hashes of each stripped string, chained) and
the hash goes to one of 2^b partition files by its top bits; each partition is then counted on its own.
Memory is one partition at a time, about 8 bytes x rows / 2^b. Two different tuples share a
hash with probability about n^2 / 2^65 (3e-6 for ten million rows), which would merge two
classes and can only understate the risk by that much.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np


@dataclass
class ClassStats:
    k: int
    quasi_identifiers: list[str]
    rows: int
    classes: int
    smallest_class: int
    rows_below_k: int
    classes_below_k: int
    unique_rows: int

    @property
    def share_below_k(self) -> float:
        return self.rows_below_k / self.rows if self.rows else 0.0

    @property
    def uniqueness(self) -> float:
        return self.unique_rows / self.rows if self.rows else 0.0

    def to_dict(self) -> dict:
        return asdict(self) | {"share_below_k": self.share_below_k, "uniqueness": self.uniqueness}


def _stats_from_counts(counts: np.ndarray, k: int, qi: Sequence[str]) -> ClassStats:
    return ClassStats(
        k=k, quasi_identifiers=list(qi), rows=int(counts.sum()), classes=int(len(counts)),
        smallest_class=int(counts.min()) if len(counts) else 0,
        rows_below_k=int(counts[counts < k].sum()), classes_below_k=int((counts < k).sum()),
        unique_rows=int((counts == 1).sum()))


_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant: h * MIX + next keeps column order significant


def row_hashes(columns: Sequence[Sequence[str]]) -> np.ndarray:
    """One uint64 per row over the given columns' values (strings, already normalized by the caller).

    Each column's values are hashed by text_hashes and the columns are chained as
    h = h x MIX + column hash (mod 2^64), so ("a", "bc") and ("ab", "c") differ.
    """
    return chain_hashes(value_hashes(col) for col in columns)


def value_hashes(values: Sequence[str]) -> np.ndarray:
    """The hash row_hashes gives each value of one column (uint64): text_hashes of the values."""
    import pyarrow as pa

    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return text_hashes(values)
    return text_hashes(pa.array(np.asarray(values, dtype=object), type=pa.string()))


# splitmix64's finalizer (a bijection of 64-bit words with full avalanche) and the golden-ratio
# constant that weighs in each value's length.
_M1, _M2, _GOLDEN = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)
_NULL = np.uint64(0x6A09E667F3BCC909)  # a null differs from the empty string


def _mix(h: np.ndarray) -> np.ndarray:
    h ^= h >> np.uint64(30)
    h *= _M1
    h ^= h >> np.uint64(27)
    h *= _M2
    h ^= h >> np.uint64(31)
    return h


def text_hashes(array) -> np.ndarray:
    """A 64-bit hash of each value of a pyarrow string array, from its UTF-8 bytes and length.

    Computed in numpy over the array's own buffers, with no Python object per value: the bytes
    are laid out zero-padded in 8-byte words (directly, when every value has one length, as a
    date or a postal code does), and each word is folded in as h = mix(h ^ word), starting from
    (length + 1) x GOLDEN, over the value's own words only; so equal strings hash equal wherever they
    are read, and strings that differ
    in bytes or length differ but for a collision. It is not keyed: it counts classes of the
    data owner's own table and is never released.
    """
    import pyarrow as pa

    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if not pa.types.is_string(array.type):
        array = array.cast(pa.string())
    n = len(array)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    _, offsets, data = array.buffers()
    offsets = np.frombuffer(offsets, dtype=np.int32)[array.offset: array.offset + n + 1]
    raw = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, dtype=np.uint8)
    lengths = np.diff(offsets)
    width = int(lengths.max())
    words = (width + 7) // 8
    padded = np.zeros((n, max(words, 1) * 8), dtype=np.uint8)
    if width and (lengths == width).all():
        padded[:, :width] = raw[offsets[0]:offsets[-1]].reshape(n, width)
    elif width:
        at = np.arange(width)
        inside = at < lengths[:, None]
        padded[:, :width][inside] = raw[(offsets[:-1, None] + at)[inside]]
    folded = padded.view("<u8")
    with np.errstate(over="ignore"):
        h = (lengths.astype(np.uint64) + np.uint64(1)) * _GOLDEN
        for j in range(words):  # a value's own words only: its hash does not depend on the others' widths
            longer = lengths > 8 * j
            if longer.all():
                h = _mix(h ^ folded[:, j])
            else:
                h[longer] = _mix(h[longer] ^ folded[longer, j])
        h = _mix(h)
        if array.null_count:
            h[np.asarray(array.is_null())] = _NULL
    return h


def chain_hashes(columns: Iterable[np.ndarray]) -> np.ndarray:
    """row_hashes' chaining of per-column hashes (equal lengths) into one hash per row."""
    out: np.ndarray | None = None
    with np.errstate(over="ignore"):
        for h in columns:
            out = h if out is None else out * _MIX + h
    return out if out is not None else np.zeros(0, dtype=np.uint64)


def class_stats(frame, qi: Sequence[str], k: int) -> ClassStats:
    """Equivalence classes of an in-memory table (a pandas DataFrame) over columns `qi`."""
    if not qi or frame.empty:
        return _stats_from_counts(np.zeros(0, dtype=np.int64), k, qi)
    sizes = frame.groupby(list(qi), dropna=False, observed=True).size().to_numpy()
    return _stats_from_counts(sizes, k, qi)


class ClassCounter:
    """Equivalence-class sizes over a stream of rows, spilled to disk by hash partition."""

    BUFFER = 1 << 21  # hashes held before a flush (16 MiB)

    def __init__(self, quasi_identifiers: Sequence[str], expected_bytes: int = 0, workdir: Path | None = None):
        self.quasi_identifiers = list(quasi_identifiers)
        # Roughly 32 MiB of source per partition keeps each partition's array small.
        self.bits = min(12, max(4, math.ceil(math.log2(max(1, expected_bytes / (32 << 20)))) if expected_bytes else 4))
        self._dir = Path(tempfile.mkdtemp(prefix="ppmlops-classes-", dir=workdir))
        self._pending: list[np.ndarray] = []
        self._pending_n = 0
        self.rows = 0

    def add(self, hashes: np.ndarray) -> None:
        if len(hashes) == 0:
            return
        self._pending.append(hashes.astype(np.uint64, copy=False))
        self._pending_n += len(hashes)
        self.rows += len(hashes)
        if self._pending_n >= self.BUFFER:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        h = np.concatenate(self._pending)
        self._pending, self._pending_n = [], 0
        # At most 12 bits: as uint16 the stable sort is a radix sort (linear), not a merge sort.
        part = (h >> np.uint64(64 - self.bits)).astype(np.uint16)
        order = np.argsort(part, kind="stable")
        h, part = h[order], part[order]
        bounds = np.searchsorted(part, np.arange((1 << self.bits) + 1))
        for p in range(1 << self.bits):
            lo, hi = bounds[p], bounds[p + 1]
            if hi > lo:
                with open(self._dir / f"{p:04d}.u64", "ab") as fh:
                    h[lo:hi].tofile(fh)

    def finish(self, k: int) -> ClassStats:
        """The class statistics; partitions are counted one at a time and the spill removed."""
        try:
            self._flush()
            total = _stats_from_counts(np.zeros(0, dtype=np.int64), k, self.quasi_identifiers)
            for path in sorted(self._dir.glob("*.u64")):
                _, counts = np.unique(np.fromfile(path, dtype=np.uint64), return_counts=True)
                part = _stats_from_counts(counts, k, self.quasi_identifiers)
                total.smallest_class = (part.smallest_class if not total.classes
                                        else min(total.smallest_class, part.smallest_class))
                for name in ("rows", "classes", "rows_below_k", "classes_below_k", "unique_rows"):
                    setattr(total, name, getattr(total, name) + getattr(part, name))
            return total
        finally:
            self.close()

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)
