"""Renyi DP accounting for the Poisson-subsampled Gaussian mechanism (DP-SGD).

The per-step RDP follows Mironov, Talwar & Zhang 2019, "Renyi Differential Privacy of the
Sampled Gaussian Mechanism" (arXiv 1908.10530): a finite binomial sum for integer orders and
the two-sided erfc series of its Section 3.3 for fractional ones, all in log space. The
numerics (including the series' stopping rule and the conversion to (epsilon, delta)) mirror
Google's dp_accounting RdpAccountant, so a total computed here can be checked against it on
the same order grid. The code is our own and vectorised over orders because the ledger
recomputes curves for many (sigma, q) pairs and calibration evaluates dozens of sigmas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable

import numpy as np
from scipy import special

from ppmlops.errors import BudgetExceeded, PpmlopsError

# dp_accounting's DEFAULT_RDP_ORDERS (Opacus's default grid plus order 11 and the large orders
# that small epsilons need). The ledger stores this grid with every curve; changing it forces
# a recomputation of stored curves from their parameters.
ORDERS: tuple[float, ...] = tuple(
    float(a)
    for a in [1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [128, 256, 512, 1024]
)

_ALPHAS = np.array(ORDERS, dtype=np.float64)
_ALPHAS.setflags(write=False)


class PrivacyParameterError(PpmlopsError, ValueError):
    """A noise multiplier, sampling rate, step count, delta or curve is out of range."""


@dataclass(frozen=True)
class Segment:
    """A stretch of DP-SGD steps run with constant parameters.

    noise_multiplier is sigma: the noise std is sigma times the clip norm. sample_rate is the
    Poisson sampling probability q (q = 1 is the plain Gaussian mechanism, full batch).
    """

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "noise_multiplier", check_noise_multiplier(self.noise_multiplier))
        object.__setattr__(self, "sample_rate", check_sample_rate(self.sample_rate))
        object.__setattr__(self, "steps", check_steps(self.steps))


def check_noise_multiplier(value: object, name: str = "noise_multiplier") -> float:
    sigma = _as_float(value, name)
    if not (math.isfinite(sigma) and sigma > 0):
        raise PrivacyParameterError(f"{name} must be a finite number > 0, got {value!r}")
    return sigma


def check_sample_rate(value: object, name: str = "sample_rate") -> float:
    q = _as_float(value, name)
    if not (0 < q <= 1):
        raise PrivacyParameterError(f"{name} must be in (0, 1], got {value!r}")
    return q


def check_steps(value: object, name: str = "steps") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            value = int(value)
        else:
            raise PrivacyParameterError(f"{name} must be a whole number >= 0, got {value!r}")
    if value < 0:
        raise PrivacyParameterError(f"{name} must be >= 0, got {value!r}")
    return int(value)


def check_delta(value: object, name: str = "delta") -> float:
    delta = _as_float(value, name)
    if not (0 < delta < 1):
        raise PrivacyParameterError(f"{name} must be in (0, 1), got {value!r}")
    return delta


def check_curve(rdp: object, name: str = "rdp") -> np.ndarray:
    """An RDP curve on ORDERS: float array of the right length, no NaN, no negative value."""
    try:
        arr = np.asarray(rdp, dtype=np.float64)
    except (TypeError, ValueError):
        raise PrivacyParameterError(f"{name} must be a sequence of numbers, got {type(rdp).__name__}") from None
    if arr.shape != _ALPHAS.shape:
        raise PrivacyParameterError(
            f"{name} must have one value per order in ORDERS ({len(ORDERS)}), got shape {arr.shape}")
    if np.isnan(arr).any():
        raise PrivacyParameterError(f"{name} has NaN at order {ORDERS[int(np.argmax(np.isnan(arr)))]}")
    if (arr < 0).any():
        i = int(np.argmax(arr < 0))
        raise PrivacyParameterError(f"{name} is negative ({arr[i]!r}) at order {ORDERS[i]}")
    return arr


def _as_float(value: object, name: str) -> float:
    if isinstance(value, bool):
        raise PrivacyParameterError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise PrivacyParameterError(f"{name} must be a number, got {value!r}") from None


# ---------------------------------------------------------------------------------------------
# One step of the subsampled Gaussian
# ---------------------------------------------------------------------------------------------

_INT_MASK = np.array([a.is_integer() for a in ORDERS])
_INT_IDX = np.flatnonzero(_INT_MASK)
_FRAC_IDX = np.flatnonzero(~_INT_MASK)


@lru_cache(maxsize=1)
def _integer_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The (alpha, i) pairs of every integer order's binomial sum, flattened, with log C(alpha, i).

    Flat rather than padded to the largest order: the orders up to 1024 need ~4,000 terms in
    all, a padded matrix ~68,000.
    """
    alphas = _ALPHAS[_INT_IDX]
    a = np.concatenate([np.full(int(x) + 1, x) for x in alphas])
    i = np.concatenate([np.arange(int(x) + 1, dtype=np.float64) for x in alphas])
    starts = np.concatenate([[0], np.cumsum(alphas.astype(np.int64) + 1)[:-1]])
    log_comb = special.gammaln(a + 1) - special.gammaln(i + 1) - special.gammaln(a - i + 1)
    return a, i, log_comb, starts


