"""ppmlops.compliance.engine: decisions from the real policy, and every way evaluation fails
closed, through the embedded OPA engine (a long-lived worker process) and over HTTP to an OPA
Data API server."""

from __future__ import annotations

import copy
import hashlib
import multiprocessing
import re
import shutil
import socket
import time
from pathlib import Path

import pytest

from ppmlops.compliance import ENGINE_EMBEDDED, ENGINE_OPA, evaluate
from ppmlops.compliance.embedded import worker_stats
from ppmlops.compliance import examples
from ppmlops.compliance.opa_http import clip
from ppmlops.compliance.opa_worker import FAULT_ENV, format_opa_error
from ppmlops.settings import REPO_ROOT

from opa_server import FakeOpa, SilentServer  # tests/ is on sys.path (rootdir conftest)

POLICY = REPO_ROOT / "policies.rego"

TRAIN_INPUT, DEPLOY_INPUT = examples.TRAIN_INPUT, examples.DEPLOY_INPUT


def patched(doc: dict, **sections: dict) -> dict:
    out = copy.deepcopy(doc)
    for section, values in sections.items():
        out[section].update(values)
    return out


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(autouse=True)
def _settings(monkeypatch, tmp_path):
    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path / "home"))
    for var in ("PPMLOPS_OPA_URL", "PPMLOPS_POLICY", "PPMLOPS_OPA_TIMEOUT_S", FAULT_ENV):
        monkeypatch.delenv(var, raising=False)


# ---------------------------------------------------------------------------------------------
# decisions from the real policy, embedded engine
# ---------------------------------------------------------------------------------------------
def test_train_allows_demo_run():
    d = evaluate("data.ppmlops.train", TRAIN_INPUT)
    assert (d.outcome, d.allowed, d.reasons, d.error) == ("allow", True, [], None)
    assert d.engine == ENGINE_EMBEDDED
    assert d.policy_hash == sha256_file(POLICY)
    assert re.fullmatch(r"[0-9a-f]{32}", d.id)
    assert d.time.endswith("+00:00")
    assert d.result == {"allow": True, "reasons": [], "sized_reasons": []}
    assert d.input == TRAIN_INPUT and d.input is not TRAIN_INPUT


def test_train_denies_spent_budget_with_reason():
    d = evaluate("data.ppmlops.train", patched(TRAIN_INPUT, ledger={"share_used": 0.987, "epsilon_remaining": 0.02}))
    assert (d.outcome, d.allowed, d.error) == ("deny", False, None)
    assert d.reasons == ["budget spent: 98.7% of the lifetime budget (epsilon 3.00) is used; training could add "
                         "at most epsilon 0.02, below the gdpr minimum 0.05"]


def test_budget_is_allow_with_the_planned_epsilon():
    d = evaluate("data.ppmlops.budget", TRAIN_INPUT)
    assert d.outcome == "allow" and d.error is None
    assert d.result["epsilon"] == pytest.approx(0.79)
    assert d.result["delta"] == 1e-5
    assert "bound by request.epsilon_cap = 1.00" in d.reasons


def test_budget_with_nothing_to_spend_is_deny():
    d = evaluate("data.ppmlops.budget", patched(TRAIN_INPUT, ledger={"share_used": 1.0, "epsilon_remaining": 0.0}))
    assert d.outcome == "deny" and d.error is None
    assert d.result["epsilon"] == 0


def test_deploy_allow_deny_and_needs_approval():
    assert evaluate("data.ppmlops.deploy", DEPLOY_INPUT).outcome == "allow"

    denied = evaluate("data.ppmlops.deploy", patched(DEPLOY_INPUT, metrics={"accuracy": 0.5}))
    assert (denied.outcome, denied.allowed) == ("deny", False)
    assert denied.reasons == ["accuracy 0.50 is below the required 0.60"]

    risky = evaluate("data.ppmlops.deploy", patched(DEPLOY_INPUT, risk={"score": 0.75, "level": "high"}))
    assert (risky.outcome, risky.allowed) == ("needs_approval", False)
    assert risky.reasons == ["risk score 0.75 (high) is at or above the gdpr approval threshold 0.70"]


