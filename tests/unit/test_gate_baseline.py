"""Issue 26 item 10: the gate must not deploy a model that is no better than guessing.

The evaluation's new fields (the noisy class counts, lower confidence bounds on accuracy minus
the majority rate, on the held-out rows and on the smaller class) are post-processing of its
one noisy release; the deploy and train policies read them through the real policy on OPA's
embedded engine. The three runs the issue saw deployed (a one-class table, a 50-row table, a
model below its majority baseline) are rebuilt from exact predictions with fixed-seed noise.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from ppmlops.compliance import evaluate
from ppmlops.compliance import examples
from ppmlops.compliance.utility_inputs import deploy_metrics, plan_classes
from ppmlops.privacy.randomness import Randomness
from ppmlops.privacy.releases import noisy_counts
from ppmlops.run.records import CanaryAudit, CountsRelease, EvaluationRecord
from ppmlops.spec import Deploy
from ppmlops.stages.evaluate import confidence_bounds, exact_counts, groups_for, metrics_of

DEPLOY = Deploy(model_name="demo_churn", min_accuracy=0.6)  # the demo's floor: every case below passes it
AUDIT = CanaryAudit(canaries=256, guesses=0, correct=0, epsilon_lower_bound=0.0, confidence=0.95, delta=1e-5)


@pytest.fixture(autouse=True)
def _settings(monkeypatch, tmp_path):
    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path / "home"))
    for var in ("PPMLOPS_OPA_URL", "PPMLOPS_POLICY"):
        monkeypatch.delenv(var, raising=False)


def predictions(tp: int, fp: int, fn: int, tn: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scores and labels with exactly this confusion matrix at threshold 0.5."""
    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.uniform(0.5, 1, tp + fp), rng.uniform(0, 0.5, fn + tn)])
    y = np.concatenate([np.ones(tp), np.zeros(fp), np.ones(fn), np.zeros(tn)]).astype(np.int64)
    return p, y


def evaluation(tp: int, fp: int, fn: int, tn: int, sigma: float, case: str) -> EvaluationRecord:
    """What the evaluate stage records for these predictions, with the release's noise drawn
    from a fixed seed (the stage's own functions, without a model or a ledger)."""
    groups = groups_for(sigma)
    noisy = noisy_counts(exact_counts(*predictions(tp, fp, fn, tn)), groups,
                         Randomness.reproducible("test-gate-baseline", case).source("evaluation"))
    cell = groups["confusion"].sigma
    return EvaluationRecord(**metrics_of(noisy.values), sigma=sigma, ledger_entry=1, audit=AUDIT, cell_sigma=cell,
                            confidence=0.95, **confidence_bounds(noisy.values["confusion"], cell, 0.95))


def gate(record: EvaluationRecord, deploy: Deploy = DEPLOY):
    doc = copy.deepcopy(examples.DEPLOY_INPUT)
    doc["metrics"] = deploy_metrics(record, deploy)
    return evaluate("data.ppmlops.deploy", doc)


def failed(decision) -> set[str]:
    return {c["id"] for c in decision.result["checks"] if not c["passed"]}


# ------------------------------------------------------------------ the three cases of the issue

def test_one_class_holdout_is_denied_as_undefined():
    # 1123 held-out rows, none positive; the old gate saw accuracy 0.95 and deployed.
    record = evaluation(tp=0, fp=54, fn=0, tn=1069, sigma=8.0, case="one-class")
    assert record.accuracy >= DEPLOY.min_accuracy
    d = gate(record)
    assert d.outcome == "deny" and "metric_defined" in failed(d), d.reasons
    assert record.class_rows_lower == 0.0


def test_fifty_row_table_is_denied_for_its_size():
    # About 11 held-out rows, all predicted right, at the noise sigma 9.47.
    record = evaluation(tp=3, fp=0, fn=0, tn=8, sigma=9.47, case="fifty-rows")
    d = gate(record)
    assert d.outcome == "deny" and {"evaluation_size", "beats_baseline"} <= failed(d), d.reasons
    assert any("too few held-out rows" in r for r in d.result["sized_reasons"])


