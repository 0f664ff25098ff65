"""Run the Rego unit tests of a policy, as `opa test` would, on OPA's engine.

Every rule named test_* (not functions, not partial sets) in the test files is evaluated with
the policy loaded beside it; a test passes when its value is true. Embedded, the suite runs in
the OPA engine worker and can report coverage with OPA's own cover tracer (ppmlops.compliance.
coverage). With an OPA server the policy and the test modules are pushed over the REST API, each
test is queried through the Data API, and the test modules are removed again, so the server's
policy is the one under test; OPA's REST API has no coverage report, so that path has none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ppmlops.compliance import embedded
from ppmlops.compliance.coverage import CoverageReport
from ppmlops.compliance.engine import read_policy
from ppmlops.errors import PolicyError

# A whole suite runs as one worker request; it is bounded so a runaway test cannot hang the caller.
SUITE_TIMEOUT_S = 300.0


class PolicyTestResult(NamedTuple):
    name: str  # data.<package>.<rule>
    passed: bool
    message: str  # why it failed, naming file:line; "" when it passed


@dataclass(frozen=True)
class SuiteReport:
    results: list[PolicyTestResult]
    coverage: CoverageReport | None  # None unless asked for (and never over HTTP)

    @property
    def failed(self) -> list[PolicyTestResult]:
        return [r for r in self.results if not r.passed]


def run_policy_tests(policy_path: Path, tests_dir: Path, *, coverage: bool = False,
                     timeout_s: float = SUITE_TIMEOUT_S) -> SuiteReport:
    """Every test rule under `tests_dir` (*.rego, recursive), evaluated by the embedded engine.

    Raises PolicyError when the suite cannot run at all: a file that does not parse or compile
    (the message names file:line), no test files, or a crashed engine.
    """
    modules = _modules(policy_path, tests_dir)
    response = embedded.run({"op": "test", "modules": modules, "coverage": coverage}, timeout_s=timeout_s,
                            what=f"running the policy tests under {tests_dir}")
    results = [PolicyTestResult(r["name"], bool(r["passed"]), r["message"]) for r in response["results"]]
    report = CoverageReport.from_opa(response["coverage"]) if coverage and response.get("coverage") else None
    return SuiteReport(results, report)


def run_policy_tests_opa(url: str, policy_path: Path, tests_dir: Path, *, timeout_s: float = 5.0) -> SuiteReport:
    """The same suite evaluated by the OPA server at `url` (Data API), for when OPA decides.

    Test discovery parses the files with the embedded engine (which rules are tests is syntax,
    not evaluation); every verdict comes from the server. `timeout_s` bounds each request.
    Raises PolicyError when the server is unreachable or rejects a module (naming the local
    file and line).
    """
    from ppmlops.compliance.opa_http import OPA_POLICY_ID, OpaServer

    modules = _modules(policy_path, tests_dir)
    listed = embedded.run({"op": "list_tests", "modules": modules}, timeout_s=SUITE_TIMEOUT_S,
                          what=f"listing the policy tests under {tests_dir}")["tests"]
    results = []
    with OpaServer(url, deadline_s=SUITE_TIMEOUT_S, request_timeout_s=timeout_s,
                   scope="the limit for the whole test run") as opa:
        pushed: list[str] = []
        try:
            for i, module in enumerate(modules):
                module_id = OPA_POLICY_ID if i == 0 else f"{OPA_POLICY_ID}_tests/{Path(module['path']).stem}"
                opa.push_policy(module_id, module["text"], Path(module["path"]))
                pushed.append(module_id)
            for test in listed:
                full = f"data.{test['package']}.{test['name']}"
                body = opa.query(full[len("data."):], {})
                if not isinstance(body, dict) or "result" not in body:
                    results.append(PolicyTestResult(
                        full, False, f"{test['where']}: undefined (an expression in its body was false)"))
                elif body["result"] is True:
                    results.append(PolicyTestResult(full, True, ""))
                else:
                    results.append(PolicyTestResult(full, False, f"{test['where']}: value {body['result']!r}, not true"))
        finally:
            for module_id in pushed[1:]:
                try:
                    opa.delete_policy(module_id)
                except PolicyError:  # a leftover test module must not hide the results
                    pass
    return SuiteReport(results, None)


def _modules(policy_path: Path, tests_dir: Path) -> list[dict]:
    test_files = sorted(Path(tests_dir).rglob("*.rego"))
    if not test_files:
        raise PolicyError(f"no *.rego test files under {tests_dir}")
    modules = []
    for path in [Path(policy_path), *test_files]:
        text, _ = read_policy(path)
        modules.append({"path": str(path), "text": text})
    return modules
