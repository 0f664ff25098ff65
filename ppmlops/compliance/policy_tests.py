"""Run the Rego unit tests of a policy, as `opa test` would, through the embedded engine.

Every rule named test_* (not functions, not partial sets) in the test files is evaluated with
the policy loaded beside it; a test passes when its value is true.
"""

from __future__ import annotations

from pathlib import Path

from ppmlops.compliance.engine import read_policy, run_worker

# A whole suite runs in one worker; it is bounded so a runaway test cannot hang the caller.
SUITE_TIMEOUT_S = 300.0


def run_policy_tests(policy_path: Path, tests_dir: Path, *, timeout_s: float = SUITE_TIMEOUT_S
                     ) -> list[tuple[str, bool, str]]:
    """(test name, passed, message) for every test rule under `tests_dir` (*.rego, recursive).

    Raises PolicyError when the suite cannot run at all: a file that does not parse (the
    message names file:line:col), no test files, or a crashed engine.
    """
    from ppmlops.errors import PolicyError

    test_files = sorted(Path(tests_dir).rglob("*.rego"))
    if not test_files:
        raise PolicyError(f"no *.rego test files under {tests_dir}")
    policies = []
    for path in [Path(policy_path), *test_files]:
        text, _ = read_policy(path)
        policies.append({"path": str(path), "text": text})
    response = run_worker({"op": "test", "policies": policies}, timeout_s=timeout_s,
                          what=f"the policy tests under {tests_dir}")
    return [(r["name"], bool(r["passed"]), r["message"]) for r in response["results"]]