def test_model_below_its_majority_baseline_is_denied():
    # Accuracy 0.675 against a majority rate of 0.825: always answering "negative" does better.
    record = evaluation(tp=50, fp=200, fn=125, tn=625, sigma=8.0, case="below-baseline")
    assert record.accuracy >= DEPLOY.min_accuracy
    d = gate(record)
    assert d.outcome == "deny" and failed(d) == {"beats_baseline"}, d.reasons
    assert record.advantage_lower < 0


def test_a_model_that_clearly_beats_guessing_deploys():
    record = evaluation(tp=500, fp=100, fn=100, tn=1300, sigma=8.0, case="good")  # 0.90 against 0.70
    d = gate(record)
    assert d.outcome == "allow", d.reasons
    # ...unless the spec asks for more than it can show
    assert failed(gate(record, DEPLOY.model_copy(update={"min_margin": 0.5}))) == {"beats_baseline"}


def test_a_one_class_partition_is_refused_before_training():
    counts = CountsRelease(rows_train=4700, rows_holdout=1100, quarantined={}, k=5, k_unsafe_rows=None,
                           sigma_rows=20.0, sigma_k=None, noise_multiplier=18.0, ledger_entries=[1], epsilon=0.2,
                           labels={"train:positive": 1490, "train:negative": 3210,
                                   "holdout:positive": -9, "holdout:negative": 1069}, sigma_labels=40.0)
    doc = copy.deepcopy(examples.TRAIN_INPUT) | {"classes": plan_classes(counts, "churned", 0.95)}
    d = evaluate("data.ppmlops.train", doc)
    assert not d.allowed
    assert any(r.startswith("the held-out partition holds a single class of churned") for r in d.reasons), d.reasons
    assert not any("training partition" in r for r in d.reasons)
    two_classes = counts.model_copy(update={"labels": counts.labels | {"holdout:positive": 372}})
    doc["classes"] = plan_classes(two_classes, "churned", 0.95)
    assert evaluate("data.ppmlops.train", doc).allowed


# ------------------------------------------------------------------ the evaluation's new fields

def test_evaluation_fields_are_reproducible_post_processing_of_the_release():
    a = evaluation(tp=500, fp=100, fn=100, tn=1300, sigma=8.0, case="seeded")
    b = evaluation(tp=500, fp=100, fn=100, tn=1300, sigma=8.0, case="seeded")
    assert a == b
    assert a.positives + a.negatives == a.rows or min(a.positives, a.negatives) < 0
    assert a.rows_lower < a.rows and a.class_rows_lower < min(a.positives, a.negatives)
    assert a.advantage_lower < a.accuracy - a.majority_baseline
    assert evaluation(tp=500, fp=100, fn=100, tn=1300, sigma=8.0, case="other seed") != a


def _coverage(exact: dict[str, int], cell_sigma: float, trials: int = 3000) -> float:
    """How often the bound claims an advantage above the held-out rows' exact one (0 here)."""
    rng = np.random.default_rng(26)
    cells = np.array([exact[k] for k in ("tp", "fp", "fn", "tn")])
    draws = cells + np.rint(rng.normal(0, cell_sigma, (trials, 4))).astype(int)
    lows = [confidence_bounds(dict(zip(("tp", "fp", "fn", "tn"), map(int, row))), cell_sigma, 0.95)["advantage_lower"]
            for row in draws]
    return float(np.mean(np.array(lows) > 0))


@pytest.mark.parametrize("cell_sigma", [3.0, 30.0])
def test_the_bound_covers_the_release_noise(cell_sigma):
    # Held-out rows on which the model is exactly as good as always guessing "negative" (0.7 =
    # 0.7). The bound may claim an advantage in at most 5% of noise draws; one that ignored the
    # noise (the raw noisy difference) would in about half of them.
    exact = {"tp": 30, "fp": 30, "fn": 60, "tn": 180}
    assert _coverage(exact, cell_sigma) <= 0.05
    rng = np.random.default_rng(1)
    noisy = np.array([30, 30, 60, 180]) + rng.normal(0, cell_sigma, (3000, 4))
    naive = (noisy[:, 0] + noisy[:, 3]) - np.maximum(noisy[:, 0] + noisy[:, 2], noisy[:, 1] + noisy[:, 3])
    assert np.mean(naive > 0) > 0.2
