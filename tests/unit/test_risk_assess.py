"""The assess stage end to end on small specs: the stop on identifiers in features, declarations,
pseudonyms, consent rules, HIPAA, the delta term, and the itemized summary."""

from __future__ import annotations

import copy
import json
import re
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ppmlops.data.ingest import ingest
from ppmlops.risk.assess import WEIGHTS, assess
from ppmlops.risk.report import IdentifierInFeatures
from ppmlops.spec import parse_spec

REPO = Path(__file__).resolve().parents[2]
DEMO_DOC = yaml.safe_load((REPO / "dags" / "pipelines" / "demo.yaml").read_text())
KEY = "0123456789abcdef0123456789abcdef"


def small(tmp_path: Path, header: str, rows: list[str], features: list[dict], *, privacy: dict | None = None,
          **dataset):
    tmp_path.mkdir(parents=True, exist_ok=True)
    src = tmp_path / "train.csv"
    src.write_text(header + "\n" + "\n".join(rows) + "\n")
    doc = {
        "name": "small",
        "dataset": {"id": "small", "source": {"path": str(src)},
                    "label": {"column": "y", "positive": "yes", "values": ["yes", "no"]},
                    "features": features, **dataset},
        "privacy": privacy or {"epsilon": 1.0, "delta": 1e-5, "run_epsilon": 1.0},
        "training": {"test_fraction": 0.3, "seed": 0},
        "deploy": {"model_name": "small"},
    }
    spec = parse_spec(doc)
    return spec, ingest(spec, tmp_path / "run", as_of=date(2024, 6, 1))


def contact_rows(n: int = 60) -> tuple[list[str], list[str]]:
    emails = [f"user{i}@example.com" for i in range(n)]
    return emails, [f"{e},{20 + i % 40},{'yes' if i % 3 else 'no'}" for i, e in enumerate(emails)]


def test_undeclared_identifier_in_a_feature_stops_the_run_naming_the_column(tmp_path):
    emails, rows = contact_rows()
    features = [{"name": "contact", "type": "categorical", "categories": emails},
                {"name": "age", "type": "numeric", "range": [18, 90]}]
    spec, staged = small(tmp_path, "contact,age,y", rows, features)
    report = assess(spec, staged)
    assert [f["column"] for f in report.identifiers_in_features()] == ["contact"]
    assert report.level == "high"
    with pytest.raises(IdentifierInFeatures, match=r"dataset small: direct identifier\(s\) in training columns: "
                                                   r"contact \(email, detected by values\)") as err:
        report.raise_if_identifiers_in_features()
    assert err.value.columns == ["contact"] and err.value.report is report
    # what the plan stage hands the policy
    leaked = sorted({f["column"] for f in report.to_dict()["findings"]
                     if f["category"] == "direct_identifier" and f["in_features"]})
    assert leaked == ["contact"]


def test_a_reviewed_false_positive_is_declared_not_sensitive_and_shown_as_overridden(tmp_path):
    emails, rows = contact_rows()
    features = [{"name": "contact", "type": "categorical", "categories": emails},
                {"name": "age", "type": "numeric", "range": [18, 90]}]
    spec, staged = small(tmp_path, "contact,age,y", rows, features, not_sensitive=["contact"])
    report = assess(spec, staged)
    report.raise_if_identifiers_in_features()  # no longer stops
    assert report.identifiers_in_features() == []
    assert [(o["column"], o["kind"], o["declared"]) for o in report.overridden] == [("contact", "email", "not_sensitive")]
    assert "override: contact was detected as direct identifier" in report.summary()


def test_pseudonymized_identifiers_are_reported_and_never_features(tmp_path, monkeypatch):
    monkeypatch.setenv("PPMLOPS_PSEUDONYM_KEY", KEY)
    emails, rows = contact_rows()
    features = [{"name": "age", "type": "numeric", "range": [18, 90]}]
    spec, staged = small(tmp_path, "email,age,y", rows, features, identifiers=["email"], pseudonymize=["email"])
    report = assess(spec, staged)
    email = next(f for f in report.findings if f["column"] == "email")
    assert email["pseudonymized"] and not email["in_features"] and email["category"] == "direct_identifier"
    ident = next(c for c in report.components if c["name"] == "identifiers")
    assert ident["value"] == 0.25 and "keyed pseudonyms" in ident["reason"]
    staged_cols = list(pd.read_parquet(staged.snapshot_train).columns)
    assert "email" not in staged_cols and "email_pseudonym" in staged_cols
    assert "pseudonymized, not trained on" in report.summary()


