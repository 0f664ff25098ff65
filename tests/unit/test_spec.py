from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from ppmlops.errors import SpecError
from ppmlops.spec import PipelineSpec, expand_env, load_spec, load_specs, parse_spec

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


def test_builtin_variables_expand(monkeypatch):
    monkeypatch.setenv("PPMLOPS_DATA", "/data")
    assert expand_env("${PPMLOPS_DATA}/adult/train.csv") == "/data/adult/train.csv"
    monkeypatch.delenv("PPMLOPS_DATA")
    assert expand_env("${PPMLOPS_DATA:-/fallback}/x") == "/fallback/x"
    with pytest.raises(SpecError, match=r"dataset\.source\.path: uses \$\{PPMLOPS_DATA\}, and the environment "
                       r"variable PPMLOPS_DATA is not set"):
        expand_env("${PPMLOPS_DATA}/adult/train.csv", field_name="dataset.source.path")


def spec_with_source(path: str, **top) -> dict:
    doc = demo_doc()
    doc["dataset"]["source"] = {"path": path}
    doc.update(top)
    return doc


@pytest.mark.parametrize("name", ["PPMLOPS_PSEUDONYM_KEY", "HOME", "AWS_SECRET_ACCESS_KEY", "NOT_SET_ANYWHERE"])
def test_other_environment_variables_are_refused_and_never_read(monkeypatch, name):
    monkeypatch.setenv(name, "s3cr3t-value-from-the-environment")
    with pytest.raises(SpecError) as err:
        parse_spec(spec_with_source(f"${{{name}}}/customers.csv"), "demo.yaml")
    message = str(err.value)
    assert f"dataset.source.path: ${{{name}}} is not a variable this spec may use" in message
    assert "declare it under the top-level `variables:`" in message
    assert "s3cr3t" not in message
    with pytest.raises(SpecError, match="is not a variable"):  # also with a default: never read
        expand_env(f"${{{name}:-/x}}")


def test_declared_variables_have_defaults_the_environment_may_override(monkeypatch, tmp_path):
    doc = spec_with_source("${CHURN_DIR}/customers.csv", variables={"CHURN_DIR": str(tmp_path / "a")})
    spec = parse_spec(doc, "demo.yaml")
    monkeypatch.delenv("CHURN_DIR", raising=False)
    assert spec.dataset.source.resolved_path() == (tmp_path / "a" / "customers.csv").resolve()
    monkeypatch.setenv("CHURN_DIR", str(tmp_path / "b"))
    assert spec.dataset.source.resolved_path() == (tmp_path / "b" / "customers.csv").resolve()
    # Through JSON and back (how a Ray job receives the spec) the declarations come along.
    again = PipelineSpec.model_validate(spec.model_dump(mode="json"))
    assert again.dataset.source.resolved_path() == spec.dataset.source.resolved_path()


@pytest.mark.parametrize("name,why", [("PPMLOPS_DATA", "built in"), ("DB_PASSWORD", "looks like a secret"),
                                      ("API_TOKEN", "looks like a secret"), ("MY_KEY", "looks like a secret"),
                                      ("PPMLOPS_DB_URL", "are settings"), ("1X", "letters, digits")])
def test_variables_that_cannot_be_declared(name, why):
    with pytest.raises(SpecError, match=rf"variable '{name}' cannot be declared: .*{why}"):
        parse_spec(spec_with_source("/x.csv", variables={name: "/x"}), "demo.yaml")


def test_a_bare_dollar_is_refused():
    with pytest.raises(SpecError, match=r"dataset\.source\.path: a '\$' that is not part of \$\{NAME\}"):
        parse_spec(spec_with_source("$HOME/customers.csv"), "demo.yaml")


# --------------------------------------------------------------------------- data roots


@pytest.fixture()
def roots(tmp_path, monkeypatch):
    """PPMLOPS_DATA_ROOTS unset: the defaults PPMLOPS_DATA, PPMLOPS_HOME and the project root."""
    monkeypatch.delenv("PPMLOPS_DATA_ROOTS", raising=False)
    monkeypatch.setenv("PPMLOPS_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path / "home"))
    (tmp_path / "data").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "shadow.csv").write_text("root:$6$salt$hash:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n")
    return tmp_path


def test_sources_inside_the_default_roots(roots):
    spec = parse_spec(spec_with_source("${PPMLOPS_DATA}/t.csv"), "demo.yaml")
    assert spec.dataset.source.resolved_path() == (roots / "data" / "t.csv").resolve()
    spec = parse_spec(spec_with_source("${PPMLOPS_HOME}/demo/t.csv"), "demo.yaml")
    assert spec.dataset.source.resolved_path() == (roots / "home" / "demo" / "t.csv").resolve()
    spec = parse_spec(spec_with_source(str(REPO / "dags" / "pipelines" / "demo.yaml")), "demo.yaml")
    assert spec.dataset.source.resolved_path() == DEMO.resolve()


def test_a_source_outside_the_roots_is_refused(roots):
    outside = roots / "outside" / "shadow.csv"
    for path in (str(outside), "/etc/shadow", "${PPMLOPS_DATA}/../outside/shadow.csv"):
        spec = parse_spec(spec_with_source(path), "demo.yaml")
        with pytest.raises(SpecError) as err:
            spec.dataset.source.resolved_path()
        message = str(err.value)
        assert message.startswith("dataset.source.path: ") and "is outside the data roots" in message
        assert "PPMLOPS_DATA_ROOTS" in message and str((roots / "data").resolve()) in message
        assert "$6$salt" not in message


