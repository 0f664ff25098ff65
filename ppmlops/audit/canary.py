"""Empirical privacy audit from canaries, in the same training run (Steinke, Nasr & Jagielski 2023,
"Privacy Auditing with One (1) Training Run", arXiv 2305.08846).

The audit never looks at a real row. Before training, `make_canaries` makes m synthetic rows and
flips a fair, secret coin for each: heads, the canary joins the training rows. Each canary is a
"Dirac" canary in input space: the model gets m extra input columns that every real row holds
at zero, and canary i is zero everywhere except `scale` in column i (and a random label). So the
first layer's weights on column i are moved by canary i's clipped gradient when it is sampled, by
the DP noise, and by nothing else: no real row touches them, no other canary does. After
training the auditor scores each canary white-box: the change of its column's weights since
initialisation, projected on the direction its own gradient had at initialisation (a canary that
was trained on moved its column that way). It guesses "in" for the k highest scores and "out" for
the k lowest, abstains on the rest, and counts its correct guesses v out of r = 2k. The extra
columns are cut from the model before it leaves the run (real rows hold zeros there, so the cut
model predicts exactly the same).

Their Theorem 3.1 (with the delta term of their Appendix D): if training is (epsilon, delta)-DP,
then P[v correct] <= P[Binomial(r, e^eps / (1 + e^eps)) >= v] + 2 m delta * alpha, with alpha the
largest P[v - i <= Binomial < v] / i over i = 1..v. The lower bound is the largest epsilon this
rejects at level beta. The guess counts are fixed in advance (GUESS_FRACTIONS) and the level is
split across them (Bonferroni), so taking the best of them keeps the bound valid.

What the bound means: a lower bound from one audit. Below the claimed epsilon proves nothing;
above it means the accounting does not describe the training that ran (noise missing, clipping
off, a sampler that is not Poisson...), short of the beta chance of a wrong certificate. The
deploy policy denies then (tests/unit/test_canary_audit.py shows a run with its noise switched off
caught at epsilon > 3 where it claimed 1). The canaries are synthetic and the coins are not data,
so the audit's result depends on the DP model, the canaries and the coins: nothing about real rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from ppmlops.errors import PpmlopsError
from ppmlops.privacy.randomness import NoiseSource
from ppmlops.run.records import CanaryAudit

# k = fraction x m guesses on each side, each test at level beta / len(GUESS_FRACTIONS).
GUESS_FRACTIONS = (0.05, 0.1, 0.2)
DEFAULT_CONFIDENCE = 0.95


class AuditError(PpmlopsError):
    """The audit cannot run with these canaries or scores."""


DEFAULT_SCALE = 1.0


@dataclass(frozen=True)
class CanarySet:
    n_features: int  # the real features; canary i lives in column n_features + i
    labels: np.ndarray  # (m,) int64
    included: np.ndarray  # (m,) bool: the secret coins
    scale: float = DEFAULT_SCALE

    def __post_init__(self) -> None:
        if self.included.shape != self.labels.shape:
            raise AuditError("canary labels and coins must have one entry per canary")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def width(self) -> int:
        """The model's input width during training: the real features, then one column per canary."""
        return self.n_features + len(self)

    @property
    def features(self) -> np.ndarray:
        x = np.zeros((len(self), self.width), dtype=np.float32)
        x[np.arange(len(self)), self.n_features + np.arange(len(self))] = self.scale
        return x

    def pad(self, X: np.ndarray) -> np.ndarray:
        """Real rows with the canary columns at zero."""
        return np.hstack([np.asarray(X, dtype=np.float32), np.zeros((len(X), len(self)), dtype=np.float32)])

    @property
    def members(self) -> tuple[np.ndarray, np.ndarray]:
        return self.features[self.included], self.labels[self.included]


def make_canaries(count: int, n_features: int, source: NoiseSource, scale: float = DEFAULT_SCALE) -> CanarySet:
    """m canaries with random labels and fair coins (both from `source`)."""
    if count < 0 or n_features < 1:
        raise AuditError(f"need count >= 0 and n_features >= 1, got {count}, {n_features}")
    labels = source.bernoulli(count, 0.5).astype(np.int64)
    included = source.bernoulli(count, 0.5)
    return CanarySet(n_features, labels, included, scale)


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[at least v of r guesses correct] under (epsilon, delta)-DP with m canaries."""
    if not 0 <= v <= r <= m:
        raise AuditError(f"need 0 <= correct <= guesses <= canaries, got {v}, {r}, {m}")
    q = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(stats.binom.sf(v - 1, r, q))
    if delta <= 0 or v == 0:
        return min(1.0, tail)
    below = np.cumsum(stats.binom.pmf(np.arange(v - 1, -1, -1), r, q))  # P[v - i <= B < v] for i = 1..v
    alpha = float(np.max(below / np.arange(1, v + 1)))
    return min(1.0, tail + alpha * delta * 2 * m)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, beta: float) -> float:
    """The largest epsilon that v correct guesses of r reject at level beta (0 when none)."""
    if p_value(m, r, v, 0.0, delta) >= beta:
        return 0.0
    lo, hi = 0.0, 1.0
    while p_value(m, r, v, hi, delta) < beta:
        lo, hi = hi, hi * 2
        if hi > 1e3:
            return math.inf  # every guess right and a huge m: no finite epsilon explains it
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if p_value(m, r, v, mid, delta) < beta else (lo, mid)
    return lo


def audit(scores: np.ndarray, included: np.ndarray, *, delta: float,
          confidence: float = DEFAULT_CONFIDENCE) -> CanaryAudit:
    """Guess in/out on the extremes of `scores` (higher: more likely trained on) and certify."""
    scores = np.asarray(scores, dtype=np.float64)
    included = np.asarray(included, dtype=bool)
    m = len(scores)
    if included.shape != (m,) or not np.all(np.isfinite(scores)):
        raise AuditError("need one finite score and one coin per canary")
    if not 0 < confidence < 1:
        raise AuditError(f"confidence must be in (0, 1), got {confidence!r}")
    beta = (1 - confidence) / len(GUESS_FRACTIONS)
    order = np.argsort(scores, kind="stable")
    best = CanaryAudit(canaries=m, guesses=0, correct=0, epsilon_lower_bound=0.0, confidence=confidence,
                       delta=delta)
    for fraction in GUESS_FRACTIONS:
        k = int(fraction * m)
        if k < 1:
            continue
        correct = int(np.sum(included[order[-k:]]) + np.sum(~included[order[:k]]))
        bound = epsilon_lower_bound(m, 2 * k, correct, delta, beta)
        if bound >= best.epsilon_lower_bound:
            best = CanaryAudit(canaries=m, guesses=2 * k, correct=correct, epsilon_lower_bound=bound,
                               confidence=confidence, delta=delta)
    return best
