"""The retraining DAG end to end through Airflow's dag.test(): SQLite, local Ray, in-process Rego."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ppmlops import pipeline, settings
from ppmlops.spec import load_spec

pytestmark = [pytest.mark.e2e, pytest.mark.ray]
REPO = Path(__file__).resolve().parents[2]


def dp_accounting_epsilon(entries, delta):
    """Google's dp-accounting on the ledger's own segments; partitions compose in parallel."""
    from dp_accounting import dp_event
    from dp_accounting.rdp import RdpAccountant

    from ppmlops.privacy.accountant import ORDERS

    by_partition: dict[str, RdpAccountant] = {}
    for e in entries:
        acc = by_partition.setdefault(e.partition, RdpAccountant(orders=list(ORDERS)))
        acc.compose(dp_event.PoissonSampledDpEvent(e.sample_rate, dp_event.GaussianDpEvent(e.noise_multiplier)), e.steps)
    return max(acc.get_epsilon(delta) for acc in by_partition.values())


@pytest.fixture(scope="module")
def e2e_run(airflow_db):
    import os

    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    spec = load_spec(Path(os.environ["PPMLOPS_PIPELINES"]) / "e2e_small.yaml")
    run = bag.dags[spec.dag_id].test(run_conf={"epochs": 2, "seed": 3})
    ctx = pipeline.RunContext(spec=spec, run_id=run.run_id,
                              params=pipeline.RunParams.from_mapping(spec, {"epochs": 2, "seed": 3}))
    return run, spec, ctx


def test_run_succeeds_and_deploys(e2e_run):
    run, spec, ctx = e2e_run
    assert str(run.state) == "success", pipeline.format_summary(pipeline.summary(ctx))
    summary = pipeline.summary(ctx)
    assert summary["decision"] == "allow"
    assert summary["model_version"] >= 1


def test_rows_reconcile(e2e_run):
    _, spec, ctx = e2e_run
    staged = ctx.read("ingest")
    assert staged["rows_in"] == staged["rows_staged"] + staged["rows_quarantined"]
    assert staged["rows_quarantined"] > 0  # the generator refuses consent for some rows
    quarantined = Path(staged["quarantine_path"]).read_text().splitlines()
    assert len(quarantined) - 1 == staged["rows_quarantined"]  # header + one line per row


def test_ledger_matches_dp_accounting(e2e_run):
    from ppmlops.privacy.ledger import Ledger

    _, spec, ctx = e2e_run
    ledger = Ledger(settings.load().db_url)
    entries = ledger.entries(spec.dataset.id, run_id=ctx.run_id)
    epochs = ctx.read("train")["epochs_completed"]
    assert epochs == 2
    # both partitions are in the ledger: the training steps and the tuner's noisy holdout accuracy
    assert sorted(e.partition for e in entries) == ["holdout"] * epochs + ["train"] * epochs
    assert set(ctx.read("train")["epsilon_by_partition"]) == {"train", "holdout"}
    total = ledger.epsilon_spent(spec.dataset.id)
    assert total == pytest.approx(dp_accounting_epsilon(ledger.entries(spec.dataset.id), spec.privacy.delta), rel=1e-6)
    # What the run reports is what the ledger holds, and within what the policy granted.
    trained, planned = ctx.read("train"), ctx.read("plan")
    assert trained["run_epsilon_spent"] == pytest.approx(
        dp_accounting_epsilon(entries, spec.privacy.delta), rel=1e-6)
    assert trained["run_epsilon_spent"] <= planned["run_epsilon"]


def test_model_and_card_in_registry(e2e_run):
    from ppmlops.registry.store import Registry

    _, spec, ctx = e2e_run
    deployed = ctx.read("deploy")
    reg = Registry(settings.load().registry_dir)
    assert reg.alias(spec.deploy.model_name, "production") == deployed["version"]
    card = reg.card(spec.deploy.model_name, deployed["version"])
    assert card["dataset_id"] == spec.dataset.id
    assert card["data_sha256"] == ctx.read("ingest")["sha256"]
    assert card["epsilon"] == pytest.approx(ctx.read("train")["run_epsilon_spent"])
    assert card["delta"] == spec.privacy.delta and card["accountant"] == "rdp"
    assert card["policy_decision"]["outcome"] == "allow"
    assert reg.model_path(spec.deploy.model_name, deployed["version"]).exists()


def test_decisions_recorded(e2e_run):
    from ppmlops.audit.log import AuditLog

    _, spec, ctx = e2e_run
    records = [r["decision"] for r in AuditLog(settings.load().db_url).records(run_id=ctx.run_id)]
    queries = [r["query"] for r in records]
    assert "data.ppmlops.train" in queries and "data.ppmlops.budget" in queries
    deploy = [r for r in records if r["query"] == "data.ppmlops.deploy"]
    assert len(deploy) == 1 and deploy[0]["outcome"] == "allow"
    assert deploy[0]["policy_hash"] == ctx.read("gate")["policy_hash"]
    assert AuditLog(settings.load().db_url).verify() == []
