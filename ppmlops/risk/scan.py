"""One streaming pass over source files: counts, a uniform row sample, and equivalence classes.

Nothing here holds more than one chunk of rows, the sample and the class counter's buffer, so
a file larger than memory is scanned in bounded memory:

- malformed (ragged) lines are counted with their line numbers, and written to a quarantine CSV
  when one is asked for;
- rows whose owner did not consent (when consent rules are given) are counted by rule and
  otherwise ignored: nothing about them enters the sample or the classes;
- the sample is a bottom-k sample: every usable row draws a key from a seeded generator and
  the `sample_rows` rows with the smallest keys are kept, which is a uniform sample without
  replacement whatever the file's length, the same for the same seed and file;
- rows' quasi-identifier tuples, when columns are given, are hashed into a ClassCounter.

Rows are read column-wise (ppmlops.data.reading.Batch) and only the consent and
quasi-identifier columns are held as arrays: consent rules and the stripping and hashing of a
quasi-identifier value run once per distinct value of a batch, and a whole record is built only
for the rows the sample keeps. The results are those of the row-wise scan: the same refusals,
the same random keys in the same order, the same 64-bit hashes.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ppmlops.data import read_progress
from ppmlops.data.consent import ConsentRules
from ppmlops.data.reading import Batch, SourceReader, detect_encoding, may_need_strip, to_csv_line
from ppmlops.errors import DataError
from ppmlops.risk.kanon import ClassCounter, ClassStats, chain_hashes, text_hashes, value_hashes
from ppmlops.spec import Consent

MAX_LINES_LISTED = 20


@dataclass(frozen=True)
class SourceInput:
    path: Path
    format: str = "csv"
    encoding: str = "utf-8"  # or "auto" (ppmlops.data.reading.detect_encoding)
    delimiter: str | None = None
    labels: Path | None = None  # an NPZ source's label file (ppmlops.data.reading.SourceReader)

    @classmethod
    def of(cls, path: Path | str, fmt: str | None = None, encoding: str = "auto",
           delimiter: str | None = None) -> "SourceInput":
        path = Path(path)
        if fmt is None:
            suffix = path.suffix.lower()
            fmt = "parquet" if suffix in {".parquet", ".pq"} else "csv"
        return cls(path, fmt, encoding, delimiter)


@dataclass
class FileScan:
    path: Path
    format: str
    encoding: str | None
    delimiter: str | None
    header: list[str]
    sha256: str = ""
    bytes: int = 0
    rows_in: int = 0  # data records, malformed ones included
    rows_malformed: int = 0
    malformed_lines: list[int] = field(default_factory=list)  # the first MAX_LINES_LISTED
    rows_refused: int = 0
    refusals: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "format": self.format, "encoding": self.encoding,
                "delimiter": self.delimiter, "columns": len(self.header), "sha256": self.sha256,
                "bytes": self.bytes, "rows_in": self.rows_in, "rows_malformed": self.rows_malformed,
                "malformed_lines": self.malformed_lines, "rows_refused": self.rows_refused,
                "consent_refusals": self.refusals}


@dataclass
class ScanData:
    header: list[str]  # union of the files' columns, first-seen order
    files: list[FileScan]
    rows_used: int  # well-formed rows that passed consent
    sample: dict[str, list[str]]  # column -> its values in the sampled rows that have the column
    sample_rows: int
    classes: ClassStats | None = None

    @property
    def rows_in(self) -> int:
        return sum(f.rows_in for f in self.files)

    @property
    def rows_refused(self) -> int:
        return sum(f.rows_refused for f in self.files)

    @property
    def rows_malformed(self) -> int:
        return sum(f.rows_malformed for f in self.files)

    def refusals(self) -> dict[str, int]:
        total: Counter = Counter()
        for f in self.files:
            total.update(f.refusals)
        return dict(sorted(total.items()))


class _Sample:
    """Bottom-k sample of (file index, record) pairs."""

    def __init__(self, size: int, seed: int):
        self.size = size
        self.rng = np.random.default_rng(seed)
        self.keys = np.zeros(0)
        self.rows: list[tuple[int, list[str]]] = []

    def offer(self, file_index: int, count: int, fetch: Callable[[np.ndarray], list[list[str]]]) -> None:
        """`count` usable rows; `fetch(positions)` gives the records at those positions among
        them, asked only for the rows that enter the sample."""
        if not count:
            return
        keys = self.rng.random(count)
        if self.size <= 0:
            return
        if len(self.rows) >= self.size:
            cut = self.keys.max()
            keep = np.flatnonzero(keys < cut)
        else:
            keep = np.arange(count)
        if len(keep) == 0:
            return
        self.keys = np.concatenate([self.keys, keys[keep]])
        held = len(self.rows)
        if len(self.keys) <= self.size:
            self.rows.extend((file_index, rec) for rec in fetch(keep))
            return
        best = np.argpartition(self.keys, self.size - 1)[: self.size]
        best.sort()
        new = best[best >= held]
        fetched = fetch(keep[new - held])
        self.rows = [self.rows[i] for i in best[best < held]] + [(file_index, rec) for rec in fetched]
        self.keys = self.keys[best]


def scan_sources(
    sources: Sequence[SourceInput],
    *,
    consent: Consent | None = None,
    as_of: date | None = None,
    sample_rows: int = 10_000,
    seed: int = 0,
    qi_columns: Sequence[str] | None = None,
    k: int = 5,
    quarantine: Path | None = None,
    chunk_rows: int = 50_000,
) -> ScanData:
    if consent is not None and as_of is None:
        raise ValueError("consent rules need the run date (as_of)")
    readers = []
    for src in sources:
        if hasattr(src, "batches"):  # a reader opened by the caller (a SQL source: ppmlops.data.sql_source)
            readers.append(src)
            continue
        encoding = detect_encoding(src.path) if src.format == "csv" and src.encoding == "auto" else src.encoding
        readers.append(SourceReader(src.path, src.format, encoding, src.delimiter, chunk_rows, labels=src.labels))
    header: list[str] = []
    for r in readers:
        header.extend(c for c in r.header if c not in header)
    missing = [c for c in (qi_columns or []) if not any(c in r.header for r in readers)]
    if missing:
        raise DataError(f"quasi-identifier column(s) {missing} are in none of "
                        f"{', '.join(str(r.path) for r in readers)}")
    counter = (ClassCounter(qi_columns, sum(_size(r) for r in readers))
               if qi_columns else None)
    sample = _Sample(sample_rows, seed)
    files: list[FileScan] = []
    rows_used = 0
    writer = _QuarantineWriter(quarantine) if quarantine is not None else None
    try:
        for index, reader in enumerate(readers):
            info = FileScan(reader.path, reader.format, reader.encoding if reader.format == "csv" else None,
                            reader.delimiter, reader.header, bytes=_size(reader))
            rules = ConsentRules(consent, reader.header, as_of, reader.path) if consent is not None else None
            refusals: Counter = Counter()
            qi_index = [reader.header.index(c) if c in reader.header else None for c in (qi_columns or [])]
            wanted = (rules.columns() if rules is not None else []) + [i for i in qi_index if i is not None]
            for batch in reader.batches(wanted):
                for line, fields, why in batch.ragged:
                    info.rows_malformed += 1
                    if len(info.malformed_lines) < MAX_LINES_LISTED:
                        info.malformed_lines.append(line)
                    if writer is not None:
                        writer.write(reader.path, line, why, to_csv_line(fields, reader.delimiter or ","))
                used = np.arange(batch.num_rows)
                if rules is not None:
                    refusal, found = rules.refusals(batch.column, batch.num_rows)
                    for code, n in zip(*np.unique(refusal[refusal >= 0], return_counts=True)):
                        refusals[found[code][0]] += int(n)
                    used = np.flatnonzero(refusal < 0)
                rows_used += len(used)
                sample.offer(index, len(used), lambda at, batch=batch, used=used: batch.records(used[at].tolist()))
                if counter is not None and len(used):
                    counter.add(_class_hashes(batch, qi_index, used))
                read_progress.step(index, reader, readers)
            info.rows_in = reader.rows_in
            info.sha256 = reader.sha256
            info.rows_refused = sum(refusals.values())
            info.refusals = dict(sorted(refusals.items()))
            if info.rows_in == 0:
                raise DataError(f"{reader.path}: " + ("returned no rows" if reader.format == "sql"
                                                      else "has a header but no data rows"))
            files.append(info)
        classes = counter.finish(k) if counter is not None else None
    finally:
        if counter is not None:
            counter.close()
        if writer is not None:
            writer.close()

    values: dict[str, list[str]] = {c: [] for c in header}
    for file_index, rec in sample.rows:
        for c, v in zip(readers[file_index].header, rec):
            values[c].append(v)
    return ScanData(header, files, rows_used, values, len(sample.rows), classes)


def _size(reader) -> int:
    """The file's size in bytes; 0 for a query (its size is not known before it is read)."""
    return 0 if reader.format == "sql" else os.path.getsize(reader.path)


