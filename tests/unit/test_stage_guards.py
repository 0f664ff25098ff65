"""The stages after assess fail closed: deploy, the gate's branch, plan's train gate, validate.

Each test here was written against a hand-made mutation that every other unit test let through
(issue 14, item 10); the mutation is named in the test's docstring.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ppmlops import settings as settings_mod
from ppmlops.errors import PolicyRefused
from ppmlops.run.records import ApprovalRecord, GateRecord, StagedData
from ppmlops.spec import parse_spec
from ppmlops.stages import assess, deploy, gate, ingest, plan, validate
from ppmlops.run.context import RunContext, RunParams

REPO = Path(__file__).resolve().parents[2]
DOC = yaml.safe_load((REPO / "tests" / "e2e" / "e2e_small.yaml").read_text())


def gate_record(outcome: str, reasons=("r",)) -> GateRecord:
    return GateRecord(outcome=outcome, allowed=outcome == "allow", reasons=list(reasons), decision_id="d",
                      policy_hash="h", engine="opa")


def approval(approved: bool) -> ApprovalRecord:
    return ApprovalRecord(approved=approved, outcome="approved" if approved else "rejected", by="officer",
                          at="2026-12-02T08:00:00Z", channel="test", gate_decision_id="d", gate_reasons=["r"])


@pytest.mark.parametrize("outcome, answer, expected", [
    ("allow", None, True),
    ("needs_approval", None, False),
    ("needs_approval", False, False),
    ("needs_approval", True, True),
    ("deny", None, False),
    ("deny", True, False),  # an approval never overrides a deny (catches `or` for `and`)
])
def test_deployable_is_exactly_allowed_or_approved(outcome, answer, expected):
    assert deploy.deployable(gate_record(outcome), None if answer is None else approval(answer)) is expected


@pytest.mark.parametrize("outcome, task", [("allow", "deploy"), ("needs_approval", "approve"), ("deny", "withhold")])
def test_the_gate_branches_to_a_person_before_any_deploy(outcome, task):
    """Mutation: needs-approval branching straight to deploy."""
    assert gate.next_task(gate_record(outcome)) == task


@pytest.fixture
def small_run(tmp_path, monkeypatch):
    """ingest, validate and assess of the small e2e spec, for real, in a home of its own."""
    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path / "home"))
    doc = copy.deepcopy(DOC)
    doc["dataset"]["source"] = {"path": str(tmp_path / "customers.csv"), "generate": {"rows": 1500, "seed": 11}}
    spec = parse_spec(doc, "guards.yaml")
    ctx = RunContext(spec=spec, run_id="guard-run", params=RunParams.defaults(spec))
    for stage in (ingest, validate, assess):
        stage.run(ctx)
    return ctx


def test_deploy_refuses_a_denied_model_whoever_calls_it(small_run):
    """Mutation: the deploy stage's deny guard removed (a denied model becomes `production`)."""
    from ppmlops.registry.store import Registry

    ctx = RunContext(spec=small_run.spec, run_id=small_run.run_id,
                     params=replace(small_run.params, environment="production"))
    ctx.store.write(gate_record("deny", ["accuracy 0.41 is below the required 0.5"]))
    with pytest.raises(PolicyRefused, match="accuracy 0.41 is below"):
        deploy.run(ctx)
    ctx.store.write(gate_record("needs_approval", ["hipaa requires a human approval"]))
    with pytest.raises(PolicyRefused, match="awaiting a person's approval"):
        deploy.run(ctx)
    assert Registry(settings_mod.load().registry_dir).versions(ctx.spec.deploy.model_name) == []


def test_a_policy_engine_error_refuses_training(small_run, tmp_path, monkeypatch):
    """Mutation: the train gate ignoring a deny that carries an engine error (fails open)."""
    from ppmlops.privacy.ledger import Ledger

    broken = tmp_path / "broken.rego"
    broken.write_text((REPO / "policies.rego").read_text() + "\nthis is not rego {\n")
    monkeypatch.setenv("PPMLOPS_POLICY", str(broken))
    ctx = RunContext(spec=small_run.spec, run_id=small_run.run_id, params=small_run.params)
    with pytest.raises(PolicyRefused) as refused:
        plan.run(ctx)
    assert refused.value.reasons and any("rego" in r.lower() or "parse" in r.lower() for r in refused.value.reasons)
    assert not Ledger(ctx.settings.db_url).entries(ctx.spec.dataset.id, ctx.run_id, kind="grant")


