from __future__ import annotations

import copy
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ppmlops.data.ingest import ingest
from ppmlops.data.suites import SENSITIVE_PATTERNS, suite_from_spec, write_suite
from ppmlops.data.validate import validate
from ppmlops.errors import DataError, ValidationFailed
from ppmlops.spec import load_spec, parse_spec

REPO = Path(__file__).resolve().parents[2]
DEMO_DOC = yaml.safe_load((REPO / "dags" / "pipelines" / "demo.yaml").read_text())
DEMO_SUITE = REPO / "expectations" / "demo_customers.json"


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("validate")
    doc = copy.deepcopy(DEMO_DOC)
    doc["dataset"]["source"] = {"path": str(tmp / "customers.csv"), "generate": {"event_weeks": 12, "rows": 1500, "seed": 5}}
    spec = parse_spec(doc)
    return spec, ingest(spec, tmp / "run"), tmp


def tampered(staged, tmp_path, change) -> Path:
    _, r, _ = staged
    df = pd.read_parquet(r.snapshot_train)
    df = change(df)
    path = tmp_path / "snapshot_bad.parquet"
    df.to_parquet(path, index=False)
    return path


def test_demo_snapshot_passes(staged, tmp_path):
    _, r, _ = staged
    result = validate([r.snapshot_train, r.snapshot_test], DEMO_SUITE, tmp_path)
    n = len(json.loads(DEMO_SUITE.read_text())["expectations"])
    assert result["success"] is True and result["failed"] == []
    assert result["suite"] == "demo_customers" and result["evaluated"] == 2 * n
    report = json.loads((tmp_path / "validation.json").read_text())
    assert report["success"] is True
    assert [x["snapshot"] for x in report["results"]] == [r.snapshot_train, r.snapshot_test]
    assert report["results"][0]["gx_result"]["statistics"]["evaluated_expectations"] == n


def test_email_in_categorical_column_fails_and_is_masked(staged, tmp_path):
    def leak(df):
        df.loc[3, "region"] = "jane.doe@example.com"
        return df

    bad = tampered(staged, tmp_path, leak)
    with pytest.raises(ValidationFailed) as err:
        validate([bad], DEMO_SUITE, tmp_path)
    message = str(err.value)
    assert (f"expect_column_values_to_not_match_regex on region (values that look like email) in {bad.name}"
            in message)
    assert "expect_column_values_to_be_in_set on region" in message
    # Counts and examples describe private rows: only the report in the run folder has them.
    assert "jane.doe@example.com" not in message and "j***" not in message and "1 value" not in message
    report = (tmp_path / "validation.json").read_text()
    assert "jane.doe@example.com" not in report and "j***@e***.com" in report
    failed = json.loads(report)["failed"]
    assert {(f["expectation"], f["column"], f["pattern"]) for f in failed} == {
        ("expect_column_values_to_not_match_regex", "region", "email"),
        ("expect_column_values_to_be_in_set", "region", None),
    }


def test_identifier_column_in_snapshot_fails(staged, tmp_path):
    bad = tampered(staged, tmp_path, lambda df: df.assign(email="someone@example.com"))
    with pytest.raises(ValidationFailed, match=r"expect_table_columns_to_match_set on the table in .*snapshot_bad"):
        validate([bad], DEMO_SUITE, tmp_path)


def test_out_of_range_and_null_fail(staged, tmp_path):
    def damage(df):
        df.loc[0, "age"] = 130.0
        df.loc[1, "plan"] = None
        return df

    bad = tampered(staged, tmp_path, damage)
    with pytest.raises(ValidationFailed) as err:
        validate([bad], DEMO_SUITE, tmp_path)
    assert "expect_column_values_to_be_between on age" in str(err.value)
    assert "expect_column_values_to_not_be_null on plan" in str(err.value)


def test_missing_or_broken_suite_is_named(staged, tmp_path):
    _, r, _ = staged
    with pytest.raises(DataError, match=r"nope\.json: expectation suite not found"):
        validate([r.snapshot_train], tmp_path / "nope.json", tmp_path)
    broken = tmp_path / "broken.json"
    broken.write_text('{"name": "x", "expectations": [\n  {"type": }\n]}')
    with pytest.raises(DataError, match=r"broken\.json: line 2 column 12: not valid JSON"):
        validate([r.snapshot_train], broken, tmp_path)
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps({"name": "x", "expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "age"}},
        {"type": "expect_column_values_to_be_betwen", "kwargs": {"column": "age"}},
    ]}))
    with pytest.raises(DataError, match=r"typo\.json: expectation 1 \(expect_column_values_to_be_betwen\) is not valid"):
        validate([r.snapshot_train], typo, tmp_path)
    empty = tmp_path / "empty.json"
    empty.write_text('{"name": "x", "expectations": []}')
    with pytest.raises(DataError, match=r"empty\.json: the suite has no \"expectations\""):
        validate([r.snapshot_train], empty, tmp_path)


