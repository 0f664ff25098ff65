"""Ingestion: read the source, quarantine what may not or cannot be used, stage a snapshot.

Every value is read as text and coerced per the spec, so nothing is lost to type guessing.
Each data row ends up in exactly one place: the training snapshot, the test snapshot or the
quarantine file, which keeps the row's original columns plus `_source` (file), `_line` (1-based
line number in that file; for Parquet, the 1-based row number), `_reason` and, for lines that
could not be split into the header's columns, `_raw` (the whole record). Rows are checked in
this order, and a row is quarantined under the category of its first problem:

  1. consent   -- the consent flag not among spec.consent.granted (case-insensitive), the
                  required purpose not among the consented purposes, or the consent expired
                  before the run's date (ppmlops.data.consent): "no consent", with the reason
                  saying which; nothing else is checked on a row whose owner did not consent
  2. label     -- empty or not among label.values: "invalid label"
  3. numeric   -- not a finite number, or outside the declared range: "invalid value"
  4. category  -- not among the declared categories: "unknown category"
  and, before all of these, a line with the wrong number of fields: "malformed line".

The snapshot holds the feature and label columns, numeric features as float64 and categorical
features and the label as their original strings, and, for identifiers the spec asks to
pseudonymize, a column `<name>_pseudonym` with the keyed HMAC of the value (ppmlops.data.
pseudonymize) for joins; identifier and other columns never leave this module otherwise. Its `sha256` is taken over a canonical CSV serialization, not the Parquet
bytes, so it stays the same across pyarrow versions.

Without a test_source, the test partition is chosen per row by a keyed hash of the row's
content (key: spec.training.seed), so a row keeps its partition when the dataset grows between
retraining runs; the ledger's per-partition accounting relies on that.

Sources are read through ppmlops.data.reading: CSV in the declared encoding with the declared
or detected delimiter, Parquet as text.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import re
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Iterable, Sequence

from ppmlops.data.consent import ConsentRules, today
from ppmlops.data.pseudonymize import load_key, pseudonym, pseudonym_column
from ppmlops.data.reading import SourceReader, missing_columns
from ppmlops.errors import DataError
from ppmlops.spec import CategoricalFeature, NumericFeature, PipelineSpec, Source

QUARANTINE_COLUMNS = ("_source", "_line", "_reason", "_raw")

NO_CONSENT = "no consent"
INVALID_LABEL = "invalid label"
INVALID_VALUE = "invalid value"
UNKNOWN_CATEGORY = "unknown category"
MALFORMED_LINE = "malformed line"

# Plain decimal or scientific notation in ASCII digits; float() alone would also take "1_000",
# "nan", "inf" and other scripts' digits ("٣٠", "３０"), which no declared range was written for.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


@dataclass
class IngestResult:
    dataset_id: str
    rows_in: int
    rows_staged: int
    rows_train: int
    rows_test: int
    rows_quarantined: int
    quarantine_reasons: dict[str, int]
    snapshot_train: str
    snapshot_test: str
    quarantine_path: str
    sha256: str
    source_sha256: str
    columns: list[str] = field(default_factory=list)  # staged columns: features in spec order, then the label
    dropped_columns: list[str] = field(default_factory=list)  # source columns that were not staged
    sources: list[dict[str, Any]] = field(default_factory=list)  # per file: path, format, sha256, rows
    split: str = ""
    # consent refusals by rule (flag, purpose, expired); they add up to quarantine_reasons["no consent"]
    consent_refusals: dict[str, int] = field(default_factory=dict)
    consent_as_of: str = ""  # the date consent expiry was judged on
    pseudonymized: dict[str, str] = field(default_factory=dict)  # source column -> staged pseudonym column

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SourceTable:
    """A source file as text: well-formed records, their line numbers, and the ragged lines."""

    path: Path
    format: str
    header: list[str]
    records: list[list[str]]
    lines: list[int]
    ragged: list[tuple[int, str, str]]  # (line, raw record, why)
    sha256: str
    encoding: str | None = None  # CSV only
    delimiter: str | None = None  # CSV only

    @property
    def rows_in(self) -> int:
        return len(self.records) + len(self.ragged)

    def index(self, column: str) -> int:
        return self.header.index(column)


# --------------------------------------------------------------------------- reading


def read_source(source: Source) -> SourceTable:
    """Read a spec source (CSV or Parquet) as strings; generate the demo table first if asked."""
    path = source.resolved_path()
    if source.generate is not None and not path.exists():
        from ppmlops.data.synthetic import write_demo

        write_demo(path, source.generate.rows, source.generate.seed, source.generate.consent_detail)
    fmt = source.resolved_format()
    if fmt == "csv":
        return read_csv(path, source.encoding, source.delimiter)
    return read_parquet(path)


def _read_all(reader: SourceReader) -> SourceTable:
    records: list[list[str]] = []
    lines: list[int] = []
    ragged: list[tuple[int, str, str]] = []
    for chunk in reader:
        records.extend(chunk.records)
        lines.extend(chunk.lines)
        ragged.extend(chunk.ragged)
    if not records and not ragged:
        what = "has a header but no data rows" if reader.format == "csv" else "has columns but no data rows"
        raise DataError(f"{reader.path}: {what}")
    return SourceTable(reader.path, reader.format, reader.header, records, lines, ragged, reader.sha256,
                       reader.encoding if reader.format == "csv" else None, reader.delimiter)


def read_csv(path: Path, encoding: str = "utf-8", delimiter: str | None = None) -> SourceTable:
    return _read_all(SourceReader(path, "csv", encoding, delimiter))


def read_parquet(path: Path) -> SourceTable:
    return _read_all(SourceReader(path, "parquet"))


# --------------------------------------------------------------------------- checking


class _RowChecker:
    """The spec's rules for one source file, with column positions resolved once."""

    def __init__(self, spec: PipelineSpec, table: SourceTable, as_of: date, key: bytes | None):
        ds = spec.dataset
        required = {ds.label.column: "label"} | {f.name: "feature" for f in ds.features}
        if ds.consent is not None:
            required |= {c: "consent" for c in ds.consent.columns()}
        required |= {c: "identifier to pseudonymize" for c in ds.pseudonymize}
        missing = [(col, role) for col, role in required.items() if col not in table.header]
        if missing:
            raise missing_columns(table.path, missing, table.header)
        self.consent = ConsentRules(ds.consent, table.header, as_of, table.path) if ds.consent is not None else None
        self.pseudonyms = [(pseudonym_column(c), table.index(c)) for c in ds.pseudonymize]
        self.key = key
        self.label = (ds.label.column, table.index(ds.label.column), set(ds.label.values), ds.label.values)
        self.numeric = [(f.name, table.index(f.name), f.range) for f in ds.features if isinstance(f, NumericFeature)]
        self.categorical = [(f.name, table.index(f.name), set(f.categories))
                            for f in ds.features if isinstance(f, CategoricalFeature)]

    def check(self, rec: list[str]) -> tuple[str, str, str] | dict[str, Any]:
        """(category, reason, consent rule) for a row to quarantine, else the row's staged values by column."""
        if self.consent is not None:
            refused = self.consent.check(rec)
            if refused is not None:
                return NO_CONSENT, refused[1], refused[0]
        problems: list[tuple[str, str]] = []
        out: dict[str, Any] = {}
        col, i, allowed, ordered = self.label
        value = rec[i].strip()
        if value in allowed:
            out[col] = value
        elif not value:
            problems.append((INVALID_LABEL, f"column {col}: label is empty"))
        else:
            problems.append((INVALID_LABEL, f"column {col}: {rec[i]!r} is not one of {ordered}"))
        for col, i, (lo, hi) in self.numeric:
            text = rec[i].strip()
            if not text:
                problems.append((INVALID_VALUE, f"column {col}: value is empty"))
            elif not _NUMBER.fullmatch(text):
                problems.append((INVALID_VALUE, f"column {col}: {rec[i]!r} is not a number"))
            else:
                x = float(text)
                if not math.isfinite(x):
                    problems.append((INVALID_VALUE, f"column {col}: {rec[i]!r} is not a finite number"))
                elif not lo <= x <= hi:
                    problems.append((INVALID_VALUE, f"column {col}: {text} is outside the declared range [{lo:g}, {hi:g}]"))
                else:
                    out[col] = x
        for col, i, allowed in self.categorical:
            value = rec[i].strip()
            if value in allowed:
                out[col] = value
            elif not value:
                problems.append((UNKNOWN_CATEGORY, f"column {col}: value is empty"))
            else:
                problems.append((UNKNOWN_CATEGORY, f"column {col}: {rec[i]!r} is not a declared category"))
        if problems:
            return problems[0][0], "; ".join(p[1] for p in problems), ""
        for name, i in self.pseudonyms:
            out[name] = pseudonym(self.key, rec[i])
        return out


