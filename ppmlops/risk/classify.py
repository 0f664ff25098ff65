"""Column findings: what a column's name, its sampled values and the spec's declarations say.

Per column and category (direct identifier, quasi-identifier, special category) there is at
most one finding. The evidence:

- name: ppmlops.risk.categories.NAME_RULES on the normalized column name;
- values, structured column: every sampled non-empty value is classified
  (ppmlops.risk.detectors.classify, with what the name admits, e.g. nine bare digits under an
  SSN name); the column is a direct identifier when at least half its values are direct
  identifiers of some kind (the kind reported is the most frequent; `kinds` gives each share),
  a quasi-identifier when at least half are dates (a date of birth when the name says so or
  the dates read as birth dates: in the past, implied ages 0-115 for 90 % of them, median age
  at least 16, ages spread over 5 years or more) or postal codes; a special category (or sex)
  when at least 60 % of a low-cardinality column's values are words of one vocabulary of
  ppmlops.risk.vocabulary and at least one of its distinctive words occurs; data concerning
  health (kind `health`) when at least half its values are medical codes (ICD-10, ICD-9, CPT/
  HCPCS, NDC: ppmlops.risk.detectors.health_code, with what the name admits);
- values, free-text column (median of 4 or more words of letters per value): each value is searched
  (ppmlops.risk.detectors.find); the column is a direct identifier (kind `free_text`) when a
  direct kind occurs in at least FREE_TEXT_MIN_ROWS sampled values and in at least
  FREE_TEXT_MIN_SHARE of them;
- declarations: `identifiers` make a column a direct identifier unless it is detected (or
  declared) as a quasi-identifier, such as a postal code kept out of training; declaring a
  column a quasi-identifier or special category overrides a direct-identifier detection;
  `not_sensitive` overrides every detection. Overridden detections are listed in the report.

A name-only direct-identifier detection is dismissed (and listed as such) when the values
contradict it: 50 or more sampled values, none of them an identifier of any kind, and fewer
than 5 % distinct (an identifier is nearly unique; `is_mobile` with two values is not a phone).

Confidence: 1.0 declared; values alone STRENGTH[kind] x (0.5 + share / 2); name alone 0.6 for a
direct identifier, 0.8 for the other categories (for those the name is the main evidence); name
and values together 1 - (1 - name) x (1 - values).
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Iterable, Sequence

from ppmlops.data.suites import mask_value
from ppmlops.risk import detectors
from ppmlops.risk.categories import (
    DIRECT, HIPAA_IDENTIFIERS, QUASI, SPECIAL, VALUE_KIND_CATEGORY, kind_info, name_hints, name_matches, normalize,
)
from ppmlops.risk.vocabulary import SPECIAL_VOCABULARIES

_LETTER_WORD = re.compile(r"[^\W\d_]{2,}")
VALUE_SHARE_THRESHOLD = 0.5
VOCABULARY_SHARE_THRESHOLD = 0.6
VOCABULARY_MAX_DISTINCT = 50
FREE_TEXT_MIN_WORDS = 4
FREE_TEXT_MIN_ROWS = 2
FREE_TEXT_MIN_SHARE = 0.01
DISMISS_MIN_VALUES = 50
DISMISS_MAX_DISTINCT_RATIO = 0.05
MAX_EXAMPLES = 3
NAME_CONFIDENCE = {DIRECT: 0.6, QUASI: 0.8, SPECIAL: 0.8}
STRENGTH = {
    "email": 0.97, "iban": 0.99, "credit_card": 0.97, "ssn": 0.9, "ipv4": 0.9, "ipv6": 0.95, "phone": 0.85,
    "address": 0.8, "name": 0.8, "date": 0.8, "birth_date": 0.85, "postal_code": 0.8, "free_text": 0.8,
    "health": 0.85,
}
VOCABULARY_STRENGTH = 0.7

# A name rule's kind and the value kinds that confirm it (the more specific value kind is reported).
_CONFIRMS = {
    "ip_address": {"ipv4", "ipv6"}, "fax": {"phone"}, "account_number": {"iban", "credit_card"},
    "iban": {"iban"}, "credit_card": {"credit_card"}, "email": {"email"}, "phone": {"phone"},
    "ssn": {"ssn"}, "name": {"name"}, "address": {"address"},
}
# Special-category vocabularies that also make a column a quasi-identifier.
_VOCABULARY_QUASI = {"sex": "sex", "race": "race"}


@dataclass(frozen=True)
class Declarations:
    identifiers: frozenset[str] = frozenset()
    quasi_identifiers: frozenset[str] = frozenset()
    special_categories: frozenset[str] = frozenset()
    not_sensitive: frozenset[str] = frozenset()
    pseudonymized: frozenset[str] = frozenset()

    @classmethod
    def of_dataset(cls, ds: Any) -> "Declarations":
        return cls(frozenset(ds.identifiers), frozenset(ds.quasi_identifiers), frozenset(ds.special_categories),
                   frozenset(ds.not_sensitive), frozenset(ds.pseudonymize))


@dataclass
class _Evidence:
    kind: str
    by: list[str]
    share: float  # of the sampled non-empty values (values evidence) or sampled rows filled (name only)
    confidence: float
    matched: int = 0
    kinds: dict[str, float] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)


@dataclass
class Classification:
    findings: list[dict[str, Any]]
    overridden: list[dict[str, Any]]
    dismissed: list[dict[str, Any]]


def classify_columns(header: Iterable[str], sample: dict[str, list[str]], training_columns: set[str],
                     declarations: Declarations = Declarations(), as_of: date | None = None) -> Classification:
    as_of = as_of or date.today()
    out = Classification([], [], [])
    for column in header:
        raw = sample.get(column, [])
        values = [v.strip() for v in raw if v.strip()]
        found, dismissed = _detect(column, values, len(raw), as_of)
        out.dismissed.extend(dismissed)
        found, overridden = _apply_declarations(column, found, values, len(raw), declarations)
        out.overridden.extend(overridden)
        for category in (DIRECT, QUASI, SPECIAL):
            if category in found:
                out.findings.append(_finding(column, category, found[category], values, training_columns,
                                             declarations))
    return out


# ---------------------------------------------------------------------------------------------- detection


def _detect(column: str, values: list[str], rows: int, as_of: date) -> tuple[dict[str, _Evidence], list[dict]]:
    names = name_matches(column)
    hints = name_hints(column)
    filled = len(values) / rows if rows else 0.0
    found: dict[str, _Evidence] = {c: _Evidence(k, ["name"], filled, NAME_CONFIDENCE[c]) for c, k in names.items()}
    dismissed: list[dict] = []
    if not values:
        return found, dismissed

    # Count words with letters, so that a card number in groups of four is not mistaken for prose.
    free_text = statistics.median(
        sum(1 for t in v.split() if _LETTER_WORD.search(t)) for v in values[:2000]) >= FREE_TEXT_MIN_WORDS
    value_found = _free_text_evidence(values) if free_text else _structured_evidence(column, values, hints, as_of)
    for category, ev in value_found.items():
        named = found.get(category)
        if named is None:
            found[category] = ev
            continue
        confirms = ev.kind == named.kind or ev.kind in _CONFIRMS.get(named.kind, set()) or (
            named.kind == "birth_date" and ev.kind in ("date", "birth_date"))
        if confirms:
            kind = "birth_date" if named.kind == "birth_date" else ev.kind
            by, conf = ["name", "values"], 1 - (1 - named.confidence) * (1 - ev.confidence)
        elif category == DIRECT:
            # Identifier values are the stronger evidence: a "phone" column of e-mails holds e-mails.
            kind, by, conf = ev.kind, ["values", f"name ({named.kind})"], ev.confidence
        else:
            # A vocabulary is weaker evidence than the name for the other categories.
            kind, by, conf = named.kind, ["name", f"values ({ev.kind})"], named.confidence
        found[category] = _Evidence(kind, by, ev.share, round(conf, 4), ev.matched, ev.kinds, ev.examples)

    direct = found.get(DIRECT)
    if direct is not None and direct.by == ["name"] and len(values) >= DISMISS_MIN_VALUES:
        any_identifier = any(detectors.classify(v, hints) for v in values[:1000])
        distinct = len(set(values)) / len(values)
        if not any_identifier and distinct < DISMISS_MAX_DISTINCT_RATIO:
            del found[DIRECT]
            dismissed.append({
                "column": column, "category": DIRECT, "kind": direct.kind,
                "reason": (f"the name suggests {kind_info(DIRECT, direct.kind).description}, but none of "
                           f"{len(values)} sampled values is an identifier of any kind and only "
                           f"{len(set(values))} are distinct ({distinct:.1%}); an identifier is nearly unique"),
            })
    return found, dismissed


def _structured_evidence(column: str, values: list[str], hints: frozenset[str], as_of: date) -> dict[str, _Evidence]:
    n = len(values)
    # The detectors are functions of the value: each distinct value is judged once.
    kind_of = {v: detectors.classify(v, hints) for v in dict.fromkeys(values)}
    classified = [kind_of[v] for v in values]
    kinds = Counter(classified)
    kinds.pop(None, None)
    found: dict[str, _Evidence] = {}

    direct = {k: c for k, c in kinds.items() if VALUE_KIND_CATEGORY[k] == DIRECT}
    total = sum(direct.values())
    if direct and total / n >= VALUE_SHARE_THRESHOLD:
        kind = max(direct, key=lambda k: (direct[k], k))
        share = total / n
        matching = [v for v, k in zip(values, classified) if k in direct]
        found[DIRECT] = _Evidence(kind, ["values"], share, _values_confidence(kind, share), total,
                                  {k: round(c / n, 4) for k, c in sorted(direct.items())}, _examples(matching))

    for qkind in ("date", "postal_code"):
        count = kinds.get(qkind, 0)
        if count / n >= VALUE_SHARE_THRESHOLD:
            kind = qkind
            if qkind == "date":
                dates = [d for v in values if (d := detectors.parse_date(v)) is not None]
                if name_matches(column).get(QUASI) == "birth_date" or looks_like_birth_dates(dates, as_of):
                    kind = "birth_date"
            share = count / n
            matching = [v for v, k in zip(values, classified) if k == qkind]
            found[QUASI] = _Evidence(kind, ["values"], share, _values_confidence(kind, share), count,
                                     {qkind: round(share, 4)}, _examples(matching))
            break

    code_of = {v: detectors.health_code(v, hints) for v in kind_of}
    codes = [code_of[v] for v in values]
    code_kinds = Counter(c for c in codes if c)
    coded = sum(code_kinds.values())
    if coded / n >= VALUE_SHARE_THRESHOLD:
        share = coded / n
        found[SPECIAL] = _Evidence("health", ["values"], share, _values_confidence("health", share), coded,
                                   {k: round(c / n, 4) for k, c in sorted(code_kinds.items())},
                                   _examples(v for v, c in zip(values, codes) if c))
    distinct = set(v.lower() for v in values)
    if len(distinct) <= VOCABULARY_MAX_DISTINCT:
        for kind, vocab in SPECIAL_VOCABULARIES.items():
            tokens = {v: set(re.split(r"[^a-z]+", v)) - {""} for v in distinct}
            hits = [v for v in values if tokens[v.lower()] & vocab["terms"]]
            share = len(hits) / n
            if share >= VOCABULARY_SHARE_THRESHOLD and any(tokens[v] & vocab["distinctive"] for v in distinct):
                conf = round(VOCABULARY_STRENGTH * (0.5 + share / 2), 4)
                found.setdefault(SPECIAL, _Evidence(kind, ["values"], share, conf, len(hits), {kind: round(share, 4)}))
                if kind in _VOCABULARY_QUASI:
                    found.setdefault(QUASI, _Evidence(_VOCABULARY_QUASI[kind], ["values"], share, conf, len(hits),
                                                      {kind: round(share, 4)}))
                break
    return found


def _free_text_evidence(values: list[str]) -> dict[str, _Evidence]:
    n = len(values)
    rows: Counter = Counter()
    spans: list[str] = []
    for v in values:
        kinds = set()
        for kind, span in detectors.find(v):
            if VALUE_KIND_CATEGORY.get(kind) == DIRECT:
                kinds.add(kind)
                if len(spans) < 50:
                    spans.append(span)
        rows.update(kinds)
    kept = {k: c for k, c in rows.items() if c >= FREE_TEXT_MIN_ROWS and c / n >= FREE_TEXT_MIN_SHARE}
    if not kept:
        return {}
    with_any = sum(1 for v in values if any(VALUE_KIND_CATEGORY.get(k) == DIRECT and k in kept
                                            for k, _ in detectors.find(v)))
    share = with_any / n
    return {DIRECT: _Evidence("free_text", ["values (free text)"], share,
                              round(STRENGTH["free_text"] * (0.5 + min(1.0, share * 10) / 2), 4), with_any,
                              {k: round(c / n, 4) for k, c in sorted(kept.items())}, _examples(spans))}


def looks_like_birth_dates(dates: list[date], as_of: date) -> bool:
    if len(dates) < 5:
        return False
    ages = sorted((as_of - d).days / 365.25 for d in dates)
    plausible = sum(0 <= a <= 115 for a in ages) / len(ages)
    q1, median, q3 = ages[len(ages) // 4], ages[len(ages) // 2], ages[(3 * len(ages)) // 4]
    return plausible >= 0.9 and median >= 16 and q3 - q1 >= 5


def _values_confidence(kind: str, share: float) -> float:
    return round(STRENGTH.get(kind, 0.8) * (0.5 + share / 2), 4)


def _examples(values: Iterable[str]) -> list[str]:
    out: list[str] = []
    for v in dict.fromkeys(values):
        out.append(mask_value(v))
        if len(out) == MAX_EXAMPLES:
            break
    return out


# ---------------------------------------------------------------------------------------------- declarations


def _apply_declarations(column: str, found: dict[str, _Evidence], values: list[str], rows: int,
                        d: Declarations) -> tuple[dict[str, _Evidence], list[dict]]:
    overridden: list[dict] = []
    filled = len(values) / rows if rows else 0.0

    def override(category: str, declared: str) -> None:
        ev = found.pop(category)
        overridden.append({"column": column, "category": category, "kind": ev.kind, "detected_by": ev.by,
                           "share": round(ev.share, 4), "declared": declared})

    if column in d.not_sensitive:
        for category in list(found):
            override(category, "not_sensitive")
        return found, overridden
    if DIRECT in found and column not in d.identifiers and (
            column in d.quasi_identifiers or column in d.special_categories):
        override(DIRECT, "quasi_identifier" if column in d.quasi_identifiers else "special_category")
    if column in d.quasi_identifiers and QUASI not in found:
        found[QUASI] = _Evidence("declared", [], filled, 1.0)
    if column in d.special_categories and SPECIAL not in found:
        found[SPECIAL] = _Evidence("declared", [], filled, 1.0)
    if column in d.identifiers and DIRECT not in found and QUASI not in found:
        found[DIRECT] = _Evidence("declared", [], filled, 1.0)
    return found, overridden


def _finding(column: str, category: str, ev: _Evidence, values: list[str], training_columns: set[str],
             d: Declarations) -> dict[str, Any]:
    declared = (column in d.identifiers if category == DIRECT else
                column in d.quasi_identifiers or column in d.identifiers if category == QUASI else
                column in d.special_categories)
    by = list(ev.by) + (["declared"] if declared else [])
    examples = ev.examples
    if category == DIRECT and not examples:
        examples = _examples(values)
    info = kind_info(category, ev.kind)
    return {
        "column": column,
        "kind": ev.kind,
        "category": category,
        "in_features": column in training_columns,
        "declared": declared,
        "detected_by": by,
        "share": round(ev.share, 4),
        "confidence": 1.0 if declared else ev.confidence,
        "masked_examples": examples if category == DIRECT or ev.kind in ("birth_date", "date", "postal_code") else [],
        "kinds": ev.kinds,
        "matched": ev.matched,
        "values_sampled": len(values),
        "description": info.description,
        "hipaa": f"({info.hipaa}) {HIPAA_IDENTIFIERS[info.hipaa]}" if info.hipaa else None,
        "basis": info.basis,
        "pseudonymized": category == DIRECT and column in d.pseudonymized,
        "normalized_name": normalize(column),
    }


# ---------------------------------------------------------------------------------------------- tensors

TENSOR_NOTE = ("a fixed-shape tensor feature (an array per row): not a quasi-identifier (k-anonymity over raw arrays "
               "is meaningless: nearly every row is unique) and its values are not scanned as text; DP-SGD protects "
               "it like every training column. If it shows a face or other biometric data, declare it under "
               "special_categories")


def set_tensors_aside(found: Classification, tensors: Sequence[Any]) -> Classification:
    """`found` with any quasi-identifier finding on a tensor column (by its name) dismissed."""
    names = {t.name for t in tensors}
    for f in [f for f in found.findings if f["column"] in names and f["category"] == QUASI]:
        found.findings.remove(f)
        found.dismissed.append({"column": f["column"], "category": QUASI, "kind": f["kind"],
                                "reason": f"the name suggests a quasi-identifier, but the column is {TENSOR_NOTE}"})
    return found
