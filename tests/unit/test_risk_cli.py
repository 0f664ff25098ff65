"""`ppmlops risk scan` and `ppmlops risk suggest`, through a parser built like ppmlops.cli's."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from ppmlops.data.synthetic import write_demo
from ppmlops import risk_cli

REPO = Path(__file__).resolve().parents[2]


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="ppmlops")
    sub = parser.add_subparsers(dest="command", required=True)
    risk_cli.register(sub)
    args = parser.parse_args(argv)
    code = args.func(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def demo_csv(tmp_path_factory) -> Path:
    return write_demo(tmp_path_factory.mktemp("cli") / "customers.csv", 1500, 4)


def test_scan_json_names_every_sensitive_column(demo_csv, capsys):
    code, out, err = run(["risk", "scan", str(demo_csv), "--json", "--label", "churned",
                          "--consent-column", "consent", "--delta", "1e-5"], capsys)
    assert code == 0 and err == ""
    doc = json.loads(out)
    cats = {(f["column"], f["category"]) for f in doc["findings"]}
    assert {(c, "direct_identifier") for c in ("customer_id", "name", "email", "phone", "national_id")} <= cats
    assert {("postal_code", "quasi_identifier"), ("age", "quasi_identifier"), ("sex", "special_category")} <= cats
    assert doc["level"] == "high"  # the file as it stands would put identifiers into training
    assert [c["name"] for c in doc["components"]] == ["identifiers", "special_categories", "k_anonymity",
                                                      "consent", "dataset_size", "regulation"]
    assert doc["score"] == pytest.approx(sum(c["points"] for c in doc["components"]))
    assert doc["consent"]["rows_refused"] > 0 and doc["reidentification"]["uniqueness"] > 0.9
    raw = demo_csv.read_text().splitlines()[1].split(",")
    assert not any(v in out for v in raw[1:5])  # name, e-mail, phone, national id never printed


def test_scan_text_and_report_file(demo_csv, tmp_path, capsys):
    out_path = tmp_path / "reports" / "r.json"
    code, out, _ = run(["risk", "scan", str(demo_csv), "--out", str(out_path), "--identifiers",
                        "customer_id,name,email,phone,national_id", "--features", "age,sex,plan"], capsys)
    assert code == 0 and out.startswith("PRAM risk assessment of dataset customers: score")
    doc = json.loads(out_path.read_text())
    assert all(not f["in_features"] for f in doc["findings"] if f["category"] == "direct_identifier")
    assert doc["quasi_identifiers"] == ["age", "sex"]


def test_scan_adult_through_its_spec(adult_dir, capsys):
    code, out, _ = run(["risk", "scan", str(REPO / "dags" / "pipelines" / "adult_income.yaml"), "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert not [f for f in doc["findings"] if f["category"] == "direct_identifier"]
    special = {f["column"] for f in doc["findings"] if f["category"] == "special_category"}
    assert special == {"race", "sex", "marital_status", "relationship", "native_country"}
    assert "age" in doc["quasi_identifiers"]


def test_suggest_from_spec_and_from_file(demo_csv, tmp_path, capsys, adult_dir):
    suite_path = tmp_path / "expectations" / "adult.json"
    code, out, _ = run(["risk", "suggest", str(REPO / "dags" / "pipelines" / "adult_income.yaml"),
                        "--out", str(suite_path)], capsys)
    assert code == 0 and f"wrote {suite_path}" in out
    suite = json.loads(suite_path.read_text())
    committed = json.loads((REPO / "expectations" / "uci_adult.json").read_text())
    assert suite["expectations"] == committed["expectations"]  # the committed suite is this, unedited so far
    assert suite["meta"]["generated_by"] == "ppmlops risk suggest"
    assert {f["column"] for f in suite["meta"]["risk_scan"]["findings"]} >= {"race", "sex", "age"}

    file_suite = tmp_path / "customers.json"
    code, _, _ = run(["risk", "suggest", str(demo_csv), "--out", str(file_suite), "--consent-column", "consent"],
                     capsys)
    doc = json.loads(file_suite.read_text())
    hint = doc["meta"]["spec_hint"]
    assert hint["identifiers"] == ["customer_id", "name", "email", "phone", "national_id"]
    checked = {e["kwargs"]["column"] for e in doc["expectations"] if e["type"] == "expect_column_values_to_not_match_regex"}
    assert "email" not in checked and "region" in checked


def test_hipaa_suggestion_adds_safe_harbor_rules(tmp_path, capsys):
    import yaml

    src = tmp_path / "p.csv"
    src.write_text("zip,age,y\n" + "".join(f"{['02134', '90210'][i % 2]},{20 + i % 70},{'yes' if i % 2 else 'no'}\n"
                                           for i in range(50)))
    spec = {"name": "h", "dataset": {"id": "h", "source": {"path": str(src)}, "regulation": "hipaa",
                                     "label": {"column": "y", "positive": "yes", "values": ["yes", "no"]},
                                     "features": [{"name": "zip", "type": "categorical", "categories": ["02134", "90210"]},
                                                  {"name": "age", "type": "numeric", "range": [18, 99]}]},
            "privacy": {"epsilon": 1, "delta": 1e-5, "run_epsilon": 1}, "deploy": {"model_name": "h"}}
    spec_path = tmp_path / "h.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "h.json"
    assert run(["risk", "suggest", str(spec_path), "--out", str(out)], capsys)[0] == 0
    rules = [(e["type"], e["kwargs"]) for e in json.loads(out.read_text())["expectations"]
             if e["meta"].get("check") == "hipaa_safe_harbor"]
    assert rules == [("expect_column_value_lengths_to_be_between", {"column": "zip", "max_value": 3}),
                     ("expect_column_values_to_be_between", {"column": "age", "max_value": 90})]


def test_bad_input_and_arguments_exit_with_a_named_error(tmp_path, capsys, demo_csv):
    code, _, err = run(["risk", "scan", str(tmp_path / "nope.csv")], capsys)
    assert code == 1 and "nope.csv: data source not found" in err
    code, _, err = run(["risk", "scan", str(demo_csv), "--delta", "2"], capsys)
    assert code == 2 and "argument --delta: delta must be in (0, 1)" in err
    code, _, err = run(["risk", "scan", str(demo_csv), "--purposes-column", "p"], capsys)
    assert code == 2 and "needs --consent-column" in err
    code, _, err = run(["risk", "scan", str(REPO / "dags" / "pipelines" / "demo.yaml"), "--label", "x"], capsys)
    assert code == 2 and "the spec declares this" in err
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    code, _, err = run(["risk", "scan", str(empty)], capsys)
    assert code == 1 and "empty.csv: file is empty" in err


def test_tab_delimited_file_with_malformed_lines(tmp_path, capsys):
    src = tmp_path / "t.tsv"
    src.write_text("email\tage\n" + "".join(f"u{i}@example.org\t{20 + i}\n" for i in range(30)) + "x\t1\t2\n")
    quarantine = tmp_path / "bad.csv"
    code, out, _ = run(["risk", "scan", str(src), "--delimiter", "tab", "--json", "--quarantine", str(quarantine)],
                       capsys)
    doc = json.loads(out)
    assert code == 0 and doc["source"]["files"][0]["delimiter"] == "\t"
    assert doc["source"]["files"][0]["malformed_lines"] == [32]
    assert "line 32 has 3 fields, the header has 2" in quarantine.read_text()


def test_scan_points_at_a_possible_consent_column(capsys):
    clinical = Path(__file__).resolve().parents[1] / "fixtures" / "risk" / "clinical.csv"
    code, out, _ = run(["risk", "scan", str(clinical)], capsys)
    assert code == 0
    assert ("  possible consent column: opt_in_research: declare it in dataset.consent "
            "(ppmlops risk scan: --consent-column opt_in_research)") in out.splitlines()
    assert "dx1: health, special category" in out and "zip5: postal code, quasi identifier" in out
    code, out, _ = run(["risk", "scan", str(clinical), "--json"], capsys)
    assert json.loads(out)["possible_consent_columns"] == ["opt_in_research"]
    code, out, _ = run(["risk", "scan", str(clinical), "--consent-column", "opt_in_research"], capsys)
    assert "possible consent column" not in out
