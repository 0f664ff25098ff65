"""A run as an MLflow run: the released values are there, nothing exact about private rows is,
and the MLflow run, the Airflow DAG run and the dashboard page link to each other."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from ppmlops.registry import backend, tracking
from ppmlops.run.records import CountsRelease, ExactRisk, PlanRecord, Refusal, Staged, StagedData, TrackedRun
from ppmlops.spec import parse_spec
from ppmlops.stages import assess, ingest, plan, validate
from ppmlops.run.context import RunContext, RunParams

from policy_floors import lowered_policy_file

REPO = Path(__file__).resolve().parents[2]
DOC = yaml.safe_load((REPO / "tests" / "e2e" / "e2e_small.yaml").read_text())
SENTINEL = "exact-private-value-4242424242"


@pytest.fixture
def planned(tmp_path, monkeypatch):
    """ingest, validate, assess and plan of the small e2e spec, for real, in a home of its own."""
    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.org/")
    monkeypatch.setenv("PPMLOPS_POLICY", str(lowered_policy_file(tmp_path)))  # the e2e table's few steps
    doc = copy.deepcopy(DOC)
    doc["dataset"]["source"] = {"path": str(tmp_path / "customers.csv"), "generate": {"rows": 1500, "seed": 11}}
    spec = parse_spec(doc, "tracking.yaml")
    ctx = RunContext(spec=spec, run_id="manual__2026-12-02T10:00:00+00:00", params=RunParams.defaults(spec))
    for stage in (ingest, validate, assess, plan):
        stage.run(ctx)
    # A private value no public record can hold: were any private record read, it would show.
    ctx.store.write(ExactRisk(report={"note": SENTINEL}))
    return ctx


def _everything(ctx) -> tuple[object, str]:
    tracked = ctx.store.read(TrackedRun)
    client = backend.client(backend.resolve_uri(ctx.settings.registry_dir))
    run = client.get_run(tracked.mlflow_run_id)
    history = {k: [m.value for m in client.get_metric_history(run.info.run_id, k)] for k in run.data.metrics}
    text = json.dumps({"params": run.data.params, "tags": run.data.tags, "metrics": history})
    return run, text


def test_the_mlflow_run_holds_the_released_values_and_no_exact_one(planned):
    ctx = planned
    tracking.sync(ctx)
    run, text = _everything(ctx)
    counts, p = ctx.store.read(CountsRelease), ctx.store.read(PlanRecord).privacy
    m, params = run.data.metrics, run.data.params
    assert m["rows_train_noisy"] == counts.rows_train and m["counts_epsilon"] == pytest.approx(counts.epsilon)
    assert m["epsilon_charged"] == pytest.approx(p.epsilon) and float(params["plan.noise_multiplier"]) == p.noise_multiplier
    assert params["spec.dataset.id"] == ctx.spec.dataset.id and params["run.epochs"] == str(ctx.params.epochs)
    assert not [k for k in params if "seed" in k]  # a seed would let anyone re-derive reproducible noise
    # The dataset's figure is the dashboard's (ppmlops.privacy.block_view), read from the ledger.
    from ppmlops.privacy.block_view import dataset_use
    from ppmlops.privacy.ledger import Ledger

    use = dataset_use(Ledger(ctx.settings.db_url), ctx.spec.dataset.id)
    assert m["dataset_share_used"] == use.share and run.data.tags["ppmlops.dataset_share_used"] == use.text()
    assert run.data.tags["ppmlops.dataset_worst_block"] == use.block == "all"
    assert "plan.dataset_share_after" not in params and float(params["plan.window_share_after"]) == p.dataset_share_after
    exact = ctx.store.read(StagedData).result
    assert SENTINEL not in text
    # The counts logged are the noisy releases; an exact count shows up only where a release
    # happens to equal it.
    released = {counts.rows_train, counts.rows_holdout, counts.rows_quarantined}
    for value in (exact.rows_train, exact.rows_test, exact.rows_staged):
        assert value in released or value not in m.values()
    assert exact.sha256 not in text and str(exact.rows_staged) not in params.values()


def test_the_runs_link_to_each_other(planned):
    ctx = planned
    tracked = tracking.sync(ctx)
    run, _ = _everything(ctx)
    tags = run.data.tags
    airflow = "https://airflow.example.org/dags/ppmlops_" + ctx.spec.name + "/runs/manual__2026-12-02T10%3A00%3A00%2B00%3A00"
    assert tags["airflow.url"] == airflow == tracked.links["airflow"]
    assert tags["airflow.dag_id"] == ctx.spec.dag_id and tags["airflow.dag_run_id"] == ctx.run_id
    assert tags["ppmlops.dashboard_url"].endswith(f"/ppmlops/runs/{ctx.spec.name}/manual__2026-12-02T10%3A00%3A00%2B00%3A00")
    assert tags["mlflow.runName"] == ctx.run_id and tracked.links["dashboard"] == tags["ppmlops.dashboard_url"]
    # the run folder's mlflow.json (on the dashboard's run page) names the MLflow run
    assert json.loads((ctx.store.root / "mlflow.json").read_text())["mlflow_run_id"] == run.info.run_id


def test_a_sync_logs_each_stage_once_and_a_refusal_ends_the_run(planned):
    ctx = planned
    first = tracking.sync(ctx)
    assert first.logged == ["dataset", "assess", "risk", "plan"]
    again = tracking.sync(ctx)
    assert again.mlflow_run_id == first.mlflow_run_id and again.logged == first.logged
    client = backend.client(backend.resolve_uri(ctx.settings.registry_dir))
    assert len(client.get_metric_history(first.mlflow_run_id, "epsilon_charged")) == 1
    ctx.store.write(Refusal(stage="plan", reasons=["budget spent"]))
    tracking.sync(ctx)
    run = client.get_run(first.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.tags["ppmlops.decision"] == "refused at plan"


def test_plan_opens_the_run_with_the_dataset_described_without_rows(planned):
    """plan synced already (the fixture ran it): the run, and its dataset input, exist before training."""
    ctx = planned
    tracked = ctx.store.read(TrackedRun)
    assert tracked.logged[:1] == ["dataset"] and "plan" in tracked.logged
    client = backend.client(backend.resolve_uri(ctx.settings.registry_dir))
    run = client.get_run(tracked.mlflow_run_id)
    (used,) = run.inputs.dataset_inputs
    staged = ctx.store.read(Staged)
    ds, tags = used.dataset, {t.key: t.value for t in used.tags}
    assert ds.name == ctx.spec.dataset.id and ds.source_type == "ppmlops" and ds.profile is None
    assert ds.digest == staged.data_fingerprint.rsplit(":", 1)[1][:36] and len(ds.digest) == 36
    source = json.loads(ds.source)
    assert source["sources"] == staged.sources and source["window"] == staged.window.text() == tags["ppmlops.window"]
    assert source["fingerprint"] == staged.data_fingerprint == tags["ppmlops.fingerprint"]
    assert tags["mlflow.data.context"] == "training"
    schema = json.loads(ds.schema)["mlflow_colspec"]
    assert [(c["name"], c["type"]) for c in schema] == [
        (f.name, "double" if f.type == "numeric" else "string") for f in ctx.spec.dataset.features]
    exact = ctx.store.read(StagedData).result
    assert str(exact.rows_staged) not in ds.source and exact.sha256 not in ds.source + ds.digest
    # Filed as a training run: the experiment says it holds custom models, and no GenAI run type.
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "mlflow.runType" not in run.data.tags
