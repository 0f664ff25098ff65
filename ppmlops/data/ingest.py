"""Ingestion: read the source, quarantine what may not or cannot be used, stage a snapshot.

Every value is read as text and coerced per the spec, so nothing is lost to type guessing.
Each data row ends up in exactly one place: the training snapshot, the test snapshot or the
quarantine file (ppmlops.data.quarantine: `_source` (file), `_line` (1-based line number in that
file; for Parquet, the 1-based row number), `_reason`, a keyed `_record_hmac`, and no direct
identifiers, nothing else of a row whose owner refused, never a malformed line's text). Rows
are checked in this order, and a row is quarantined under the category of its first problem:

  1. consent   -- the consent flag not among spec.consent.granted (case-insensitive), the
                  required purpose not among the consented purposes, or the consent expired
                  before the run's date (ppmlops.data.consent): "no consent", with the reason
                  saying which; nothing else is checked on a row whose owner did not consent
  2. label     -- empty or not among the declared labels (label.values, or label.classes for a
                  multiclass task), or for a regression task not a finite number inside
                  label.range: "invalid label"
  3. numeric   -- not a finite number, or outside the declared range: "invalid value"
  4. category  -- not among the declared categories: "unknown category"
  5. tensor    -- a tensor feature's array (ppmlops.data.tensors) with another number of values
                  than its declared shape, ragged, a null, a value that is not a finite number or
                  one its dtype cannot hold: "invalid value" (staged as a fixed_size_list column
                  of the declared dtype; values outside the declared range are kept, and clipped
                  when encoded)
  and, before all of these, a line with the wrong number of fields: "malformed line".

The snapshot holds the feature and label columns, numeric features as float64 and categorical
features and the label as their original strings, and, for identifiers the spec asks to
pseudonymize, a column `<name>_pseudonym` with the keyed HMAC of the value (ppmlops.data.
pseudonymize) for joins; identifier and other columns never leave this module otherwise. Its
`sha256` is taken over a canonical CSV serialization, not the Parquet bytes, so it stays the
same across pyarrow versions.

Everything streams: a chunk of rows (reading.CHUNK_ROWS) is read, checked, split, appended to
the snapshots (one Parquet row group per chunk) and the quarantine file, and hashed, before the
next is read, so memory does not grow with the source (benchmarks/ingest_memory.py).

A chunk is checked column-wise (reading.Batch): each rule that reads one column (consent, label,
category, the window's timestamp) is judged once per distinct value; a number is accepted at once
when its text is a plain number (the _NUMBER form, nothing around it) that pyarrow parses to a
finite value in range (pyarrow and Python both round decimal text correctly, so the doubles are
the same). Every other row (a refusal aside, whose reason is its consent value's) is checked by
_RowChecker.check on its whole record, as before, which writes the reasons; only the rows that
pass or are quarantined leave the columns as Python objects. The split hash runs per accepted
row over the record's fields joined as before; the canonical hash is written from the staged
columns (ingest._canonical_columns) byte for byte as the row-wise writer would.

Without a test_source, the test partition is chosen per row by a keyed hash of the row's
content (key: spec.training.seed), so a row keeps its partition when the dataset grows between
retraining runs; the ledger's per-partition accounting relies on that. Which hash is the
dataset's split rule, fixed in the ledger when it is registered (ppmlops.privacy.split).

Sources are read through ppmlops.data.reading: CSV in the declared encoding with the declared
or detected delimiter, Parquet as text. A source that changes while it is read (its size,
modification time or inode) fails the ingest, naming the file, with nothing staged.

Column names the spec declares (features, label, consent, window, identifiers and the risk
declarations) match the file's header up to letter case (`Email` is the spec's `email`; two
header columns that both match one name are an error naming both). Columns the spec does not
declare are screened before any of their values reaches the quarantine file (see ppmlops.data.
quarantine; the ingest stage hands in PRAM's screen, ppmlops.risk.screen): one that looks like a
direct identifier by its name or its first SCREEN_SAMPLE_ROWS values is left out, and a value
of the others that looks like one is withheld; `quarantine_withheld` (private) says which
column and why; the public log names only columns judged by their name (a judgement on values
is a fact about private rows).
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ppmlops.data import quarantine, read_progress, sql_source
from ppmlops.privacy.split import DEFAULT_RULE, SplitRules
from ppmlops.data.sql_source import SqlReader
from ppmlops.data.person_bound import KEEP, OVER, PersonBound, bound_key
from ppmlops.data.consent import ConsentRules, today
from ppmlops.privacy.blocks import BlockCalendar, calendar_of
from ppmlops.window import DataInterval, RowWindow, parse_timestamp
from ppmlops.data.pseudonymize import load_key, pseudonym, pseudonym_column
from ppmlops.data.reading import (CHUNK_ROWS, UNIT, Batch, SourceReader, by_value, match_declared, may_need_strip,
                                  missing_columns)
from ppmlops.errors import DataError
from ppmlops.data import tensors
from ppmlops.spec import CategoricalFeature, NumericFeature, PipelineSpec, Source, TensorFeature

try:  # compiled by the install (pyproject.toml's ext-modules), optional: see _canonical_columns
    from ppmlops.data._rowtext import join_rows as _join_rows
except ImportError:
    _join_rows = None

# Rows of each source whose values decide whether an undeclared column is an identifier (the
# risk scan's judgement on a sample); later values are still screened one by one.
SCREEN_SAMPLE_ROWS = 2000

log = logging.getLogger(__name__)

NO_CONSENT = "no consent"
INVALID_LABEL = "invalid label"
INVALID_VALUE = "invalid value"
UNKNOWN_CATEGORY = "unknown category"
MALFORMED_LINE = "malformed line"

# Plain decimal or scientific notation in ASCII digits; float() alone would also take "1_000",
# "nan", "inf" and other scripts' digits ("٣٠", "３０"), which no declared range was written for.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# The same form for pyarrow's regex engine (RE2), over the whole unstripped value: text it matches
# has no surrounding whitespace, so it is its own .strip().
_PLAIN_NUMBER = "^(?:" + _NUMBER.pattern + ")$"


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
    split_rule: str = ""  # ppmlops.privacy.split's rule of the hash split ("" before rules were recorded)
    # consent refusals by rule (flag, purpose, expired); they add up to quarantine_reasons["no consent"]
    consent_refusals: dict[str, int] = field(default_factory=dict)
    consent_as_of: str = ""  # the date consent expiry was judged on
    pseudonymized: dict[str, str] = field(default_factory=dict)  # source column -> staged pseudonym column
    quarantine_retention_days: int = quarantine.DEFAULT_RETENTION_DAYS
    quarantine_expired: list[str] = field(default_factory=list)  # earlier runs' quarantine files deleted now
    window: RowWindow = field(default_factory=RowWindow)  # how rows were selected for the run's interval
    rows_outside_window: int = 0  # source rows whose timestamp lies outside the run's window (not read)
    # Rows of the window quarantined but kept out of every count the run releases: their event time
    # lies in a retired privacy block, or (with privacy.blocks) is no timestamp, so no block the run
    # is charged to holds them (private, like rows_outside_window).
    rows_outside_open_blocks: int = 0
    retired_blocks: list[str] = field(default_factory=list)  # the blocks of the window left out
    # With privacy.unit (ppmlops.data.person_bound): rows quarantined because their person already
    # had max_rows rows in the run, and rows (malformed lines included) whose person is unknown.
    # Private and in no release: one person could move them by more than max_rows.
    rows_over_person_limit: int = 0
    rows_without_person: int = 0
    # Undeclared columns left out of the quarantine file as direct identifiers: column -> why.
    quarantine_withheld: dict[str, str] = field(default_factory=dict)
    # Cells of the undeclared columns kept there that were withheld: column -> kind -> count.
    quarantine_cells_withheld: dict[str, dict[str, int]] = field(default_factory=dict)
    # Header columns renamed to the spec's spelling (matched up to letter case): file's -> spec's.
    renamed_columns: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- reading


def open_source(source: Source, chunk_rows: int = CHUNK_ROWS, partition: DataInterval | None = None, *,
                connections: Mapping[str, str] | None = None, window=None,
                interval: DataInterval | None = None) -> SourceReader | SqlReader:
    """A reader over a spec source (CSV or Parquet, as text); generates the demo table first if asked.
    With `partition`, the source path is formatted for that interval. A SQL source is read by
    ppmlops.data.sql_source, its connection looked up in `connections` (id -> URL), the
    `window`'s column and `interval` pushed into its query."""
    if source.is_sql:
        return sql_source.open_reader(source, connections=connections, window=window, interval=interval,
                                      chunk_rows=chunk_rows)
    path = source.resolved_path(partition)
    if source.generate is not None:
        from ppmlops.data.synthetic import ensure_demo

        ensure_demo(path, source.generate)
    fmt = source.resolved_format()
    if fmt == "csv":
        return SourceReader(path, "csv", source.encoding, source.delimiter, chunk_rows=chunk_rows)
    if fmt == "npz":
        return SourceReader(path, "npz", chunk_rows=chunk_rows, labels=source.labels_path(partition))
    return SourceReader(path, "parquet", chunk_rows=chunk_rows)


