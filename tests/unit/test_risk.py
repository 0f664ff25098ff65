from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from ppmlops.data.ingest import IngestResult, ingest
from ppmlops.errors import DataError
from ppmlops.run.records import StagedData
from ppmlops.risk.assess import K_BY_REGULATION, WEIGHTS, assess, value_kind
from ppmlops.spec import load_spec, parse_spec

REPO = Path(__file__).resolve().parents[2]
DEMO_DOC = yaml.safe_load((REPO / "dags" / "pipelines" / "demo.yaml").read_text())


def by(report, category):
    return {f["column"]: f for f in report.findings if f["category"] == category}


def check_arithmetic(report):
    assert sum(WEIGHTS.values()) == pytest.approx(1.0)
    assert [c["name"] for c in report.components] == list(WEIGHTS)
    for c in report.components:
        assert 0.0 <= c["value"] <= 1.0
        assert c["weight"] == WEIGHTS[c["name"]]
        assert c["points"] == pytest.approx(c["weight"] * c["value"])
        assert c["reason"]
    assert report.score == pytest.approx(sum(c["points"] for c in report.components))
    assert 0.0 <= report.score <= 1.0
    assert report.level in {"low", "medium", "high"}
    json.dumps(report.to_dict())


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("risk")
    doc = copy.deepcopy(DEMO_DOC)
    doc["dataset"]["source"] = {"path": str(tmp / "customers.csv"), "generate": {"event_weeks": 12, "rows": 3000, "seed": 7}}
    spec = parse_spec(doc)
    staged = ingest(spec, tmp / "run")
    return spec, staged, assess(spec, staged)


def test_demo_finds_declared_identifiers_outside_features(demo):
    spec, staged, report = demo
    check_arithmetic(report)
    direct, quasi = by(report, "direct_identifier"), by(report, "quasi_identifier")
    assert set(direct) == {"customer_id", "name", "email", "phone", "national_id"}
    assert "postal_code" in quasi and quasi["postal_code"]["declared"]
    for f in list(direct.values()) + [quasi["postal_code"]]:
        assert f["in_features"] is False and f["declared"] is True
    assert direct["email"]["kind"] == "email" and "values" in direct["email"]["detected_by"]
    assert direct["national_id"]["kind"] == "ssn" and direct["national_id"]["share"] == 1.0
    assert direct["phone"]["kind"] == "phone" and direct["phone"]["share"] >= 0.99
    assert direct["name"]["kind"] == "name"
    # examples are masked: no raw value from the source appears
    raw = Path(spec.dataset.source.resolved_path()).read_text()
    for f in direct.values():
        assert f["masked_examples"] and all(e not in raw for e in f["masked_examples"])
    assert {"age", "sex"} <= set(quasi) and report.quasi_identifiers == ["age", "sex"]
    assert set(by(report, "special_category")) == {"sex"}
    components = {c["name"]: c for c in report.components}
    assert components["identifiers"]["value"] == 0.25
    assert components["consent"]["value"] == pytest.approx(staged.quarantine_reasons["no consent"] / staged.rows_in)
    assert components["regulation"]["value"] == 0.8
    assert components["dataset_size"]["value"] == pytest.approx(1000 / staged.rows_train)
    assert "email" in report.summary() and "score" in report.summary()


def test_adult_special_categories_and_quasi_identifiers(adult_dir, tmp_path):
    spec = load_spec(REPO / "dags" / "pipelines" / "adult_income.yaml")
    staged = ingest(spec, tmp_path / "run")
    report = assess(spec, staged)
    check_arithmetic(report)
    assert by(report, "direct_identifier") == {}
    special = by(report, "special_category")
    assert set(special) == {"race", "sex", "marital_status", "relationship", "native_country"}
    assert all(f["in_features"] for f in special.values())
    assert "age" in by(report, "quasi_identifier")
    assert "age" in report.quasi_identifiers and report.k == K_BY_REGULATION["gdpr"] == 5
    components = {c["name"]: c for c in report.components}
    assert components["identifiers"]["value"] == 0.0
    assert components["special_categories"]["value"] == 1.0
    assert components["consent"]["value"] == 0.5  # no consent column declared
    assert 0.0 < components["k_anonymity"]["value"] < 0.5


