"""Consent rules on one record: the flag, the consented purposes and the expiry date.

A row may be used only if every configured rule holds (see ppmlops.spec.Consent). Each refusal
has a kind, for counting (`flag`, `purpose`, `expired`), and a reason naming the column and the
value, for the quarantine file. The run's date (`as_of`) is passed in rather than read from the
clock inside, so a backfill judges expiry on its own date and a test on a fixed one.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ppmlops.spec import Consent

FLAG, PURPOSE, EXPIRED = "flag", "purpose", "expired"
KINDS = (FLAG, PURPOSE, EXPIRED)

_SPLIT = re.compile(r"[,;|]")
_ISO_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?",
                       re.ASCII)  # ISO 8601 digits are ASCII


def parse_expiry(text: str) -> date | None:
    """The date of an ISO 8601 date or datetime; None if it is not one."""
    m = _ISO_DATE.fullmatch(text.strip())
    if not m:
        return None
    try:
        return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return None


class ConsentRules:
    """The spec's consent rules with column positions resolved for one file's header."""

    def __init__(self, consent: Consent, header: Sequence[str], as_of: date, path: Path | str = "<source>"):
        missing = [c for c in consent.columns() if c not in header]
        if missing:
            from ppmlops.data.reading import missing_columns

            raise missing_columns(Path(path), [(c, "consent") for c in missing], header)
        self.consent = consent
        self.as_of = as_of
        self.flag = (consent.column, list(header).index(consent.column), {g.strip().lower() for g in consent.granted})
        self.purposes = (consent.purposes_column, list(header).index(consent.purposes_column),
                         consent.purpose.strip().lower()) if consent.purposes_column else None
        self.expiry = (consent.expiry_column, list(header).index(consent.expiry_column)) if consent.expiry_column else None

    def check(self, rec: Sequence[str]) -> tuple[str, str] | None:
        """None if the row may be used, else (kind, reason)."""
        for index, rule in self._rules():
            refused = rule(rec[index])
            if refused is not None:
                return refused
        return None

    def refusals(self, column: Callable[[int], Any], rows: int) -> tuple[np.ndarray, list[tuple[str, str]]]:
        """`check` for a whole batch, given its columns by header position (pyarrow string
        arrays): per row an index into the returned (kind, reason) list, or -1 where the row may
        be used. Each rule reads one column, so it is judged once per distinct value there, and
        a row's refusal is its first rule's that fails, as in `check`."""
        from ppmlops.data.reading import by_value

        out = np.full(rows, -1, dtype=np.int64)
        found: list[tuple[str, str]] = []
        for index, rule in self._rules():
            codes, values = by_value(column(index))
            verdict = np.full(len(values), -1, dtype=np.int64)
            for k, value in enumerate(values):
                refused = rule(value)
                if refused is not None:
                    verdict[k] = len(found)
                    found.append(refused)
            if (verdict >= 0).any():
                per_row = verdict[codes]
                first = (out < 0) & (per_row >= 0)
                out[first] = per_row[first]
        return out, found

    def columns(self) -> list[int]:
        """The header positions the rules read."""
        return [index for index, _ in self._rules()]

    def _rules(self) -> list[tuple[int, Callable[[str], tuple[str, str] | None]]]:
        rules = [(self.flag[1], self._flag)]
        if self.purposes is not None:
            rules.append((self.purposes[1], self._purpose))
        if self.expiry is not None:
            rules.append((self.expiry[1], self._expiry))
        return rules

    def _flag(self, value: str) -> tuple[str, str] | None:
        col, _, granted = self.flag
        if value.strip().lower() not in granted:
            return FLAG, f"column {col}: {value!r} does not grant consent"
        return None

    def _purpose(self, value: str) -> tuple[str, str] | None:
        col, _, wanted = self.purposes
        given = {p.strip().lower() for p in _SPLIT.split(value) if p.strip()}
        if wanted not in given:
            listed = f"{value!r}" if value.strip() else "no purpose"
            return PURPOSE, f"column {col}: {listed} does not include the purpose {self.consent.purpose!r}"
        return None

    def _expiry(self, value: str) -> tuple[str, str] | None:
        col, _ = self.expiry
        text = value.strip()
        if not text:
            if self.consent.expiry_required:
                return EXPIRED, f"column {col}: no expiry date, and the spec requires one"
            return None
        until = parse_expiry(text)
        if until is None:
            return EXPIRED, f"column {col}: {value!r} is not an ISO 8601 date (YYYY-MM-DD)"
        if until < self.as_of:
            return EXPIRED, f"column {col}: consent expired on {until.isoformat()} (run date {self.as_of.isoformat()})"
        return None


def today() -> date:
    """The run date when none is given: today in UTC, so every worker agrees on it."""
    return datetime.now(timezone.utc).date()
