"""The retraining DAG end to end through Airflow's dag.test(): SQLite, local Ray, in-process OPA.

Besides "it deploys", the privacy claims a run makes are checked here on the real run:
Google's dp-accounting reproduces the card's epsilon from the plan's own settings, the card
states the fixed budget curve's epsilon, and nothing exact about the private rows (the snapshot's
hash, exact counts, real rows' losses) is in any record, XCom or card that leaves the run folder.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ppmlops import pipeline, settings
from ppmlops.run.records import CountsRelease, EvaluationRecord, PlanRecord, StagedData, TrainRecord

from dag_run import run_dag

pytestmark = [pytest.mark.e2e, pytest.mark.ray]
CONF = {"epochs": 2, "seed": 3}


@pytest.fixture(scope="module")
def e2e_run(airflow_db):
    return run_dag("e2e_small.yaml", CONF)


def test_run_succeeds_with_secure_randomness_and_deploys_to_its_environment(e2e_run):
    from ppmlops.registry.store import Registry

    run, spec, ctx = e2e_run
    summary = pipeline.summary(ctx)
    assert str(run.state) == "success", pipeline.format_summary(summary)
    assert summary["decision"] == "allow" and summary["randomness"] == "secure"
    registry = Registry(settings.load().registry_dir)
    assert registry.alias(spec.deploy.model_name, "development") == summary["model_version"]
    assert registry.alias(spec.deploy.model_name, "production") is None  # only a production run moves it


def test_rows_reconcile_exactly_inside_and_only_noisily_outside(e2e_run):
    from ppmlops.registry.store import Registry
    from ppmlops.stages.assess import _exact_counts

    _, spec, ctx = e2e_run
    staged = ctx.store.read(StagedData).result
    assert staged.rows_in == staged.rows_staged + staged.rows_quarantined and staged.rows_quarantined > 0
    quarantined = Path(staged.quarantine_path).read_text().splitlines()
    assert len(quarantined) - 1 == staged.rows_quarantined
    assert Path(staged.quarantine_path).parent == ctx.store.private_dir
    counts = ctx.store.read(CountsRelease)
    sigma = counts.sigma_rows
    assert abs(counts.rows_train - staged.rows_train) < 6 * sigma  # near the exact count: the noise is as stated
    assert_released_noisily(_exact_counts(staged, None)["rows"], counts)
    assert counts.ledger_entries and counts.noise_multiplier > 0
    # The card carries the released counts, not the exact ones.
    card = Registry(settings.load().registry_dir).card(spec.deploy.model_name, pipeline.summary(ctx)["model_version"])
    assert (card["rows_train"], card["rows_holdout"]) == (counts.rows_train, counts.rows_holdout)


def released_rows(counts: CountsRelease) -> dict[str, int]:
    """counts.json's row counts, named as assess names the exact ones (stages.assess._exact_counts)."""
    return ({"train": counts.rows_train, "holdout": counts.rows_holdout}
            | {f"quarantine:{r}": n for r, n in counts.quarantined.items()})


def assert_released_noisily(exact: dict[str, int], counts: CountsRelease) -> None:
    """Each released row count is its own discrete-Gaussian draw (sigma_rows), so it equals the
    exact count with probability at most 1 / (sigma sqrt(2 pi)); every one of them equal at once
    is what exact counts written out look like, and a noisy release all but never does."""
    released = released_rows(counts)
    assert set(released) == set(exact)
    chance = (1 / (counts.sigma_rows * math.sqrt(2 * math.pi))) ** len(exact)
    assert chance < 1e-4, f"{len(exact)} counts at sigma {counts.sigma_rows:.3g} cannot tell noisy from exact"
    assert any(released[k] != exact[k] for k in exact), "counts.json holds the exact row counts"


def test_dp_accounting_reproduces_the_cards_epsilon_from_the_plan(e2e_run):
    import dp_accounting
    from dp_accounting.rdp import rdp_privacy_accountant

    from ppmlops.privacy.accountant import ORDERS
    from ppmlops.registry.store import Registry

    _, spec, ctx = e2e_run
    plan = ctx.store.read(PlanRecord).privacy
    counts = ctx.store.read(CountsRelease)
    stats = dp_accounting.GaussianDpEvent(counts.noise_multiplier)
    train = rdp_privacy_accountant.RdpAccountant(orders=ORDERS)
    train.compose(dp_accounting.ComposedDpEvent([stats, dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(plan.sample_rate, dp_accounting.GaussianDpEvent(plan.noise_multiplier)),
        plan.steps_per_epoch * plan.epochs)]))
    holdout = rdp_privacy_accountant.RdpAccountant(orders=ORDERS)
    releases = [stats] + [dp_accounting.GaussianDpEvent(plan.holdout_sigma)] * plan.epochs
    holdout.compose(dp_accounting.ComposedDpEvent(releases + [dp_accounting.GaussianDpEvent(plan.evaluation_sigma)]))
    expected = max(train.get_epsilon(plan.delta), holdout.get_epsilon(plan.delta))
    card = Registry(settings.load().registry_dir).card(spec.deploy.model_name, pipeline.summary(ctx)["model_version"])
    assert card["epsilon"] == pytest.approx(expected, rel=1e-6)
    assert card["epsilon"] == plan.epsilon  # the fixed budget curve, not the epochs' use
    trained = ctx.store.read(TrainRecord)
    assert trained.epsilon_used["train"] <= card["epsilon_by_partition"]["train"] + 1e-12
    assert card["randomness"] == "secure" and card["accountant"] == "rdp"