def test_suite_from_spec_pins_columns_and_sensitivity():
    spec = parse_spec(DEMO_DOC)
    suite = suite_from_spec(spec)
    by_type: dict[str, list[dict]] = {}
    for e in suite["expectations"]:
        by_type.setdefault(e["type"], []).append(e["kwargs"])
    columns = [f.name for f in spec.dataset.features] + ["churned"]
    assert by_type["expect_table_columns_to_match_set"] == [{"column_set": columns, "exact_match": True}]
    assert {k["column"] for k in by_type["expect_column_values_to_not_be_null"]} == set(columns)
    assert {(k["column"], k["min_value"], k["max_value"]) for k in by_type["expect_column_values_to_be_between"]} == {
        (f.name, f.range[0], f.range[1]) for f in spec.dataset.features if f.type == "numeric"}
    string_columns = {"sex", "region", "education", "plan", "churned"}
    regexes = {(k["column"], k["regex"]) for k in by_type["expect_column_values_to_not_match_regex"]}
    assert regexes == {(c, rx) for c in string_columns for rx in SENSITIVE_PATTERNS.values()}


def test_committed_suites_come_from_the_specs(tmp_path):
    for spec_file, suite_file in (("demo.yaml", "demo_customers.json"), ("adult_income.yaml", "uci_adult.json")):
        spec = load_spec(REPO / "dags" / "pipelines" / spec_file)
        committed = json.loads((REPO / "expectations" / suite_file).read_text())
        assert spec.suite_path(REPO) == REPO / "expectations" / suite_file
        assert committed["name"] == spec.dataset.id
        column_set = [e for e in committed["expectations"] if e["type"] == "expect_table_columns_to_match_set"]
        assert column_set[0]["kwargs"]["column_set"] == [f.name for f in spec.dataset.features] + [spec.dataset.label.column]
        written = write_suite(spec, tmp_path / suite_file)
        assert json.loads(written.read_text()) == suite_from_spec(spec)


@pytest.mark.parametrize("value,kind", [
    ("jane.doe@example.com", "email"), ("ping me: bob@mail.example.org", "email"),
    ("123-45-6789", "ssn"), ("4111 1111 1111 1111", "credit_card"),
    ("+1 415-555-0132", "phone"), ("(415) 555-0132", "phone"), ("020 7946 0958", "phone"), ("+49 30 1234567", "phone"),
])
def test_sensitive_patterns_match(value, kind):
    import re

    assert re.search(SENSITIVE_PATTERNS[kind], value)


def test_adult_categories_do_not_trip_sensitivity_patterns():
    import re

    spec = load_spec(REPO / "dags" / "pipelines" / "adult_income.yaml")
    values = [c for f in spec.dataset.features if f.type == "categorical" for c in f.categories]
    values += spec.dataset.label.values
    hits = [(v, k) for v in values for k, rx in SENSITIVE_PATTERNS.items() if re.search(rx, v)]
    assert hits == []


def test_adult_snapshots_pass(adult_dir, tmp_path):
    spec = load_spec(REPO / "dags" / "pipelines" / "adult_income.yaml")
    r = ingest(spec, tmp_path / "run")
    result = validate([r.snapshot_train, r.snapshot_test], spec.suite_path(REPO), tmp_path / "run")
    assert result["success"] and result["suite"] == "uci_adult"


# --------------------------------------------------------------------------- data docs, pseudonyms


