"""`ppmlops policy test` through an OPA server: the same Rego tests, verdicts over the Data API
(from the loopback server in tests/opa_server.py, which evaluates with OPA's engine)."""

from __future__ import annotations

import pytest

from ppmlops.cli import main
from ppmlops.compliance.policy_tests import run_policy_tests, run_policy_tests_opa
from ppmlops.errors import PolicyError
from ppmlops.settings import REPO_ROOT

from opa_server import FakeOpa  # tests/ is on sys.path (rootdir conftest)

POLICY = REPO_ROOT / "policies.rego"
TESTS = REPO_ROOT / "tests" / "policies"


def test_every_policy_test_passes_over_http_as_embedded():
    embedded = run_policy_tests(POLICY, TESTS).results
    with FakeOpa() as opa:
        over_http = run_policy_tests_opa(opa.url, POLICY, TESTS).results
        posted = [path for method, path in opa.requests if method == "POST"]
        left = set(opa.policies)
    assert [r[0] for r in over_http] == [r[0] for r in embedded]
    assert len(over_http) >= 40 and all(passed for _, passed, _ in over_http), [r for r in over_http if not r[1]]
    # each verdict was a Data API query, and the test modules were removed afterwards
    assert len(posted) == len(over_http) and all(p.startswith("/v1/data/ppmlops_test/test_") for p in posted)
    assert left == {"ppmlops"}


def test_a_failing_test_fails_over_http(tmp_path):
    (tmp_path / "test_fail.rego").write_text(
        "package ppmlops_test\n\nimport data.ppmlops\n\n"
        "test_allows_everything if {\n\tppmlops.deploy.outcome == \"allow\" with input as {}\n}\n")
    with FakeOpa() as opa:
        results = run_policy_tests_opa(opa.url, POLICY, tmp_path).results
    assert results == [("data.ppmlops_test.test_allows_everything", False,
                        f"{tmp_path / 'test_fail.rego'}:5: undefined (an expression in its body was false)")]


def test_unreachable_server_is_an_error_naming_the_url():
    with FakeOpa() as opa:
        url = opa.url
    with pytest.raises(PolicyError, match="unreachable"):
        run_policy_tests_opa(url, POLICY, TESTS, timeout_s=1)


def test_cli_uses_the_server_when_opa_url_is_set(monkeypatch, capsys):
    with FakeOpa() as opa:
        monkeypatch.setenv("PPMLOPS_OPA_URL", opa.url)
        code = main(["policy", "test"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"evaluating through the OPA server at {opa.url}" in out and " 0 failed" in out


def test_cli_refuses_coverage_over_http(monkeypatch, capsys):
    with FakeOpa() as opa:
        monkeypatch.setenv("PPMLOPS_OPA_URL", opa.url)
        code = main(["policy", "test", "--coverage"])
    assert code == 2
    assert "OPA's REST API reports no coverage" in capsys.readouterr().err