def test_policy_edits_apply_at_the_next_evaluation(tmp_path):
    policy = tmp_path / "policies.rego"
    shutil.copy(POLICY, policy)
    first = evaluate("data.ppmlops.train", TRAIN_INPUT, policy_path=policy)
    assert first.outcome == "allow"

    text = policy.read_text()
    edited = text.replace('"min_consent_coverage": 0.9,', '"min_consent_coverage": 0.99,', 1)
    assert edited != text
    policy.write_text(edited)
    second = evaluate("data.ppmlops.train", TRAIN_INPUT, policy_path=policy)
    assert second.outcome == "deny"
    assert second.reasons == ["consent coverage 0.95 is below the gdpr minimum 0.99 (300 of 6000 source rows refused)"]
    assert second.policy_hash == sha256_file(policy) != first.policy_hash


def test_policy_path_from_settings(monkeypatch, tmp_path):
    policy = tmp_path / "other.rego"
    policy.write_text('package ppmlops\n\ntrain := {"allow": false, "reasons": ["closed for maintenance"]}\n')
    monkeypatch.setenv("PPMLOPS_POLICY", str(policy))
    d = evaluate("data.ppmlops.train", TRAIN_INPUT)
    assert d.reasons == ["closed for maintenance"]
    assert d.policy_hash == sha256_file(policy)


# ---------------------------------------------------------------------------------------------
# fail closed: embedded engine
# ---------------------------------------------------------------------------------------------
def assert_failed_closed(d, *fragments: str) -> None:
    assert d.outcome == "deny" and d.allowed is False
    assert d.error, "a failed evaluation must carry its error"
    assert d.reasons == [d.error]
    for fragment in fragments:
        assert fragment in d.error, f"{fragment!r} not in {d.error!r}"


def test_syntax_error_names_file_and_line(tmp_path):
    policy = tmp_path / "broken.rego"
    policy.write_text('package ppmlops\n\ntrain := {"allow": true}\ndeploy := if {\n')
    d = evaluate("data.ppmlops.train", TRAIN_INPUT, policy_path=policy)
    assert_failed_closed(d, f"{policy}:4:")
    assert d.policy_hash == sha256_file(policy)


def test_compile_error_found_at_evaluation_names_file_and_line(tmp_path):
    policy = tmp_path / "unsafe.rego"
    policy.write_text("package ppmlops\n\ntrain := {\"allow\": x}\n")
    assert_failed_closed(evaluate("data.ppmlops.train", TRAIN_INPUT, policy_path=policy), f"{policy}:3:", "unsafe")


def test_undefined_decision_is_deny():
    assert_failed_closed(evaluate("data.ppmlops.no_such_rule", TRAIN_INPUT), "undefined")


def test_rule_undefined_for_this_input_is_deny(tmp_path):
    policy = tmp_path / "partial.rego"
    policy.write_text('package ppmlops\n\ntrain := {"allow": true, "reasons": []} if input.ok\n')
    assert_failed_closed(evaluate("data.ppmlops.train", {"ok": False}, policy_path=policy), "undefined")


@pytest.mark.parametrize("value, fragment", [
    ('{"allow": "yes"}', "not true or false"),
    ('{"outcome": "maybe"}', "not one of allow, deny, needs_approval"),
    ('{"allow": true, "reasons": "none"}', "not a list of strings"),
    ("42", "not a decision object"),
    ('{"epsilon": -1, "delta": 0.1}', "not a finite number >= 0"),
    ('{"something": 1}', "without allow, outcome or epsilon/delta"),
])
def test_malformed_result_is_deny(tmp_path, value, fragment):
    policy = tmp_path / "odd.rego"
    policy.write_text(f"package ppmlops\n\ntrain := {value}\n")
    d = evaluate("data.ppmlops.train", TRAIN_INPUT, policy_path=policy)
    assert_failed_closed(d, fragment)
    assert d.result is not None  # the raw value is kept for the audit trail


def test_deny_without_reason_gets_one(tmp_path):
    policy = tmp_path / "terse.rego"
    policy.write_text('package ppmlops\n\ntrain := {"allow": false}\n')
    d = evaluate("data.ppmlops.train", TRAIN_INPUT, policy_path=policy)
    assert d.outcome == "deny" and d.error is None
    assert d.reasons == ["data.ppmlops.train gave outcome deny without a reason"]


