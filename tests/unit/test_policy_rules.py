"""The Rego unit tests of policies.rego, run through ppmlops.compliance.policy_tests on OPA's
engine (the embedded worker), the runner's own reporting of failures, and its coverage report
(OPA's cover tracer)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from ppmlops.cli import main
from ppmlops.compliance.coverage import merge, row_spans
from ppmlops.compliance.policy_tests import run_policy_tests
from ppmlops.errors import PolicyError
from ppmlops.settings import REPO_ROOT

POLICY = REPO_ROOT / "policies.rego"
TESTS = REPO_ROOT / "tests" / "policies"


@pytest.fixture(scope="module")
def suite():
    return run_policy_tests(POLICY, TESTS).results


def test_every_rego_test_passes(suite):
    failed = [f"{name}: {message}" for name, passed, message in suite if not passed]
    assert not failed, "\n".join(failed)


def test_suite_covers_each_decision_and_reason(suite):
    names = {name.rsplit(".", 1)[1] for name, _, _ in suite}
    expected = {
        "test_budget_bound_by_request", "test_budget_bound_by_ledger", "test_budget_bound_by_profile",
        "test_budget_never_above_remaining", "test_train_allows_demo", "test_train_denies_spent_budget",
        "test_train_denies_delta_at_one_over_rows", "test_train_denies_low_consent",
        "test_train_denies_direct_identifiers", "test_deploy_allows_demo", "test_deploy_denies_overspent_run",
        "test_deploy_denies_dataset_over_budget", "test_deploy_denies_large_delta",
        "test_deploy_denies_other_accountant", "test_deploy_denies_run_without_filter",
        "test_deploy_denies_audit_above_claim", "test_deploy_denies_low_accuracy",
        "test_deploy_denies_reproducible_randomness_in_every_environment", "test_deploy_denies_incomplete_model_card",
        "test_deploy_needs_approval_for_high_risk", "test_deploy_needs_approval_when_profile_demands_it",
        "test_number_formatting",
        # issue 26: a model no better than guessing, judged on too few rows or on one class
        "test_deploy_denies_model_below_its_majority_baseline", "test_deploy_denies_an_evaluation_on_too_few_rows",
        "test_deploy_denies_one_class_holdout", "test_deploy_denies_undefined_auc",
        "test_deploy_margin_is_the_officers_floor_and_the_spec_may_raise_it",
        "test_train_denies_a_partition_with_one_class",
    }
    assert expected <= names, sorted(expected - names)


def test_a_failing_rego_test_is_reported_as_failing(tmp_path):
    tests = tmp_path / "tests"
    shutil.copytree(TESTS, tests)
    (tests / "test_wrong.rego").write_text(
        "package ppmlops_wrong\n"
        "\n"
        "import data.ppmlops\n"
        "import data.ppmlops_test\n"
        "\n"
        "# Deliberately wrong: the demo run is allowed to train.\n"
        "test_demo_run_is_refused if {\n"
        "\td := ppmlops.train with input as ppmlops_test.train_input\n"
        "\td.allow == false\n"
        "}\n"
        "\n"
        "test_value_not_true := 3\n"
    )
    results = {name: (passed, message) for name, passed, message in run_policy_tests(POLICY, tests).results}
    wrong = tests / "test_wrong.rego"
    assert results["data.ppmlops_wrong.test_demo_run_is_refused"] == (
        False, f"{wrong}:7: undefined (an expression in its body was false)")
    assert results["data.ppmlops_wrong.test_value_not_true"] == (False, f"{wrong}:12: value 3, not true")
    assert results["data.ppmlops_test.test_train_allows_demo"] == (True, "")


def test_a_test_that_errors_fails_with_file_and_line(tmp_path):
    (tmp_path / "test_error.rego").write_text(
        "package ppmlops_error\n\ntest_divides_by_zero if {\n\tx := 0\n\t1 / x == 1\n}\n")
    [(name, passed, message)] = run_policy_tests(POLICY, tmp_path).results
    assert name == "data.ppmlops_error.test_divides_by_zero" and not passed
    assert message == f"{tmp_path / 'test_error.rego'}:5: div: divide by zero"


def test_unparsable_test_file_raises_naming_file_and_line(tmp_path):
    (tmp_path / "test_bad.rego").write_text("package bad\n\ntest_x := if {\n\ttrue\n}\n")
    with pytest.raises(PolicyError, match=rf"{tmp_path / 'test_bad.rego'}:3:"):
        run_policy_tests(POLICY, tmp_path)


def test_no_test_files_is_an_error(tmp_path):
    with pytest.raises(PolicyError, match="no \\*.rego test files"):
        run_policy_tests(POLICY, tmp_path)


def test_a_test_that_errors_does_not_hide_the_others_in_its_package(tmp_path):
    (tmp_path / "test_mixed.rego").write_text(
        "package ppmlops_mixed\n\ntest_ok if true\n\ntest_divides_by_zero if {\n\tx := 0\n\t1 / x == 1\n}\n\n"
        "test_false if false\n")
    results = {name.rsplit(".", 1)[1]: (passed, message) for name, passed, message in
               run_policy_tests(POLICY, tmp_path).results}
    where = tmp_path / "test_mixed.rego"
    assert results == {
        "test_ok": (True, ""),
        "test_divides_by_zero": (False, f"{where}:7: div: divide by zero"),
        "test_false": (False, f"{where}:10: undefined (an expression in its body was false)"),
    }


# --- coverage ---------------------------------------------------------------------------------
def test_coverage_names_the_lines_no_test_reaches(tmp_path):
    policy = tmp_path / "small.rego"
    policy.write_text(
        "package small\n"            # 1
        "\n"                         # 2
        "allow if input.user == \"admin\"\n"  # 3
        "\n"                         # 4
        "deny contains \"no user\" if {\n"  # 5
        "\tnot input.user\n"          # 6
        "}\n")                       # 7
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_small.rego").write_text(
        "package small_test\n\nimport data.small\n\ntest_admin if small.allow with input as {\"user\": \"admin\"}\n")
    report = run_policy_tests(policy, tests, coverage=True)
    assert [r.passed for r in report.results] == [True]
    files = {Path(f.path).name: f for f in report.coverage.files}
    small = files["small.rego"]
    assert small.not_covered_rows == [5, 6]  # the deny rule no test evaluates
    assert (small.covered_lines, small.not_covered_lines) == (1, 2)
    assert small.percent == pytest.approx(100 / 3)
    assert files["test_small.rego"].not_covered_rows == []
    assert report.coverage.opa_json["files"][str(policy)]["not_covered_lines"] == 2


def test_coverage_of_the_real_suite(suite):
    report = run_policy_tests(POLICY, TESTS, coverage=True)
    [policy] = [f for f in report.coverage.files if Path(f.path) == POLICY]
    assert policy.covered_lines > 300
    # every deny and approval rule of policies.rego is reached by some test
    assert policy.not_covered_rows == [], row_spans(policy.not_covered_rows)


def test_merging_one_report_keeps_opas_numbers():
    # A report as OPA's cover tracer writes it: row 3 partly covered (counts in both).
    report = {"files": {"p.rego": {
        "covered": [{"start": {"row": 3, "col": 11}, "end": {"row": 3, "col": 22}}],
        "not_covered": [{"start": {"row": 3, "col": 1}, "end": {"row": 3, "col": 7}},
                        {"start": {"row": 5, "col": 1}, "end": {"row": 6, "col": 13}}],
        "covered_lines": 1, "not_covered_lines": 3, "coverage": 25}},
        "covered_lines": 1, "not_covered_lines": 3, "coverage": 25}
    merged = merge([report])
    assert {k: merged["files"]["p.rego"][k] for k in ("covered_lines", "not_covered_lines", "coverage")} == \
        {"covered_lines": 1, "not_covered_lines": 3, "coverage": 25.0}
    # a second evaluation that reached rows 5-6 and the head on row 3 leaves nothing uncovered
    second = {"files": {"p.rego": {
        "covered": [{"start": {"row": 3, "col": 1}, "end": {"row": 3, "col": 7}},
                    {"start": {"row": 5, "col": 1}, "end": {"row": 6, "col": 13}}],
        "not_covered": [{"start": {"row": 3, "col": 11}, "end": {"row": 3, "col": 22}}]}}}
    both = merge([report, second])["files"]["p.rego"]
    assert (both["covered_lines"], both["not_covered_lines"], both["not_covered"]) == (3, 0, [])


def test_cli_prints_coverage_and_writes_opas_json(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("PPMLOPS_OPA_URL", raising=False)
    out_json = tmp_path / "coverage.json"
    code = main(["policy", "test", "--coverage", "--coverage-json", str(out_json)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert " 0 failed" in out
    assert "coverage (OPA's cover tracer, in lines):" in out
    assert re.search(r"policies\.rego\s+\d+\s+0\s+100\.0%", out), out
    doc = json.loads(out_json.read_text())
    assert set(doc) == {"files", "covered_lines", "not_covered_lines", "coverage"}
    assert str(POLICY) in doc["files"]