# --------------------------------------------------------------------------- windows


def _window(spec: PipelineSpec, interval: DataInterval | None):
    """The spec's window and the interval it selects (None for a whole-table or windowless spec)."""
    window = spec.dataset.window
    if window is None or window.whole_table:
        return window, interval
    selected = interval or DataInterval.until_now()
    return window, selected.with_lookback(window.lookback)


def _describe_window(window, selected: DataInterval | None) -> RowWindow:
    if window is None or window.whole_table:
        return RowWindow()
    return RowWindow.selecting("column" if window.column is not None else "partition", window.column, selected)


@dataclass
class _WindowFilter:
    """Rows inside the interval (True), outside it (False), or with no timestamp (None)."""

    index: int | None
    interval: DataInterval | None
    column: str = ""
    calendar: BlockCalendar = field(default_factory=BlockCalendar)
    retired: frozenset[str] = frozenset()

    @classmethod
    def of(cls, window, selected: DataInterval | None, path: Path, header: list[str],
           calendar: BlockCalendar = BlockCalendar(), retired: frozenset[str] = frozenset()) -> "_WindowFilter":
        if window is None or window.column is None:
            return cls(None, None)
        if window.column not in header:
            raise missing_columns(path, [(window.column, "window timestamp")], header)
        return cls(header.index(window.column), selected, window.column, calendar, retired)

    def keep(self, rec: list[str]) -> bool | None:
        if self.index is None:
            return True
        t = parse_timestamp(rec[self.index])
        return None if t is None else self.interval.contains(t)

    def outside_blocks(self, rec: list[str], keep: bool | None) -> str | None:
        """Why a row of the window lies in no privacy block the run is charged to (None: it
        does). Such a row is quarantined and kept out of the run's count release: the release
        is charged to the open blocks only, so counting it would spend a budget nobody charged."""
        if not self.calendar.blocked:
            return None
        if keep is None:
            return (f"column {self.column}: not an ISO 8601 date or date-time, so the row belongs to no privacy "
                    "block (kept out of the run's counts)")
        block = self.calendar.block_of(parse_timestamp(rec[self.index]))
        if block in self.retired:
            start, end = self.calendar.bounds(block)
            return (f"column {self.column}: in privacy block {block} [{start.isoformat()}, {end.isoformat()}), "
                    "retired for this run (its budget cannot afford the run)")
        return None


    def verdicts(self, batch: Batch) -> tuple[np.ndarray, dict[int, str]]:
        """`keep` and `outside_blocks` for every record of a batch, judged once per distinct
        timestamp text: per row 1 (inside), 0 (outside) or -1 (no timestamp), and the rows of the
        window in no open block -> why."""
        if self.index is None:
            return np.ones(batch.num_rows, dtype=np.int8), {}
        codes, values = by_value(batch.column(self.index))
        keep_of = np.empty(len(values), dtype=np.int8)
        why_of: list[str | None] = []
        for k, value in enumerate(values):
            rec = {self.index: value}  # the methods read only this column
            keep = self.keep(rec)
            keep_of[k] = -1 if keep is None else int(keep)
            why_of.append(None if keep is False else self.outside_blocks(rec, keep))
        why = {}
        if any(w is not None for w in why_of):
            has = np.array([w is not None for w in why_of])
            for row in np.flatnonzero(has[codes]).tolist():
                why[row] = why_of[codes[row]]
        return keep_of[codes], why


def keep_invalid(window: _WindowFilter) -> tuple[str, str, str]:
    return INVALID_VALUE, f"column {window.column}: not an ISO 8601 date or date-time (the run's window needs one)", ""


# --------------------------------------------------------------------------- columns


def declared_columns(spec: PipelineSpec) -> list[str]:
    """Every column name the spec declares, in a fixed order."""
    ds = spec.dataset
    names = [f.name for f in ds.features] + [ds.label.column]
    names += ds.consent.columns() if ds.consent is not None else []
    names += [ds.window.column] if ds.window is not None and ds.window.column is not None else []
    names += [spec.privacy.unit.column] if spec.privacy.unit is not None else []
    names += ds.identifiers + ds.pseudonymize + ds.quasi_identifiers + ds.special_categories + ds.not_sensitive
    return list(dict.fromkeys(names))


