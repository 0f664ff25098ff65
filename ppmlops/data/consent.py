"""Consent rules on one record: the flag, the consented purposes and the expiry date.

A row may be used only if every configured rule holds (see ppmlops.spec.Consent). Each refusal
has a kind, for counting (`flag`, `purpose`, `expired`), and a reason naming the column and the
value, for the quarantine file. The run's date (`as_of`) is passed in rather than read from the
clock inside, so a backfill judges expiry on its own date and a test on a fixed one.
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import date, datetime, timezone
from itertools import compress
from operator import itemgetter
from pathlib import Path
from typing import Sequence

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
        col, i, granted = self.flag
        if rec[i].strip().lower() not in granted:
            return FLAG, f"column {col}: {rec[i]!r} does not grant consent"
        if self.purposes is not None:
            col, i, wanted = self.purposes
            given = {p.strip().lower() for p in _SPLIT.split(rec[i]) if p.strip()}
            if wanted not in given:
                listed = f"{rec[i]!r}" if rec[i].strip() else "no purpose"
                return PURPOSE, f"column {col}: {listed} does not include the purpose {self.consent.purpose!r}"
        if self.expiry is not None:
            col, i = self.expiry
            text = rec[i].strip()
            if not text:
                if self.consent.expiry_required:
                    return EXPIRED, f"column {col}: no expiry date, and the spec requires one"
            else:
                until = parse_expiry(text)
                if until is None:
                    return EXPIRED, f"column {col}: {rec[i]!r} is not an ISO 8601 date (YYYY-MM-DD)"
                if until < self.as_of:
                    return EXPIRED, f"column {col}: consent expired on {until.isoformat()} (run date {self.as_of.isoformat()})"
        return None


    def split(self, records: list[Sequence[str]]) -> tuple[list[Sequence[str]], dict[str, int]]:
        """The records that may be used, and the refusals by rule, for a whole chunk at once."""
        col, i, granted = self.flag
        if self.purposes is None and self.expiry is None:
            # The flag alone: decided without building a reason per row.
            flags = [v.strip().lower() in granted for v in map(itemgetter(i), records)]
            kept = list(compress(records, flags))
            refused = len(records) - len(kept)
            return kept, ({FLAG: refused} if refused else {})
        kept, counts = [], Counter()
        for rec in records:
            refused = self.check(rec)
            if refused is None:
                kept.append(rec)
            else:
                counts[refused[0]] += 1
        return kept, dict(counts)


def today() -> date:
    """The run date when none is given: today in UTC, so every worker agrees on it."""
    return datetime.now(timezone.utc).date()