# --------------------------------------------------------------------------- staging


@dataclass
class _Partition:
    rows: list[dict[str, Any]] = field(default_factory=list)
    keys: list[list[str]] = field(default_factory=list)  # the original records, for the hash split


@dataclass
class _Quarantined:
    source: Path
    header: list[str]
    line: int
    record: list[str] | None
    reason: str
    raw: str = ""


def _sort_rows(spec: PipelineSpec, table: SourceTable, as_of: date,
               key: bytes | None) -> tuple[_Partition, list[_Quarantined], Counter, Counter]:
    checker = _RowChecker(spec, table, as_of, key)
    accepted = _Partition()
    quarantined: list[_Quarantined] = []
    reasons: Counter = Counter()
    refusals: Counter = Counter()
    for line, raw, why in table.ragged:
        quarantined.append(_Quarantined(table.path, table.header, line, None, why, raw))
        reasons[MALFORMED_LINE] += 1
    for rec, line in zip(table.records, table.lines):
        result = checker.check(rec)
        if isinstance(result, tuple):
            category, reason, rule = result
            quarantined.append(_Quarantined(table.path, table.header, line, rec, reason))
            reasons[category] += 1
            if rule:
                refusals[rule] += 1
        else:
            accepted.rows.append(result)
            accepted.keys.append(rec)
    quarantined.sort(key=lambda q: q.line)
    return accepted, quarantined, reasons, refusals