def test_engine_crash_is_contained_and_reported(monkeypatch):
    assert evaluate("data.ppmlops.deploy", DEPLOY_INPUT).outcome == "allow"  # a running worker
    monkeypatch.setenv(FAULT_ENV, "segv")
    d = evaluate("data.ppmlops.deploy", DEPLOY_INPUT)
    assert_failed_closed(d, "OPA engine crashed: killed by signal 11 (SIGSEGV) while evaluating "
                            f"data.ppmlops.deploy over {POLICY}")
    assert d.policy_hash == sha256_file(POLICY)


def test_engine_timeout_is_deny(monkeypatch):
    assert evaluate("data.ppmlops.deploy", DEPLOY_INPUT).outcome == "allow"
    monkeypatch.setenv(FAULT_ENV, "hang")
    monkeypatch.setenv("PPMLOPS_OPA_TIMEOUT_S", "0.5")
    started = time.monotonic()
    d = evaluate("data.ppmlops.deploy", DEPLOY_INPUT)
    assert_failed_closed(d, "OPA engine did not answer within 0.5s evaluating data.ppmlops.deploy", "stopped it")
    assert time.monotonic() - started < 5


def test_engine_garbage_answer_is_deny(monkeypatch):
    assert evaluate("data.ppmlops.deploy", DEPLOY_INPUT).outcome == "allow"
    monkeypatch.setenv(FAULT_ENV, "garbage")
    assert_failed_closed(evaluate("data.ppmlops.deploy", DEPLOY_INPUT), "not JSON")


@pytest.mark.parametrize("fault", ["segv", "hang", "garbage"])
def test_worker_is_replaced_after_a_fault(monkeypatch, fault):
    assert evaluate("data.ppmlops.train", TRAIN_INPUT).outcome == "allow"
    before = worker_stats()
    monkeypatch.setenv(FAULT_ENV, fault)
    monkeypatch.setenv("PPMLOPS_OPA_TIMEOUT_S", "0.5")
    assert evaluate("data.ppmlops.train", TRAIN_INPUT).error
    monkeypatch.delenv(FAULT_ENV)
    d = evaluate("data.ppmlops.train", TRAIN_INPUT)
    assert (d.outcome, d.error) == ("allow", None)
    after = worker_stats()
    assert after.pid != before.pid  # a new process ...
    assert (after.decisions, after.compiles, after.compiled) == (1, 1, True)  # ... that compiled afresh


def test_one_worker_serves_every_decision_and_compiles_an_unchanged_policy_once():
    evaluate("data.ppmlops.train", TRAIN_INPUT)
    first = worker_stats()
    for query, doc in [("data.ppmlops.budget", TRAIN_INPUT), ("data.ppmlops.deploy", DEPLOY_INPUT)] * 3:
        assert evaluate(query, doc).error is None
    last = worker_stats()
    assert last.pid == first.pid
    assert last.decisions == first.decisions + 6
    assert last.compiles == first.compiles and last.compiled is False


def test_edited_policy_is_compiled_at_the_next_decision_by_the_same_worker(tmp_path):
    policy = tmp_path / "policies.rego"
    shutil.copy(POLICY, policy)
    assert evaluate("data.ppmlops.train", TRAIN_INPUT, policy_path=policy).outcome == "allow"
    before = worker_stats()
    policy.write_text(policy.read_text().replace('"min_consent_coverage": 0.9,', '"min_consent_coverage": 0.99,', 1))
    d = evaluate("data.ppmlops.train", TRAIN_INPUT, policy_path=policy)
    after = worker_stats()
    assert d.outcome == "deny"
    assert (after.pid, after.compiles, after.compiled) == (before.pid, before.compiles + 1, True)
    evaluate("data.ppmlops.train", TRAIN_INPUT, policy_path=policy)
    assert (worker_stats().compiles, worker_stats().compiled) == (after.compiles, False)


def test_a_broken_policy_does_not_cost_the_worker(tmp_path):
    evaluate("data.ppmlops.train", TRAIN_INPUT)
    pid = worker_stats().pid
    broken = tmp_path / "broken.rego"
    broken.write_text("package ppmlops\n\ntrain := {\n")
    assert evaluate("data.ppmlops.train", TRAIN_INPUT, policy_path=broken).error
    assert evaluate("data.ppmlops.train", TRAIN_INPUT).outcome == "allow"
    assert worker_stats().pid == pid


def _decide_in_child(conn) -> None:
    d = evaluate("data.ppmlops.train", TRAIN_INPUT)
    conn.send((d.outcome, d.error, worker_stats().pid))
    conn.close()


