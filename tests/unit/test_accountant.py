"""The RDP accountant against Google's dp_accounting (a declared test dependency)."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from ppmlops.errors import BudgetExceeded
from ppmlops.privacy.accountant import (
    ORDERS,
    PrivacyParameterError,
    Segment,
    calibrate_noise,
    epsilon,
    epsilon_from_rdp,
    rdp_curve,
    segment_rdp,
    step_rdp,
)

ADULT_Q = 256 / 32561
ADULT_10_EPOCHS = int(10 / ADULT_Q)  # 1271 steps
DELTA = 1e-5


def reference_accountant(segments: list[Segment]) -> rdp_privacy_accountant.RdpAccountant:
    acc = rdp_privacy_accountant.RdpAccountant(orders=ORDERS)
    acc.compose(dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(s.sample_rate, dp_accounting.GaussianDpEvent(s.noise_multiplier)),
            s.steps)
        for s in segments
    ]))
    return acc


def reference_epsilon(segments: list[Segment], delta: float) -> float:
    return reference_accountant(segments).get_epsilon(delta)


def reference_step_rdp(sigma: float, q: float) -> np.ndarray:
    # dp_accounting keeps the per-event curve private; RdpAccountant adds exactly this.
    return rdp_privacy_accountant._compute_rdp_poisson_subsampled_gaussian(q, sigma, ORDERS)


def test_orders_contain_dp_accounting_default_grid():
    assert set(rdp_privacy_accountant.DEFAULT_RDP_ORDERS) <= set(ORDERS)
    assert list(ORDERS) == sorted(set(ORDERS))
    assert min(ORDERS) > 1 and max(ORDERS) == 1024


@pytest.mark.parametrize("sigma", [0.3, 0.6, 1.0, 1.7, 4.0, 20.0, 150.0])
@pytest.mark.parametrize("q", [1e-3, ADULT_Q, 0.05, 0.3, 0.9, 1.0])
def test_step_rdp_matches_dp_accounting(sigma, q):
    mine, ref = step_rdp(sigma, q), reference_step_rdp(sigma, q)
    # Orders whose fractional series does not converge are +inf (excluded) in both.
    np.testing.assert_array_equal(np.isinf(mine), np.isinf(ref))
    finite = np.isfinite(ref)
    np.testing.assert_allclose(mine[finite], ref[finite], rtol=1e-6, atol=0)


def test_gaussian_without_subsampling_is_alpha_over_two_sigma_squared():
    np.testing.assert_allclose(step_rdp(2.0, 1.0), np.array(ORDERS) / 8.0, rtol=1e-15)


def test_step_rdp_is_monotone_in_sigma_and_q():
    base = step_rdp(1.0, 0.01)
    assert np.all(step_rdp(1.1, 0.01) <= base)
    assert np.all(step_rdp(1.0, 0.02) >= base)
    assert np.all(np.diff(base) > 0)  # RDP of a fixed mechanism grows with the order
    assert np.all(base > 0)


def test_step_rdp_is_cached_and_read_only():
    a = step_rdp(1.3, 0.02)
    assert step_rdp(1.3, 0.02) is a
    assert step_rdp(np.float64(1.3), 0.02) is a
    with pytest.raises(ValueError):
        a[0] = 0.0


@pytest.mark.parametrize("segments", [
    [Segment(1.1, ADULT_Q, ADULT_10_EPOCHS)],
    [Segment(0.8, 0.01, 500), Segment(1.5, 0.02, 300), Segment(3.0, 1.0, 5)],
    [Segment(10.0, 0.001, 20000)],
    [Segment(0.5, 0.004, 50), Segment(0.7, 0.1, 10)],
])
def test_epsilon_matches_rdp_accountant(segments):
    mine = epsilon(segments, DELTA)
    ref = reference_epsilon(segments, DELTA)
    assert mine == pytest.approx(ref, rel=1e-6)


def test_random_schedules_match_rdp_accountant():
    rng = np.random.default_rng(20240611)
    for _ in range(15):
        segments = [
            Segment(float(rng.uniform(0.5, 5.0)), float(10 ** rng.uniform(-3.5, -0.5)), int(rng.integers(1, 3000)))
            for _ in range(int(rng.integers(1, 9)))
        ]
        delta = float(10 ** rng.uniform(-9, -3))
        ref = reference_accountant(segments)
        curve = rdp_curve(segments)
        np.testing.assert_allclose(curve, ref._rdp, rtol=1e-6, atol=0)  # the composed RDP vector itself
        mine, _ = epsilon_from_rdp(curve, delta)
        assert mine == pytest.approx(ref.get_epsilon(delta), rel=1e-6), segments


@pytest.mark.parametrize("sigma,q,steps", [
    (1.1, ADULT_Q, ADULT_10_EPOCHS),
    (0.7, ADULT_Q, 400),
    (4.0, 0.01, 2000),
])
def test_rdp_epsilon_bounds_pld_estimate(sigma, q, steps):
    """PLD is tighter; RDP must never be below it, and not wildly above it."""
    pld = pld_privacy_accountant.PLDAccountant()
    pld.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps))
    pld_eps = pld.get_epsilon(DELTA)
    rdp_eps = epsilon([Segment(sigma, q, steps)], DELTA)
    assert pld_eps <= rdp_eps <= 1.5 * pld_eps


def test_epsilon_from_rdp_edge_cases():
    assert epsilon_from_rdp(np.zeros(len(ORDERS)), DELTA) == (0.0, ORDERS[0])
    assert epsilon([], DELTA) == 0.0
    assert math.isinf(epsilon_from_rdp(np.full(len(ORDERS), np.inf), DELTA)[0])
    with pytest.raises(PrivacyParameterError, match="delta"):
        epsilon_from_rdp(np.zeros(len(ORDERS)), 1.0)
    with pytest.raises(PrivacyParameterError, match="delta"):
        epsilon_from_rdp(np.zeros(len(ORDERS)), 0.0)
    with pytest.raises(PrivacyParameterError, match="one value per order"):
        epsilon_from_rdp(np.zeros(3), DELTA)
    with pytest.raises(PrivacyParameterError, match="negative"):
        epsilon_from_rdp(np.full(len(ORDERS), -1.0), DELTA)


@pytest.mark.parametrize("kwargs,field", [
    ({"noise_multiplier": 0.0, "sample_rate": 0.1, "steps": 1}, "noise_multiplier"),
    ({"noise_multiplier": float("nan"), "sample_rate": 0.1, "steps": 1}, "noise_multiplier"),
    ({"noise_multiplier": 1.0, "sample_rate": 0.0, "steps": 1}, "sample_rate"),
    ({"noise_multiplier": 1.0, "sample_rate": 1.5, "steps": 1}, "sample_rate"),
    ({"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": -1}, "steps"),
    ({"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 2.5}, "steps"),
    ({"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": True}, "steps"),
    ({"noise_multiplier": "abc", "sample_rate": 0.1, "steps": 1}, "noise_multiplier"),
])
def test_segment_rejects_bad_parameters(kwargs, field):
    with pytest.raises(PrivacyParameterError, match=field):
        Segment(**kwargs)


def test_segment_rdp_is_steps_times_step_rdp():
    seg = Segment(1.2, 0.03, 77)
    np.testing.assert_array_equal(segment_rdp(seg), 77 * step_rdp(1.2, 0.03))


@pytest.mark.parametrize("target", [0.05, 0.1, 0.25, 1.0, 3.0, 10.0, 50.0])
def test_calibrate_noise_is_tight_and_safe(target):
    sigma = calibrate_noise(target, DELTA, ADULT_Q, ADULT_10_EPOCHS)
    seg = Segment(sigma, ADULT_Q, ADULT_10_EPOCHS)
    assert epsilon([seg], DELTA) <= target
    assert epsilon([Segment(sigma * 0.999, ADULT_Q, ADULT_10_EPOCHS)], DELTA) > target
    # The independent accountant agrees the calibrated run is within target.
    assert reference_epsilon([seg], DELTA) <= target * (1 + 1e-6)


def test_calibrate_noise_with_prior_spend():
    prior = rdp_curve([Segment(1.2, ADULT_Q, 600)])
    prior_eps = epsilon_from_rdp(prior, DELTA)[0]
    target = 2.0
    assert prior_eps < target
    sigma = calibrate_noise(target, DELTA, ADULT_Q, ADULT_10_EPOCHS, prior_rdp=prior)
    step = step_rdp(sigma, ADULT_Q)
    assert epsilon_from_rdp(prior + ADULT_10_EPOCHS * step, DELTA)[0] <= target
    assert epsilon_from_rdp(prior + ADULT_10_EPOCHS * step_rdp(sigma * 0.999, ADULT_Q), DELTA)[0] > target
    # Less budget left means more noise than a fresh run needs.
    assert sigma > calibrate_noise(target, DELTA, ADULT_Q, ADULT_10_EPOCHS)


def test_calibrate_noise_refuses_when_prior_exceeds_target():
    prior = rdp_curve([Segment(0.8, ADULT_Q, 5000)])
    prior_eps = epsilon_from_rdp(prior, DELTA)[0]
    with pytest.raises(BudgetExceeded, match="prior spend alone") as err:
        calibrate_noise(prior_eps / 2, DELTA, ADULT_Q, 100, prior_rdp=prior)
    assert f"{prior_eps / 2:g}" in str(err.value)


@pytest.mark.parametrize("kwargs,field", [
    ({"target_epsilon": 0.0}, "target_epsilon"),
    ({"delta": 1.0}, "delta"),
    ({"sample_rate": 0.0}, "sample_rate"),
    ({"steps": 0}, "steps"),
])
def test_calibrate_noise_rejects_bad_arguments(kwargs, field):
    args = {"target_epsilon": 1.0, "delta": DELTA, "sample_rate": ADULT_Q, "steps": 100} | kwargs
    with pytest.raises(PrivacyParameterError, match=field):
        calibrate_noise(**args)