def _hash_split(part: _Partition, seed: int, fraction: float) -> tuple[_Partition, _Partition]:
    key = hashlib.sha256(f"ppmlops-split:{seed}".encode()).digest()  # any int seed, fixed-size key
    train, test = _Partition(), _Partition()
    for row, rec in zip(part.rows, part.keys):
        digest = hashlib.blake2b("\x1f".join(rec).encode("utf-8"), digest_size=8, key=key).digest()
        target = test if int.from_bytes(digest, "big") / 2**64 < fraction else train
        target.rows.append(row)
        target.keys.append(rec)
    return train, test


def snapshot_columns(spec: PipelineSpec) -> list[str]:
    """Features in spec order, the label, then the pseudonym columns (never features)."""
    ds = spec.dataset
    return [f.name for f in ds.features] + [ds.label.column] + [pseudonym_column(c) for c in ds.pseudonymize]


def _arrow_schema(spec: PipelineSpec):
    import pyarrow as pa

    fields = [pa.field(f.name, pa.float64() if isinstance(f, NumericFeature) else pa.string(), nullable=False)
              for f in spec.dataset.features]
    fields.append(pa.field(spec.dataset.label.column, pa.string(), nullable=False))
    fields += [pa.field(pseudonym_column(c), pa.string(), nullable=False) for c in spec.dataset.pseudonymize]
    return pa.schema(fields, metadata={"ppmlops.dataset_id": spec.dataset.id})


