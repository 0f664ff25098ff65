from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ppmlops.errors import SpecError
from ppmlops.spec import expand_env, load_spec, load_specs, parse_spec

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "dags" / "pipelines" / "demo.yaml"


def demo_doc() -> dict:
    return yaml.safe_load(DEMO.read_text())


def test_repo_specs_load():
    specs = {s.name: s for _, s in load_specs(REPO / "dags" / "pipelines")}
    assert specs["demo_churn"].dataset.id == "demo_customers"
    assert specs["demo_churn"].dataset.source.generate is not None
    assert specs["adult_income"].dataset.test_source is not None
    assert specs["adult_income"].dag_id == "ppmlops_adult_income"


def test_missing_field_is_named():
    doc = demo_doc()
    del doc["dataset"]["label"]
    with pytest.raises(SpecError, match=r"demo\.yaml.*\n.*dataset\.label: Field required"):
        parse_spec(doc, "demo.yaml")


def test_wrong_type_is_named():
    doc = demo_doc()
    doc["training"]["epochs"] = "many"
    with pytest.raises(SpecError, match=r"training\.epochs"):
        parse_spec(doc, "demo.yaml")


def test_unknown_key_rejected():
    doc = demo_doc()
    doc["privacy"]["epsilonn"] = 1
    with pytest.raises(SpecError, match=r"privacy\.epsilonn: Extra inputs are not permitted"):
        parse_spec(doc, "demo.yaml")


def test_run_budget_cannot_exceed_dataset_budget():
    doc = demo_doc()
    doc["privacy"]["run_epsilon"] = 5.0
    with pytest.raises(SpecError, match="exceeds the dataset epsilon"):
        parse_spec(doc, "demo.yaml")


def test_identifier_cannot_be_a_feature():
    doc = demo_doc()
    doc["dataset"]["identifiers"].append("age")
    with pytest.raises(SpecError, match=r"\['age'\] are features and also identifiers"):
        parse_spec(doc, "demo.yaml")


def test_bad_numeric_range():
    doc = demo_doc()
    doc["dataset"]["features"][0]["range"] = [90, 18]
    with pytest.raises(SpecError, match="low < high"):
        parse_spec(doc, "demo.yaml")


def test_label_positive_must_be_allowed():
    doc = demo_doc()
    doc["dataset"]["label"]["positive"] = "maybe"
    with pytest.raises(SpecError, match="label.positive 'maybe' is not among"):
        parse_spec(doc, "demo.yaml")


def test_not_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(SpecError, match="bad.yaml: not valid YAML"):
        load_spec(bad)
    with pytest.raises(SpecError, match="nope.yaml: pipeline spec not found"):
        load_spec(tmp_path / "nope.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(SpecError, match="must be a mapping"):
        load_spec(listy)


def test_env_expansion(monkeypatch):
    monkeypatch.setenv("PPMLOPS_DATA", "/data")
    assert expand_env("${PPMLOPS_DATA}/adult/train.csv") == "/data/adult/train.csv"
    assert expand_env("${NOT_SET_ANYWHERE:-/fallback}/x") == "/fallback/x"
    monkeypatch.delenv("PPMLOPS_DATA")
    with pytest.raises(SpecError, match="PPMLOPS_DATA is not set"):
        expand_env("${PPMLOPS_DATA}/adult/train.csv")


def test_format_from_suffix():
    doc = demo_doc()
    doc["dataset"]["source"]["path"] = "/x/table.parquet"
    assert parse_spec(doc).dataset.source.resolved_format() == "parquet"
    doc["dataset"]["source"]["path"] = "/x/table.xlsx"
    with pytest.raises(SpecError, match="set source.format"):
        parse_spec(doc).dataset.source.resolved_format()