def _screen_columns(readers: Sequence[SourceReader], undeclared: list[str],
                    screen: quarantine.IdentifierScreen) -> dict[str, str]:
    """The undeclared columns to leave out of quarantine -> why, judged on each source's first
    SCREEN_SAMPLE_ROWS rows, before any row is written. The log names them, never a value."""
    if not undeclared:
        return {}
    samples: dict[str, list[str]] = {c: [] for c in undeclared}
    for r in readers:
        at = [(c, r.header.index(c)) for c in undeclared if c in r.header]
        for rec in r.head(SCREEN_SAMPLE_ROWS):
            for c, i in at:
                samples[c].append(rec[i])
    withheld = {}
    # Said whatever the screen finds: the list of undeclared columns comes from the header alone.
    log.info("ingest: %d undeclared column(s) screened by name and values (%s); the private ingest "
             "record says which were left out of the quarantine file", len(undeclared), ", ".join(undeclared))
    for column in undeclared:
        why = screen.column(column, samples[column])
        if why is None:
            continue
        withheld[column] = why
        # The task log is public: a finding on the name alone depends on the header only, but
        # one made by the values says something about private rows, so it stays in the run's
        # private ingest record (quarantine_withheld) and the log counts nothing about it.
        by_name = screen.column(column, [])
        if by_name is not None:
            log.warning("ingest: column %s (not declared in the spec) is left out of the quarantine file: %s",
                        column, by_name)
    return withheld


# The bytes of a decimal without sign '+' or exponent: '-', '.' and the digits (45 to 57 but '/').
_DECIMAL_BYTE = np.zeros(256, dtype=bool)
_DECIMAL_BYTE[[45, 46, *range(48, 58)]] = True