def test_consent_component_counts_every_rule(tmp_path):
    rows = []
    for i in range(40):
        consent, purposes, until = "yes", "training", "2030-01-01"
        if i % 5 == 1:
            consent = "no"
        elif i % 5 == 2:
            purposes = "marketing"
        elif i % 5 == 3:
            until = "2020-01-01"
        rows.append(f"{consent},{purposes},{until},{20 + i},{'yes' if i % 2 else 'no'}")
    spec, staged = small(tmp_path, "consent,purposes,until,age,y", rows,
                         [{"name": "age", "type": "numeric", "range": [18, 90]}],
                         consent={"column": "consent", "purposes_column": "purposes", "expiry_column": "until"})
    report = assess(spec, staged)
    consent = next(c for c in report.components if c["name"] == "consent")
    assert consent["value"] == pytest.approx(24 / 40)
    assert "by rule: 8 expired, 8 flag, 8 purpose" in consent["reason"]
    assert report.consent["refusals"] == staged.consent_refusals == {"expired": 8, "flag": 8, "purpose": 8}
    assert report.sample_rows == 16  # values were inspected on consented rows only


def test_hipaa_flags_safe_harbor_quasi_identifiers_among_features(tmp_path):
    rows = [f"{['02134', '90210', '10001'][i % 3]},{30 + i % 7},{'yes' if i % 2 else 'no'}" for i in range(60)]
    features = [{"name": "zip", "type": "categorical", "categories": ["02134", "90210", "10001"]},
                {"name": "age", "type": "numeric", "range": [18, 90]}]
    spec, staged = small(tmp_path, "zip,age,y", rows, features, regulation="hipaa")
    report = assess(spec, staged)
    ident = next(c for c in report.components if c["name"] == "identifiers")
    assert ident["value"] == 0.5 and "['zip']" in ident["reason"] and report.k == 11
    assert report.quasi_identifiers == ["zip", "age"]


def test_delta_too_large_for_the_dataset_counts(tmp_path):
    rows = [f"{20 + i % 50},{'yes' if i % 2 else 'no'}" for i in range(300)]
    features = [{"name": "age", "type": "numeric", "range": [18, 90]}]
    spec, staged = small(tmp_path, "age,y", rows, features,
                         privacy={"epsilon": 1.0, "delta": 0.01, "run_epsilon": 1.0})
    size = next(c for c in assess(spec, staged).components if c["name"] == "dataset_size")
    assert staged.rows_train * 0.01 >= 1 and size["value"] == 1.0
    assert "delta term min(1, n x delta) = 1.000" in size["reason"]


def test_summary_explains_the_score_item_by_item(tmp_path):
    doc = copy.deepcopy(DEMO_DOC)
    doc["dataset"]["source"] = {"path": str(tmp_path / "customers.csv"), "generate": {"event_weeks": 12, "rows": 1200, "seed": 3}}
    spec = parse_spec(doc)
    staged = ingest(spec, tmp_path / "run")
    report = assess(spec, staged)
    text = report.summary()
    lines = {m.group(1): m for m in re.finditer(
        r"^  (\w+)\s+(\d\.\d\d) x (\d\.\d{3}) = (\d\.\d{3})  (.+)$", text, re.M)}
    assert set(lines) == set(WEIGHTS)
    total = re.search(r"^  total\s+(\d\.\d{3})$", text, re.M)
    assert float(total.group(1)) == pytest.approx(report.score, abs=5e-4)
    assert f"score {report.score:.3f}" in text.splitlines()[0]
    # no raw identifier value anywhere in the report
    raw = pd.read_csv(spec.dataset.source.resolved_path(), dtype=str)
    dumped = json.dumps(report.to_dict()) + text
    for column in ("email", "phone", "national_id", "name"):
        assert not any(v in dumped for v in raw[column].head(200))
    # identifiers never reach the training snapshot
    direct = {f["column"] for f in report.findings if f["category"] == "direct_identifier"}
    assert direct and not direct & set(pd.read_parquet(staged.snapshot_train).columns)


def test_malformed_source_lines_are_in_the_report(tmp_path):
    rows = [f"{20 + i},{'yes' if i % 2 else 'no'}" for i in range(30)] + ["44,no,extra"]
    spec, staged = small(tmp_path, "age,y", rows, [{"name": "age", "type": "numeric", "range": [18, 90]}])
    report = assess(spec, staged)
    assert report.source["rows_malformed"] == 1 == staged.quarantine_reasons["malformed line"]
    assert report.source["files"][0]["malformed_lines"] == [32]
    assert "1 malformed line(s) e.g. [32]" in report.summary()
