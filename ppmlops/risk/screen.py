"""The identifier screen for ingestion's quarantine file, by PRAM's own detectors.

Quarantined rows keep the columns the spec does not declare, so that a bad row can be found
and fixed; a direct identifier must not ride along because the spec forgot it, or spelt it
differently from the file. ppmlops.data.quarantine asks two questions, answered here:

- column: does the column read as a direct identifier, by its name or by a sample of its
  values? Exactly the risk scan's judgement (ppmlops.risk.classify.classify_columns, with its
  name rules, value detectors and dismissals), so a column the scan would flag is withheld;
- value: is one cell (of a column kept) an identifier, or does its text hold one?
  (ppmlops.risk.detectors.classify, then find for free text.)

The data package cannot import this one (the risk package builds on it); the ingest stage
hands it in.
"""

from __future__ import annotations

from typing import Sequence

from ppmlops.risk import detectors
from ppmlops.risk.categories import DIRECT, VALUE_KIND_CATEGORY, name_hints
from ppmlops.risk.classify import classify_columns


class DirectIdentifierScreen:
    """ppmlops.data.quarantine.IdentifierScreen by the risk scan's detectors."""

    def column(self, name: str, values: Sequence[str]) -> str | None:
        found = classify_columns([name], {name: list(values)}, set()).findings
        direct = next((f for f in found if f["category"] == DIRECT), None)
        if direct is None:
            return None
        by = " and ".join(dict.fromkeys(b.split(" (")[0] for b in direct["detected_by"]))
        return f"looks like a direct identifier ({direct['description']}) by its {by}"

    def value(self, name: str, value: str) -> str | None:
        kind = detectors.classify(value, name_hints(name))
        if kind is not None and VALUE_KIND_CATEGORY.get(kind) == DIRECT:
            return kind
        for kind, _ in detectors.find(value):
            if VALUE_KIND_CATEGORY.get(kind) == DIRECT:
                return kind
        return None
