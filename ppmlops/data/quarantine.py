"""The quarantine file: every row ingestion could not or may not use, minimised.

Each run writes `quarantine.csv` in its run folder so that a person can see what was left out
and why. It keeps no more than that needs:

- every row: `_source` (file), `_line` (1-based line, or row for Parquet), `_reason`, and
  `_record_hmac`, a keyed HMAC-SHA256 of the record's fields, to trace a row across runs and
  files without keeping it (HMAC, not a plain hash: identifiers are guessable, so a plain hash
  of a record could be matched against candidates);
- rows whose owner did not consent: nothing else. The person refused; the run keeps only that
  it refused their row;
- other well-formed rows (a bad value, label or category): their columns except the spec's
  direct identifiers (`dataset.identifiers`, pseudonymized ones included), so the bad value can
  be found and fixed; a cell is cut at CELL_LIMIT characters, which keeps every row readable by
  Python's csv module at its default field limit (128 KiB);
- columns the spec does not declare are screened (an IdentifierScreen, given by the caller:
  ppmlops.risk.screen by PRAM's detectors in a pipeline run): one whose name or sampled values
  look like a direct identifier is left out (`withheld`: column -> why, by name only), and in
  the others a cell whose value a detector classifies as a direct identifier is written as
  WITHHELD_CELL instead (`cells_withheld`: column -> kind -> count). Without a screen, no
  undeclared column is kept at all;
- lines that could not be split into the header's columns: `_fields`, how many fields the line
  had; never its text, which holds the identifiers too.

The HMAC key is the pseudonymization key when it is configured (the environment variable the
spec names, default PPMLOPS_PSEUDONYM_KEY), else a per-dataset random key created once under
PPMLOPS_HOME/keys/ with mode 0600. Either way with its own domain-separation prefix, so these
MACs never equal the staged pseudonyms.

Retention: at each ingest, the quarantine files of the same dataset's earlier runs in the same
pipeline's runs folder that are older than PPMLOPS_QUARANTINE_RETENTION_DAYS (default 30; 0
removes every earlier one) are deleted, so refused rows are not kept a copy per run forever.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import os
import time
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Protocol, Sequence

from ppmlops.data.pseudonymize import MIN_KEY_BYTES
from ppmlops.data.keys import dataset_key
from ppmlops.errors import DataError

FILE_NAME = "quarantine.csv"
META_COLUMNS = ("_source", "_line", "_reason", "_record_hmac", "_fields")
CELL_LIMIT = 10_000
RETENTION_ENV = "PPMLOPS_QUARANTINE_RETENTION_DAYS"
DEFAULT_RETENTION_DAYS = 30
_CONTEXT = b"ppmlops-quarantine-v1\x00"


WITHHELD_CELL = "[withheld: looks like {kind}]"


class IdentifierScreen(Protocol):
    """Decides which values of columns the spec does not declare may be kept in quarantine."""

    def column(self, name: str, values: Sequence[str]) -> str | None:
        """Why the column looks like a direct identifier (by its name or these sampled values,
        said without quoting any), or None."""

    def value(self, name: str, value: str) -> str | None:
        """The kind of direct identifier `value` is or contains (e.g. "email"), or None."""


class WithholdUndeclared:
    """The screen when none is given: no undeclared column is kept (nothing judged them)."""

    def column(self, name: str, values: Sequence[str]) -> str | None:
        return "no identifier screen was given to judge it"

    def value(self, name: str, value: str) -> str | None:
        return None


def hmac_key(dataset_id: str, key_env: str, home: Path) -> bytes:
    """The key for `_record_hmac`: the pseudonym key if set (and long enough), else the dataset's
    own key file under `home`/keys, created with 0600 on first use."""
    configured = os.environ.get(key_env, "").encode("utf-8")
    if len(configured) >= MIN_KEY_BYTES:
        return configured
    return dataset_key(home, dataset_id, "quarantine", what="quarantine key",
                       fix=f"set {key_env} or fix the folder's permissions")


def record_hmac(key: bytes, fields: Sequence[str]) -> str:
    return hmac.new(key, _CONTEXT + "\x1f".join(fields).encode("utf-8"), hashlib.sha256).hexdigest()


class _RecordMacs:
    """record_hmac of many records: HMAC-SHA256 (RFC 2104) from two SHA-256 states prepared once
    (the key padded and XORed with ipad, then the prefix; the key XORed with opad), copied per
    record. The same MACs as hmac.new, at half the cost a row: hmac's Python wrapper, not
    SHA-256, dominates for records of a hundred bytes."""

    def __init__(self, key: bytes):
        block = hashlib.sha256().block_size
        if len(key) > block:
            key = hashlib.sha256(key).digest()
        key = key.ljust(block, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key) + _CONTEXT)
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def hexdigests(self, joined: Sequence[bytes]) -> Iterator[str]:
        """The MAC of each record given as its fields joined by \\x1f in UTF-8."""
        inner, outer = self._inner.copy, self._outer.copy
        for record in joined:
            i = inner()
            i.update(record)
            o = outer()
            o.update(i.digest())
            yield o.hexdigest()


def _csv_cell(value: str) -> str:
    """One cell as csv.writer (this writer's dialect) writes it within a row of several."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([value, ""])
    return buf.getvalue()[:-2]


def _cell(value: str) -> str:
    if len(value) <= CELL_LIMIT:
        return value
    return value[:CELL_LIMIT] + f"...[{len(value) - CELL_LIMIT} more characters cut]"


def _around(cells: list[str], *at: int) -> tuple[str, str, str]:
    """The text of a row of `cells` before, between and after the two cells at `at` (either order),
    with their commas: a refused row is written by putting its line and MAC in between."""
    a, b = sorted(at)
    return (",".join(cells[:a]) + ("," if a else ""), "," + ",".join(cells[a + 1:b]) + ("," if b > a + 1 else ""),
            ("," if b + 1 < len(cells) else "") + ",".join(cells[b + 1:]))


class QuarantineWriter:
    """Streams quarantined rows to `path` (written next to it, moved in place by `commit`)."""

    def __init__(self, path: Path, headers: Sequence[Sequence[str]], identifiers: Sequence[str], key: bytes,
                 withheld: Mapping[str, str] | None = None, screened: Iterable[str] = (),
                 screen: IdentifierScreen | None = None):
        """`withheld`: columns left out (-> why); `screened`: columns whose every cell `screen`
        checks before it is written."""
        self.path = path
        self.withheld = dict(withheld or {})
        dropped = set(identifiers) | set(self.withheld)
        self.columns: list[str] = []
        for header in headers:
            self.columns.extend(c for c in header if c not in self.columns and c not in dropped)
        self.columns.extend(c for c in META_COLUMNS if c not in self.columns)
        self._screened = [c for c in screened if c in self.columns] if screen is not None else []
        self._screen = screen
        self.cells_withheld: dict[str, Counter] = {}
        self._key = key
        self._macs = _RecordMacs(key)
        self._refused: dict[tuple[str, str], tuple[str, str, str]] = {}  # (source, reason) -> see _around
        self._tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self._fh = open(self._tmp, "w", encoding="utf-8", newline="")
        self._csv = csv.writer(self._fh, lineterminator="\n")
        self._csv.writerow(self.columns)
        self._at_line, self._at_mac = self.columns.index("_line"), self.columns.index("_record_hmac")
        self.rows = 0

    def refused(self, source: Path, line: int, reason: str, record: Sequence[str]) -> None:
        """A row whose owner did not consent: where, why and its HMAC only."""
        self._row(source, line, reason, record_hmac(self._key, record), {})

    def refused_joined(self, source: Path, line: int, reason: str, joined: bytes) -> None:
        """`refused` for a record given as its fields joined by \\x1f in UTF-8 (what record_hmac
        hashes after its prefix): the same row."""
        self.refused_many(source, [line], [reason], [joined])

    def refused_many(self, source: Path, lines: Sequence[int], reasons: Sequence[str], joined: Sequence[bytes]) -> None:
        """refused_joined for several rows of one source, in the order given. Refusals are many
        and alike: a row is the same cells but for its line and MAC (digits and hex, which csv
        never quotes), so each (source, reason) is rendered by csv once."""
        out = []
        source = str(source)
        for line, reason, mac in zip(lines, reasons, self._macs.hexdigests(joined)):
            around = self._refused.get((source, reason))
            if around is None:
                if len(self._refused) >= 4096:  # a reason per value of a free-text column: keep memory bounded
                    self._refused.clear()
                values = {"_source": source, "_line": "", "_reason": reason, "_record_hmac": ""}
                cells = [_csv_cell(_cell(values[c])) if c in values else "" for c in self.columns]
                around = self._refused[(source, reason)] = _around(cells, self._at_line, self._at_mac)
            first, middle, last = around
            out.append(f"{first}{line}{middle}{mac}{last}" if self._at_line < self._at_mac
                       else f"{first}{mac}{middle}{line}{last}")
        if out:
            self._fh.write("\n".join(out) + "\n")
            self.rows += len(out)

    def invalid(self, source: Path, line: int, reason: str, header: Sequence[str], record: Sequence[str]) -> None:
        """A well-formed row with a bad value: its non-identifier columns are kept."""
        values = dict(zip(header, record))
        for column in self._screened:
            kind = self._screen.value(column, values[column]) if values.get(column) else None
            if kind is not None:
                values[column] = WITHHELD_CELL.format(kind=kind)
                self.cells_withheld.setdefault(column, Counter())[kind] += 1
        self._row(source, line, reason, record_hmac(self._key, record), values)

    def malformed(self, source: Path, line: int, reason: str, fields: Sequence[str]) -> None:
        """A line with the wrong number of fields: its field count, never its text."""
        self._row(source, line, reason, record_hmac(self._key, fields), {"_fields": str(len(fields))})

    def _row(self, source: Path, line: int, reason: str, mac: str, values: dict[str, str]) -> None:
        values |= {"_source": str(source), "_line": str(line), "_reason": reason, "_record_hmac": mac}
        self._csv.writerow([_cell(values[c]) if c in values else "" for c in self.columns])
        self.rows += 1

    def commit(self) -> None:
        self._fh.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._fh.close()
        self._tmp.unlink(missing_ok=True)


def retention_days() -> int:
    raw = os.environ.get(RETENTION_ENV, "").strip()
    if not raw:
        return DEFAULT_RETENTION_DAYS
    try:
        days = int(raw)
    except ValueError:
        days = -1
    if days < 0:
        raise DataError(f"{RETENTION_ENV} must be a whole number of days >= 0 (0: keep only the newest run's "
                        f"quarantine), not {raw!r}")
    return days


def expire(folders: Iterable[Path], days: int, now: float | None = None) -> list[str]:
    """Delete the quarantine files in `folders` (earlier runs of the same dataset, chosen by the
    caller, which knows the run layout) older than `days`; return their paths."""
    now = time.time() if now is None else now
    removed = []
    for folder in folders:
        target = Path(folder) / FILE_NAME
        try:
            if not target.is_file() or now - target.stat().st_mtime < days * 86400:
                continue
            target.unlink()
        except OSError:
            continue  # already gone
        removed.append(str(target))
    return removed
