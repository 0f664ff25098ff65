"""Issue 29 item 3: the multiclass and regression evaluations are one Gaussian release each, whose
charged RDP curve dp_accounting reproduces, and whose metrics and baselines are post-processing."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant
from sklearn.metrics import f1_score

from ppmlops.privacy.accountant import ORDERS, epsilon_from_rdp, segment_rdp
from ppmlops.privacy.randomness import Randomness
from ppmlops.privacy.releases import effective_sigma, noisy_counts, noisy_sums, release_segment
from ppmlops.stages import task_evaluation as te

DELTA = 1e-5


def _dp_accounting_epsilon(sigma: float) -> float:
    acc = rdp_privacy_accountant.RdpAccountant(orders=ORDERS)
    acc.compose(dp_accounting.GaussianDpEvent(sigma))
    return acc.get_epsilon(DELTA)


@pytest.mark.parametrize("groups_of", [te.multiclass_groups, te.regression_groups])
@pytest.mark.parametrize("sigma", [0.8, 3.0, 25.0])
def test_each_task_release_is_charged_as_one_gaussian_at_the_evaluation_sigma(groups_of, sigma):
    groups = list(groups_of(sigma).values())
    segment = release_segment(groups)
    assert segment.noise_multiplier >= sigma and segment.noise_multiplier == pytest.approx(sigma, rel=1e-9)
    assert (segment.sample_rate, segment.steps) == (1.0, 1)
    mine = epsilon_from_rdp(segment_rdp(segment), DELTA)[0]
    assert mine == pytest.approx(_dp_accounting_epsilon(sigma), rel=1e-9)


def test_a_row_moves_one_confusion_cell_by_one():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 4, 300), rng.integers(0, 4, 300)
    base = te.multiclass_counts(p, y, 4)[te.CONFUSION]
    more = te.multiclass_counts(np.append(p, 2), np.append(y, 1), 4)[te.CONFUSION]
    diff = {k: more[k] - base[k] for k in base if more[k] != base[k]}
    assert diff == {"1:2": 1}


def test_a_regression_row_moves_the_scaled_sums_by_at_most_one_sigma_eff():
    # The Gaussian mechanism at sigma_eff needs: a row's change, each coordinate divided by its
    # group's noise, has L2 norm <= 1 / sigma_eff. Predictions far outside the range included.
    sigma = 2.0
    groups = te.regression_groups(sigma)
    rng = np.random.default_rng(1)
    p, y = rng.uniform(-3, 4, 200), rng.uniform(0, 1, 200)
    base = te.regression_sums(p, y)
    worst = 0.0
    for extra_p, extra_y in [(5.0, 0.0), (-5.0, 1.0), (1.0, 1.0), (0.0, 1.0), (0.5, 0.5), (0.5, 0.0)]:
        more = te.regression_sums(np.append(p, extra_p), np.append(y, extra_y))
        scaled = [(more[g]["sum"] - base[g]["sum"]) / groups[g].sigma for g in te.SUMS]
        worst = max(worst, math.sqrt(sum(x * x for x in scaled)))
    assert worst <= 1 / effective_sigma(list(groups.values())) + 1e-9
    # rows, |e|, the gain, 2d, 4d^2 each move by at most 1 whatever the row
    rows = np.array([[a, b] for a in np.linspace(-2, 3, 26) for b in np.linspace(0, 1, 21)])
    per_row = np.array([[te.regression_sums([a], [b])[g]["sum"] for g in te.SUMS] for a, b in rows])
    assert np.abs(per_row).max() <= 1.0 + 1e-12


def test_multiclass_metrics_are_the_exact_ones_under_negligible_noise():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 900)
    p = np.where(rng.uniform(size=900) < 0.7, y, rng.integers(0, 3, 900))
    groups = te.multiclass_groups(1e-3)
    noisy = noisy_counts(te.multiclass_counts(p, y, 3), groups, Randomness.reproducible("t").source("e"))
    m = te.multiclass_metrics(te.noisy_matrix(noisy.values, 3), groups[te.CONFUSION].sigma, 0.95)
    assert m["accuracy"] == pytest.approx(np.mean(p == y))
    assert m["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))
    assert m["majority_baseline"] == pytest.approx(np.bincount(y).max() / 900)
    assert m["advantage_lower"] == pytest.approx(m["accuracy"] - m["majority_baseline"], abs=1e-3)
    assert m["rows"] == 900 and m["class_rows_lower"] == pytest.approx(900 - np.bincount(y).max(), abs=0.1)


def test_multiclass_bounds_widen_with_the_noise_and_stay_below_the_truth():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 5, 2000)
    p = np.where(rng.uniform(size=2000) < 0.5, y, rng.integers(0, 5, 2000))
    truth = np.mean(p == y) - np.bincount(y).max() / 2000
    misses = 0
    for seed in range(200):
        groups = te.multiclass_groups(10.0)
        noisy = noisy_counts(te.multiclass_counts(p, y, 5), groups, Randomness.reproducible("b", seed).source("e"))
        m = te.multiclass_metrics(te.noisy_matrix(noisy.values, 5), groups[te.CONFUSION].sigma, 0.9)
        misses += m["advantage_lower"] > truth or m["rows_lower"] > 2000
        assert m["advantage_lower"] < truth + 0.05
    assert misses <= 200 * 0.1  # at most 1 - confidence of the draws (Bonferroni: far fewer)


def test_regression_metrics_are_the_exact_ones_under_negligible_noise():
    rng = np.random.default_rng(4)
    y = rng.uniform(0.2, 0.8, 1000)
    p = y + rng.normal(scale=0.05, size=1000)
    groups = te.regression_groups(1e-6)
    released = noisy_sums(te.regression_sums(p, y), groups, Randomness.reproducible("t").source("e"))
    m = te.regression_metrics(released.values, {g: x.sigma for g, x in groups.items()}, 0.95, (10.0, 60.0))
    e = np.abs(np.clip(p, 0, 1) - y)
    assert m["mae"] == pytest.approx(50 * e.mean(), rel=1e-6)
    assert m["rmse"] == pytest.approx(50 * math.sqrt((e * e).mean()), rel=1e-6)
    assert m["baseline_mean"] == pytest.approx(10 + 50 * y.mean(), rel=1e-6)
    assert m["baseline_rmse"] == pytest.approx(50 * y.std(), rel=1e-5)
    assert m["advantage_lower"] == pytest.approx(y.var() - (e * e).mean(), abs=1e-5)
    assert m["accuracy"] is None and m["rows"] == 1000


def test_regression_bound_denies_a_model_no_better_than_the_mean():
    rng = np.random.default_rng(5)
    y = rng.uniform(0, 1, 1500)
    p = np.full(1500, y.mean())  # exactly the mean baseline: advantage 0 on these rows
    below = 0
    for seed in range(100):
        groups = te.regression_groups(5.0)
        released = noisy_sums(te.regression_sums(p, y), groups, Randomness.reproducible("r", seed).source("e"))
        m = te.regression_metrics(released.values, {g: x.sigma for g, x in groups.items()}, 0.95, (0.0, 1.0))
        below += m["advantage_lower"] < 0
    assert below >= 95


def test_the_dashboards_evaluation_card_follows_the_task():
    from ppmlops.dashboard.run_page import evaluation_card

    binary = evaluation_card({"accuracy": 0.81, "majority_baseline": 0.7, "auc": 0.86})
    assert "noisy held-out accuracy" in binary and "AUC 0.860" in binary
    multi = evaluation_card({"task": "multiclass", "accuracy": 0.9, "majority_baseline": 0.11, "macro_f1": 0.88,
                             "classes": [str(i) for i in range(10)], "auc": None})
    assert "macro-F1 0.880 over 10 classes" in multi and "AUC" not in multi
    reg = evaluation_card({"task": "regression", "rmse": 11.65, "mae": 7.9, "baseline_mean": 40.4,
                           "baseline_rmse": 12.5, "accuracy": None})
    assert "noisy held-out RMSE" in reg and "11.7" in reg and "noisy mean 40.4 scores RMSE 12.5" in reg


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_an_evaluation_never_costs_more_than_its_planned_gaussian(task):
    """The filter compares curves exactly: a release whose noise, read back, is an ulp cheaper-looking
    than planned would be refused when the plan uses the held-out budget to the last digit (a
    1-epoch multiclass run was refused by 2e-15 when the confusion matrix's sigma was the plan's)."""
    import numpy as np

    from ppmlops.privacy.accountant import Segment, segment_rdp
    from ppmlops.privacy.releases import release_segment
    from ppmlops.stages import evaluate, task_evaluation as te

    groups_of = {"binary": evaluate.groups_for, "multiclass": te.multiclass_groups,
                 "regression": te.regression_groups}[task]
    for sigma in np.random.default_rng(0).uniform(0.3, 50, 2000):
        cost = segment_rdp(release_segment(list(groups_of(float(sigma)).values())))
        assert np.all(cost <= segment_rdp(Segment(float(sigma), 1.0, 1))), sigma