def _log_a_integer(q: float, sigma: float) -> np.ndarray:
    """log A_alpha = log E_{z~mu0}[(mu(z)/mu0(z))^alpha] as a finite binomial sum (MTZ19 Sec 3.3)."""
    a, i, log_comb, starts = _integer_tables()
    terms = log_comb + i * math.log(q) + (a - i) * math.log1p(-q) + (i * i - i) / (2 * sigma**2)
    return _segment_logsumexp(terms, starts)


def _segment_logsumexp(terms: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """log(sum(exp(terms))) over each run terms[starts[k]:starts[k+1]].

    Computed as peak + log1p(sum of the other terms relative to the peak): log A is often
    ~1e-13 (large sigma, small q), and log() of a sum near 1 would keep only ~3 digits of it.
    """
    peak = np.maximum.reduceat(terms, starts)
    shifted = terms - np.repeat(peak, np.diff(np.append(starts, terms.size)))
    at_peak = shifted == 0
    rest = np.add.reduceat(np.where(at_peak, 0.0, np.exp(shifted)), starts)
    ties = np.add.reduceat(at_peak.astype(np.float64), starts) - 1
    return peak + np.log1p(rest + ties)


# The fractional series is summed until both tails shrink below e^-30 of the total, as in
# dp_accounting; an order whose series has not converged after this many terms gets RDP = inf
# (excluded from the minimum) rather than an under-estimate.
_MAX_TERMS_FRAC = 1000
_FRAC_CHUNKS = (32, 96, 256, 616)  # sums to _MAX_TERMS_FRAC; at DP-SGD settings most orders stop in the first
assert sum(_FRAC_CHUNKS) == _MAX_TERMS_FRAC


@lru_cache(maxsize=1)
def _fractional_log_comb() -> np.ndarray:
    """log |C(alpha, i)| for every fractional order and i < _MAX_TERMS_FRAC (depends on the grid only)."""
    a = _ALPHAS[_FRAC_IDX][:, None]
    i = np.arange(_MAX_TERMS_FRAC, dtype=np.float64)[None, :]
    return special.gammaln(a + 1) - special.gammaln(i + 1) - special.gammaln(a - i + 1)


def _log_a_fractional(q: float, sigma: float) -> np.ndarray:
    """log A_alpha for fractional orders: the erfc-split series of MTZ19 Sec 3.3.

    Binomial coefficients of a fractional order alternate in sign past i = alpha; like
    dp_accounting we add their absolute values, which can only over-estimate A_alpha.
    """
    alphas = _ALPHAS[_FRAC_IDX]
    out = np.full(alphas.shape, np.inf)
    z0 = sigma**2 * math.log(1 / q - 1) + 0.5
    log_q, log_1mq = math.log(q), math.log1p(-q)
    two_sigma2 = 2 * sigma**2

    todo = np.arange(alphas.size)  # positions (into alphas) still summing
    a0 = np.full(alphas.shape, -np.inf)  # running log sums of the two halves
    a1 = np.full(alphas.shape, -np.inf)
    last0 = np.full(alphas.shape, -np.inf)  # previous term of each half
    last1 = np.full(alphas.shape, -np.inf)
    start = 0
    for size in _FRAC_CHUNKS:
        if todo.size == 0:
            break
        a = alphas[todo][:, None]
        i = np.arange(start, start + size, dtype=np.float64)[None, :]
        j = a - i
        log_coef = _fractional_log_comb()[todo, start:start + size]
        s0 = (log_coef + i * log_q + j * log_1mq + (i * i - i) / two_sigma2
              + special.log_ndtr(-(i - z0) / sigma))
        s1 = (log_coef + j * log_q + i * log_1mq + (j * j - j) / two_sigma2
              + special.log_ndtr(-(z0 - j) / sigma))
        cum0 = np.logaddexp.accumulate(np.concatenate([a0[todo, None], s0], axis=1), axis=1)[:, 1:]
        cum1 = np.logaddexp.accumulate(np.concatenate([a1[todo, None], s1], axis=1), axis=1)[:, 1:]
        total = np.logaddexp(cum0, cum1)
        prev0 = np.concatenate([last0[todo, None], s0[:, :-1]], axis=1)
        prev1 = np.concatenate([last1[todo, None], s1[:, :-1]], axis=1)
        stop = (s0 < prev0) & (s1 < prev1) & (np.maximum(s0, s1) < total - 30)
        done = stop.any(axis=1)
        first = np.argmax(stop, axis=1)
        rows = np.flatnonzero(done)
        out[todo[rows]] = total[rows, first[rows]]
        a0[todo], a1[todo] = cum0[:, -1], cum1[:, -1]
        last0[todo], last1[todo] = s0[:, -1], s1[:, -1]
        todo = todo[~done]
        start += size
    return out


def _step_rdp_uncached(sigma: float, q: float) -> np.ndarray:
    if q == 1.0:
        rdp = _ALPHAS / (2 * sigma**2)
    else:
        rdp = np.empty_like(_ALPHAS)
        rdp[_INT_IDX] = _log_a_integer(q, sigma) / (_ALPHAS[_INT_IDX] - 1)
        rdp[_FRAC_IDX] = _log_a_fractional(q, sigma) / (_ALPHAS[_FRAC_IDX] - 1)
        # True RDP is >= 0; rounding can push a near-zero log A just below it.
        np.maximum(rdp, 0.0, out=rdp)
    rdp.setflags(write=False)
    return rdp


@lru_cache(maxsize=65536)
def _step_rdp_cached(sigma: float, q: float) -> np.ndarray:
    return _step_rdp_uncached(sigma, q)


def step_rdp(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """RDP of one subsampled-Gaussian step at every order in ORDERS (read-only, cached)."""
    return _step_rdp_cached(check_noise_multiplier(noise_multiplier), check_sample_rate(sample_rate))


def segment_rdp(segment: Segment) -> np.ndarray:
    """The RDP curve of a segment: steps * step_rdp.

    Every component (the filter's plan, the ledger, rdp_curve) computes a segment's curve with
    this one expression so that identical schedules give bit-identical sums.
    """
    return segment.steps * step_rdp(segment.noise_multiplier, segment.sample_rate)


def rdp_curve(segments: Iterable[Segment]) -> np.ndarray:
    """RDP of running the segments one after another: their curves added in order."""
    total = np.zeros_like(_ALPHAS)
    for seg in segments:
        if not isinstance(seg, Segment):
            raise PrivacyParameterError(f"expected a Segment, got {type(seg).__name__}: {seg!r}")
        total = total + segment_rdp(seg)
    return total


# ---------------------------------------------------------------------------------------------
# RDP -> (epsilon, delta)
# ---------------------------------------------------------------------------------------------

def _epsilon_per_order(rdp: np.ndarray, delta: float) -> np.ndarray:
    """The conversion dp_accounting's RdpAccountant uses, order by order.

    Balle et al. 2020 (arXiv 2004.00010, Prop. 12) / Canonne-Kamath-Steinke 2020, with the
    KL bound (delta >= sqrt(1 - e^-rdp) means epsilon 0) and no bound for orders <= 1.01,
    where the formula is numerically unstable.
    """
    a = _ALPHAS
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        eps = rdp + np.log1p(-1 / a) - np.log(delta * a) / (a - 1)
        eps = np.where(a > 1.01, eps, np.inf)
        eps = np.where(delta**2 + np.expm1(-rdp) > 0, 0.0, eps)
    return eps


def epsilon_from_rdp(rdp: np.ndarray, delta: float) -> tuple[float, float]:
    """(epsilon, optimal order) of an RDP curve on ORDERS at the given delta."""
    curve = check_curve(rdp)
    delta = check_delta(delta)
    eps = _epsilon_per_order(curve, delta)
    best = int(np.argmin(eps))
    return max(0.0, float(eps[best])), ORDERS[best]


def epsilon(segments: Iterable[Segment], delta: float) -> float:
    return epsilon_from_rdp(rdp_curve(segments), delta)[0]


# ---------------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------------

def least_noise(fits) -> float:
    """The smallest noise multiplier (to 1e-4 relative, always on the fitting side) that passes
    `fits`, a test that more noise can only pass; inf when even 1e6 fails. It stops looking
    below 1e-3, which is no privacy at all."""
    hi = 1.0
    while not fits(hi):
        hi *= 2.0
        if hi > 1e6:
            return math.inf
    lo = hi / 2.0
    while fits(lo) and lo > 1e-3:
        hi, lo = lo, lo / 2.0
    while hi / lo - 1 > 1e-4:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


_SIGMA_MIN = 1e-3
_SIGMA_MAX = 1e6
_REL_TOL = 1e-4


def calibrate_noise(target_epsilon: float, delta: float, sample_rate: float, steps: int,
                    prior_rdp: np.ndarray | None = None) -> float:
    """The smallest noise multiplier (to 1e-4 relative) that keeps epsilon within the target.

    The result is always on the safe side: epsilon_from_rdp(prior_rdp + steps *
    step_rdp(sigma, q), delta) <= target_epsilon holds for the returned sigma, and fails for
    sigma / (1 + 1e-4). Epsilon decreases in sigma, so a doubling bracket and bisection on
    log(sigma) find it; unlike Opacus's get_noise_multiplier this has no fixed starting
    bracket, so epsilons from 0.01 to 100 calibrate.
    """
    target = _as_float(target_epsilon, "target_epsilon")
    if not (math.isfinite(target) and target > 0):
        raise PrivacyParameterError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")
    delta = check_delta(delta)
    q = check_sample_rate(sample_rate)
    steps = check_steps(steps)
    prior = np.zeros_like(_ALPHAS) if prior_rdp is None else check_curve(prior_rdp, "prior_rdp")

    prior_eps, prior_order = epsilon_from_rdp(prior, delta)
    if prior_eps > target:
        raise BudgetExceeded(
            f"the prior spend alone is epsilon {prior_eps:.6g} (order {prior_order:g}) at delta {delta:g}, "
            f"over the target epsilon {target:g}; no noise multiplier can fit {steps} more steps")
    if steps == 0:
        raise PrivacyParameterError("steps must be >= 1 to calibrate a noise multiplier, got 0")

    def fits(sigma: float) -> bool:
        # Uncached: the bisection's sigmas are used once and would evict useful entries.
        return epsilon_from_rdp(prior + steps * _step_rdp_uncached(sigma, q), delta)[0] <= target

    hi = 1.0
    while not fits(hi):
        if hi >= _SIGMA_MAX:
            raise BudgetExceeded(
                f"even noise multiplier {_SIGMA_MAX:g} exceeds target epsilon {target:g} at delta {delta:g} "
                f"after the prior spend (epsilon {prior_eps:.6g}); the remaining budget is effectively zero")
        hi *= 2.0
    lo = hi / 2.0
    while fits(lo):
        if lo <= _SIGMA_MIN:
            raise PrivacyParameterError(
                f"target epsilon {target:g} is met even by noise multiplier {_SIGMA_MIN:g} "
                f"(sample rate {q:g}, {steps} steps): that is no meaningful privacy; lower the target")
        hi, lo = lo, lo / 2.0
    # Invariant: fits(hi) and not fits(lo).
    while hi / lo - 1 > _REL_TOL:
        mid = math.sqrt(lo * hi)
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return hi