def test_the_ledger_holds_the_grant_the_usage_and_the_releases(e2e_run):
    from ppmlops.privacy.ledger import Ledger

    _, spec, ctx = e2e_run
    entries = Ledger(settings.load().db_url).entries(spec.dataset.id, run_id=ctx.run_id)
    kinds = {(e.kind, e.partition) for e in entries}
    assert {("release", "train"), ("release", "holdout"), ("grant", "train"), ("grant", "holdout"),
            ("usage", "train"), ("usage", "holdout")} <= kinds
    assert all(e.randomness == "secure" for e in entries)
    # the grant is trimmed to the usage at the end; every release and step finished
    assert {e.status for e in entries if e.kind == "grant"} == {"trimmed"}
    assert all(e.status == "completed" for e in entries if e.kind != "grant")
    usage = [e.key for e in entries if e.kind == "usage"]
    assert usage == ["train/epoch-1", "holdout/epoch-1", "train/epoch-2", "holdout/epoch-2", "holdout/evaluation"]


def _public_texts(ctx) -> dict[str, str]:
    """Everything of this run that leaves the run folder: public records, manifest, XComs, the card."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    from ppmlops.registry.store import Registry

    texts = {p.name: p.read_text() for p in ctx.store.root.glob("*.json")}
    with create_session() as session:
        for x in session.query(XComModel).filter(XComModel.run_id == ctx.run_id).all():
            texts[f"xcom {x.task_id}"] = json.dumps(x.value, default=str)
    version = pipeline.summary(ctx)["model_version"]
    texts["card"] = json.dumps(Registry(settings.load().registry_dir).card(ctx.spec.deploy.model_name, version))
    texts["summary"] = json.dumps(pipeline.summary(ctx), default=str)
    texts["mlflow run"], texts["mlflow model version"] = _mlflow_texts(ctx, version)
    return texts


def _mlflow_texts(ctx, version: int) -> tuple[str, str]:
    """The MLflow run (params, tags, every metric's history) and the model version's tags."""
    from ppmlops.registry import backend
    from ppmlops.run.records import TrackedRun

    client = backend.client(backend.resolve_uri(settings.load().registry_dir))
    run = client.get_run(ctx.store.read(TrackedRun).mlflow_run_id)
    history = {k: [m.value for m in client.get_metric_history(run.info.run_id, k)] for k in run.data.metrics}
    mv = client.get_model_version(ctx.spec.deploy.model_name, str(version))
    return (json.dumps({"params": run.data.params, "tags": run.data.tags, "metrics": history}),
            json.dumps({"tags": mv.tags, "run_id": mv.run_id}))


def test_the_mlflow_run_shows_the_released_values_and_owns_the_version(e2e_run):
    from ppmlops.registry import backend
    from ppmlops.run.records import TrackedRun

    _, spec, ctx = e2e_run
    summary = pipeline.summary(ctx)
    client = backend.client(backend.resolve_uri(settings.load().registry_dir))
    tracked = ctx.store.read(TrackedRun)
    run = client.get_run(tracked.mlflow_run_id)
    m = run.data.metrics
    assert m["accuracy_noisy"] == summary["accuracy"] and m["epsilon_charged"] == summary["epsilon"]
    assert run.data.tags["ppmlops.decision"] == "allow" and run.info.status == "FINISHED"
    epochs = client.get_metric_history(run.info.run_id, "epoch/noise_multiplier")
    assert [e.step for e in epochs] == [1, 2]
    mv = client.get_model_version(spec.deploy.model_name, str(summary["model_version"]))
    assert mv.run_id == run.info.run_id and mv.tags["card.run_id"] == ctx.run_id
    assert "development" in mv.aliases and set(tracked.logged) >= {"plan", "train", "evaluate", "gate", "deploy"}
    exact = ctx.store.read(StagedData).result
    # A noisy count can land on the exact one by chance (the evaluation's holdout count did once in
    # CI); any other metric holding an exact count is a leak.
    noisy_counts = {"rows_train_noisy", "rows_holdout_noisy", "rows_quarantined_noisy", "holdout_rows_noisy"}
    for value in (exact.rows_train, exact.rows_test, exact.rows_staged):
        assert {name for name, v in m.items() if v == value} <= noisy_counts, value


def test_nothing_exact_about_private_rows_leaves_the_run_folder(e2e_run):
    _, _, ctx = e2e_run
    staged = ctx.store.read(StagedData).result
    texts = _public_texts(ctx)
    assert any(name.startswith("xcom") for name in texts)
    for name, text in texts.items():
        assert staged.sha256 not in text and staged.source_sha256 not in text, name  # fingerprints are keyed
        for key in ("rows_staged", "quarantine_reasons", "snapshot_train", "threshold", "members"):
            assert f'"{key}"' not in text, (name, key)
    evaluated = ctx.store.read(EvaluationRecord)
    assert evaluated.audit.canaries > 0 and evaluated.partition == "holdout"


def test_decisions_recorded(e2e_run):
    from ppmlops.audit.log import AuditLog
    from ppmlops.run.records import GateRecord

    _, _, ctx = e2e_run
    records = [r["decision"] for r in AuditLog(settings.load().db_url).records(run_id=ctx.run_id)]
    queries = [r["query"] for r in records]
    assert "data.ppmlops.train" in queries and "data.ppmlops.budget" in queries
    deploy = [r for r in records if r["query"] == "data.ppmlops.deploy"]
    assert len(deploy) == 1 and deploy[0]["outcome"] == "allow"
    assert deploy[0]["policy_hash"] == ctx.store.read(GateRecord).policy_hash
    assert deploy[0]["input"]["privacy"]["randomness"] == "secure"
    assert AuditLog(settings.load().db_url).verify() == []
