"""PRAM (privacy risk assessment module), first version: a score in [0, 1] explained item by item.

The score is a weighted sum of six components, each valued in [0, 1]; the weights sum to 1, so
score == sum of the components' points (points = weight x value).

| component          | weight | value |
| ------------------ | ------ | ----- |
| identifiers        | 0.30   | 1.0 if a direct identifier is in a training column (features or label); 0.25 if the source holds direct identifiers that ingestion drops; else 0 |
| special_categories | 0.20   | min(1, special-category features / 3) (race, sex/gender, marital status, relationship, national origin, religion, health, sexual orientation, political opinion, union membership, genetic/biometric data) |
| k_anonymity        | 0.20   | share of training rows in equivalence classes smaller than k over the quasi-identifier features; k = 5 (gdpr, ccpa), 11 (hipaa), 3 (none) |
| consent            | 0.10   | rows quarantined for no consent / rows read; 0.5 when the spec declares no consent column (the legal basis is not recorded in the data) |
| dataset_size       | 0.10   | min(1, 1000 / training rows): one person weighs more in a small dataset |
| regulation         | 0.10   | hipaa 1.0, gdpr 0.8, ccpa 0.6, none 0.2 |

Level: low below 0.3, medium below 0.6, high from 0.6, and high whatever the score when a direct
identifier reaches a training column (the pipeline stops before training on that).

Detectors: columns are classified by name (all source columns) and, for direct identifiers, also
by value on a deterministic sample of consented rows (e-mail, US SSN with valid ranges, phone,
Luhn-valid card numbers; a column is flagged when at least half its sampled non-empty values
match). Declared identifiers are always reported. Detecting names and addresses by value is for
a later version.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from ppmlops.data.ingest import IngestResult, SourceTable, read_source, source_sha256
from ppmlops.data.suites import mask_value
from ppmlops.errors import DataError
from ppmlops.spec import PipelineSpec

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
DROPPED_IDENTIFIER_VALUE = 0.25
NO_CONSENT_COLUMN_VALUE = 0.5
SPECIAL_SATURATION = 3
SIZE_REFERENCE_ROWS = 1000
LEVELS = ((0.3, "low"), (0.6, "medium"))
SAMPLE_ROWS = 5000
VALUE_SHARE_THRESHOLD = 0.5
MAX_EXAMPLES = 3

DIRECT, QUASI, SPECIAL = "direct_identifier", "quasi_identifier", "special_category"

# (kind, category, pattern over the normalized column name: lower case, runs of other
# characters replaced by "_"). Within a category the first match wins; a column may be both a
# special category and a quasi-identifier (sex, race, national origin).
_NAME_RULES: list[tuple[str, str, str]] = [
    ("email", DIRECT, r"(^|_)(e_?mail|mail)(_address)?($|_)"),
    ("ip_address", DIRECT, r"(^|_)(ip|ipv4|ipv6)(_address)?($|_)"),
    ("phone", DIRECT, r"(^|_)(phone|telephone|tel|mobile|cell|fax)(_?(number|no|nr))?($|_)"),
    ("ssn", DIRECT, r"(^|_)(ssn|social_security(_number)?|national_id|national_insurance(_number)?|nino|"
                    r"tax_id|tin|passport(_number|_no)?|driver_?s?_licen[cs]e|id_card|personal_number)($|_)"),
    ("credit_card", DIRECT, r"(^|_)(credit_card|card_number|cc_number|iban|account_number|pan)($|_)"),
    ("name", DIRECT, r"^((first|last|full|given|family|middle|maiden|user|customer|patient|client|contact|"
                     r"person)_?)?name$|^(surname|forename)$"),
    ("address", DIRECT, r"(^|_)(street|address|addr|street_address|home_address)($|_)"),
    ("record_id", DIRECT, r"^(customer|client|patient|member|account|user|employee|person|subscriber|policy|"
                          r"claim)_?(id|number|no|nr)$|^(mrn|medical_record_number)$"),
    ("postal_code", QUASI, r"(^|_)(zip|zipcode|zip_code|postal|postal_code|postcode|plz)($|_)"),
    ("birth_date", QUASI, r"(^|_)(dob|birthdate|birth_date|date_of_birth|birth_year|year_of_birth|birthday)($|_)"),
    ("age", QUASI, r"^(age|age_years|age_group|age_band)$"),
    ("sex", QUASI, r"^(sex|gender)$"),
    ("race", QUASI, r"(^|_)(race|ethnicity|ethnic_group)($|_)"),
    ("national_origin", QUASI, r"(^|_)(native_country|country_of_birth|birth_country|nationality|citizenship)($|_)"),
    ("location", QUASI, r"^(city|town|county|municipality|district)$"),
    ("race", SPECIAL, r"(^|_)(race|racial|ethnicity|ethnic|ethnic_group)($|_)"),
    ("sex", SPECIAL, r"^(sex|gender|gender_identity)$"),
    ("sexual_orientation", SPECIAL, r"(^|_)(sexual_orientation|orientation|sexuality)($|_)"),
    ("religion", SPECIAL, r"(^|_)(religion|religious|faith|belief)($|_)"),
    ("health", SPECIAL, r"(^|_)(health|diagnosis|disease|disability|medical|condition|icd\d*|medication|"
                        r"pregnancy|pregnant)($|_)"),
    ("political_opinion", SPECIAL, r"(^|_)(political|politics|party_affiliation)($|_)"),
    ("union_membership", SPECIAL, r"(^|_)(union|trade_union|union_member(ship)?)($|_)"),
    ("marital_status", SPECIAL, r"(^|_)(marital|marital_status)($|_)"),
    ("relationship", SPECIAL, r"^(relationship|household_relationship)$"),
    ("national_origin", SPECIAL, r"(^|_)(native_country|country_of_birth|birth_country|nationality|citizenship|"
                                 r"national_origin)($|_)"),
    ("genetic_biometric", SPECIAL, r"(^|_)(genetic|genome|dna|biometric|fingerprint)($|_)"),
]
_NAME_RULES_RX = [(kind, cat, re.compile(rx)) for kind, cat, rx in _NAME_RULES]

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_SSN = re.compile(r"(\d{3})-(\d{2})-(\d{4})")
_CARD = re.compile(r"\d(?:[ -]?\d){12,18}")
_PHONE = re.compile(r"\+?[\d\s().-]{7,}")
_PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass
class RiskReport:
    dataset_id: str
    score: float
    level: str
    components: list[dict[str, Any]]
    # One per (column, category); share: for a value-detected direct identifier the share of
    # sampled non-empty values that match, otherwise the share of sampled rows with a value.
    findings: list[dict[str, Any]]
    k: int = 5
    quasi_identifiers: list[str] = field(default_factory=list)  # the features k-anonymity was computed over
    sample_rows: int = 0  # consented source rows inspected by value

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        lines = [f"PRAM risk assessment of dataset {self.dataset_id}: score {self.score:.3f} ({self.level})",
                 "components (points = weight x value):"]
        for c in self.components:
            lines.append(f"  {c['name']:<19}{c['weight']:.2f} x {c['value']:.3f} = {c['points']:.3f}  {c['reason']}")
        if any(c["name"] == "identifiers" and c["value"] >= 1.0 for c in self.components):
            lines.append("  level is high because a direct identifier reaches a training column")
        lines.append(f"findings ({len(self.findings)}; values sampled from {self.sample_rows} consented rows):")
        for f in self.findings:
            if f["category"] == DIRECT:
                where = "IN TRAINING COLUMNS" if f["in_features"] else "not trained on"
            else:
                where = "a feature" if f["in_features"] else "not trained on"
            how = "+".join(f["detected_by"])
            share = (f"{f['share']:.0%} of sampled values match" if any(h.startswith("values") for h in f["detected_by"])
                     else f"{f['share']:.0%} of sampled rows filled")
            line = f"  {f['column']}: {f['kind']}, {f['category'].replace('_', ' ')}, {where} (detected by {how}; {share})"
            if f["masked_examples"]:
                line += f", e.g. {', '.join(f['masked_examples'])}"
            lines.append(line)
        return "\n".join(lines)


def assess(spec: PipelineSpec, ingest: IngestResult) -> RiskReport:
    ds = spec.dataset
    tables = [read_source(ds.source)] + ([read_source(ds.test_source)] if ds.test_source else [])
    if source_sha256(tables) != ingest.source_sha256:
        raise DataError(f"{', '.join(str(t.path) for t in tables)}: source changed since ingestion "
                        f"(sha256 {source_sha256(tables)[:12]}..., ingested {ingest.source_sha256[:12]}...); "
                        "re-run ingest")
    header: list[str] = []
    for t in tables:
        header.extend(c for c in t.header if c not in header)
    sample = _consented_sample(spec, tables)
    training_columns = {f.name for f in ds.features} | {ds.label.column}
    findings = _findings(header, sample, training_columns, set(ds.identifiers))

    k = K_BY_REGULATION[ds.regulation]
    qi = [f.name for f in ds.features
          if any(x["column"] == f.name and x["category"] == QUASI for x in findings)]
    components = [
        _identifiers_component(findings),
        _special_component(findings),
        _k_anonymity_component(ingest.snapshot_train, qi, k),
        _consent_component(spec, ingest),
        _size_component(ingest.rows_train),
        _regulation_component(ds.regulation),
    ]
    score = sum(c["points"] for c in components)
    level = next((name for bound, name in LEVELS if score < bound), "high")
    if components[0]["value"] >= 1.0:
        level = "high"
    return RiskReport(dataset_id=ds.id, score=score, level=level, components=components, findings=findings,
                      k=k, quasi_identifiers=qi, sample_rows=sum(len(rows) for _, rows in sample))


# --------------------------------------------------------------------------- detection


def normalize(column: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", column.lower()).strip("_")


def _consented_sample(spec: PipelineSpec, tables: list[SourceTable]) -> list[tuple[list[str], list[list[str]]]]:
    """Up to SAMPLE_ROWS consented rows over all source files, spread evenly, deterministic."""
    consent = spec.dataset.consent
    out = []
    total = sum(len(t.records) for t in tables)
    for t in tables:
        rows = t.records
        if consent is not None and consent.column in t.header:
            i, granted = t.index(consent.column), {g.strip().lower() for g in consent.granted}
            rows = [r for r in rows if r[i].strip().lower() in granted]
        quota = max(1, round(SAMPLE_ROWS * len(t.records) / total)) if total else 0
        step = max(1, len(rows) // quota) if quota else 1
        out.append((t.header, rows[::step][:quota]))
    return out


def _column_values(sample: list[tuple[list[str], list[list[str]]]], column: str) -> list[str]:
    values = []
    for header, rows in sample:
        if column in header:
            i = header.index(column)
            values.extend(v.strip() for r in rows if (v := r[i].strip()))
    return values


def value_kind(value: str) -> str | None:
    """The kind of direct identifier a single value looks like, or None."""
    if _EMAIL.fullmatch(value):
        return "email"
    m = _SSN.fullmatch(value)
    if m:
        area, group, serial = m.groups()
        valid = area not in ("000", "666") and not area.startswith("9") and group != "00" and serial != "0000"
        # SSN-shaped but outside the issued ranges: a test or placeholder value, not a phone number
        return "ssn" if valid else None
    if _CARD.fullmatch(value) and _luhn(re.sub(r"\D", "", value)):
        return "credit_card"
    if _PHONE.fullmatch(value) and not _PLAIN_NUMBER.fullmatch(value):
        digits = sum(c.isdigit() for c in value)
        if 7 <= digits <= 15 and (value.startswith("+") or any(c in value for c in " ()-.")):
            return "phone"
    return None


def _luhn(digits: str) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def _findings(header: list[str], sample, training_columns: set[str], declared: set[str]) -> list[dict[str, Any]]:
    findings: list[dict[str, Any]] = []
    for column in header:
        name = normalize(column)
        values = _column_values(sample, column)
        by_category: dict[str, tuple[str, list[str]]] = {}
        for kind, category, rx in _NAME_RULES_RX:
            if category not in by_category and rx.search(name):
                by_category[category] = (kind, ["name"])
        kinds = Counter(value_kind(v) for v in values)
        kinds.pop(None, None)
        value_hit = None
        if kinds:
            kind, count = kinds.most_common(1)[0]
            if count / len(values) >= VALUE_SHARE_THRESHOLD:
                value_hit = (kind, count / len(values))
        if value_hit:
            kind = value_hit[0]
            if DIRECT in by_category and by_category[DIRECT][0] == kind:
                by_category[DIRECT][1].append("values")
            elif DIRECT not in by_category:
                by_category[DIRECT] = (kind, ["values"])
            else:
                by_category[DIRECT][1].append(f"values ({kind})")
        if column in declared and DIRECT not in by_category and QUASI not in by_category:
            by_category[DIRECT] = ("declared", [])
        for category in (DIRECT, QUASI, SPECIAL):
            if category not in by_category:
                continue
            kind, how = by_category[category]
            if column in declared:
                how = how + ["declared"]
            share = value_hit[1] if value_hit and value_hit[0] == kind and category == DIRECT else (
                len(values) / max(1, sum(len(rows) for h, rows in sample if column in h)))
            examples = []
            if category == DIRECT:
                for v in dict.fromkeys(values):
                    examples.append(mask_value(v))
                    if len(examples) == MAX_EXAMPLES:
                        break
            findings.append({
                "column": column,
                "kind": kind,
                "category": category,
                "in_features": column in training_columns,
                "declared": column in declared,
                "detected_by": how,
                "share": round(share, 4),
                "masked_examples": examples,
            })
    return findings


# --------------------------------------------------------------------------- components


def _component(name: str, value: float, reason: str) -> dict[str, Any]:
    value = min(1.0, max(0.0, float(value)))
    weight = WEIGHTS[name]
    return {"name": name, "weight": weight, "value": value, "points": weight * value, "reason": reason}


def _identifiers_component(findings: list[dict[str, Any]]) -> dict[str, Any]:
    direct = [f for f in findings if f["category"] == DIRECT]
    leaked = [f["column"] for f in direct if f["in_features"]]
    if leaked:
        return _component("identifiers", 1.0, f"direct identifier(s) {leaked} are training columns; "
                                              "the pipeline stops before training on them")
    if direct:
        cols = [f["column"] for f in direct]
        return _component("identifiers", DROPPED_IDENTIFIER_VALUE,
                          f"the source holds {len(cols)} direct identifier(s) {cols}; ingestion drops them "
                          "(the snapshot keeps only features and the label), but the source must be guarded")
    return _component("identifiers", 0.0, "no direct identifier found by column name, by value or by declaration")


def _special_component(findings: list[dict[str, Any]]) -> dict[str, Any]:
    cols = [f["column"] for f in findings if f["category"] == SPECIAL and f["in_features"]]
    if not cols:
        return _component("special_categories", 0.0, "no special-category or protected attribute among the features")
    return _component("special_categories", len(cols) / SPECIAL_SATURATION,
                      f"{len(cols)} special-category or protected feature(s) {cols} "
                      f"(value = count / {SPECIAL_SATURATION}, at most 1)")


def _k_anonymity_component(snapshot: str, qi: list[str], k: int) -> dict[str, Any]:
    if not qi:
        return _component("k_anonymity", 0.0, "no quasi-identifier among the features")
    import pandas as pd

    try:
        df = pd.read_parquet(snapshot, columns=qi)
    except Exception as err:  # pyarrow raises several types for a missing or damaged file
        raise DataError(f"{snapshot}: cannot read the training snapshot for k-anonymity: {err}") from None
    if df.empty:
        return _component("k_anonymity", 0.0, "the training snapshot is empty")
    sizes = df.groupby(qi, dropna=False, observed=True).size()
    small = sizes[sizes < k]
    share = float(small.sum()) / len(df)
    return _component(
        "k_anonymity", share,
        f"{int(small.sum())} of {len(df)} training rows ({share:.1%}) fall in {len(small)} equivalence "
        f"class(es) smaller than k={k} over quasi-identifiers {qi} ({len(sizes)} classes, smallest {int(sizes.min())})")


def _consent_component(spec: PipelineSpec, ingest: IngestResult) -> dict[str, Any]:
    if spec.dataset.consent is None:
        return _component("consent", NO_CONSENT_COLUMN_VALUE,
                          "the spec declares no consent column, so the legal basis is not recorded in the data")
    refused = ingest.quarantine_reasons.get("no consent", 0)
    share = refused / ingest.rows_in if ingest.rows_in else 1.0
    return _component("consent", share, f"{refused} of {ingest.rows_in} rows ({share:.1%}) carry no consent "
                                        "and were quarantined")


def _size_component(rows_train: int) -> dict[str, Any]:
    value = min(1.0, SIZE_REFERENCE_ROWS / rows_train) if rows_train > 0 else 1.0
    return _component("dataset_size", value, f"{rows_train} training rows (value = min(1, "
                                             f"{SIZE_REFERENCE_ROWS} / rows)): one person weighs more in a small dataset")


def _regulation_component(regulation: str) -> dict[str, Any]:
    return _component("regulation", REGULATION_VALUE[regulation],
                      f"regulation {regulation} (hipaa 1.0, gdpr 0.8, ccpa 0.6, none 0.2)")
