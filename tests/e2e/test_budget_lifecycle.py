"""Budgets belong to the dataset: runs accumulate in the ledger until the policy refuses to train."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ppmlops import pipeline, settings
from ppmlops.errors import PolicyRefused
from ppmlops.spec import parse_spec

pytestmark = [pytest.mark.e2e, pytest.mark.ray]
E2E_SPEC = Path(__file__).with_name("e2e_small.yaml")


def make_spec(**overrides):
    doc = yaml.safe_load(E2E_SPEC.read_text())
    doc["name"] = "lifecycle"
    doc["dataset"]["id"] = "lifecycle_customers"
    doc["training"]["epochs"] = 1
    for path, value in overrides.items():
        node = doc
        *parents, leaf = path.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return parse_spec(doc, "lifecycle.yaml")


def run(spec, run_id):
    ctx = pipeline.RunContext(spec=spec, run_id=run_id, params=pipeline.RunParams.defaults(spec))
    return ctx, pipeline.run_all(ctx)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path))
    return tmp_path


def test_runs_accumulate_then_policy_refuses(home):
    from ppmlops.audit.log import AuditLog
    from ppmlops.privacy.accountant import Segment, calibrate_noise
    from ppmlops.privacy.ledger import Ledger

    spec = make_spec()
    ledger = Ledger(settings.load().db_url)
    _, first = run(spec, "run-1")
    after_first = ledger.epsilon_spent(spec.dataset.id)
    _, second = run(spec, "run-2")
    after_second = ledger.epsilon_spent(spec.dataset.id)

    assert {e.run_id for e in ledger.entries(spec.dataset.id)} == {"run-1", "run-2"}
    assert after_first == pytest.approx(first["epsilon_spent"])
    # Composition: the second run spends the same people's budget again.
    assert after_first < after_second <= spec.privacy.epsilon
    assert after_second == pytest.approx(second["dataset_epsilon_total"])

    # A crashed run reserved nearly all that is left (write-ahead: it counts although it never completed).
    sigma = calibrate_noise(spec.privacy.epsilon - 0.01, spec.privacy.delta, 1.0, 1,
                            prior_rdp=ledger.rdp_spent(spec.dataset.id))
    ledger.reserve(dataset_id=spec.dataset.id, run_id="crashed", segment=Segment(sigma, 1.0, 1))
    assert spec.privacy.epsilon - 0.05 < ledger.epsilon_spent(spec.dataset.id) <= spec.privacy.epsilon

    ctx = pipeline.RunContext(spec=spec, run_id="run-3", params=pipeline.RunParams.defaults(spec))
    for stage in (pipeline.ingest, pipeline.validate, pipeline.assess):
        stage(ctx)
    with pytest.raises(PolicyRefused) as refused:
        pipeline.plan(ctx)
    assert any("budget" in r.lower() for r in refused.value.reasons)
    assert not (ctx.run_dir / "train.json").exists()
    denied = [r["decision"] for r in AuditLog(settings.load().db_url).records(run_id="run-3")
              if r["decision"]["query"] == "data.ppmlops.train"]
    assert denied and denied[-1]["outcome"] == "deny"
    assert pipeline.summary(ctx)["decision"] == "refused to train"


def test_gate_denies_a_model_below_the_utility_floor(home):
    from ppmlops.registry.store import Registry

    spec = make_spec(**{"deploy.min_accuracy": 0.999, "deploy.model_name": "floor_test"})
    ctx, summary = run(spec, "floor-run")
    assert summary["decision"] == "deny"
    assert any("accuracy" in r for r in summary["decision_reasons"])
    assert "model_version" not in summary
    assert Registry(settings.load().registry_dir).versions("floor_test") == []
    with pytest.raises(PolicyRefused):
        pipeline.deploy(ctx)
