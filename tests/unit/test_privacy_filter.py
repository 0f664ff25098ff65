"""The Renyi privacy filter: a fixed budget curve, exact <= at every order."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ppmlops.errors import BudgetExceeded, PpmlopsError
from ppmlops.privacy.accountant import ORDERS, Segment, epsilon_from_rdp, rdp_curve, segment_rdp, step_rdp
from ppmlops.privacy.filter import PrivacyFilter, plan_budget

Q = 256 / 32561
PLAN = [Segment(1.3, Q, 127), Segment(1.1, Q, 127), Segment(0.9, 2 * Q, 64), Segment(1.7, Q, 127)]


def run_plan(filt: PrivacyFilter, plan: list[Segment]) -> None:
    for seg in plan:
        filt.spend(segment_rdp(seg))


def test_exact_plan_is_admitted_and_one_more_step_is_refused():
    filt = PrivacyFilter(plan_budget(PLAN))
    run_plan(filt, PLAN)
    np.testing.assert_array_equal(filt.spent, filt.budget)
    one_more = step_rdp(PLAN[-1].noise_multiplier, PLAN[-1].sample_rate)
    assert not filt.admits(one_more)
    with pytest.raises(BudgetExceeded, match=r"Renyi order [0-9.]+ .*over the budget"):
        filt.spend(one_more)
    # A refused step charges nothing.
    np.testing.assert_array_equal(filt.spent, filt.budget)


def test_plan_budget_equals_rdp_curve_bit_for_bit():
    np.testing.assert_array_equal(plan_budget(PLAN), rdp_curve(PLAN))


def test_refusal_names_the_binding_order_and_both_values():
    budget = np.full(len(ORDERS), 10.0)
    budget[ORDERS.index(8.0)] = 0.5
    filt = PrivacyFilter(budget)
    step = np.full(len(ORDERS), 0.3)
    filt.spend(step)
    with pytest.raises(BudgetExceeded) as err:
        filt.spend(step)
    message = str(err.value)
    assert "order 8 " in message
    assert "0.6" in message and "0.5" in message
    assert "1 of" in message


@pytest.mark.parametrize("binding", [0, len(ORDERS) // 2, len(ORDERS) - 1])
def test_a_step_over_budget_at_one_single_order_is_refused(binding):
    """Every order counts: checking any one order, or the best one, is not a filter."""
    budget = np.full(len(ORDERS), 10.0)
    budget[binding] = 0.5
    filt = PrivacyFilter(budget)
    step = np.full(len(ORDERS), 0.3)
    assert filt.admits(step)
    filt.spend(step)
    assert not filt.admits(step)
    with pytest.raises(BudgetExceeded):
        filt.spend(step)


def test_adaptive_schedule_that_deviates_from_plan():
    """The tuner may lower noise mid-run; the filter stops it where the budget runs out."""
    filt = PrivacyFilter(plan_budget([Segment(1.2, Q, 500)]))
    filt.spend(segment_rdp(Segment(1.2, Q, 200)))
    cheap, costly = segment_rdp(Segment(2.0, Q, 100)), segment_rdp(Segment(0.6, Q, 400))
    assert filt.admits(cheap)
    assert not filt.admits(costly)
    with pytest.raises(BudgetExceeded):
        filt.spend(costly)
    filt.spend(cheap)
    # Whatever ran, the total is within the planned guarantee at every order and in epsilon.
    assert np.all(filt.spent <= filt.budget)
    assert epsilon_from_rdp(filt.spent, 1e-5)[0] <= epsilon_from_rdp(filt.budget, 1e-5)[0]


def test_remaining_is_budget_minus_spent():
    filt = PrivacyFilter(plan_budget(PLAN))
    filt.spend(segment_rdp(PLAN[0]))
    np.testing.assert_allclose(filt.remaining(), plan_budget(PLAN) - segment_rdp(PLAN[0]))
    assert np.all(filt.remaining() >= 0)


def test_state_round_trip_through_json_resumes_identically():
    filt = PrivacyFilter(plan_budget(PLAN))
    run_plan(filt, PLAN[:2])
    state = json.loads(json.dumps(filt.state_dict()))
    assert all(isinstance(x, float) for x in state["budget"] + state["spent"])
    resumed = PrivacyFilter.from_state_dict(state)
    np.testing.assert_array_equal(resumed.budget, filt.budget)
    np.testing.assert_array_equal(resumed.spent, filt.spent)
    run_plan(resumed, PLAN[2:])
    assert not resumed.admits(step_rdp(1.7, Q))


def test_state_from_another_order_grid_is_rejected():
    state = PrivacyFilter(plan_budget(PLAN)).state_dict()
    state["orders"] = state["orders"][:-1]
    with pytest.raises(PpmlopsError, match="order grid"):
        PrivacyFilter.from_state_dict(state)


def test_budget_is_fixed_once_the_filter_exists():
    budget = plan_budget(PLAN)
    filt = PrivacyFilter(budget)
    budget[:] = 1e9  # the caller's array is not the filter's budget
    assert not filt.admits(plan_budget(PLAN) * 2)
    with pytest.raises(ValueError):
        filt.budget[0] = 1e9


@pytest.mark.parametrize("bad", [np.zeros(3), np.full(len(ORDERS), np.nan), -np.ones(len(ORDERS))])
def test_bad_curves_are_rejected(bad):
    with pytest.raises(PpmlopsError, match="budget"):
        PrivacyFilter(bad)
    filt = PrivacyFilter(np.ones(len(ORDERS)))
    with pytest.raises(PpmlopsError, match="rdp"):
        filt.spend(bad)
