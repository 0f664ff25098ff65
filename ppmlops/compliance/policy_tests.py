"""Run the Rego unit tests of a policy, as `opa test` would, through either engine.

Every rule named test_* (not functions, not partial sets) in the test files is evaluated with
the policy loaded beside it; a test passes when its value is true. With an OPA server the
policy and the test modules are pushed over the REST API, each test is queried through the
Data API, and the test modules are removed again, so the server's policy is the one under test.
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
    policies = _policies(policy_path, tests_dir)
    response = run_worker({"op": "test", "policies": policies}, timeout_s=timeout_s,
                          what=f"the policy tests under {tests_dir}")
    return [(r["name"], bool(r["passed"]), r["message"]) for r in response["results"]]


def run_policy_tests_opa(url: str, policy_path: Path, tests_dir: Path, *, timeout_s: float = 5.0
                         ) -> list[tuple[str, bool, str]]:
    """The same suite evaluated by the OPA server at `url` (Data API), for when OPA decides.

    Test discovery parses the files locally (which rules are tests is syntax, not evaluation);
    every verdict comes from the server. Raises PolicyError when the server is unreachable or
    rejects a module (naming the local file and line).
    """
    import requests
    from opa_client import OpaClient
    from opa_client.errors import RegoParseError

    from ppmlops.compliance.engine import OPA_POLICY_ID, _opa_address, _opa_compile_error, _root_cause
    from ppmlops.errors import PolicyError

    policies = _policies(policy_path, tests_dir)
    listed = run_worker({"op": "list_tests", "policies": policies}, timeout_s=SUITE_TIMEOUT_S,
                        what=f"the policy tests under {tests_dir}")["tests"]
    client = OpaClient(**_opa_address(url), timeout=timeout_s)
    pushed: list[str] = []
    results = []
    try:
        for i, module in enumerate(policies):
            module_id = OPA_POLICY_ID if i == 0 else f"{OPA_POLICY_ID}_tests/{Path(module['path']).stem}"
            try:
                client.update_policy_from_string(module["text"], module_id, rego_compat=False)
            except RegoParseError as err:
                raise PolicyError(_opa_compile_error(Path(module["path"]), err)) from None
            pushed.append(module_id)
        for test in listed:
            full = f"data.{test['package']}.{test['name']}"
            body = client.query_rule(input_data={}, package_path=full[len("data."):])
            if not isinstance(body, dict) or "result" not in body:
                results.append((full, False, f"{test['where']}: undefined (an expression in its body was false)"))
            elif body["result"] is True:
                results.append((full, True, ""))
            else:
                results.append((full, False, f"{test['where']}: value {body['result']!r}, not true"))
    except PolicyError:
        raise
    except (requests.ConnectionError, requests.Timeout) as err:
        raise PolicyError(f"OPA server at {url} is unreachable: {_root_cause(err)}") from None
    finally:
        for module_id in pushed[1:]:
            try:
                client.delete_policy(module_id)
            except Exception:  # noqa: BLE001  a leftover test module must not hide the results
                pass
        client.close_connection()
    return results


def _policies(policy_path: Path, tests_dir: Path) -> list[dict]:
    from ppmlops.errors import PolicyError

    test_files = sorted(Path(tests_dir).rglob("*.rego"))
    if not test_files:
        raise PolicyError(f"no *.rego test files under {tests_dir}")
    policies = []
    for path in [Path(policy_path), *test_files]:
        text, _ = read_policy(path)
        policies.append({"path": str(path), "text": text})
    return policies