def _numbers(text) -> tuple[np.ndarray, np.ndarray]:
    """(per row whether its text is a plain number, _PLAIN_NUMBER's form; its value, else 0).

    A column whose bytes are all '-', '.' or digits is cast by pyarrow whole, without the regex:
    for such text pyarrow's cast succeeds exactly where _NUMBER matches and gives float()'s value
    (tests/unit/test_ingest_numbers.py checks every string of up to four of those characters
    and long random ones), and one value it refuses sends the column to the regex."""
    import pyarrow as pa
    import pyarrow.compute as pc

    rows = len(text)
    data = text.buffers()[2] if rows and not text.null_count and text.type == pa.string() else None
    if data is not None:
        offsets = np.frombuffer(text.buffers()[1], dtype=np.int32)[text.offset: text.offset + rows + 1]
        if _DECIMAL_BYTE[np.frombuffer(data, dtype=np.uint8)[offsets[0]:offsets[-1]]].all():
            try:
                x = pc.cast(text, pa.float64()).to_numpy(zero_copy_only=False)
            except pa.ArrowInvalid:  # e.g. "1.2.3" or an empty value: the regex finds which
                pass
            else:
                return np.ones(rows, dtype=bool), x
    plain = pc.fill_null(pc.match_substring_regex(text, _PLAIN_NUMBER), False)
    try:
        x = pc.cast(pc.if_else(plain, text, "0"), pa.float64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:  # not expected for the _NUMBER form; `check` then decides every row
        return np.zeros(rows, dtype=bool), np.zeros(rows)
    return plain.to_numpy(zero_copy_only=False), x


def _in_range(text, bounds: tuple[float, float]) -> np.ndarray:
    """Rows whose text is a plain number inside [low, high] (certainly accepted; others are decided
    by _RowChecker.check)."""
    lo, hi = bounds
    plain, x = _numbers(text)
    with np.errstate(invalid="ignore"):
        return plain & np.isfinite(x) & (lo <= x) & (x <= hi)


def _range_problem(text: str, bounds: tuple[float, float]) -> str | None:
    """Why `text` is not a number inside [low, high], or None."""
    lo, hi = bounds
    if not text:
        return "is empty"
    if not _NUMBER.fullmatch(text):
        return f"{text!r} is not a number"
    x = float(text)
    if not math.isfinite(x):
        return f"{text!r} is not a finite number"
    if not lo <= x <= hi:
        return f"{text} is outside the declared range [{lo:g}, {hi:g}]"
    return None


# --------------------------------------------------------------------------- checking


class _RowChecker:
    """The spec's rules for one source file, with column positions resolved once."""

    def __init__(self, spec: PipelineSpec, path: Path, header: list[str], as_of: date, key: bytes | None):
        ds = spec.dataset
        required = {ds.label.column: "label"} | {f.name: "feature" for f in ds.features}
        if ds.consent is not None:
            required |= {c: "consent" for c in ds.consent.columns()}
        required |= {c: "identifier to pseudonymize" for c in ds.pseudonymize}
        missing = [(col, role) for col, role in required.items() if col not in header]
        if missing:
            raise missing_columns(path, missing, header)
        index = header.index
        self.consent = ConsentRules(ds.consent, header, as_of, path) if ds.consent is not None else None
        self.pseudonyms = [(pseudonym_column(c), index(c)) for c in ds.pseudonymize]
        self.key = key
        allowed = ds.label.allowed
        self.label = (ds.label.column, index(ds.label.column), set(allowed or ()), allowed)
        # A regression label is a number in the declared range, kept as its text like other labels.
        self.label_range = ds.label.range if ds.label.task == "regression" else None
        self.numeric = [(f.name, index(f.name), f.range) for f in ds.features if isinstance(f, NumericFeature)]
        self.categorical = [(f.name, index(f.name), set(f.categories))
                            for f in ds.features if isinstance(f, CategoricalFeature)]
        self.tensors = [(f.name, index(f.name), f) for f in ds.features if isinstance(f, TensorFeature)]

    def columns(self) -> list[int]:
        """The header positions the checks and the pseudonyms read."""
        used = [self.label[1]] + [i for _, i, _ in self.numeric] + [i for _, i, _ in self.categorical]
        used += [i for _, i, _ in self.tensors]
        used += [i for _, i in self.pseudonyms] + (self.consent.columns() if self.consent is not None else [])
        return sorted(set(used))

    def accepted(self, batch: Batch) -> tuple[np.ndarray, dict[str, Any], np.ndarray | None, list[tuple[str, str]]]:
        """What `check` accepts in a batch, decided column-wise, and what it would stage there:
        (rows certainly accepted, staged values by column for all rows (meaningful where
        accepted; numbers as float64, text as pyarrow strings), consent refusal per row (an
        index into the (kind, reason) list, -1 for none; None without consent rules), that
        list). A row not certainly accepted may still be (e.g. " 30 "): `check` decides it."""
        rows = batch.num_rows
        ok = np.ones(rows, dtype=bool)
        refusal, refusals = None, []
        if self.consent is not None:
            refusal, refusals = self.consent.refusals(batch.column, rows)
            ok &= refusal < 0
        staged: dict[str, Any] = {}
        col, i, allowed, _ = self.label
        if self.label_range is None:
            good, staged[col] = _in_set(batch.column(i), allowed)
        else:
            good, staged[col] = _in_range(batch.column(i), self.label_range), batch.column(i)
        ok &= good
        for col, i, (lo, hi) in self.numeric:
            plain, x = _numbers(batch.column(i))
            with np.errstate(invalid="ignore"):
                ok &= plain & np.isfinite(x) & (lo <= x) & (x <= hi)
            staged[col] = x
        for col, i, allowed in self.categorical:
            good, staged[col] = _in_set(batch.column(i), allowed)
            ok &= good
        for col, i, f in self.tensors:  # each row's array parsed once; a (rows, size) array of the dtype
            staged[col], good = tensors.stage_column(batch.column(i).to_pylist(), f)
            ok &= good
        return ok, staged, refusal, refusals

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
        if self.label_range is not None:
            problem = _range_problem(value, self.label_range)
            if problem is None:
                out[col] = value
            else:
                problems.append((INVALID_LABEL, f"column {col}: label {problem}"))
        elif value in allowed:
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
        for col, i, f in self.tensors:
            values, why = tensors.stage(rec[i], f)
            if why is None:
                out[col] = values
            else:  # the element's position and what is wrong, never a value
                problems.append((INVALID_VALUE, why))
        if problems:
            return problems[0][0], "; ".join(p[1] for p in problems), ""
        for name, i in self.pseudonyms:
            out[name] = pseudonym(self.key, rec[i])
        return out


def _in_set(text: Any, allowed: set[str]) -> tuple[np.ndarray, Any]:
    """Per row whether value.strip() is allowed, and value.strip() (as `check` stages it)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not text.null_count and all(v == v.strip() for v in allowed):
        good = pc.is_in(text, value_set=pa.array(sorted(allowed), pa.string()))
        # Every value allowed: each is its own .strip(), as the allowed ones are. Or none needs it.
        if pc.all(good).as_py() or not may_need_strip(text):
            return good.to_numpy(zero_copy_only=False), text
    codes, values = by_value(text)
    stripped = [v.strip() for v in values]
    good = np.array([v in allowed for v in stripped], dtype=bool)
    return good[codes], pa.array(stripped, pa.string()).take(pa.array(codes))


# --------------------------------------------------------------------------- staging


def snapshot_columns(spec: PipelineSpec) -> list[str]:
    """Features in spec order, the label, then the pseudonym columns (never features)."""
    ds = spec.dataset
    return [f.name for f in ds.features] + [ds.label.column] + [pseudonym_column(c) for c in ds.pseudonymize]


def _arrow_schema(spec: PipelineSpec):
    import pyarrow as pa

    fields = [pa.field(f.name, pa.float64() if isinstance(f, NumericFeature) else
                       tensors.arrow_type(f) if isinstance(f, TensorFeature) else pa.string(), nullable=False)
              for f in spec.dataset.features]
    fields.append(pa.field(spec.dataset.label.column, pa.string(), nullable=False))
    fields += [pa.field(pseudonym_column(c), pa.string(), nullable=False) for c in spec.dataset.pseudonymize]
    return pa.schema(fields, metadata={"ppmlops.dataset_id": spec.dataset.id})


def _canonical_part(name: str, columns: Sequence[str]) -> str:
    return f"# partition {name}\n" + _canonical_rows([columns], floats=False)


def _canonical_rows(rows: Iterable[Sequence[Any]], floats: bool = True) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for row in rows:
        w.writerow([repr(float(v)) if floats and isinstance(v, float) else v for v in row])
    return buf.getvalue()


def _float_reprs(values: np.ndarray) -> Any:
    """repr() of each float64 of `values`, as a pyarrow string array: pyarrow's cast to text
    where it writes what repr writes, repr itself elsewhere (repr's shortest round-trip search
    per value is most of the cost of a float column's text).

    Both write the shortest digits that round-trip; they differ in notation only. pyarrow writes
    a whole number without ".0" (one is added) and switches to an exponent at other magnitudes,
    so its text is taken only for a finite value from 1e-4 to below 1e16 (repr's range without
    an exponent) whose text has no "e", a whole one only below 2**53. tests/unit/
    test_ingest_numbers.py holds the result to repr on random bit patterns and decimals."""
    import pyarrow as pa
    import pyarrow.compute as pc

    values = np.ascontiguousarray(values, dtype=np.float64)
    text = pc.cast(pa.array(values), pa.string())
    with np.errstate(invalid="ignore"):
        size = np.abs(values)
        whole = np.trunc(values) == values
        taken = ((size >= 1e-4) & (size < 1e16) & ~(whole & (size >= 2.0**53))
                 & ~pc.match_substring(text, "e").to_numpy(zero_copy_only=False))
    if (taken & whole).any():
        text = pc.if_else(pa.array(taken & whole), pc.binary_join_element_wise(text, ".0", ""), text)
    if not taken.all():
        rest = ~taken
        text = pc.replace_with_mask(text, pa.array(rest), pa.array([repr(v) for v in values[rest].tolist()], pa.string()))
    return text


def _float_text(x: np.ndarray) -> Any:
    """repr() of each float64 (as _canonical_rows writes them), computed once per distinct bit
    pattern (so -0.0 and 0.0 stay apart), as a pyarrow string array."""
    import pandas as pd
    import pyarrow as pa

    codes, distinct = pd.factorize(np.ascontiguousarray(x, dtype=np.float64).view(np.int64))
    return _float_reprs(distinct.view(np.float64)).take(pa.array(codes))


def _csv_field(value: str) -> str:
    """One field as csv.writer writes it within a row of two or more."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([value, ""])
    return buf.getvalue()[:-2]


def _csv_text(text: Any) -> Any:
    """A pyarrow string array's values as csv.writer writes them: those holding a character the
    writer may quote for (a superset: comma, quote, CR, LF) are written by csv itself."""
    import pyarrow as pa
    import pyarrow.compute as pc

    text = text.cast(pa.string())
    # The characters' bytes anywhere in the values' buffer (a slice's buffer may hold more than
    # its values: then only this shortcut is missed).
    data = text.buffers()[2]
    if data is None or not any(c in data.to_pybytes() for c in (b",", b'"', b"\r", b"\n")):
        return text
    special = pc.match_substring_regex(text, '[",\r\n]')
    rows = np.flatnonzero(special.to_numpy(zero_copy_only=False))
    quoted = [_csv_field(v) for v in text.take(pa.array(rows)).to_pylist()]
    return pc.replace_with_mask(text, special, pa.array(quoted, pa.string()))


def _canonical_columns(columns: Sequence[Any]) -> bytes | None:
    """The rows of `columns` as _canonical_rows writes them (UTF-8), built column-wise; None
    where this does not apply (another type than float64 or text, a null, a single column: a
    lone empty field is quoted) and the caller must write the rows one by one."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if len(columns) < 2:
        return None
    texts = []
    for col in columns:
        if isinstance(col, np.ndarray):
            if col.dtype != np.float64 or col.ndim != 1:  # a tensor column: written row by row
                return None
            texts.append(_float_text(col))
            continue
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        if col.null_count:
            return None
        if col.type == pa.float64():
            texts.append(_float_text(col.to_numpy(zero_copy_only=False)))
        elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            texts.append(_csv_text(col))
        else:
            return None
    if len(texts[0]) == 0:
        return b""
    if _join_rows is not None:  # one pass in C; pyarrow's two joins below write the same bytes
        return _join_rows([_offsets_and_data(t) for t in texts], len(texts[0]))
    texts[-1] = pc.binary_join_element_wise(texts[-1], "\n", "")
    lines = pc.binary_join_element_wise(*texts, ",")
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)[lines.offset: lines.offset + len(lines) + 1]
    return lines.buffers()[2].to_pybytes()[offsets[0]:offsets[-1]]


def _offsets_and_data(text: Any) -> tuple[np.ndarray, Any]:
    """A pyarrow string array's offsets (its own offset applied) and data buffer."""
    import pyarrow as pa

    offsets = np.frombuffer(text.buffers()[1], dtype=np.int32)[text.offset: text.offset + len(text) + 1]
    return offsets, text.buffers()[2] or pa.py_buffer(b"")


def canonical_sha256(partitions: Iterable[tuple[str, Sequence[str], Iterable[Sequence[Any]]]]) -> str:
    """SHA-256 over (name, columns, rows) per partition as canonical CSV.

    Floats are written with repr(), Python's shortest round-trip form, so the bytes depend only
    on the values, never on how a library formats or stores them.
    """
    h = hashlib.sha256()
    for name, columns, rows in partitions:
        h.update(_canonical_part(name, columns).encode("utf-8"))
        h.update(_canonical_rows(rows).encode("utf-8"))
    return h.hexdigest()


def _parquet_canonical(path: str | Path, batch_rows: int = CHUNK_ROWS) -> Iterator[bytes]:
    """A Parquet file's rows as canonical CSV (UTF-8), a batch at a time."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    # One thread: reading the columns in parallel holds more of the file at once, for little gain.
    for batch in pf.iter_batches(batch_size=batch_rows, use_threads=False):
        text = _canonical_columns(batch.columns)
        if text is None:
            rows = list(zip(*(batch.column(i).to_pylist() for i in range(batch.num_columns))))
            text = _canonical_rows(rows).encode("utf-8")
        yield text


def snapshot_sha256(train_path: str | Path, test_path: str | Path) -> str:
    """The content hash of staged snapshot files, recomputed from the Parquet values, in batches."""
    import pyarrow.parquet as pq

    h = hashlib.sha256()
    for name, path in (("train", train_path), ("test", test_path)):
        h.update(_canonical_part(name, pq.ParquetFile(path).schema_arrow.names).encode("utf-8"))
        for text in _parquet_canonical(path):
            h.update(text)
    return h.hexdigest()


# How a staged snapshot is written. No column statistics: nothing reads them (a snapshot is read
# whole), computing them is part of every row group's write, and each row group's minimum and
# maximum of private values would sit in the footer, which tools read without reading any rows.
SNAPSHOT_PARQUET: dict[str, Any] = {"write_statistics": False}


class _Snapshot:
    """One partition's Parquet snapshot, written a row group per chunk into a temporary file."""

    def __init__(self, path: Path, spec: PipelineSpec, columns: list[str]):
        self.path, self.columns, self.rows = path, columns, 0
        self._schema = _arrow_schema(spec)
        self._tensors = {f.name: f for f in spec.dataset.features if isinstance(f, TensorFeature)}
        self._tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self._writer = None

    def write(self, columns: dict[str, Any], rows: int) -> None:
        """Append `rows` rows given column-wise (float64 arrays for numbers, strings else)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not rows:
            return
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._tmp, self._schema, **SNAPSHOT_PARQUET)
        table = pa.table({c: tensors.to_arrow(columns[c], self._tensors[c]) if c in self._tensors else columns[c]
                          for c in self.columns}, schema=self._schema)
        self._writer.write_table(table)
        self.rows += rows

    def commit(self) -> None:
        if self._writer is None:
            raise RuntimeError("an empty partition is refused before commit")
        self._writer.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._tmp.unlink(missing_ok=True)


def source_sha256(readers: list[SourceReader]) -> str:
    if len(readers) == 1:
        return readers[0].sha256  # equals `sha256sum <file>`
    return hashlib.sha256("".join(f"{r.sha256}  {r.path.name}\n" for r in readers).encode()).hexdigest()


# --------------------------------------------------------------------------- the stage


@dataclass
class _Counts:
    accepted: int = 0
    quarantined: int = 0


# Rows per chunk: the chunk's columns, its records' joined fields and its Parquet row group are
# what ingest holds at once (a few hundred bytes a row, most rows never become Python lists);
# 50,000 keeps that near 20 MiB and the work per chunk (a few dozen pyarrow calls) small per row.
INGEST_CHUNK_ROWS = 50_000


def ingest(spec: PipelineSpec, run_dir: Path, as_of: date | None = None,
           chunk_rows: int = INGEST_CHUNK_ROWS, earlier: Iterable[Path] = (),
           interval: DataInterval | None = None, home: Path | None = None,
           screen: quarantine.IdentifierScreen | None = None, retired: Iterable[str] = (),
           connections: Mapping[str, str] | None = None, split_rule: str = DEFAULT_RULE) -> IngestResult:
    """Stage the spec's source(s) in `run_dir`; consent expiry is judged on `as_of` (default: the
    interval's end, else today, UTC). `interval` is the run's data interval: the spec's
    dataset.window selects the rows for it (ppmlops.window). `home` holds the per-dataset
    quarantine key (default: the settings' PPMLOPS_HOME). `screen` judges the columns the spec
    does not declare before their values go to quarantine (without one, none is kept).
    `retired` are privacy blocks of the window the run leaves out (ppmlops.privacy.blocks): their
    rows are quarantined with the block named and counted in no release. `connections` maps the
    Airflow Connection ids a SQL source may name to their URLs (ppmlops.airflow.connections).
    `split_rule` is the dataset's split rule (ppmlops.privacy.split; the ledger's, once registered).

    `earlier` are the folders of earlier runs of this dataset: their quarantine files older than
    the retention setting are deleted. Streams: each file is read, checked, split and written a
    chunk of rows at a time (memory does not grow with the file). The content hash takes the
    training rows' canonical text as they are written; the test rows' is kept aside (a spooled
    file in `run_dir`) and taken at the end, because the canonical hash puts every training row
    first.
    """
    if home is None:
        from ppmlops import settings

        home = settings.load().home
    run = _IngestRun(spec, Path(run_dir), as_of, chunk_rows, interval, Path(home),
                     screen or quarantine.WithholdUndeclared(), frozenset(retired), connections, split_rule)
    run.stage()
    try:
        return run.result(quarantine.expire(earlier, run.retention))
    finally:
        run.test_text.close()


class _IngestRun:
    """One ingest's readers, checkers, snapshots, quarantine and counts, from open to result."""

    def __init__(self, spec: PipelineSpec, run_dir: Path, as_of: date | None, chunk_rows: int,
                 interval: DataInterval | None, home: Path, screen: quarantine.IdentifierScreen,
                 retired: frozenset[str] = frozenset(), connections: Mapping[str, str] | None = None,
                 split_rule: str = DEFAULT_RULE, *,
                 readers: list[SourceReader] | None = None, keys: tuple[bytes | None, bytes] | None = None,
                 withheld: Mapping[str, str] | None = None):
        """`readers`, `keys` (the pseudonym key, the quarantine key) and `withheld` (the screen's
        verdicts) are given where a part of a source is ingested by itself (ppmlops.data.
        ray_ingest): the part's reader, and what the whole run decided once."""
        ds = self.ds = spec.dataset
        self.spec, self.chunk_rows = spec, chunk_rows
        run_dir.mkdir(parents=True, exist_ok=True)
        self.window, self.selected = _window(spec, interval)
        self.as_of = as_of or (self.selected.as_of if self.selected is not None else today())
        # Read the key before any data: a run that cannot pseudonymize must not stage anything.
        if keys is None:
            key = load_key(ds.pseudonym_key_env) if ds.pseudonymize else None
        else:
            key = keys[0]
        self.retention = quarantine.retention_days()
        partition = self.selected if self.window is not None and self.window.partition else None
        opened = dict(connections=connections, window=self.window, interval=self.selected)
        if readers is not None:
            self.readers = list(readers)
        else:
            self.readers = [open_source(ds.source, chunk_rows, partition, **opened)]
            if ds.test_source is not None:
                self.readers.append(open_source(ds.test_source, chunk_rows, partition, **opened))
        declared = declared_columns(spec)
        self.renamed: dict[str, str] = {}
        for r in self.readers:
            spelled = match_declared(r.path, r.header, declared)
            for a, b in zip(r.header, spelled):
                if a != b:
                    self.renamed[a] = b
                    log.info("ingest: %s: column %s is the spec's %s (names match up to letter case)", r.path, a, b)
            r.header = spelled
        self.checkers = [_RowChecker(spec, r.path, r.header, self.as_of, key) for r in self.readers]
        self.calendar, self.retired = calendar_of(spec.privacy), sorted(retired)
        if retired and not self.calendar.blocked:
            raise DataError(f"{ds.id}: blocks {self.retired} are retired but the spec has no privacy.blocks")
        self.in_window = [_WindowFilter.of(self.window, self.selected, r.path, r.header, self.calendar, retired)
                          for r in self.readers]
        self.outside = 0
        self.outside_blocks = 0  # quarantined, in no release (see _WindowFilter.outside_blocks)
        self.unattributed = 0  # malformed lines under a person unit: quarantined, in no release
        self.columns = snapshot_columns(spec)
        self.train = _Snapshot(run_dir / "snapshot_train.parquet", spec, self.columns)
        self.test = _Snapshot(run_dir / "snapshot_test.parquet", spec, self.columns)
        self.quarantine_path = run_dir / quarantine.FILE_NAME
        q_key = quarantine.hmac_key(ds.id, ds.pseudonym_key_env, home) if keys is None else keys[1]
        undeclared = list(dict.fromkeys(c for r in self.readers for c in r.header if c not in set(declared)))
        if withheld is None:
            withheld = _screen_columns(self.readers, undeclared, screen)
        self.bound, self.person_at = self._person_bound(home)
        # The person column never reaches the quarantine file: rows there are traced by HMAC only.
        person = [spec.privacy.unit.column] if spec.privacy.unit is not None else []
        self.q = quarantine.QuarantineWriter(self.quarantine_path, [r.header for r in self.readers],
                                             list(dict.fromkeys(ds.identifiers + person)), q_key, withheld=withheld, screened=undeclared,
                                             screen=screen)
        self.reasons: Counter = Counter()
        self.refusals: Counter = Counter()
        self.counts = [_Counts() for _ in self.readers]
        self.fraction = spec.training.test_fraction
        self.split = SplitRules(split_rule, spec.training.seed, self.fraction)
        self.train_hash = hashlib.sha256(_canonical_part("train", self.columns).encode("utf-8"))
        # The test rows' canonical text, which the hash takes after all the training rows': kept
        # as it is staged (memory, then a file in the private run folder past 16 MiB) rather
        # than read back from the snapshot, which would cost a Parquet read and a second
        # conversion to text.
        self.test_text: Any = tempfile.SpooledTemporaryFile(max_size=16 << 20, dir=run_dir)

    def _person_bound(self, home: Path) -> tuple[PersonBound | None, list[int]]:
        unit = self.spec.privacy.unit
        if unit is None:
            return None, []
        for r in self.readers:
            if unit.column not in r.header:
                raise missing_columns(r.path, [(unit.column, "person (privacy.unit.column)")], r.header)
        bound = PersonBound(self.ds.id, unit.column, unit.max_rows, bound_key(self.ds.id, home))
        return bound, [r.header.index(unit.column) for r in self.readers]

    def _count_persons(self) -> None:
        """Pass one of the per-person bound: the person ids of every row the run will read."""
        import pyarrow as pa

        for n, r in enumerate(self.readers):
            again = r.again()
            window, at = self.in_window[n], self.person_at[n]
            for batch in again.batches([at] + ([window.index] if window.index is not None else [])):
                keep, no_block = window.verdicts(batch)
                in_run = keep != 0
                in_run[list(no_block)] = False
                self.bound.count(batch.column(at).filter(pa.array(in_run)).to_pylist())

    def _read_columns(self, n: int) -> list[int]:
        """The header positions of reader n that the run reads column-wise."""
        window = self.in_window[n]
        used = self.checkers[n].columns() + ([window.index] if window.index is not None else [])
        return used + ([self.person_at[n]] if self.bound is not None else [])

    def stage(self) -> None:
        """Read every source; commit the snapshots and quarantine only if all rows reconcile."""
        committed = False
        try:
            if self.bound is not None:
                self._count_persons()
            for n, reader in enumerate(self.readers):
                for chunk in reader.batches(self._read_columns(n)):
                    self._chunk(n, reader, chunk)
                    del chunk  # not held while the reader makes the next one
                    read_progress.step(n, reader, self.readers)
                if reader.rows_in == 0:
                    what = {"csv": "has a header but no data rows", "sql": "returned no rows"}.get(
                        reader.format, "has columns but no data rows")
                    if reader.format == "sql" and self.selected is not None and self.window is not None:
                        what += f" for the run's window ({_describe_window(self.window, self.selected).text()})"
                    raise DataError(f"{reader.path}: {what}")
            self.q.commit()
            committed = True
            self._reconcile()
            self.train.commit()
            self.test.commit()
        except BaseException:
            if not committed:
                self.q.abort()
            self.train.abort()
            self.test.abort()
            self.test_text.close()
            raise

    def _chunk(self, n: int, reader, batch: Batch) -> None:
        """Check, split, stage and quarantine one batch. Row by row this is what the stage has
        always done: outside the window -> not read; in no open privacy block -> quarantined
        (kind 2); over the person bound -> quarantined (kind 3); else check -> quarantined
        (kind 1) or staged, in the test partition by the split hash. The columns decide the rows
        they can; `check` decides the others on their whole records."""
        import pyarrow as pa

        rows = batch.num_rows
        keep, no_block = self.in_window[n].verdicts(batch)
        outside = keep == 0
        self.outside += int(outside.sum())
        in_run = ~outside
        in_run[list(no_block)] = False
        bound = None
        if self.bound is not None:  # before any check: a person's rows in every released bin add up to <= k
            bound = np.full(rows, KEEP, dtype=np.int8)
            ids = batch.column(self.person_at[n]).filter(pa.array(in_run)).to_pylist()
            bound[in_run] = self.bound.select(ids)
        ok, staged, refusal, refusals = self.checkers[n].accepted(batch)
        accepted = in_run & ok & (keep == 1)
        if bound is not None:
            accepted &= bound == KEEP
        events, refused, records, late = self._not_accepted(n, batch, np.flatnonzero(~outside & ~accepted), keep,
                                                            no_block, bound, refusal)
        accepted[list(late)] = True
        taken = np.flatnonzero(accepted)
        self._stage_rows(n, batch, taken, staged, late)
        self.counts[n].accepted += len(taken)
        self.counts[n].quarantined += len(events) + len(refused)
        # The HMACs' input, for the rows quarantined by where or why only (no values kept).
        joined = batch.joined_at(sorted({*refused.tolist(), *(p[0] for _, kind, p in events if kind == 3 or (
            kind == 1 and p[1][0] == NO_CONSENT))}))
        if not events:  # only refusals: written in one go, in line order (rows are)
            self._refused(reader, batch.lines[refused], refused, refusal, refusals, joined)
            return
        if len(refused):
            events += [(int(batch.lines[row]), 1, (row, (NO_CONSENT, refusals[code][1], refusals[code][0])))
                       for row, code in zip(refused.tolist(), refusal[refused].tolist())]
        events.sort(key=lambda e: e[0])
        full = sorted({p[0] for _, kind, p in events if kind == 2 or (kind == 1 and p[1][0] != NO_CONSENT)} - set(records))
        records.update(zip(full, batch.records(full)))
        for line, kind, payload in events:
            self._quarantine(reader, line, kind, payload, records, joined)

    def _not_accepted(self, n: int, batch: Batch, pending: np.ndarray, keep: np.ndarray, no_block: dict[int, str],
                      bound: np.ndarray | None, refusal: np.ndarray | None
                      ) -> tuple[list[tuple[int, int, Any]], np.ndarray, dict[int, list[str]], dict[int, dict[str, Any]]]:
        """The rows of the run the columns did not accept (`pending`), each under the first rule
        it fails, in _chunk's order: (events to quarantine, in any order: the ragged lines and
        every kind but consent refusals; the refused rows, an array; the whole records read for
        `check`; the rows `check` accepts after all -> their staged values)."""
        lines, window = batch.lines, self.in_window[n]
        # Quarantine rows in line order: the ragged lines sit among the chunk's records.
        events: list[tuple[int, int, Any]] = [(line, 0, (raw_fields, why)) for line, raw_fields, why in batch.ragged]
        decided = np.zeros(len(pending), dtype=bool)
        if no_block:
            decided = np.isin(pending, np.fromiter(no_block, dtype=np.int64))
            events += [(int(lines[row]), 2, (row, no_block[row])) for row in pending[decided].tolist()]
        if bound is not None:
            over = (bound[pending] != KEEP) & ~decided
            for row in pending[over].tolist():
                reason = self.bound.over_reason() if bound[row] == OVER else self.bound.unknown_reason()
                events.append((int(lines[row]), 3, (row, reason)))
            decided |= over
        untimed = (keep[pending] < 0) & ~decided
        events += [(int(lines[row]), 1, (row, keep_invalid(window))) for row in pending[untimed].tolist()]
        decided |= untimed
        refused = np.zeros(0, dtype=np.int64)
        if refusal is not None:
            is_refused = (refusal[pending] >= 0) & ~decided
            refused = pending[is_refused]
            decided |= is_refused
        to_check = pending[~decided].tolist()
        records = dict(zip(to_check, batch.records(to_check)))
        late: dict[int, dict[str, Any]] = {}
        for row in to_check:
            result = self.checkers[n].check(records[row])
            if isinstance(result, tuple):
                events.append((int(lines[row]), 1, (row, result)))
            else:
                late[row] = result
        return events, refused, records, late

    def _stage_rows(self, n: int, batch: Batch, taken: np.ndarray, staged: dict[str, Any],
                    late: dict[int, dict[str, Any]]) -> None:
        """Split the accepted rows `taken`, append them to the snapshots and their canonical text
        to the content hash's (the test rows' kept for after the training rows')."""
        if n == 1:
            test = np.ones(len(taken), dtype=bool)
        elif self.ds.test_source is not None:
            test = np.zeros(len(taken), dtype=bool)
        else:
            test = self._are_test(n, batch, taken)
        for part, where in ((self.train, ~test), (self.test, test)):
            rows = taken[where]  # each partition's rows taken from the batch at once, not twice
            mine = {r: v for r, v in late.items() if where[np.searchsorted(taken, r)]}  # late rows are in taken
            columns = self._staged(n, batch, rows, staged, mine)
            part.write(columns, len(rows))
            if len(rows):
                text = _canonical_columns([columns[c] for c in self.columns])
                if text is None:  # not expected for a snapshot's columns
                    listed = [v.tolist() if isinstance(v, np.ndarray) else v.to_pylist()
                              for v in (columns[c] for c in self.columns)]
                    text = _canonical_rows(zip(*listed)).encode("utf-8")
                if part is self.train:
                    self.train_hash.update(text)
                else:
                    self.test_text.write(text)

    def _refused(self, reader, lines: np.ndarray, rows: np.ndarray, refusal: np.ndarray | None,
                 refusals: list[tuple[str, str]], joined: dict[int, bytes]) -> None:
        """Rows refused by their consent values (what _quarantine does for each), together."""
        if not len(rows):
            return
        codes = refusal[rows]
        self.q.refused_many(reader.path, lines.tolist(), [refusals[c][1] for c in codes.tolist()],
                            [joined[r] for r in rows.tolist()])
        self.reasons[NO_CONSENT] += len(rows)
        for code, count in zip(*np.unique(codes, return_counts=True)):
            self.refusals[refusals[code][0]] += int(count)

    def _staged(self, n: int, batch: Batch, taken: np.ndarray, staged: dict[str, Any],
                late: dict[int, dict[str, Any]]) -> dict[str, Any]:
        """The snapshot columns of the accepted rows `taken` (ascending): from the columns' staged
        values, with those of the rows `check` accepted (`late`, some of `taken`) put in their
        places."""
        import pyarrow as pa
        import pyarrow.compute as pc

        checker = self.checkers[n]
        at = np.searchsorted(taken, np.asarray(sorted(late), dtype=np.int64))
        mask = np.zeros(len(taken), dtype=bool)
        mask[at] = True
        rows = [late[r] for r in sorted(late)]
        out: dict[str, Any] = {}
        for name, value in staged.items():
            if isinstance(value, np.ndarray):
                column = value[taken]
                if rows:
                    column[at] = [r[name] for r in rows]
            else:
                column = value.take(pa.array(taken))
                if rows:
                    column = pc.replace_with_mask(column, pa.array(mask), pa.array([r[name] for r in rows], pa.string()))
            out[name] = column
        for name, i in checker.pseudonyms:
            # pseudonym() of the raw value, as `check` computes it, once per distinct value.
            codes, distinct = by_value(batch.column(i).take(pa.array(taken)))
            out[name] = pa.array([pseudonym(checker.key, v) for v in distinct], pa.string()).take(pa.array(codes))
        return out

    def _are_test(self, n: int, batch: Batch, rows: np.ndarray) -> np.ndarray:
        """The split hash's verdict for each of `rows` (ppmlops.privacy.split)."""
        import pyarrow as pa

        if self.bound is not None:  # by person: all of a person's rows in one partition (parallel composition)
            ids = batch.column(self.person_at[n]).take(pa.array(rows)).to_pylist()
            return self.split.are_test([UNIT.join([p.strip()]).encode("utf-8") for p in ids])
        hashes = batch.split_hashes(self.split.hashes, self.split.line_hashes)
        return self.split.verdicts(hashes if len(rows) == len(hashes) else hashes[rows])

    def _quarantine(self, reader, line: int, kind: int, payload, records: dict[int, list[str]],
                    joined: dict[int, bytes]) -> None:
        """One quarantined row: `records` holds the whole records of the rows whose values are
        kept (kind 2 and kind 1 but a refusal), `joined` the joined fields of the rest (for their
        HMAC)."""
        if kind == 0:
            fields, why = payload
            self.q.malformed(reader.path, line, why, fields)
            if self.bound is not None:  # whose line it is cannot be known: no bound, so in no release
                self.unattributed += 1
            else:
                self.reasons[MALFORMED_LINE] += 1
            return
        if kind == 3:  # dropped by the per-person bound: quarantined, private, in no release
            row, reason = payload
            # Where, why and the HMAC only: the bound runs before the consent check, so the
            # row's owner may have refused, and its values must not be kept then.
            self.q.refused_joined(reader.path, line, reason, joined[row])
            return
        if kind == 2:  # outside every open privacy block: quarantined, kept out of self.reasons (released)
            row, reason = payload
            self.q.invalid(reader.path, line, reason, reader.header, records[row])
            self.outside_blocks += 1
            return
        row, (category, reason, rule) = payload
        if category == NO_CONSENT:
            self.q.refused_joined(reader.path, line, reason, joined[row])
        else:
            self.q.invalid(reader.path, line, reason, reader.header, records[row])
        self.reasons[category] += 1
        if rule:
            self.refusals[rule] += 1

    def _reconcile(self) -> None:
        rows_in = sum(r.rows_in for r in self.readers)
        rows_staged = self.train.rows + self.test.rows
        if (rows_in != rows_staged + self.q.rows + self.outside
                or sum(self.reasons.values()) != self.q.rows - self.outside_blocks - self._unreleased()
                or sum(self.refusals.values()) != self.reasons.get(NO_CONSENT, 0)):
            raise DataError(f"{self.ds.id}: internal error, rows do not reconcile: {rows_in} read, {rows_staged} "
                            f"staged, {self.q.rows} quarantined")
        for name, part in (("training", self.train), ("test", self.test)):
            if not part.rows:
                raise DataError(f"{self.ds.id}: no rows left for the {name} partition after quarantine "
                                f"({dict(self.reasons)}); see {self.quarantine_path}")

    def _unreleased(self) -> int:
        """Quarantined rows the person bound keeps out of every release."""
        if self.bound is None:
            return 0
        return self.bound.dropped + self.bound.unknown + self.unattributed

    def _sha256(self) -> str:
        h = self.train_hash
        h.update(_canonical_part("test", self.columns).encode("utf-8"))
        with self.test_text as text:
            text.seek(0)
            for block in iter(lambda: text.read(1 << 22), b""):
                h.update(block)
        return h.hexdigest()

    def result(self, expired: list[str]) -> IngestResult:
        ds, readers = self.ds, self.readers
        staged = set(self.columns)
        dropped: list[str] = []
        for r in readers:
            dropped.extend(c for c in r.header if c not in staged and c not in dropped)
        split = (f"test_source {readers[1].path}" if ds.test_source is not None
                 else f"keyed hash of each row (seed {self.spec.training.seed}), test fraction {self.fraction:g}")
        if self.bound is not None:
            split = (f"keyed hash of each person's {self.bound.column} (seed {self.spec.training.seed}), "
                     f"test fraction {self.fraction:g}")
        if ds.test_source is None:
            split += f", rule {self.split.rule} ({self.split.describe()})"
        return IngestResult(
            dataset_id=ds.id, rows_in=sum(r.rows_in for r in readers),
            rows_staged=self.train.rows + self.test.rows, rows_train=self.train.rows, rows_test=self.test.rows,
            rows_quarantined=self.q.rows, quarantine_reasons=dict(sorted(self.reasons.items())),
            snapshot_train=str(self.train.path), snapshot_test=str(self.test.path),
            quarantine_path=str(self.quarantine_path), sha256=self._sha256(), source_sha256=source_sha256(readers),
            columns=self.columns, dropped_columns=dropped,
            sources=[
                {"path": str(r.path), "format": r.format, "sha256": r.sha256, "rows_in": r.rows_in,
                 "rows_accepted": c.accepted, "rows_quarantined": c.quarantined}
                | ({"encoding": r.encoding, "delimiter": r.delimiter} if r.format == "csv" else {})
                | ({"labels": str(r.labels)} if r.format == "npz" and r.labels is not None else {})
                | (r.describe() if r.format == "sql" else {})
                for r, c in zip(readers, self.counts)
            ],
            split=split, split_rule=self.split.rule, consent_refusals=dict(sorted(self.refusals.items())),
            consent_as_of=self.as_of.isoformat() if ds.consent is not None else "",
            pseudonymized={c: pseudonym_column(c) for c in ds.pseudonymize},
            quarantine_retention_days=self.retention, quarantine_expired=expired,
            window=_describe_window(self.window, self.selected), rows_outside_window=self.outside,
            rows_outside_open_blocks=self.outside_blocks, retired_blocks=list(self.retired),
            rows_over_person_limit=self.bound.dropped if self.bound is not None else 0,
            rows_without_person=(self.bound.unknown + self.unattributed) if self.bound is not None else 0,
            quarantine_withheld=dict(self.q.withheld),
            quarantine_cells_withheld={c: dict(sorted(k.items())) for c, k in sorted(self.q.cells_withheld.items())},
            renamed_columns=self.renamed,
        )
