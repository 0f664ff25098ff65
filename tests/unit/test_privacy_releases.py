"""Randomness, noisy releases, the run's privacy session and its plan, checked against dp-accounting."""

from __future__ import annotations

import math
import pickle

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant

from ppmlops.errors import BudgetExceeded
from ppmlops.privacy.accountant import ORDERS, Segment, epsilon_from_rdp, segment_rdp
from ppmlops.privacy.ledger import Charge, Ledger
from ppmlops.privacy.lifetime import choose_order, heuristic_order, typical_run_curve
from ppmlops.privacy.planning import EpochShape, RunRequest, affordable, plan_run, split_conflict
from ppmlops.privacy.randomness import NoiseSource, Randomness
from ppmlops.privacy.releases import CountGroup, effective_sigma, noisy_counts, release_segment, sigmas_for
from ppmlops.privacy.session import Grant, PrivacySession

DELTA = 1e-5


# -- randomness -------------------------------------------------------------------------------------

@pytest.mark.parametrize("sigma", [0.8, 3.0, 40.0])
def test_the_discrete_gaussian_has_mean_zero_and_variance_sigma_squared(sigma):
    draws = np.array(Randomness.reproducible("dg", sigma).source("x").discrete_gaussian(sigma, 4000))
    assert draws.dtype.kind == "i"
    assert abs(draws.mean()) < 5 * sigma / math.sqrt(len(draws))
    assert draws.std() == pytest.approx(sigma, rel=0.05)


def test_secure_sources_never_repeat_and_reproducible_ones_always_do():
    a, b = Randomness.secure().source("noise", 1), Randomness.secure().source("noise", 1)
    assert not np.array_equal(a.gaussian((8,), 1.0), b.gaussian((8,), 1.0))
    r = Randomness.reproducible(0, "run-1")
    assert np.array_equal(r.source("noise", 1).gaussian((8,), 1.0), r.source("noise", 1).gaussian((8,), 1.0))
    assert not np.array_equal(r.source("noise", 1).gaussian((8,), 1.0), r.source("noise", 2).gaussian((8,), 1.0))


def test_a_source_key_cannot_travel():
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(Randomness.secure().source("noise"))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gaussian_noise_keeps_its_variance_under_the_floating_point_mitigation(dtype):
    x = Randomness.reproducible("g").source("g").gaussian((200_000,), 2.5, dtype=dtype)
    assert x.dtype == dtype
    assert x.std() == pytest.approx(2.5, rel=0.01) and abs(x.mean()) < 0.02


# -- releases ---------------------------------------------------------------------------------------

def test_a_release_costs_the_gaussian_mechanism_of_its_effective_noise():
    groups = [CountGroup(10.0), CountGroup(40.0, sensitivity=4)]
    sigma = effective_sigma(groups)
    assert sigma == pytest.approx(1 / math.sqrt(1 / 100 + 16 / 1600))
    acc = rdp_privacy_accountant.RdpAccountant(orders=ORDERS)
    acc.compose(dp_accounting.GaussianDpEvent(sigma))
    mine = epsilon_from_rdp(segment_rdp(release_segment(groups)), DELTA)[0]
    assert mine == pytest.approx(acc.get_epsilon(DELTA), rel=1e-9)


def test_sigmas_for_a_target_never_cost_more_than_the_target():
    for target in (0.7, 3.3, 17.1234567):
        sigmas = sigmas_for(target, [1.0, 2.0, 5.0], [1, 1, 4])
        assert effective_sigma([CountGroup(s, n) for s, n in zip(sigmas, [1, 1, 4])]) >= target
        assert sigmas[1] == pytest.approx(2 * sigmas[0])


def test_noisy_counts_are_integers_around_the_exact_ones():
    exact = {"rows": {"train": 1000, "holdout": 250}}
    out = noisy_counts(exact, {"rows": CountGroup(2.0)}, Randomness.reproducible("n").source("n"))
    assert all(isinstance(v, int) for v in out.values["rows"].values())
    assert abs(out.get("rows", "train") - 1000) < 20 and out.noise_multiplier == 2.0


# -- the session: filter, write-ahead, recovery ----------------------------------------------------

def _session(tmp_path, charges):
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    ledger.register_dataset("d", epsilon_budget=50.0, delta=DELTA)
    return PrivacySession.open(ledger, Grant("d", "r", DELTA, "secure", tuple(charges)))


def test_the_session_refuses_a_step_over_budget_at_any_single_order(tmp_path):
    step = Segment(1.0, 0.01, 100)
    session = _session(tmp_path, [Charge("train", step)])
    session.spend("train", step, key="e1", note="")
    # A cheaper step at most orders, but dearer at the largest ones, must still be refused.
    other = Segment(0.5, 0.001, 50)
    assert np.any(segment_rdp(other) < segment_rdp(step)) and np.any(segment_rdp(other) > 0)
    assert not session.admits("train", other)
    with pytest.raises(BudgetExceeded):
        session.spend("train", other, key="e2", note="")
    assert [e.key for e in session.ledger.entries("d", "r", kind="usage")] == ["e1"]


def test_a_new_session_recovers_what_the_last_one_spent(tmp_path):
    step = Segment(1.0, 0.01, 100)
    session = _session(tmp_path, [Charge("train", step), Charge("train", step)])
    a = session.spend("train", step, key="e1", note="")
    session.complete(a)
    again = PrivacySession.open(session.ledger, session.grant)
    np.testing.assert_array_equal(again.filters["train"].spent, segment_rdp(step))
    assert again.used_epsilon("train") < again.budget_epsilon("train")
    assert again.close() == "trimmed"


