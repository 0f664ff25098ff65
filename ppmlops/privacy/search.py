"""Private hyperparameter search: K trials with K random, only the best one released.

Papernot & Steinke 2022, "Hyperparameter Tuning with Renyi Differential Privacy" (ICLR 2022,
arXiv 2110.03620), Theorem 2. Let one trial Q (draw settings from a fixed distribution, train
with DP-SGD, release a noisy score) be (lambda, eps(lambda))-RDP at every order. Draw K from the
truncated negative binomial D(eta, gamma), run Q K times and release only the trial with the
best score. Then the search is (lambda, eps'(lambda))-RDP with

    eps'(lambda) = eps(lambda) + log(E[K]) / (lambda - 1)
                   + min over lambda_hat of (1 + eta) ((1 - 1/lambda_hat) eps(lambda_hat) + log(1/gamma) / lambda_hat)

Releasing every trial would cost K times eps; the search costs about eps plus a constant, which is
what makes tuning affordable. What it requires, and ppmlops keeps:
* K is secret. It is drawn from the run's CSPRNG and never leaves the run's private folder:
  not in a log line, a ledger row, the card or a checkpoint that leaves the run. Revealing K (or
  the index of the chosen trial) turns the search into plain composition.
* Nothing of a losing trial is released: only the chosen trial's settings, model and score.
* Each trial's settings are drawn independently of the data (random search over a fixed space);
  its noise is fixed, so eps(lambda) is the same curve for every trial.
* The bound holds per partition of the rows: a change of one training row moves only the DP-SGD
  part of a trial, a change of one held-out row only the score's release.

The minimum over lambda_hat runs over the accountant's order grid and the curve is then made
non-decreasing in the order (RDP is), exactly as Google's dp_accounting composes its
RepeatAndSelectDpEvent: the unit tests hold the two to the same numbers.

Wall-clock time is a side channel this bound does not cover: a search's duration grows with K.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special

from ppmlops.privacy.accountant import ORDERS, PrivacyParameterError, check_curve

_ALPHAS = np.array(ORDERS, dtype=np.float64)
# A search draws K below this cap or fails: the cap is reached with probability below 1e-12 for
# the means a spec may ask for (<= 50), and truncating K silently would change its distribution.
MAX_TRIALS = 2000


@dataclass(frozen=True)
class TrialCount:
    """The truncated negative binomial D(eta, gamma) on K = 1, 2, ...: eta = 1 is the geometric
    distribution, eta = 0 the logarithmic one. Given by its mean; gamma follows from it."""

    mean: float
    eta: float = 1.0

    def __post_init__(self) -> None:
        for name, value in (("mean", self.mean), ("eta", self.eta)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise PrivacyParameterError(f"trial count {name} must be a finite number, got {value!r}")
        if not 1 < self.mean <= 50:
            raise PrivacyParameterError(f"the mean number of trials must be in (1, 50], got {self.mean!r}")
        # The theorem allows -1 < eta < 0 too; those put most mass on K = 1 and are not offered.
        if not 0 <= self.eta <= 10:
            raise PrivacyParameterError(f"the trial count's shape eta must be in [0, 10], got {self.eta!r}")

    @property
    def gamma(self) -> float:
        return _gamma_for(float(self.mean), float(self.eta))

    def pmf(self, k: np.ndarray | int) -> np.ndarray:
        """P[K = k] for k >= 1 (0 elsewhere)."""
        k = np.asarray(k, dtype=np.float64)
        eta, gamma = float(self.eta), self.gamma
        with np.errstate(divide="ignore", invalid="ignore"):
            if eta == 0:
                p = np.exp(k * math.log1p(-gamma)) / (k * math.log(1 / gamma))
            else:
                # prod_{l<k} (l + eta) / (l + 1) = Gamma(k + eta) / (Gamma(eta) Gamma(k + 1))
                log_coef = special.gammaln(k + eta) - special.gammaln(eta) - special.gammaln(k + 1)
                p = np.exp(log_coef + k * math.log1p(-gamma)) / (gamma ** -eta - 1)
        return np.where(k >= 1, p, 0.0)

    def draw(self, uniform: float) -> int:
        """K from one uniform draw in [0, 1) of the run's CSPRNG, by inverting the CDF."""
        if not 0.0 <= uniform < 1.0:
            raise PrivacyParameterError(f"a uniform draw must be in [0, 1), got {uniform!r}")
        cdf = np.cumsum(self.pmf(np.arange(1, MAX_TRIALS + 1)))
        k = int(np.searchsorted(cdf, uniform, side="right")) + 1
        if k > MAX_TRIALS:
            raise PrivacyParameterError(f"the trial count reached its cap of {MAX_TRIALS}; lower search.trials")
        return k

    def describe(self) -> str:
        kind = {0.0: "logarithmic", 1.0: "geometric"}.get(float(self.eta), f"truncated negative binomial, eta {self.eta:g}")
        return f"{kind}, mean {self.mean:g} (gamma {self.gamma:.6g})"


def expected_trials(eta: float, gamma: float) -> float:
    if eta == 0:
        return (1 / gamma - 1) / math.log(1 / gamma)
    return eta * (1 - gamma) / (gamma * (1 - gamma ** eta))


def _gamma_for(mean: float, eta: float) -> float:
    # E[K] falls from infinity to 1 as gamma goes from 0 to 1.
    return float(optimize.brentq(lambda g: expected_trials(eta, g) - mean, 1e-15, 1 - 1e-12, xtol=1e-15, rtol=1e-14))


def search_rdp(trial: np.ndarray, count: TrialCount) -> np.ndarray:
    """The RDP curve of the whole search, from the RDP curve of one trial (Theorem 2)."""
    eps = check_curve(trial, "trial RDP curve")
    eta, gamma = float(count.eta), count.gamma
    with np.errstate(invalid="ignore"):
        constant = (1 + eta) * np.min((1 - 1 / _ALPHAS) * eps + math.log(1 / gamma) / _ALPHAS)
        out = eps + math.log(count.mean) / (_ALPHAS - 1) + constant
    # RDP does not decrease with the order: a higher order's bound holds at every lower one.
    return np.minimum.accumulate(out[::-1])[::-1]