def test_a_symlink_out_of_a_root_is_refused(roots):
    link = roots / "data" / "innocent.csv"
    link.symlink_to(roots / "outside" / "shadow.csv")
    spec = parse_spec(spec_with_source("${PPMLOPS_DATA}/innocent.csv"), "demo.yaml")
    with pytest.raises(SpecError, match=r"outside[/\\]shadow\.csv \(via .*innocent\.csv\) is outside the data roots"):
        spec.dataset.source.resolved_path()


def test_the_operator_may_allow_more_roots(roots, monkeypatch):
    monkeypatch.setenv("PPMLOPS_DATA_ROOTS", os.pathsep.join([str(roots / "data"), str(roots / "outside")]))
    spec = parse_spec(spec_with_source(str(roots / "outside" / "shadow.csv")), "demo.yaml")
    assert spec.dataset.source.resolved_path() == (roots / "outside" / "shadow.csv").resolve()
    spec = parse_spec(spec_with_source("${PPMLOPS_HOME}/x.csv"), "demo.yaml")
    with pytest.raises(SpecError, match="outside the data roots"):  # the setting replaces the defaults
        spec.dataset.source.resolved_path()


def test_a_missing_column_shows_names_never_the_first_line(roots, monkeypatch):
    from ppmlops.data.ingest import ingest
    from ppmlops.errors import DataError

    monkeypatch.setenv("PPMLOPS_DATA_ROOTS", str(roots))
    doc = spec_with_source(str(roots / "outside" / "shadow.csv"))
    with pytest.raises(DataError) as err:
        ingest(parse_spec(doc), roots / "run")
    message = str(err.value)
    assert "missing column(s) required by the spec: churned (label), age (feature), sex (feature)" in message
    assert "header has 1 column(s) - one column only: is the delimiter right" in message
    assert "salt" not in message and "root:" not in message and "19000" not in message


def test_a_typo_in_a_column_is_pointed_at(roots, monkeypatch):
    from ppmlops.data.ingest import ingest
    from ppmlops.errors import DataError

    monkeypatch.setenv("PPMLOPS_DATA_ROOTS", str(roots))
    src = roots / "data" / "typo.csv"
    header = "email,Age,sex,region,education,plan,tenure_months,monthly_spend,sessions_per_week,support_tikets,consent,churned"
    src.write_text(header + "\na@x.org,40,male,north,primary,basic,3,10,1,1,yes,no\n")
    # `Age` is the spec's `age` (names match up to letter case); the typo is pointed at
    with pytest.raises(DataError, match=r"typo\.csv: missing column\(s\) required by the spec: "
                       r"support_tickets \(feature\) - the file has "
                       r"'support_tikets'; the file's header has 12 column\(s\)") as err:
        ingest(parse_spec(spec_with_source(str(src))), roots / "run")
    assert "a@x.org" not in str(err.value)


def test_infinite_numeric_range_is_refused():
    doc = demo_doc()
    doc["dataset"]["features"][0]["range"] = [0, float("inf")]
    with pytest.raises(SpecError, match=r"dataset\.features\.0\.numeric\.range: Value error, range must be two "
                       r"finite numbers \[low, high\], got \[0\.0, inf\]"):
        parse_spec(doc, "demo.yaml")
    yaml_text = DEMO.read_text().replace("range: [18, 90]", "range: [0, .inf]")
    assert yaml_text != DEMO.read_text()
    with pytest.raises(SpecError, match="finite numbers"):
        parse_spec(yaml.safe_load(yaml_text), "demo.yaml")


def test_format_from_suffix():
    doc = demo_doc()
    doc["dataset"]["source"]["path"] = "/x/table.parquet"
    assert parse_spec(doc).dataset.source.resolved_format() == "parquet"
    doc["dataset"]["source"]["path"] = "/x/table.xlsx"
    with pytest.raises(SpecError, match="set source.format"):
        parse_spec(doc).dataset.source.resolved_format()


@pytest.mark.parametrize("path, value, field", [
    (("privacy", "epsilon"), 0, "privacy.epsilon"),
    (("privacy", "epsilon"), -1.0, "privacy.epsilon"),
    (("privacy", "delta"), 1.0, "privacy.delta"),
    (("privacy", "delta"), 0, "privacy.delta"),
    (("privacy", "run_epsilon"), 0, "privacy.run_epsilon"),
    (("training", "test_fraction"), 0, "training.test_fraction"),
    (("training", "test_fraction"), 1, "training.test_fraction"),
])
def test_privacy_and_split_bounds_are_exclusive(path, value, field):
    """A zero budget, a delta of 1 (no guarantee at all) or an empty partition are refused."""
    doc = demo_doc()
    doc[path[0]][path[1]] = value
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        parse_spec(doc, "demo.yaml")


def test_a_range_with_equal_ends_is_refused():
    doc = demo_doc()
    doc["dataset"]["features"][0]["range"] = [18, 18]
    with pytest.raises(SpecError, match=r"range must be \[low, high\] with low < high, got \[18\.0, 18\.0\]"):
        parse_spec(doc, "demo.yaml")