def small(tmp_path: Path, rows: list[str], header: str, features: list[dict], **dataset) -> tuple:
    tmp_path.mkdir(parents=True, exist_ok=True)
    src = tmp_path / "train.csv"
    src.write_text(header + "\n" + "\n".join(rows) + "\n")
    holdout = tmp_path / "test.csv"
    holdout.write_text(header + "\n" + rows[0] + "\n")
    doc = {
        "name": "small",
        "dataset": {"id": "small", "source": {"path": str(src)}, "test_source": {"path": str(holdout)},
                    "label": {"column": "y", "positive": "yes", "values": ["yes", "no"]},
                    "features": features, **dataset},
        "privacy": {"epsilon": 1.0, "delta": 1e-5, "run_epsilon": 1.0},
        "deploy": {"model_name": "small"},
    }
    spec = parse_spec(doc)
    return spec, ingest(spec, tmp_path / "run")


def test_identifier_in_features_forces_high(tmp_path):
    emails = [f"user{i}@example.com" for i in range(6)]
    rows = [f"{e},{30 + i},yes" for i, e in enumerate(emails)]
    features = [{"name": "contact", "type": "categorical", "categories": emails},
                {"name": "age", "type": "numeric", "range": [18, 90]}]
    spec, staged = small(tmp_path, rows, "contact,age,y", features, regulation="none")
    report = assess(spec, staged)
    check_arithmetic(report)
    contact = by(report, "direct_identifier")["contact"]
    assert contact["in_features"] is True and contact["kind"] == "email" and contact["detected_by"] == ["values"]
    assert report.components[0]["value"] == 1.0
    assert report.level == "high"
    assert "IN TRAINING COLUMNS" in report.summary()


def test_k_anonymity_share_and_k_per_regulation(tmp_path):
    rows = ["30,female,yes"] * 10 + ["40,male,no"] * 2 + ["50,male,no"] * 4
    features = [{"name": "age", "type": "numeric", "range": [18, 90]},
                {"name": "sex", "type": "categorical", "categories": ["female", "male"]}]
    spec, staged = small(tmp_path / "gdpr", rows, "age,sex,y", features, regulation="gdpr")
    report = assess(spec, staged)
    k_anon = {c["name"]: c for c in report.components}["k_anonymity"]
    assert report.k == 5 and k_anon["value"] == pytest.approx(6 / 16)  # classes of 2 and 4 are below 5
    spec, staged = small(tmp_path / "none", rows, "age,sex,y", features, regulation="none")
    report = assess(spec, staged)
    assert report.k == 3 and {c["name"]: c for c in report.components}["k_anonymity"]["value"] == pytest.approx(2 / 16)
    spec, staged = small(tmp_path / "hipaa", rows, "age,sex,y", features, regulation="hipaa")
    report = assess(spec, staged)
    components = {c["name"]: c for c in report.components}
    assert report.k == 11 and components["k_anonymity"]["value"] == 1.0  # even the class of 10 is below 11
    assert components["regulation"]["value"] == 1.0
    check_arithmetic(report)


def test_source_changed_since_ingest_is_an_error(tmp_path):
    rows = ["30,yes", "31,no", "32,no"]
    spec, staged = small(tmp_path, rows, "age,y", [{"name": "age", "type": "numeric", "range": [18, 90]}])
    (tmp_path / "train.csv").write_text("age,y\n33,yes\n")
    with pytest.raises(DataError, match=r"train\.csv.*source changed since ingestion"):
        assess(spec, staged)


def test_report_survives_the_json_round_trip(demo):
    spec, staged, report = demo
    again = assess(spec, StagedData.model_validate_json(StagedData(result=staged).model_dump_json()).result)
    assert again.to_dict() == report.to_dict()


@pytest.mark.parametrize("value,kind", [
    ("a.b@example.org", "email"), ("123-45-6789", "ssn"), ("666-45-6789", None), ("000-12-3456", None),
    ("4111 1111 1111 1111", "credit_card"), ("4111 1111 1111 1112", None),
    ("+1 415-555-0132", "phone"), ("(415) 555-0132", "phone"), ("020 7946 0958", "phone"),
    ("1484705", None), ("1484705.0", None), ("Married-civ-spouse", None), ("<=50K", None),
])
def test_value_detectors(value, kind):
    assert value_kind(value) == kind
