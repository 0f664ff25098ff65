"""Budgets belong to the dataset: runs accumulate in the ledger until the policy refuses to train."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ppmlops import pipeline, settings
from ppmlops.errors import PolicyRefused
from ppmlops.spec import parse_spec
from ppmlops.stages import assess, deploy, ingest, validate
from ppmlops.run.context import RunContext, RunParams

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
    ctx = RunContext(spec=spec, run_id=run_id, params=RunParams.defaults(spec))
    return ctx, pipeline.run_all(ctx)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path))
    return tmp_path


def test_runs_accumulate_then_policy_refuses(home):
    import math

    from ppmlops.audit.log import AuditLog
    from ppmlops.privacy.accountant import Segment
    from ppmlops.privacy.ledger import Charge, Ledger

    spec = make_spec()
    ledger = Ledger(settings.load().db_url)
    _, first = run(spec, "run-1")
    budget = ledger.budget(spec.dataset.id)
    after_first = budget.share_used(ledger.charged_curves(spec.dataset.id))
    _, second = run(spec, "run-2")
    after_second = budget.share_used(ledger.charged_curves(spec.dataset.id))

    assert {e.run_id for e in ledger.entries(spec.dataset.id)} == {"run-1", "run-2"}
    assert after_first == pytest.approx(first["dataset_share_used"])
    # Composition: the second run spends the same people's budget again.
    assert 0 < after_first < after_second <= 1
    assert after_second == pytest.approx(second["dataset_share_used"])

    # Another release took nearly all that is left (a charge counts whether or not it completed);
    # what stays pays for the next run's count release and next to nothing more.
    curves = ledger.charged_curves(spec.dataset.id)
    [counts] = [e for e in ledger.entries(spec.dataset.id, run_id="run-1") if e.key == "counts" and e.partition == "train"]
    keep = float(counts.rdp[budget.index]) + 1e-5
    rooms = {p: budget.remaining_rdp(curves, p) - keep for p in ("train", "holdout")}
    ledger.charge(dataset_id=spec.dataset.id, run_id="other", kind="release", key="big", randomness="secure",
                  charges=[Charge(p, Segment(math.sqrt(budget.order / (2 * room)), 1.0, 1), "gaussian")
                           for p, room in rooms.items()])
    assert 0.9 < budget.share_used(ledger.charged_curves(spec.dataset.id)) <= 1

    # The policy, asked on public facts before the counts are released (assess's pre-check),
    # refuses: nothing more is spent on a run that cannot train.
    ctx = RunContext(spec=spec, run_id="run-3", params=RunParams.defaults(spec))
    for stage in (ingest, validate):
        stage.run(ctx)
    spent_before = budget.share_used(ledger.charged_curves(spec.dataset.id))
    with pytest.raises(PolicyRefused) as refused:
        assess.run(ctx)
    assert any("budget is spent" in r for r in refused.value.reasons), refused.value.reasons
    assert ledger.entries(spec.dataset.id, "run-3") == []
    assert budget.share_used(ledger.charged_curves(spec.dataset.id)) == spent_before
    assert not (ctx.run_dir / "plan.json").exists() and not (ctx.run_dir / "train.json").exists()
    denied = [r["decision"] for r in AuditLog(settings.load().db_url).records(run_id="run-3")]
    assert denied and denied[-1]["outcome"] == "deny"
    assert pipeline.summary(ctx)["decision"] == "refused at assess"
    assert budget.share_used(ledger.charged_curves(spec.dataset.id)) <= 1


def test_a_changed_lifetime_budget_in_the_spec_is_refused_not_applied(home):
    from ppmlops.privacy.ledger import BudgetMismatch, Ledger

    spec = make_spec()
    ctx = RunContext(spec=spec, run_id="run-a", params=RunParams.defaults(spec))
    for stage in (ingest, validate, assess):
        stage.run(ctx)
    bigger = make_spec(**{"privacy.epsilon": 30.0})
    ctx = RunContext(spec=bigger, run_id="run-b", params=RunParams.defaults(bigger))
    ingest.run(ctx)
    validate.run(ctx)
    with pytest.raises(BudgetMismatch, match="ppmlops ledger set-budget"):
        assess.run(ctx)
    assert Ledger(settings.load().db_url).budget(spec.dataset.id).epsilon == spec.privacy.epsilon


def test_gate_denies_a_model_below_the_utility_floor(home):
    from ppmlops.registry.store import Registry

    spec = make_spec(**{"deploy.min_accuracy": 0.999, "deploy.model_name": "floor_test"})
    ctx, summary = run(spec, "floor-run")
    assert summary["decision"] == "deny"
    assert any("accuracy" in r for r in summary["decision_reasons"])
    assert "model_version" not in summary
    assert Registry(settings.load().registry_dir).versions("floor_test") == []
    with pytest.raises(PolicyRefused):
        deploy.run(ctx)