def test_a_forked_process_starts_its_own_worker():
    # Airflow forks task processes; a child must never talk over its parent's worker pipes.
    evaluate("data.ppmlops.train", TRAIN_INPUT)
    parent_worker = worker_stats().pid
    ctx = multiprocessing.get_context("fork")
    ours, theirs = ctx.Pipe()
    child = ctx.Process(target=_decide_in_child, args=(theirs,))
    child.start()
    assert ours.poll(60), "the forked child gave no decision"
    outcome, error, child_worker = ours.recv()
    child.join(10)
    assert (outcome, error) == ("allow", None)
    assert child_worker != parent_worker
    assert evaluate("data.ppmlops.train", TRAIN_INPUT).outcome == "allow"
    assert worker_stats().pid == parent_worker


def test_missing_policy_file_is_deny(tmp_path):
    missing = tmp_path / "nowhere.rego"
    assert_failed_closed(evaluate("data.ppmlops.train", TRAIN_INPUT, policy_path=missing), f"{missing} not found")


def test_non_json_input_is_deny():
    assert_failed_closed(
        evaluate("data.ppmlops.train", patched(TRAIN_INPUT, risk={"score": float("nan")})), "not a JSON document")


def test_query_must_be_a_rule_reference():
    assert_failed_closed(evaluate("data.ppmlops.train; true", TRAIN_INPUT), "not a rule reference")


def test_engine_error_formatting():
    # As OPA reports a parse error (three entries for one mistake).
    raw = ("3 errors occurred:\n/p/policies.rego:4: rego_parse_error: unexpected if keyword\n\tdeploy := if {\n"
           "\t          ^\n/p/policies.rego:4: rego_parse_error: unexpected if keyword: expected rule value term\n"
           "\tdeploy := if {\n\t          ^\n/p/policies.rego:5: rego_parse_error: unexpected eof token\n\t\n\t^")
    assert format_opa_error(raw) == ("/p/policies.rego:4: unexpected if keyword (in `deploy := if {`) "
                                     "(and 2 more errors after it)")
    compile_error = "bundle activation failed: 1 error occurred: /p/u.rego:3: rego_unsafe_var_error: var x is unsafe"
    assert format_opa_error(compile_error) == "/p/u.rego:3: var x is unsafe"


def test_clip_never_cuts_a_word():
    text = "word " * 100
    clipped = clip(text, 52)
    assert clipped == "word " * 9 + "word [...]"
    assert clip("short", 52) == "short"


# ---------------------------------------------------------------------------------------------
# OPA server over HTTP
# ---------------------------------------------------------------------------------------------
def test_opa_decisions_match_embedded(monkeypatch):
    embedded = {q: evaluate(q, i) for q, i in [("data.ppmlops.train", TRAIN_INPUT),
                                                ("data.ppmlops.budget", TRAIN_INPUT),
                                                ("data.ppmlops.deploy", DEPLOY_INPUT)]}
    risky_deploy = patched(DEPLOY_INPUT, risk={"score": 0.9})
    with FakeOpa() as opa:
        monkeypatch.setenv("PPMLOPS_OPA_URL", opa.url)
        for query, before in embedded.items():
            d = evaluate(query, before.input)
            assert d.engine == ENGINE_OPA
            assert d.error is None, d.error
            assert (d.outcome, d.reasons, d.result) == (before.outcome, before.reasons, before.result)
            assert d.policy_hash == before.policy_hash == sha256_file(POLICY)
        assert evaluate("data.ppmlops.deploy", risky_deploy).outcome == "needs_approval"
        denied = evaluate("data.ppmlops.train", patched(TRAIN_INPUT, consent={"coverage": 0.5}))
        assert denied.outcome == "deny" and denied.error is None
    assert opa.policies["ppmlops"] == POLICY.read_text()
    assert ("PUT", "/v1/policies/ppmlops") in opa.requests
    assert ("POST", "/v1/data/ppmlops/deploy") in opa.requests


def test_opa_rejecting_the_policy_names_local_file_and_line(monkeypatch, tmp_path):
    policy = tmp_path / "broken.rego"
    policy.write_text('package ppmlops\n\ntrain := {"allow": true}\ndeploy := if {\n')
    with FakeOpa() as opa:
        monkeypatch.setenv("PPMLOPS_OPA_URL", opa.url)
        d = evaluate("data.ppmlops.train", TRAIN_INPUT, policy_path=policy)
    assert_failed_closed(d, f"{policy}:4:")
    assert d.engine == ENGINE_OPA