def _write_parquet(path: Path, spec: PipelineSpec, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _arrow_schema(spec)
    table = pa.table({name: [r[name] for r in rows] for name in schema.names}, schema=schema)
    with _atomic(path) as tmp:
        pq.write_table(table, tmp)


def canonical_sha256(partitions: Iterable[tuple[str, Sequence[str], Iterable[Sequence[Any]]]]) -> str:
    """SHA-256 over (name, columns, rows) per partition as canonical CSV.

    Floats are written with repr(), Python's shortest round-trip form, so the bytes depend only
    on the values, never on how a library formats or stores them.
    """
    h = hashlib.sha256()
    for name, columns, rows in partitions:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        buf.write(f"# partition {name}\n")
        w.writerow(columns)
        for row in rows:
            w.writerow([repr(float(v)) if isinstance(v, float) else v for v in row])
        h.update(buf.getvalue().encode("utf-8"))
    return h.hexdigest()


def snapshot_sha256(train_path: str | Path, test_path: str | Path) -> str:
    """The content hash of staged snapshot files, recomputed from the Parquet values."""
    import pyarrow.parquet as pq

    parts = []
    for name, path in (("train", train_path), ("test", test_path)):
        table = pq.read_table(path)
        cols = [table.column(i).to_pylist() for i in range(table.num_columns)]
        parts.append((name, table.column_names, zip(*cols)))
    return canonical_sha256(parts)


def _write_quarantine(path: Path, items: list[_Quarantined], headers: list[list[str]]) -> None:
    columns: list[str] = []
    for h in headers:
        columns.extend(c for c in h if c not in columns)
    columns.extend(c for c in QUARANTINE_COLUMNS if c not in columns)
    with _atomic(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(columns)
            for q in items:
                values = dict(zip(q.header, q.record)) if q.record is not None else {}
                values.update(_source=str(q.source), _line=q.line, _reason=q.reason, _raw=q.raw)
                w.writerow([values.get(c, "") for c in columns])


class _atomic:
    """A temporary path next to `path` that replaces it on success and is removed on failure."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> str:
        fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            Path(self.tmp).unlink(missing_ok=True)


def source_sha256(tables: list[SourceTable]) -> str:
    if len(tables) == 1:
        return tables[0].sha256  # equals `sha256sum <file>`
    return hashlib.sha256("".join(f"{t.sha256}  {t.path.name}\n" for t in tables).encode()).hexdigest()


# --------------------------------------------------------------------------- the stage


def ingest(spec: PipelineSpec, run_dir: Path, as_of: date | None = None) -> IngestResult:
    """Stage the spec's source(s) in `run_dir`; consent expiry is judged on `as_of` (default: today, UTC)."""
    ds = spec.dataset
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    as_of = as_of or today()
    # Read the key before any data: a run that cannot pseudonymize must not stage anything.
    key = load_key(ds.pseudonym_key_env) if ds.pseudonymize else None

    main = read_source(ds.source)
    accepted, quarantined, reasons, refusals = _sort_rows(spec, main, as_of, key)
    tables = [main]
    per_file = [(main, accepted.rows, quarantined)]
    if ds.test_source is not None:
        held = read_source(ds.test_source)
        test, q_test, r_test, f_test = _sort_rows(spec, held, as_of, key)
        train = accepted
        quarantined = quarantined + q_test
        reasons += r_test
        refusals += f_test
        tables.append(held)
        per_file.append((held, test.rows, q_test))
        split = f"test_source {held.path}"
    else:
        fraction = spec.training.test_fraction
        train, test = _hash_split(accepted, spec.training.seed, fraction)
        split = f"keyed hash of each row (seed {spec.training.seed}), test fraction {fraction:g}"

    rows_in = sum(t.rows_in for t in tables)
    rows_staged = len(train.rows) + len(test.rows)
    if (rows_in != rows_staged + len(quarantined) or sum(reasons.values()) != len(quarantined)
            or sum(refusals.values()) != reasons.get(NO_CONSENT, 0)):
        raise DataError(
            f"{ds.id}: internal error, rows do not reconcile: {rows_in} read, {rows_staged} staged, "
            f"{len(quarantined)} quarantined"
        )

    quarantine_path = run_dir / "quarantine.csv"
    _write_quarantine(quarantine_path, quarantined, [t.header for t in tables])
    for name, part in (("training", train), ("test", test)):
        if not part.rows:
            raise DataError(
                f"{ds.id}: no rows left for the {name} partition after quarantine "
                f"({dict(reasons)}); see {quarantine_path}"
            )

    columns = snapshot_columns(spec)
    train_path, test_path = run_dir / "snapshot_train.parquet", run_dir / "snapshot_test.parquet"
    _write_parquet(train_path, spec, train.rows)
    _write_parquet(test_path, spec, test.rows)
    digest = canonical_sha256(
        (name, columns, ([r[c] for c in columns] for r in part.rows))
        for name, part in (("train", train), ("test", test))
    )
    staged = set(columns)
    dropped: list[str] = []
    for t in tables:
        dropped.extend(c for c in t.header if c not in staged and c not in dropped)
    return IngestResult(
        dataset_id=ds.id,
        rows_in=rows_in,
        rows_staged=rows_staged,
        rows_train=len(train.rows),
        rows_test=len(test.rows),
        rows_quarantined=len(quarantined),
        quarantine_reasons=dict(sorted(reasons.items())),
        snapshot_train=str(train_path),
        snapshot_test=str(test_path),
        quarantine_path=str(quarantine_path),
        sha256=digest,
        source_sha256=source_sha256(tables),
        columns=columns,
        dropped_columns=dropped,
        sources=[
            {"path": str(t.path), "format": t.format, "sha256": t.sha256, "rows_in": t.rows_in,
             "rows_accepted": len(ok), "rows_quarantined": len(q)}
            | ({"encoding": t.encoding, "delimiter": t.delimiter} if t.format == "csv" else {})
            for t, ok, q in per_file
        ],
        split=split,
        consent_refusals=dict(sorted(refusals.items())),
        consent_as_of=as_of.isoformat() if ds.consent is not None else "",
        pseudonymized={c: pseudonym_column(c) for c in ds.pseudonymize},
    )
