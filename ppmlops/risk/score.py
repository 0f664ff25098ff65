"""The PRAM risk score: six components, each valued in [0, 1], weighted; weights sum to 1.

score = sum(weight x value), so every point of the score is one component's and each
component's reason says where its value came from. The table (also in docs/pram.md):

| component          | weight | value |
| ------------------ | ------ | ----- |
| identifiers        | 0.30   | 1.0 if a direct identifier is a training column (features or label); under HIPAA 0.5 if a Safe Harbor identifier that is a quasi-identifier (a date, a postal code, a place) is a feature; 0.25 if the source holds direct identifiers that ingestion drops or pseudonymizes; else 0 |
| special_categories | 0.20   | min(1, special-category or protected features / 3) |
| k_anonymity        | 0.20   | share of training rows in equivalence classes smaller than k over the quasi-identifier features; k = 5 (gdpr, ccpa), 11 (hipaa), 3 (none) |
| consent            | 0.10   | rows refused for consent (flag, purpose or expiry) / rows read; 0.5 when the spec declares no consent column |
| dataset_size       | 0.10   | max(min(1, 1000 / n), min(1, n x delta)) for n training rows: small datasets make each person weigh more, and at n x delta >= 1 the delta of (epsilon, delta)-DP is large enough to release a whole record |
| regulation         | 0.10   | hipaa 1.0, gdpr 0.8, ccpa 0.6, none 0.2 |

Level: low below 0.3, medium below 0.6, high from 0.6, and high whatever the score when a direct
identifier is a training column (the run must not train on it).
"""

from __future__ import annotations

from typing import Any

from ppmlops.risk.categories import DIRECT, QUASI, SPECIAL
from ppmlops.risk.kanon import ClassStats

WEIGHTS = {
    "identifiers": 0.30,
    "special_categories": 0.20,
    "k_anonymity": 0.20,
    "consent": 0.10,
    "dataset_size": 0.10,
    "regulation": 0.10,
}
K_BY_REGULATION = {"gdpr": 5, "hipaa": 11, "ccpa": 5, "none": 3}
REGULATION_VALUE = {"hipaa": 1.0, "gdpr": 0.8, "ccpa": 0.6, "none": 0.2}
IDENTIFIER_IN_FEATURES_VALUE = 1.0
HIPAA_QUASI_IN_FEATURES_VALUE = 0.5
DROPPED_IDENTIFIER_VALUE = 0.25
NO_CONSENT_COLUMN_VALUE = 0.5
SPECIAL_SATURATION = 3
SIZE_REFERENCE_ROWS = 1000
LEVELS = ((0.3, "low"), (0.6, "medium"))
# HIPAA Safe Harbor identifiers that are quasi-identifiers (dates, ZIP codes, places); ages count
# only over 89, which a kind alone cannot tell, so age is left to k-anonymity.
_HIPAA_QUASI_KINDS = {"birth_date", "date", "postal_code", "location"}


def component(name: str, value: float, reason: str) -> dict[str, Any]:
    value = min(1.0, max(0.0, float(value)))
    weight = WEIGHTS[name]
    return {"name": name, "weight": weight, "value": value, "points": weight * value, "reason": reason}


def identifiers_component(findings: list[dict[str, Any]], regulation: str) -> dict[str, Any]:
    direct = [f for f in findings if f["category"] == DIRECT]
    leaked = [f["column"] for f in direct if f["in_features"]]
    if leaked:
        return component("identifiers", IDENTIFIER_IN_FEATURES_VALUE,
                         f"direct identifier(s) {leaked} are training columns; the pipeline stops before "
                         "training on them")
    if regulation == "hipaa":
        hipaa = sorted({f["column"] for f in findings
                        if f["category"] == QUASI and f["in_features"] and f["kind"] in _HIPAA_QUASI_KINDS})
        if hipaa:
            return component("identifiers", HIPAA_QUASI_IN_FEATURES_VALUE,
                             f"HIPAA Safe Harbor identifier(s) {hipaa} (dates, ZIP codes or places) are features; "
                             "Safe Harbor de-identification requires removing or generalizing them")
    if direct:
        dropped = [f["column"] for f in direct if not f.get("pseudonymized")]
        pseudo = [f["column"] for f in direct if f.get("pseudonymized")]
        parts = []
        if dropped:
            parts.append(f"{dropped} dropped at ingestion")
        if pseudo:
            parts.append(f"{pseudo} staged only as keyed pseudonyms (HMAC-SHA256), never as features")
        return component("identifiers", DROPPED_IDENTIFIER_VALUE,
                         f"the source holds {len(direct)} direct identifier(s): {'; '.join(parts)}; "
                         "the source itself must be guarded")
    return component("identifiers", 0.0, "no direct identifier found by column name, by value or by declaration")


