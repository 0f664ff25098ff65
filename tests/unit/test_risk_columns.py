"""Column classification: the labelled table tests/fixtures/risk/columns.csv, declarations, dismissals."""

from __future__ import annotations

import csv
import json
from collections import Counter
from datetime import date
from pathlib import Path

import pytest

from ppmlops.risk.classify import Declarations, classify_columns

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "risk"


@pytest.fixture(scope="module")
def table():
    with open(FIXTURES / "columns.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    header, data = rows[0], rows[1:]
    labels = json.loads((FIXTURES / "columns_labels.json").read_text())
    sample = {c: [r[i] for r in data] for i, c in enumerate(header)}
    return header, sample, labels


def found_by_column(result) -> dict[str, set[tuple[str, str]]]:
    out: dict[str, set[tuple[str, str]]] = {}
    for f in result.findings:
        out.setdefault(f["column"], set()).add((f["category"], f["kind"]))
    return out


def load_table(name: str):
    with open(FIXTURES / f"{name}.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    header, data = rows[0], rows[1:]
    labels = json.loads((FIXTURES / f"{name}_labels.json").read_text())
    return header, {c: [r[i] for r in data] for i, c in enumerate(header)}, labels


def assert_precision_and_recall(header, sample, labels, title: str):
    result = classify_columns(header, sample, set(header), as_of=date.fromisoformat(labels["as_of"]))
    got = found_by_column(result)
    tp, fp, fn = Counter(), Counter(), Counter()
    for column in header:
        want = {tuple(x) for x in labels["columns"][column]}
        have = got.get(column, set())
        for x in have & want:
            tp[x] += 1
        for x in have - want:
            fp[x] += 1
        for x in want - have:
            fn[x] += 1
    kinds = sorted(set(tp) | set(fp) | set(fn))
    lines = []
    for k in kinds:
        p = tp[k] / (tp[k] + fp[k]) if tp[k] + fp[k] else 1.0
        r = tp[k] / (tp[k] + fn[k]) if tp[k] + fn[k] else 1.0
        lines.append(f"{k[0]:18} {k[1]:12} precision {p:.2f} recall {r:.2f}")
        assert p >= 0.95 and r >= 0.95, f"{k}: precision {p:.2f}, recall {r:.2f}"
    print(f"\ncolumn classification on tests/fixtures/risk/{title}\n" + "\n".join(lines))
    negatives = [c for c in header if not labels["columns"][c]]
    assert not any(c in got for c in negatives), {c: got[c] for c in negatives if c in got}
    return negatives, tp


def test_labelled_columns_precision_and_recall(table):
    negatives, _ = assert_precision_and_recall(*table, "columns.csv")
    assert len(negatives) >= 15


def test_clinical_columns_precision_and_recall():
    """Coded health data, 5-digit postal codes and a consent column in a table PRAM has not seen."""
    negatives, tp = assert_precision_and_recall(*load_table("clinical"), "clinical.csv")
    assert tp[("special_category", "health")] == 7 and tp[("quasi_identifier", "postal_code")] == 2
    assert len(negatives) >= 8


def test_health_codes_need_a_name_when_the_value_alone_is_ambiguous():
    header, sample, labels = load_table("clinical")
    renamed = {"col_a": sample["dx1"], "col_b": sample["proc_cpt"], "col_c": sample["zip5"],
               "col_d": sample["principal_code"], "col_e": sample["ndc"]}
    got = found_by_column(classify_columns(list(renamed), renamed, set(renamed)))
    # ICD-10 with dots (dx1 is mostly dotted) and dashed NDCs say what they are; bare CPT numbers
    # and ZIPs do not.
    health = {("special_category", "health")}
    assert got == {"col_a": health, "col_d": health, "col_e": health}


def test_name_rules_for_special_categories():
    from ppmlops.risk.categories import SPECIAL, name_matches

    for column, kind in [("religion", "religion"), ("Religious_Affiliation", "religion"), ("faith", "religion"),
                         ("denomination", "religion"), ("diagnosis", "health"), ("dx2", "health"),
                         ("proc_cpt", "health"), ("ndc", "health"), ("marital_status", "marital_status")]:
        assert name_matches(column).get(SPECIAL) == kind, column


def test_findings_carry_share_confidence_and_masked_examples(table):
    header, sample, labels = table
    result = classify_columns(header, sample, set(), as_of=date.fromisoformat(labels["as_of"]))
    by = {(f["column"], f["category"]): f for f in result.findings}
    pay = by[("pay", "direct_identifier")]
    assert pay["share"] == 1.0 and pay["detected_by"] == ["values"] and 0.9 < pay["confidence"] <= 1.0
    assert pay["hipaa"].startswith("(J)") and pay["in_features"] is False
    raw = {v for v in sample["pay"]}
    assert pay["masked_examples"] and not raw & set(pay["masked_examples"])
    notes = by[("notes", "direct_identifier")]
    assert notes["kind"] == "free_text" and set(notes["kinds"]) == {"email", "phone"}
    assert 0.2 < notes["share"] < 0.6  # the share of notes that hold contact details
    assert by[("grp", "special_category")]["basis"] == "GDPR Art. 9(1)"
    assert by[("dob", "quasi_identifier")]["detected_by"] == ["name", "values"]


def test_name_only_detection_contradicted_by_values_is_dismissed(table):
    header, sample, labels = table
    result = classify_columns(["is_mobile"], sample, {"is_mobile"})
    assert result.findings == []
    assert [d["column"] for d in result.dismissed] == ["is_mobile"]
    assert "nearly unique" in result.dismissed[0]["reason"]


def test_declarations_beat_detection(table):
    header, sample, _ = table
    decl = Declarations(identifiers=frozenset({"order_id"}), quasi_identifiers=frozenset({"c2"}),
                        special_categories=frozenset({"country"}), not_sensitive=frozenset({"contact", "g"}))
    result = classify_columns(["order_id", "c2", "country", "contact", "g"], sample, {"c2", "country", "contact"}, decl)
    got = found_by_column(result)
    assert got["order_id"] == {("direct_identifier", "declared")}
    assert got["c2"] == {("quasi_identifier", "declared")}  # a declared quasi-identifier, not a phone
    assert got["country"] == {("special_category", "declared")}
    assert "contact" not in got and "g" not in got
    overridden = {(o["column"], o["category"], o["declared"]) for o in result.overridden}
    assert overridden == {("c2", "direct_identifier", "quasi_identifier"),
                          ("contact", "direct_identifier", "not_sensitive"),
                          ("g", "quasi_identifier", "not_sensitive"), ("g", "special_category", "not_sensitive")}
    declared = {f["column"]: f for f in result.findings}
    assert declared["order_id"]["declared"] and declared["order_id"]["confidence"] == 1.0


def test_declared_identifier_detected_as_quasi_identifier_stays_one():
    sample = {"zip": ["02134", "90210", "10001"] * 20}
    result = classify_columns(["zip"], sample, set(), Declarations(identifiers=frozenset({"zip"})))
    assert [(f["category"], f["kind"], f["declared"]) for f in result.findings] == [
        ("quasi_identifier", "postal_code", True)]


def test_adult_values_alone_reveal_race_sex_and_marital_status(adult_dir):
    with open(adult_dir / "train.csv", newline="") as fh:
        rows = list(csv.reader(fh))[1:3001]
    header = [f"c{i}" for i in range(len(rows[0]))]  # names say nothing
    sample = {c: [r[i].strip() for r in rows] for i, c in enumerate(header)}
    got = found_by_column(classify_columns(header, sample, set(header)))
    assert got == {
        "c5": {("special_category", "marital_status")},
        "c8": {("quasi_identifier", "race"), ("special_category", "race")},
        "c9": {("quasi_identifier", "sex"), ("special_category", "sex")},
    }