def test_an_error_in_the_train_rule_alone_refuses_training(small_run, tmp_path, monkeypatch):
    """Mutation: the train gate ignoring a deny that carries an engine error, while the budget
    rule still answers: a second, conflicting `train` value is an evaluation error on OPA's engine
    (complete rules must not produce multiple outputs) for that query only."""
    from ppmlops.privacy.ledger import Ledger

    conflicting = tmp_path / "conflicting.rego"
    conflicting.write_text((REPO / "policies.rego").read_text()
                           + '\ntrain := {"allow": true, "reasons": ["a second answer"]} if { input.dataset }\n')
    monkeypatch.setenv("PPMLOPS_POLICY", str(conflicting))
    ctx = RunContext(spec=small_run.spec, run_id=small_run.run_id, params=small_run.params)
    with pytest.raises(PolicyRefused) as refused:
        plan.run(ctx)
    assert any("conflict" in r or "multiple outputs" in r for r in refused.value.reasons), refused.value.reasons
    assert not Ledger(ctx.settings.db_url).entries(ctx.spec.dataset.id, ctx.run_id, kind="grant")
    # Mutation: only allowed decisions written to the audit log. The refusal is on the record.
    from ppmlops.audit.log import AuditLog

    recorded = [(r["stage"], r["decision"]["query"], r["decision"]["outcome"], bool(r["decision"]["error"]))
                for r in AuditLog(ctx.settings.db_url).records(run_id=ctx.run_id)]
    assert ("plan", "data.ppmlops.train", "deny", True) in recorded


def test_a_bad_held_out_snapshot_fails_validation(small_run, tmp_path):
    """Mutation: validation failures in the held-out snapshot ignored."""
    from ppmlops.data.validate import ValidationFailed

    ctx = small_run
    staged = ctx.store.read(StagedData).result
    bad = tmp_path / "snapshot_test_bad.parquet"
    df = pd.read_parquet(staged.snapshot_test)
    df.loc[df.index[0], "age"] = 130.0
    df.to_parquet(bad, index=False)
    ctx.store.write(StagedData(result=replace(staged, snapshot_test=str(bad))))
    with pytest.raises(ValidationFailed, match=r"expect_column_values_to_be_between on age in snapshot_test_bad"):
        validate.run(ctx)


def test_the_approval_request_shows_the_key_numbers_and_the_answer_keeps_its_comment(small_run, monkeypatch, tmp_path):
    """What the person deciding reads (the gate's reasons, then the plan's public one-line summary)
    and what is kept of the answer: who, when and why, in the run and in the audit log."""
    from policy_floors import lowered_policy_file  # noqa: E402 - tests/ is on the path

    from ppmlops.airflow.approval import approval_body
    from ppmlops.audit.log import AuditLog
    from ppmlops.dashboard.links import run_page_path
    from ppmlops.stages.approval import COMMENT_CHARS, record_approval

    monkeypatch.setenv("PPMLOPS_POLICY", str(lowered_policy_file(tmp_path)))
    ctx = RunContext(spec=small_run.spec, run_id=small_run.run_id, params=small_run.params)
    plan.run(ctx)
    ctx.store.write(gate_record("needs_approval", ["production deploys of gdpr data need a person's approval"]))
    body = approval_body(ctx)
    assert body.index("- production deploys of gdpr data need a person's approval") < body.index("Key numbers")
    assert "- plan: epsilon " in body and "lifetime budget used" in body  # the plan's public line
    assert f"]({run_page_path(ctx.spec.name, ctx.run_id)})" in body  # a link to the run's page

    answer = record_approval(ctx, approved=False, user="officer", responded_at="2026-12-07T10:00:00+00:00",
                             channel="airflow-hitl", comment="  AUC interval too wide; retrain next week  ")
    assert answer.comment == "AUC interval too wide; retrain next week" and answer.outcome == "rejected"
    logged = [r for r in AuditLog(ctx.settings.db_url).records(run_id=ctx.run_id) if r["stage"] == "approval"]
    assert logged and logged[-1]["decision"]["reasons"] == [
        "rejected by officer at 2026-12-07T10:00:00+00:00: AUC interval too wide; retrain next week"]
    long = record_approval(ctx, approved=True, user="officer", responded_at="t", channel="cli", comment="x" * 5000)
    assert long.comment == "x" * COMMENT_CHARS + " [cut]"