def class_stats_of(sources: Sequence[SourceInput], qi: Sequence[str], k: int, *, consent: Consent | None = None,
                   as_of: date | None = None, chunk_rows: int = 50_000) -> ClassStats:
    """A second pass for equivalence classes only, when the quasi-identifiers are known late."""
    return scan_sources(sources, consent=consent, as_of=as_of, sample_rows=0, qi_columns=qi, k=k,
                        chunk_rows=chunk_rows).classes


def _class_hashes(batch: Batch, qi_index: Sequence[int | None], rows: np.ndarray) -> np.ndarray:
    """row_hashes of the stripped quasi-identifier values of `rows` (a column the file lacks
    counts as empty): a column whose values all have one length (a date, a postal code) and need
    no stripping is hashed as it is read; any other is hashed once per distinct value."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def column(i: int | None) -> np.ndarray:
        if i is None:
            return np.repeat(value_hashes([""]), len(rows))
        values = batch.column(i)
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        # Stripped, so " Male" and "Male" fall in one class, as ingestion would stage them.
        lengths = pc.min_max(pc.binary_length(values)).as_py()
        if lengths["min"] == lengths["max"] and not may_need_strip(values):
            return text_hashes(values)[rows]
        encoded = pc.dictionary_encode(values)
        distinct = encoded.dictionary
        if may_need_strip(distinct):
            distinct = pa.array([v.strip() for v in distinct.to_pylist()], pa.string())
        return text_hashes(distinct)[encoded.indices.to_numpy(zero_copy_only=False)[rows]]

    return chain_hashes(column(i) for i in qi_index)


class _QuarantineWriter:
    """Malformed lines, in the quarantine file's format (ppmlops.data.ingest)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "w", encoding="utf-8", newline="")
        self.writer = csv.writer(self.fh, lineterminator="\n")
        self.writer.writerow(["_source", "_line", "_reason", "_raw"])

    def write(self, source: Path, line: int, reason: str, raw: str) -> None:
        self.writer.writerow([str(source), line, reason, raw])

    def close(self) -> None:
        self.fh.close()