@pytest.mark.parametrize("trickle", [False, True], ids=["silent", "trickling"])
def test_opa_server_that_never_answers_is_denied_within_one_deadline(monkeypatch, trickle):
    with SilentServer(trickle=trickle) as server:
        monkeypatch.setenv("PPMLOPS_OPA_URL", server.url)
        monkeypatch.setenv("PPMLOPS_OPA_TIMEOUT_S", "1")
        started = time.monotonic()
        d = evaluate("data.ppmlops.deploy", DEPLOY_INPUT)
        elapsed = time.monotonic() - started
        accepted = server.accepted
    assert d.engine == ENGINE_OPA
    assert_failed_closed(d)
    assert d.error == (
        f"OPA server at {server.url} did not answer within 1s (one limit for the whole decision: pushing the "
        "policy, the query and reading the policy back; it was pushing the policy (PUT /v1/policies/ppmlops)). "
        "Check that the server is up and reachable from here, or raise PPMLOPS_OPA_TIMEOUT_S.")
    assert accepted == 1  # no retry
    assert 0.9 <= elapsed < 3, elapsed  # one deadline, not one per request and retry (was 16 s at 5 s)


def test_opa_unreachable_is_deny_naming_the_url(monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("PPMLOPS_OPA_URL", url)
    d = evaluate("data.ppmlops.deploy", DEPLOY_INPUT)
    assert_failed_closed(d, f"OPA server at {url} is unreachable")
    assert d.engine == ENGINE_OPA


def test_opa_undefined_is_deny(monkeypatch):
    with FakeOpa(mode="undefined") as opa:
        monkeypatch.setenv("PPMLOPS_OPA_URL", opa.url)
        assert_failed_closed(evaluate("data.ppmlops.deploy", DEPLOY_INPUT), "undefined")


def test_opa_server_error_is_deny(monkeypatch):
    with FakeOpa(mode="error") as opa:
        monkeypatch.setenv("PPMLOPS_OPA_URL", opa.url)
        assert_failed_closed(evaluate("data.ppmlops.deploy", DEPLOY_INPUT), "HTTP 500")


def test_opa_policy_replaced_during_evaluation_is_deny(monkeypatch):
    with FakeOpa(mode="swap") as opa:
        monkeypatch.setenv("PPMLOPS_OPA_URL", opa.url)
        assert_failed_closed(evaluate("data.ppmlops.deploy", DEPLOY_INPUT), "changed while")


def test_opa_url_with_a_path_is_refused(monkeypatch):
    monkeypatch.setenv("PPMLOPS_OPA_URL", "http://127.0.0.1:8181/v1")
    assert_failed_closed(evaluate("data.ppmlops.deploy", DEPLOY_INPUT), "has a path")


def test_invalid_settings_are_deny(monkeypatch):
    monkeypatch.setenv("PPMLOPS_OPA_TIMEOUT_S", "soon")
    assert_failed_closed(evaluate("data.ppmlops.train", TRAIN_INPUT), "settings are invalid")


def test_both_engines_implement_one_interface_with_one_argument_order():
    """ppmlops.compliance.policy_engine.PolicyEngine: the embedded engine and the OPA server's take
    the same arguments in the same order, and the settings choose between them in one place."""
    import inspect
    from dataclasses import replace

    from ppmlops import settings
    from ppmlops.compliance.embedded import EmbeddedEngine
    from ppmlops.compliance.opa_http import OpaHttpEngine
    from ppmlops.compliance.engine import policy_engine
    from ppmlops.compliance.policy_engine import PolicyEngine

    want = list(inspect.signature(PolicyEngine.evaluate).parameters)
    assert want == ["self", "path", "text", "digest", "query", "input_doc"]
    for cls in (EmbeddedEngine, OpaHttpEngine):
        assert list(inspect.signature(cls.evaluate).parameters) == want
    cfg = settings.load()
    assert isinstance(policy_engine(replace(cfg, opa_url=None)), EmbeddedEngine)
    chosen = policy_engine(replace(cfg, opa_url="http://127.0.0.1:8181"))
    assert isinstance(chosen, OpaHttpEngine) and chosen.name == ENGINE_OPA
