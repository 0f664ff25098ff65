"""Deploy gates end to end: a person approves or rejects in Airflow, policy edits apply at the next
decision, and a broken policy stops deployment with the file and line."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from policy_floors import lowered_policy  # tests/ is on the path (tests/conftest.py)
from ppmlops import pipeline, settings
from ppmlops.errors import PolicyRefused
from ppmlops.spec import load_spec
from ppmlops.stages import deploy, gate
from ppmlops.run.context import RunContext, RunParams

pytestmark = [pytest.mark.e2e, pytest.mark.ray]
REPO = Path(__file__).resolve().parents[2]
ORIGINAL_POLICY = (REPO / "policies.rego").read_text()
# The compliance officer's edit: GDPR deploys to staging need a person's approval.
GDPR_EMPTY = '"needs_approval_risk": 0.7,\n\t\t"approval_environments": [],'
GDPR_STAGING = '"needs_approval_risk": 0.7,\n\t\t"approval_environments": ["staging"],'


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory):
    assert GDPR_EMPTY in ORIGINAL_POLICY, "the test's edit no longer matches policies.rego"
    path = tmp_path_factory.mktemp("policy") / "policies.rego"
    # The approval paths are the subject here, not the model: the utility floors are lowered as
    # for every e2e test (tests/policy_floors.py).
    path.write_text(lowered_policy(ORIGINAL_POLICY.replace(GDPR_EMPTY, GDPR_STAGING)))
    before = os.environ.get("PPMLOPS_POLICY")
    os.environ["PPMLOPS_POLICY"] = str(path)
    yield path
    if before is None:
        os.environ.pop("PPMLOPS_POLICY", None)
    else:
        os.environ["PPMLOPS_POLICY"] = before


@pytest.fixture(scope="module")
def dag_and_spec(airflow_db, policy_file):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    spec = load_spec(Path(os.environ["PPMLOPS_PIPELINES"]) / "e2e_small.yaml")
    return bag.dags[spec.dag_id], spec


class Approver(threading.Thread):
    """Waits for the run's approval request, then answers it through Airflow's REST API as the
    officer would from the UI (the same PATCH the Required Actions page sends)."""

    def __init__(self, dag_id: str, option: str):
        # Import the API app and configure the ORM here, on the main thread: importing model
        # modules in this thread while dag.test() configures SQLAlchemy's mappers on the main one
        # deadlocks on Python's import lock against SQLAlchemy's configure lock.
        import airflow.api_fastapi.app  # noqa: F401
        import fastapi.testclient  # noqa: F401
        from sqlalchemy.orm import configure_mappers

        from airflow.models import import_all_models

        import_all_models()
        configure_mappers()
        super().__init__(daemon=True)
        self.dag_id, self.option = dag_id, option
        self.status: int | None = None
        self.error: str | None = None
        self.asked: dict | None = None

    def run(self):
        try:
            self._answer()
        except Exception as e:  # reported by the test, not lost in the thread
            self.error = f"{type(e).__name__}: {e}"
        if self.error:
            self._fail_waiting_task()

    def _fail_waiting_task(self):
        """dag.test() waits for an answer forever: end the run so the test can report the error."""
        from sqlalchemy import update

        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session
        from airflow.utils.state import TaskInstanceState

        with create_session() as session:
            session.execute(update(TaskInstance).where(
                TaskInstance.dag_id == self.dag_id, TaskInstance.task_id == "approve",
                TaskInstance.state == TaskInstanceState.AWAITING_INPUT).values(state=TaskInstanceState.FAILED))

    def _answer(self):
        from fastapi.testclient import TestClient
        from sqlalchemy import select

        from airflow.api_fastapi.app import create_app
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session
        from airflow.utils.state import TaskInstanceState
        from conftest import APPROVER, APPROVER_PASSWORD  # the module pytest loaded, not a second copy

        deadline = time.monotonic() + 600
        run_id = None
        while run_id is None and time.monotonic() < deadline:
            with create_session() as session:
                ti = session.scalars(select(TaskInstance).where(
                    TaskInstance.dag_id == self.dag_id, TaskInstance.task_id == "approve",
                    TaskInstance.state == TaskInstanceState.AWAITING_INPUT)).first()
                run_id = ti.run_id if ti else None
            time.sleep(0.5)
        if run_id is None:
            self.error = "the approval task never waited for input"
            return
        client = TestClient(create_app("core"))
        token = client.post("/auth/token", json={"username": APPROVER, "password": APPROVER_PASSWORD})
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        url = f"/api/v2/dags/{self.dag_id}/dagRuns/{run_id}/taskInstances/approve/-1/hitlDetails"
        self.asked = client.get(url, headers=headers).json()
        reply = client.patch(url, headers=headers, json={"chosen_options": [self.option], "params_input": {}})
        self.status = reply.status_code
        if reply.status_code != 200:
            self.error = reply.text


def run_with_answer(dag, spec, option: str):
    approver = Approver(dag.dag_id, option)
    approver.start()
    conf = {"environment": "staging", "epochs": 1}
    run = dag.test(run_conf=conf)
    approver.join(timeout=60)
    assert approver.error is None, approver.error
    ctx = RunContext(spec=spec, run_id=run.run_id, params=RunParams.from_mapping(spec, conf))
    return run, ctx, approver


def audit_stages(ctx):
    from ppmlops.audit.log import AuditLog

    return [(r["stage"], r["decision"]["outcome"]) for r in AuditLog(settings.load().db_url).records(run_id=ctx.run_id)]


@pytest.fixture(scope="module")
def approved_run(dag_and_spec):
    dag, spec = dag_and_spec
    return run_with_answer(dag, spec, "Approve")


def test_needs_approval_waits_for_a_person_then_deploys(dag_and_spec, approved_run):
    from ppmlops.registry.store import Registry

    _, spec = dag_and_spec
    run, ctx, approver = approved_run
    summary = pipeline.summary(ctx)
    assert str(run.state) == "success", pipeline.format_summary(summary)
    assert summary["decision"] == "needs_approval"
    assert "requires a human approval for every deploy to staging" in approver.asked["body"]
    # the request links to the run's dashboard page
    assert f"(/ppmlops/runs/{ctx.spec.name}/{quote(run.run_id, safe='')})" in approver.asked["body"]
    registry = Registry(settings.load().registry_dir)
    card = registry.card(spec.deploy.model_name, summary["model_version"])
    # a staging deploy moves staging's alias, never production's
    assert registry.alias(spec.deploy.model_name, "staging") == summary["model_version"]
    assert registry.alias(spec.deploy.model_name, "production") is None
    assert card["approval"]["approved"] is True and card["approval"]["by"] == "officer"
    assert card["policy_decision"]["outcome"] == "needs_approval"
    assert ("gate", "needs_approval") in audit_stages(ctx)
    assert ("approval", "approved") in audit_stages(ctx)
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert states["withhold"] == "skipped" and states["rejected"] == "skipped" and states["deploy"] == "success"
    tags = mlflow_run(ctx).data.tags  # the person's answer is in the MLflow run, before the deploy
    assert tags["ppmlops.decision"] == "needs_approval" and tags["ppmlops.approval"] == "approved"
    assert tags["ppmlops.approved_by"] == "officer" and tags["ppmlops.alias"] == "staging"


def test_rejected_approval_deploys_nothing(dag_and_spec):
    dag, spec = dag_and_spec
    run, ctx, _ = run_with_answer(dag, spec, "Reject")
    assert str(run.state) == "failed"
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert states["deploy"] == "skipped" and states["rejected"] == "failed"
    assert "model_version" not in pipeline.summary(ctx)
    assert ("approval", "rejected") in audit_stages(ctx)
    with pytest.raises(PolicyRefused):
        deploy.run(ctx)
    run = mlflow_run(ctx)  # a rejection ends the MLflow run, with no model
    assert run.info.status == "FINISHED" and run.data.tags["ppmlops.approval"] == "rejected"
    assert "ppmlops.model" not in run.data.tags


def mlflow_run(ctx):
    from ppmlops.registry import backend
    from ppmlops.run.records import TrackedRun

    client = backend.client(backend.resolve_uri(settings.load().registry_dir))
    return client.get_run(ctx.store.read(TrackedRun).mlflow_run_id)


def test_deny_withholds_the_model_and_fails_the_run_with_the_reason(dag_and_spec, policy_file, monkeypatch):
    """A compliance officer freezes deployments with one added rule; the DAG obeys at its gate.

    This run asks an OPA server (the loopback one, on OPA's engine) named by the Airflow
    connection ppmlops_opa, as a deployment would, instead of the embedded engine."""
    import json

    from opa_server import FakeOpa

    dag, spec = dag_and_spec
    edited = policy_file.read_text()
    policy_file.write_text(edited + '\n_deploy_deny contains "deployments frozen by the compliance office"\n')
    try:
        with FakeOpa() as opa:
            monkeypatch.delenv("PPMLOPS_OPA_URL", raising=False)
            monkeypatch.setenv("AIRFLOW_CONN_PPMLOPS_OPA", json.dumps({"conn_type": "http", "host": opa.url}))
            conf = {"epochs": 1}
            run = dag.test(run_conf=conf)
            asked = [path for method, path in opa.requests if method == "POST"]
    finally:
        policy_file.write_text(edited)
    assert "/v1/data/ppmlops/deploy" in asked and "/v1/data/ppmlops/train" in asked
    ctx = RunContext(spec=spec, run_id=run.run_id, params=RunParams.from_mapping(spec, conf))
    assert str(run.state) == "failed"
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert states["gate"] == "success" and states["withhold"] == "failed"
    assert states["deploy"] == "skipped" and states["approve"] == "skipped"
    summary = pipeline.summary(ctx)
    assert summary["decision"] == "deny" and "model_version" not in summary
    assert "deployments frozen by the compliance office" in summary["decision_reasons"]
    assert ("gate", "deny") in audit_stages(ctx)
    from ppmlops.audit.log import AuditLog

    engines = {(r["stage"], r["decision"]["engine"]) for r in AuditLog(settings.load().db_url).records(run_id=ctx.run_id)}
    assert engines == {("plan", "opa-http"), ("gate", "opa-http")}


def test_policy_edits_apply_at_the_next_decision(approved_run, policy_file):
    """Same process, same loaded DAG: the gate reads the policy file fresh every time."""
    _, ctx, _ = approved_run
    assert gate.run(ctx).outcome == "needs_approval"
    # the office's rules without the staging approval (utility floors lowered as in the fixture:
    # the test is about the edit taking effect, not about this small model)
    policy_file.write_text(lowered_policy(ORIGINAL_POLICY))
    try:
        assert gate.run(ctx).outcome == "allow"
    finally:
        policy_file.write_text(lowered_policy(ORIGINAL_POLICY.replace(GDPR_EMPTY, GDPR_STAGING)))


def test_a_policy_syntax_error_denies_with_file_and_line(approved_run, policy_file):
    _, ctx, _ = approved_run
    lines = ORIGINAL_POLICY.splitlines()
    broken_line = next(i for i, line in enumerate(lines) if line.startswith("deploy := ")) + 1
    lines[broken_line - 1] = lines[broken_line - 1].replace(":=", ":= {{", 1)
    policy_file.write_text("\n".join(lines) + "\n")
    try:
        decided = gate.run(ctx)
    finally:
        policy_file.write_text(lowered_policy(ORIGINAL_POLICY.replace(GDPR_EMPTY, GDPR_STAGING)))
    assert decided.outcome == "deny" and not decided.allowed
    text = " ".join(decided.reasons) + " " + (decided.error or "")
    assert f"{policy_file}:{broken_line}" in text, text
    with pytest.raises(PolicyRefused):
        deploy.run(ctx)