def test_release_counts_are_charged_then_drawn(tmp_path):
    groups = {"outcome": CountGroup(5.0)}
    session = _session(tmp_path, [Charge("holdout", release_segment(list(groups.values())), "gaussian")])
    out = session.release_counts("holdout", {"outcome": {"correct": 80, "wrong": 20}}, groups,
                                 Randomness.reproducible("x").source("x"), key="h1", note="n")
    [e] = session.ledger.entries("d", "r", kind="usage")
    assert e.status == "completed" and e.mechanism == "gaussian" and set(out.values["outcome"]) == {"correct", "wrong"}


# -- the plan ----------------------------------------------------------------------------------------

def _request(**kw) -> RunRequest:
    base = dict(dataset_id="d", delta=DELTA, epochs=4, shape=EpochShape.of(4400, 200, 256), tuner_signals=True,
                holdout_epsilon=0.5, run_stats={}, split="s")
    return RunRequest(**{**base, **kw})


def test_dp_accounting_reproduces_the_plans_epsilon_from_the_plans_own_settings(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    budget = ledger.register_dataset("d", epsilon_budget=3.0, delta=DELTA)
    stats = Segment(30.0, 1.0, 1)
    req = _request(run_stats={"train": segment_rdp(stats), "holdout": segment_rdp(stats)})
    planned = plan_run(budget, {}, req, 0.8)
    q, steps = req.shape.sample_rate, req.shape.steps
    train = rdp_privacy_accountant.RdpAccountant(orders=ORDERS)
    train.compose(dp_accounting.ComposedDpEvent([
        dp_accounting.GaussianDpEvent(30.0),
        dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(
            q, dp_accounting.GaussianDpEvent(planned.noise_multiplier)), steps * req.epochs)]))
    holdout = rdp_privacy_accountant.RdpAccountant(orders=ORDERS)
    holdout.compose(dp_accounting.ComposedDpEvent(
        [dp_accounting.GaussianDpEvent(30.0)]
        + [dp_accounting.GaussianDpEvent(planned.holdout_sigma)] * req.epochs
        + [dp_accounting.GaussianDpEvent(planned.evaluation_sigma)]))
    assert planned.epsilon_by_partition["train"] == pytest.approx(train.get_epsilon(DELTA), rel=1e-6)
    assert planned.epsilon_by_partition["holdout"] == pytest.approx(holdout.get_epsilon(DELTA), rel=1e-6)
    # the run's guarantee is its worst partition's
    assert planned.epsilon == pytest.approx(max(train.get_epsilon(DELTA), holdout.get_epsilon(DELTA)), rel=1e-9)
    assert planned.epsilon == max(planned.epsilon_by_partition.values())
    assert planned.epsilon_by_partition["train"] <= 0.8 + 1e-9
    assert planned.epsilon_by_partition["holdout"] <= 0.5 + 1e-9


def test_the_plan_shrinks_to_what_the_lifetime_filter_has_left(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    budget = ledger.register_dataset("d", epsilon_budget=3.0, delta=DELTA)
    req = _request()
    charged: dict = {}
    runs = 0
    while affordable(budget, charged, req)["train"] > 0.05:
        planned = plan_run(budget, charged, req, 1.0)
        for c in planned.charges:
            charged[c.partition] = charged.get(c.partition, np.zeros(len(ORDERS))) + c.rdp()
        assert budget.share_used(charged) <= 1.0 + 1e-12
        runs += 1
        assert runs < 100
    assert runs >= 3  # several runs fit in a lifetime budget three times a run's
    with pytest.raises(BudgetExceeded):
        for _ in range(3):
            planned = plan_run(budget, charged, req, 1.0)
            for c in planned.charges:
                charged[c.partition] = charged.get(c.partition, np.zeros(len(ORDERS))) + c.rdp()


def test_the_plan_is_sized_by_public_numbers_only():
    shape = EpochShape.of(4400.0, 200, 256)
    assert shape.steps == math.ceil((4400 + 100) / 256) and shape.sample_rate == 1 / shape.steps
    assert shape.divisor == pytest.approx((4400 + 100) / shape.steps)
    assert EpochShape.of(-30, 0, 256).steps == 1  # a noisy count below zero still plans


def test_a_changed_split_is_refused(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    budget = ledger.register_dataset("d", epsilon_budget=5.0, delta=DELTA)
    planned = plan_run(budget, {}, _request(split="seed 0, fraction 0.2"), 0.5)
    ledger.charge(dataset_id="d", run_id="r1", charges=list(planned.charges), kind="grant", key="grant",
                  randomness="secure")
    assert split_conflict(ledger.entries("d"), "seed 0, fraction 0.2") is None
    reason = split_conflict(ledger.entries("d"), "seed 1, fraction 0.2")
    assert "held-out partition changed" in reason and "seed 0, fraction 0.2" in reason


def test_the_accounting_order_fits_the_runs_the_dataset_will_see():
    curve = typical_run_curve(1.0, DELTA, 4500, 256, 4)
    order = choose_order(3.0, DELTA, curve)
    assert 2 <= order <= 64 and order in ORDERS
    assert heuristic_order(3.0, DELTA) in ORDERS