def test_data_docs_are_built_with_the_run_and_masked(staged, tmp_path):
    def leak(df):
        df.loc[3, "region"] = "jane.doe@example.com"
        return df

    bad = tampered(staged, tmp_path, leak)
    with pytest.raises(ValidationFailed):
        validate([bad], DEMO_SUITE, tmp_path)
    report = json.loads((tmp_path / "validation.json").read_text())
    docs = report["data_docs"]
    assert docs["index"] == str(tmp_path / "data_docs" / "index.html")
    pages = [p for p in docs["pages"] if p.startswith("validations/")]
    # one page: a snapshot that fits in one batch is validated whole, its row count with the rest
    # (a batched one has a page per batch and one for the table's row count)
    assert len(pages) == 1 and (tmp_path / "data_docs" / "expectations" / "demo_customers.html").exists()
    html = "".join(p.read_text(errors="replace") for p in (tmp_path / "data_docs").rglob("*.html"))
    assert "jane.doe@example.com" not in html and "j***@e***.com" in html
    # a second validation replaces the site rather than piling up pages
    _, r, _ = staged
    validate([r.snapshot_train], DEMO_SUITE, tmp_path)
    assert len(list((tmp_path / "data_docs" / "validations").rglob("*.html"))) == 1


def _report(tmp_path, bad, **kw):
    with pytest.raises(ValidationFailed):
        validate([bad], DEMO_SUITE, tmp_path, **kw)
    return json.loads((tmp_path / "validation.json").read_text())


def test_a_snapshot_validated_in_batches_gives_the_whole_tables_results(staged, tmp_path, monkeypatch):
    """Batches of 150 rows against the table at once: the same expectations fail with the same
    counts, percentages, first unexpected values (with their row numbers) and statistics."""
    from ppmlops.data import validate as validate_mod

    def damage(df):
        assert len(df) > 30 * 24
        for i in range(0, 30 * 24, 24):  # 30 bad values over 5 batches: more than GX's 20 examples
            df.loc[i, "region"] = f"person{i}@example.com"
        df.loc[[5, 400], "age"] = [130.0, 140.0]
        df.loc[[9, 333], "plan"] = None
        df.loc[len(df) - 1, "education"] = "bogus"  # fails in the last batch only
        return df

    bad = tampered(staged, tmp_path, damage)
    whole = _report(tmp_path / "whole", bad, batch_rows=None)
    monkeypatch.setattr(validate_mod, "BATCH_ROWS", 150)
    batched = _report(tmp_path / "batched", bad)
    [w], [b] = whole["results"], batched["results"]
    assert b["gx_result"]["statistics"] == w["gx_result"]["statistics"]
    assert w["gx_result"]["statistics"]["unsuccessful_expectations"] >= 3  # email pattern, region set, age, plan

    def by_expectation(result):
        return {(r["expectation_config"]["type"], r["expectation_config"]["kwargs"].get("column"),
                 json.dumps(r["expectation_config"]["kwargs"].get("regex"))): (r["success"], r["result"])
                for r in result["gx_result"]["results"]}

    got, want = by_expectation(b), by_expectation(w)
    assert got.keys() == want.keys()
    for key, (success, result) in want.items():
        assert got[key][0] == success, key
        for field in ("element_count", "unexpected_count", "missing_count", "partial_unexpected_list",
                      "partial_unexpected_index_list", "observed_value"):
            assert got[key][1].get(field) == result.get(field), (key, field)
        for field in ("unexpected_percent", "missing_percent", "unexpected_percent_total"):
            assert got[key][1].get(field) == pytest.approx(result.get(field)), (key, field)
    assert {f["expectation"] for f in batched["failed"]} == {f["expectation"] for f in whole["failed"]}


def test_pseudonym_columns_are_pinned_to_hmac_digests(tmp_path, monkeypatch):
    monkeypatch.setenv("PPMLOPS_PSEUDONYM_KEY", "k" * 32)
    doc = copy.deepcopy(DEMO_DOC)
    doc["dataset"]["source"] = {"path": str(tmp_path / "customers.csv"), "generate": {"event_weeks": 12, "rows": 600, "seed": 2}}
    doc["dataset"]["pseudonymize"] = ["email", "customer_id"]
    spec = parse_spec(doc)
    r = ingest(spec, tmp_path / "run")
    suite = write_suite(spec, tmp_path / "suite.json")
    kinds = {(e["type"], e["kwargs"].get("column")) for e in suite_from_spec(spec)["expectations"]}
    assert ("expect_column_values_to_match_regex", "email_pseudonym") in kinds
    assert validate([r.snapshot_train, r.snapshot_test], suite, tmp_path / "ok")["success"]
    df = pd.read_parquet(r.snapshot_train)
    df.loc[0, "email_pseudonym"] = "someone@example.com"  # a raw value where a pseudonym belongs
    bad = tmp_path / "bad.parquet"
    df.to_parquet(bad, index=False)
    with pytest.raises(ValidationFailed, match=r"expect_column_values_to_match_regex on email_pseudonym"):
        validate([bad], suite, tmp_path / "bad")