def special_component(findings: list[dict[str, Any]]) -> dict[str, Any]:
    cols = [f["column"] for f in findings if f["category"] == SPECIAL and f["in_features"]]
    if not cols:
        return component("special_categories", 0.0, "no special-category or protected attribute among the features")
    return component("special_categories", len(cols) / SPECIAL_SATURATION,
                     f"{len(cols)} special-category or protected feature(s) {cols} "
                     f"(value = count / {SPECIAL_SATURATION}, at most 1)")


def k_anonymity_component(stats: ClassStats | None) -> dict[str, Any]:
    if stats is None or not stats.quasi_identifiers:
        return component("k_anonymity", 0.0, "no quasi-identifier among the features")
    if stats.rows == 0:
        return component("k_anonymity", 0.0, "no training rows")
    return component(
        "k_anonymity", stats.share_below_k,
        f"{stats.rows_below_k} of {stats.rows} training rows ({stats.share_below_k:.1%}) fall in "
        f"{stats.classes_below_k} equivalence class(es) smaller than k={stats.k} over quasi-identifiers "
        f"{stats.quasi_identifiers} ({stats.classes} classes, smallest {stats.smallest_class}); "
        f"{stats.unique_rows} rows ({stats.uniqueness:.1%}) are unique")


def consent_component(declared: bool, rows_in: int, refused: int, refusals: dict[str, int]) -> dict[str, Any]:
    if not declared:
        return component("consent", NO_CONSENT_COLUMN_VALUE,
                         "the spec declares no consent column, so the legal basis is not recorded in the data")
    share = refused / rows_in if rows_in else 1.0
    why = ", ".join(f"{n} {rule}" for rule, n in sorted(refusals.items())) if refusals else "none"
    return component("consent", share, f"{refused} of {rows_in} rows ({share:.1%}) carry no valid consent "
                                       f"and were quarantined (by rule: {why})")


def size_component(rows: int, delta: float | None) -> dict[str, Any]:
    if rows <= 0:
        return component("dataset_size", 1.0, "no training rows")
    small = min(1.0, SIZE_REFERENCE_ROWS / rows)
    if delta is None:
        return component("dataset_size", small, f"{rows} training rows (value = min(1, {SIZE_REFERENCE_ROWS} / rows): "
                                                f"one person weighs more in a small dataset; no delta given)")
    slack = min(1.0, rows * delta)
    return component(
        "dataset_size", max(small, slack),
        f"{rows} training rows at delta {delta:g}: small-data term min(1, {SIZE_REFERENCE_ROWS} / n) = {small:.3f}, "
        f"delta term min(1, n x delta) = {slack:.3f} (at n x delta >= 1 the delta slack could release a whole "
        f"record); value = the larger")


def regulation_component(regulation: str) -> dict[str, Any]:
    return component("regulation", REGULATION_VALUE[regulation],
                     f"regulation {regulation} (hipaa 1.0, gdpr 0.8, ccpa 0.6, none 0.2)")


def level_of(score: float, components: list[dict[str, Any]]) -> str:
    if any(c["name"] == "identifiers" and c["value"] >= IDENTIFIER_IN_FEATURES_VALUE for c in components):
        return "high"
    return next((name for bound, name in LEVELS if score < bound), "high")
