"""Issue 29 item 5: the deploy gate denies a model that does not beat its task's noisy baseline
(the majority class for multiclass, the mean for regression) and allows a real one, through the
real policy on OPA's embedded engine. The evaluations are built by the evaluate stage's own
functions from exact predictions, with fixed-seed noise at the demo's evaluation sigma."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from ppmlops.compliance import evaluate, examples
from ppmlops.compliance.utility_inputs import ClassifierMetrics, RegressionMetrics, deploy_metrics
from ppmlops.privacy.randomness import Randomness
from ppmlops.privacy.releases import noisy_counts, noisy_sums
from ppmlops.run.records import CanaryAudit, EvaluationRecord
from ppmlops.spec import Deploy
from ppmlops.stages import task_evaluation as te

DEPLOY = Deploy(model_name="tasks", min_accuracy=0.0)
AUDIT = CanaryAudit(canaries=256, guesses=0, correct=0, epsilon_lower_bound=0.0, confidence=0.95, delta=1e-5)
SIGMA = 8.0


@pytest.fixture(autouse=True)
def _settings(monkeypatch, tmp_path):
    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path / "home"))
    for var in ("PPMLOPS_OPA_URL", "PPMLOPS_POLICY"):
        monkeypatch.delenv(var, raising=False)


def multiclass_record(predicted, y, k, case) -> EvaluationRecord:
    groups = te.multiclass_groups(SIGMA)
    noisy = noisy_counts(te.multiclass_counts(predicted, y, k), groups,
                         Randomness.reproducible("gate-tasks", case).source("evaluation"))
    cell = groups[te.CONFUSION].sigma
    return EvaluationRecord(**te.multiclass_metrics(te.noisy_matrix(noisy.values, k), cell, 0.95), task="multiclass",
                            classes=[str(i) for i in range(k)], sigma=SIGMA, cell_sigma=cell, confidence=0.95,
                            ledger_entry=1, audit=AUDIT)


def regression_record(predicted, y, case, label_range=(1.0, 99.0)) -> EvaluationRecord:
    groups = te.regression_groups(SIGMA)
    released = noisy_sums(te.regression_sums(predicted, y), groups,
                          Randomness.reproducible("gate-tasks", case).source("evaluation"))
    sigmas = {g: x.sigma for g, x in groups.items()}
    return EvaluationRecord(**te.regression_metrics(released.values, sigmas, 0.95, label_range), task="regression",
                            label_range=label_range, sigma=SIGMA, cell_sigma=sigmas["gain"], confidence=0.95, ledger_entry=1,
                            audit=AUDIT)


def gate(record: EvaluationRecord):
    doc = copy.deepcopy(examples.DEPLOY_INPUT)
    doc["metrics"] = deploy_metrics(record, DEPLOY)
    return evaluate("data.ppmlops.deploy", doc)


def failed(decision) -> set[str]:
    return {c["id"] for c in decision.result["checks"] if not c["passed"]}


def ten_classes(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 10, n)


def test_a_real_multiclass_model_deploys():
    y = ten_classes()
    rng = np.random.default_rng(1)
    predicted = np.where(rng.uniform(size=y.size) < 0.85, y, rng.integers(0, 10, y.size))  # ~0.87 vs ~0.11
    record = multiclass_record(predicted, y, 10, "good")
    d = gate(record)
    assert d.outcome == "allow", d.reasons
    assert d.input["metrics"]["task"] == "multiclass" and d.input["metrics"]["macro_f1"] > 0.8


def test_a_multiclass_model_below_the_majority_class_is_denied():
    # 60% of the rows are class 0; the model spreads its answers and is right 40% of the time.
    rng = np.random.default_rng(2)
    y = np.where(rng.uniform(size=2000) < 0.6, 0, rng.integers(1, 5, 2000))
    predicted = np.where(rng.uniform(size=2000) < 0.35, y, rng.integers(0, 5, 2000))
    record = multiclass_record(predicted, y, 5, "below")
    assert record.accuracy < record.majority_baseline
    d = gate(record)
    assert d.outcome == "deny" and failed(d) == {"beats_baseline"}, d.reasons


def test_a_multiclass_model_that_always_answers_the_majority_is_denied():
    # Exactly the baseline: accuracy == majority rate, so the lower bound is below 0.
    rng = np.random.default_rng(3)
    y = np.where(rng.uniform(size=3000) < 0.5, 2, rng.integers(0, 4, 3000))
    record = multiclass_record(np.full(3000, 2), y, 4, "majority")
    d = gate(record)
    assert d.outcome == "deny" and "beats_baseline" in failed(d), d.reasons


def hours(n=2500, seed=4):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, n)
    y = np.clip(0.2 + 0.5 * x + 0.05 * rng.normal(size=n), 0, 1)
    return x, y


def test_a_real_regression_model_deploys():
    x, y = hours()
    record = regression_record(0.2 + 0.5 * x, y, "good")
    assert record.rmse < record.baseline_rmse
    d = gate(record)
    assert d.outcome == "allow", d.reasons
    assert d.input["metrics"]["task"] == "regression"


def test_a_regression_model_no_better_than_the_mean_is_denied():
    x, y = hours()
    record = regression_record(np.full(y.size, y.mean()), y, "mean")  # the baseline itself
    d = gate(record)
    assert d.outcome == "deny" and failed(d) == {"beats_baseline"}, d.reasons
    assert any(r.startswith("RMSE") and "noisy mean" in r for r in d.reasons)


def test_a_regression_model_worse_than_the_mean_is_denied():
    x, y = hours()
    record = regression_record(1 - (0.2 + 0.5 * x), y, "worse")  # anti-correlated
    assert record.rmse > record.baseline_rmse
    d = gate(record)
    assert d.outcome == "deny" and "beats_baseline" in failed(d), d.reasons


def test_the_policy_input_is_typed_per_task():
    x, y = hours()
    doc = deploy_metrics(regression_record(0.2 + 0.5 * x, y, "typed"), DEPLOY)
    assert set(doc) == set(RegressionMetrics.model_fields)
    with pytest.raises(ValueError):
        RegressionMetrics.model_validate(doc | {"accuracy": 0.9})  # a classifier's field is refused
    binary = deploy_metrics(EvaluationRecord(accuracy=0.9, auc=0.9, majority_baseline=0.7, rows=1000, sigma=8,
                                             ledger_entry=1, audit=AUDIT, positives=300, negatives=700,
                                             advantage_lower=0.1, rows_lower=900, class_rows_lower=250,
                                             confidence=0.95), DEPLOY)
    assert "task" not in binary and list(binary) == [f for f in ClassifierMetrics.model_fields
                                                     if f not in ("task", "macro_f1")]
