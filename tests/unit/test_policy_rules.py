"""The Rego unit tests of policies.rego, run through ppmlops.compliance.policy_tests (the same
embedded engine, in a child process), and the runner's own reporting of failures."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ppmlops.compliance.policy_tests import run_policy_tests
from ppmlops.errors import PolicyError
from ppmlops.settings import REPO_ROOT

POLICY = REPO_ROOT / "policies.rego"
TESTS = REPO_ROOT / "tests" / "policies"


@pytest.fixture(scope="module")
def suite() -> list[tuple[str, bool, str]]:
    return run_policy_tests(POLICY, TESTS)


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
        "test_deploy_denies_production_without_secure_rng", "test_deploy_denies_incomplete_model_card",
        "test_deploy_needs_approval_for_high_risk", "test_deploy_needs_approval_when_profile_demands_it",
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
    results = {name: (passed, message) for name, passed, message in run_policy_tests(POLICY, tests)}
    wrong = tests / "test_wrong.rego"
    assert results["data.ppmlops_wrong.test_demo_run_is_refused"] == (
        False, f"{wrong}:7: undefined (an expression in its body was false)")
    assert results["data.ppmlops_wrong.test_value_not_true"] == (False, f"{wrong}:12: value 3, not true")
    assert results["data.ppmlops_test.test_train_allows_demo"] == (True, "")


def test_a_test_that_errors_fails_with_file_and_line(tmp_path):
    (tmp_path / "test_error.rego").write_text(
        "package ppmlops_error\n\ntest_divides_by_zero if {\n\tx := 0\n\t1 / x == 1\n}\n")
    [(name, passed, message)] = run_policy_tests(POLICY, tmp_path)
    assert name == "data.ppmlops_error.test_divides_by_zero" and not passed
    assert message.startswith(f"{tmp_path / 'test_error.rego'}:5:")


def test_unparsable_test_file_raises_naming_file_and_line(tmp_path):
    (tmp_path / "test_bad.rego").write_text("package bad\n\ntest_x := if {\n\ttrue\n}\n")
    with pytest.raises(PolicyError, match=rf"{tmp_path / 'test_bad.rego'}:3:"):
        run_policy_tests(POLICY, tmp_path)


def test_no_test_files_is_an_error(tmp_path):
    with pytest.raises(PolicyError, match="no \\*.rego test files"):
        run_policy_tests(POLICY, tmp_path)
