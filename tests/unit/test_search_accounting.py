"""The private search's accounting (ppmlops.privacy.search) against Papernot & Steinke's closed
form, against Google's dp_accounting (RepeatAndSelectDpEvent), and against the exact Renyi
divergence of a best-of-K release computed from its distribution."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ppmlops.privacy.accountant import ORDERS, PrivacyParameterError, Segment, segment_rdp
from ppmlops.privacy.randomness import Randomness
from ppmlops.privacy.search import TrialCount, expected_trials, search_rdp

A = np.array(ORDERS)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0, 3.0])
@pytest.mark.parametrize("mean", [1.5, 5.0, 20.0])
def test_the_distribution_has_the_mean_it_was_given(eta, mean):
    count = TrialCount(mean, eta)
    k = np.arange(1, 20_000)
    p = count.pmf(k)
    assert p.min() >= 0
    assert p.sum() == pytest.approx(1.0, abs=1e-9)
    assert (k * p).sum() == pytest.approx(mean, rel=1e-7)
    assert expected_trials(eta, count.gamma) == pytest.approx(mean, rel=1e-10)


def test_geometric_and_logarithmic_are_the_named_distributions():
    geo = TrialCount(4.0, 1.0)
    assert geo.gamma == pytest.approx(0.25)
    assert geo.pmf(3) == pytest.approx(0.25 * 0.75 ** 2)
    log = TrialCount(4.0, 0.0)
    g = log.gamma
    assert log.pmf(2) == pytest.approx((1 - g) ** 2 / (2 * math.log(1 / g)))


def test_draws_follow_the_distribution():
    count = TrialCount(5.0, 1.0)
    source = Randomness.secure().source("search")
    draws = np.array([count.draw(u) for u in source.uniform(20_000)])
    assert draws.min() >= 1
    assert draws.mean() == pytest.approx(5.0, rel=0.05)
    for k in range(1, 8):  # within 5 standard errors of P[K = k]
        p = float(count.pmf(k))
        assert abs((draws == k).mean() - p) < 5 * math.sqrt(p * (1 - p) / len(draws))


def test_the_search_curve_is_the_closed_form_for_a_gaussian_trial():
    """One Gaussian release of noise sigma per trial: eps(l) = l / (2 sigma^2). With K geometric of
    mean 5 (gamma 1/5), Theorem 2 gives eps(l) + log 5 / (l - 1) + 2 min_h ((h - 1) / (2 sigma^2) + log 5 / h)."""
    sigma = 3.0
    trial = segment_rdp(Segment(sigma, 1.0, 1))
    np.testing.assert_allclose(trial, A / (2 * sigma**2), rtol=1e-12)
    constant = 2 * min((h - 1) / (2 * sigma**2) + math.log(5) / h for h in ORDERS)
    closed = A / (2 * sigma**2) + math.log(5) / (A - 1) + constant
    got = search_rdp(trial, TrialCount(5.0, 1.0))
    lowest = int(np.argmin(closed))  # below it the curve is flattened (RDP does not fall with the order)
    np.testing.assert_allclose(got[lowest:], closed[lowest:], rtol=1e-12)
    assert np.all(got[:lowest] == pytest.approx(closed[lowest]))
    # the grid's minimum is close to the continuous one, at h = sigma sqrt(2 log 5)
    h = sigma * math.sqrt(2 * math.log(5))
    assert constant == pytest.approx(2 * ((h - 1) / (2 * sigma**2) + math.log(5) / h), rel=0.01)


@pytest.mark.parametrize("eta", [0.0, 1.0, 2.5])
def test_the_search_curve_matches_dp_accounting(eta):
    import dp_accounting
    from dp_accounting import dp_event
    from dp_accounting.rdp import rdp_privacy_accountant

    sigma, q, steps, mean = 1.1, 0.02, 200, 8.0
    trial = segment_rdp(Segment(sigma, q, steps)) + segment_rdp(Segment(4.0, 1.0, 1))  # DP-SGD, then a score
    acc = rdp_privacy_accountant.RdpAccountant(orders=list(ORDERS))
    acc.compose(dp_event.RepeatAndSelectDpEvent(dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)),
                                          steps),
        dp_accounting.GaussianDpEvent(4.0)]), mean, eta))
    np.testing.assert_allclose(search_rdp(trial, TrialCount(mean, eta)), acc._rdp, rtol=1e-6)


def _renyi(p: np.ndarray, r: np.ndarray, order: float) -> float:
    return float(np.log(np.sum(p**order * r ** (1 - order))) / (order - 1))


@pytest.mark.parametrize("eta", [0.0, 1.0, 2.0])
def test_the_bound_holds_for_the_exact_best_of_k_distribution(eta):
    """A trial with 12 ordered outcomes on two neighbouring datasets; the search outputs the best
    of K trials, whose distribution is E[F(y)^K] in CDF form. Its exact Renyi divergence, both
    ways, stays under search_rdp of the trial's exact curve at every order."""
    y = np.arange(12)
    p = np.exp(-0.5 * ((y - 5.0) / 2.5) ** 2)
    p /= p.sum()
    r = p * np.exp(0.35 * np.tanh(y - 5.5))  # the neighbour's outcomes, a little higher
    r /= r.sum()
    orders = [a for a in ORDERS if a <= 64]
    trial = np.array([max(_renyi(p, r, a), _renyi(r, p, a)) if a <= 64 else np.inf for a in ORDERS])
    count = TrialCount(6.0, eta)
    bound = search_rdp(trial, count)
    k = np.arange(1, 4000)
    weights = count.pmf(k)

    def best_of_k(dist):
        cdf = np.cumsum(dist)
        mixed = np.array([np.sum(weights * c**k) for c in cdf])
        return np.diff(np.concatenate([[0.0], mixed]))

    a_p, a_r = best_of_k(p), best_of_k(r)
    composed = np.array([max(_renyi(a_p, a_r, a), _renyi(a_r, a_p, a)) for a in orders])
    assert np.all(composed <= bound[: len(orders)] + 1e-12)
    # and the bound is not vacuous: far below what releasing all trials of a typical K would cost
    assert bound[ORDERS.index(8.0)] < 3 * trial[ORDERS.index(8.0)] + 1


@pytest.mark.parametrize("mean, eta", [(1.0, 1.0), (0.5, 1.0), (60.0, 1.0), (5.0, -0.5), (5.0, float("nan")), (True, 1.0)])
def test_bad_trial_counts_are_refused(mean, eta):
    with pytest.raises(PrivacyParameterError):
        TrialCount(mean, eta)
