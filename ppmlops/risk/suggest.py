"""Expectation suites from a risk scan: the sensitivity rules as Great Expectations, for people to edit.

From a spec: the spec's suite (ppmlops.data.suites.suite_from_spec: exact snapshot columns,
ranges, categories, sensitivity regexes on string columns, pseudonym format), plus what the
scan adds:
  - under HIPAA, Safe Harbor limits on quasi-identifier features: ages capped at 90 (all ages
    over 89 aggregated) and postal codes of at most 3 characters (the 3-digit ZIP prefix);
  - the scan's findings in the suite's meta (`risk_scan`: column, category, kind, detected by,
    confidence; never a value), so a reviewer sees why each rule is there.
From a file: the file's exact column set, the sensitivity regexes on every column the scan found
clean (so identifiers cannot creep into them later), the findings in meta, and `spec_hint`: the
dataset fields to declare (identifiers, quasi_identifiers, special_categories) for a spec over
this file.
"""

from __future__ import annotations

from typing import Any

from ppmlops.data.suites import sensitivity_expectations, suite_from_spec
from ppmlops.risk.categories import DIRECT, QUASI, SPECIAL
from ppmlops.risk.report import RiskReport
from ppmlops.spec import NumericFeature, PipelineSpec

GENERATOR = "ppmlops risk suggest"


def _scan_meta(report: RiskReport) -> dict[str, Any]:
    return {
        "score": round(report.score, 4),
        "level": report.level,
        "regulation": report.regulation,
        "rows_sampled": report.sample_rows,
        "findings": [
            {"column": f["column"], "category": f["category"], "kind": f["kind"], "in_features": f["in_features"],
             "detected_by": f["detected_by"], "confidence": f["confidence"], "share": f["share"]}
            for f in report.findings
        ],
        "overridden": [{k: o[k] for k in ("column", "category", "kind", "declared")} for o in report.overridden],
        "dismissed": [{k: d[k] for k in ("column", "category", "kind")} for d in report.dismissed],
    }


def suite_for_spec(spec: PipelineSpec, report: RiskReport) -> dict[str, Any]:
    suite = suite_from_spec(spec)
    if spec.dataset.regulation == "hipaa":
        numeric = {f.name for f in spec.dataset.features if isinstance(f, NumericFeature)}
        for f in report.findings:
            if f["category"] != QUASI or not f["in_features"]:
                continue
            if f["kind"] == "age" and f["column"] in numeric:
                suite["expectations"].append({
                    "type": "expect_column_values_to_be_between",
                    "kwargs": {"column": f["column"], "max_value": 90},
                    "meta": {"check": "hipaa_safe_harbor", "rule": "ages over 89 aggregated into 90 or older"}})
            elif f["kind"] == "postal_code" and f["column"] not in numeric:
                suite["expectations"].append({
                    "type": "expect_column_value_lengths_to_be_between",
                    "kwargs": {"column": f["column"], "max_value": 3},
                    "meta": {"check": "hipaa_safe_harbor", "rule": "ZIP codes cut to their first 3 digits"}})
    suite["meta"]["generated_by"] = GENERATOR
    suite["meta"]["risk_scan"] = _scan_meta(report)
    return suite


def suite_for_file(name: str, report: RiskReport) -> dict[str, Any]:
    columns = list(report.source.get("columns", []))
    flagged = {f["column"] for f in report.findings if f["category"] == DIRECT}
    expectations: list[dict[str, Any]] = [
        {"type": "expect_table_columns_to_match_set", "kwargs": {"column_set": columns, "exact_match": True},
         "meta": {"check": "schema"}},
        {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1}, "meta": {"check": "schema"}},
    ]
    for column in columns:
        if column not in flagged:
            expectations.extend(sensitivity_expectations(column))

    def of(category: str) -> list[str]:
        return sorted({f["column"] for f in report.findings if f["category"] == category}, key=columns.index)

    return {
        "name": name,
        "expectations": expectations,
        "suite_parameters": {},
        "meta": {
            "generated_by": GENERATOR,
            "risk_scan": _scan_meta(report),
            "spec_hint": {"identifiers": of(DIRECT), "quasi_identifiers": of(QUASI),
                          "special_categories": of(SPECIAL)},
        },
        "notes": ("Sensitivity rules from a risk scan: the columns found clean must stay free of e-mail "
                  "addresses, phone numbers, SSNs, card numbers, IBANs and IP addresses; the columns in "
                  "spec_hint.identifiers must be declared as dataset.identifiers and never trained on."),
    }
