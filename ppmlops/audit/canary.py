"""Empirical privacy audit from canaries, in the same training run (Steinke, Nasr & Jagielski 2023,
"Privacy Auditing with One (1) Training Run", arXiv 2305.08846), in their white-box gradient
setting.

The audit never looks at a real row. Before training, `make_canaries` flips a fair, secret coin
for each of m canaries: heads, the canary is in the training set. A canary is a GRADIENT-space
Dirac canary: one coordinate j_i of the first layer's weight, (hidden unit u_i, canary column
c_i). The model gets a few extra input columns that every real row holds at zero, so every real
row's gradient on those weights is exactly zero: only canaries and the DP noise ever move them
(several canaries share a column on different hidden units, so m can be in the thousands with
m / units columns). The columns are cut from the model before it leaves the run (real rows hold
zeros there, so the cut model predicts exactly the same).

Why the audit is sound. At every DP-SGD step each included canary is Poisson-sampled with the
run's rate q (from the run's CSPRNG) and, when sampled, adds C e_j (norm exactly C, the step's
clip norm) to the clipped sum before the noise (ppmlops.training.canary_scores, called from the
optimizer's noise path on every clipping mode). A vector of norm <= C is a clipped gradient like
any row's, and a canary is sampled like a row, so under add/remove adjacency a canary is a record
of the very mechanism the ledger charges: if that accounting is right, training is (epsilon,
delta)-DP for each canary's coin, which is all the theorem below needs. Canaries are synthetic:
they are not charged to the ledger, and they are not counted in the batch (the divisor and q come
from real rows only). DP-SGD's accounting covers every step's noisy sum, not just the last model,
so the auditor may read each step's noisy gradient at the canary coordinates (rank 0 does, after
the step): any function of those is post-processing. Those coordinates carry no real row's
gradient, so the scores depend on the coins, the canaries' sampling and the noise, nothing else.

Scores. Per step, the noisy sum at j_i divided by C is x = b + N(0, sigma^2) with b = 1 when the
canary was sampled (included canaries only) and 0 otherwise. `step_scores` adds the per-step log
likelihood ratio of "included" (b ~ Bernoulli(q)) against "excluded" (b = 0):
log(1 - q + q exp((x - 1/2) / sigma^2)), the Neyman-Pearson test of the subsampled Gaussian
mechanism itself, so the audit's power tracks the mechanism's real privacy: halved noise, a
sampler at 2q or missing noise all make included canaries stand out more than the accounting
allows. sigma is the noise the step shows at the canary coordinates (`observed_noise`), not the
plan's: a run that adds less noise than it claims is scored with the noise it really added. (A
score from the final weights alone, the sum of the x's, throws the per-step evidence away: a
weaker test.)

The bound. The auditor guesses "in" for the k highest scores and "out" for the k lowest,
abstains on the rest, and counts its correct guesses v out of r = 2k. Their Theorem 3.1 (with the
delta term of their Appendix D): if training is (epsilon, delta)-DP, then P[v correct] <=
P[Binomial(r, e^eps / (1 + e^eps)) >= v] + 2 m delta * alpha, with alpha the largest
P[v - i <= Binomial < v] / i over i = 1..v. The lower bound is the largest epsilon this rejects
at level beta. The guess counts are fixed in advance (GUESS_FRACTIONS) and the level is split
across them (Bonferroni), so taking the best of them keeps the bound valid.

What it certifies (the set-up of tests/unit/test_canary_audit.py: the demo's shape, q = 1/18 and
72 steps, m = 16384 canaries, claimed epsilon 1 at delta 1e-5, 20 seeds; `PYTHONPATH=tests
python tests/unit/test_canary_audit.py 20` prints them): a run whose real noise gives epsilon 4
by the ledger's accountant: lower bounds 1.05-1.52, above the claim in 20 of 20, so the deploy
policy denies it; epsilon 8: 1.72-2.19; noise switched off: 4.07-4.66; the honest run: 0.23-0.51,
below its claim (the theorem: above the true epsilon at most beta = 1 - confidence of the time).
With 8192 canaries the 4x run was missed at some seeds (0.90 at the test's seed 11). The canaries took training from
0.13 s to 0.46 s at that shape; the bound itself takes 0.02 s. A one-run audit is loose: its bound
sits well below the true epsilon, and it cannot see a clipping bug (a canary's gradient is never
clipped). The delta term grows with m (2 m delta): at delta 1e-5 a few times 10^4 canaries is
about as far as more canaries help. A model whose first layer is narrow gets fewer canaries
(ppmlops.training.driver caps the extra columns), hence a weaker audit.

What the bound means: a lower bound from one audit. Below the claimed epsilon proves nothing;
above it means the accounting does not describe the training that ran (noise missing or too
small, a sampler that is not Poisson at rate q...), short of the beta chance of a wrong
certificate. The deploy policy denies then.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
from scipy import stats

from ppmlops.errors import PpmlopsError
from ppmlops.privacy.randomness import NoiseSource

# k = fraction x m guesses on each side, each test at level beta / len(GUESS_FRACTIONS). With
# thousands of canaries the strongest evidence is in the extreme 1-2% of scores (few guesses,
# nearly all right); 5-10% still wins when the leak is mild.
GUESS_FRACTIONS = (0.01, 0.02, 0.05, 0.1)
DEFAULT_CONFIDENCE = 0.95


class AuditError(PpmlopsError):
    """The audit cannot run with these canaries or scores."""


class CanaryCoins(Protocol):
    """What a set of canaries is made of (ppmlops.run.records.Canaries is one): the audit sits below
    the run's records in the layer table, so it names the fields, not the record."""

    n_features: int
    units: int
    included: Sequence[bool]


@dataclass(frozen=True)
class AuditBound:
    """The audit's result, field for field ppmlops.run.records.CanaryAudit (the evaluate stage
    records it as one)."""

    canaries: int
    guesses: int
    correct: int
    epsilon_lower_bound: float
    confidence: float
    delta: float


@dataclass(frozen=True)
class CanarySet:
    """m gradient canaries on the first layer's weight: canary i is coordinate
    (i % units, n_features + i // units), in one of `columns` extra input columns."""

    n_features: int  # the real features; the canary columns follow them
    units: int  # the first layer's output width (its weight has `units` rows)
    included: np.ndarray  # (m,) bool: the secret coins

    def __post_init__(self) -> None:
        if self.n_features < 1 or self.units < 1 or np.ndim(self.included) != 1:
            raise AuditError(f"need n_features >= 1, units >= 1 and one coin per canary, got {self.n_features}, "
                             f"{self.units}, coins of shape {np.shape(self.included)}")

    @classmethod
    def of(cls, record: CanaryCoins) -> "CanarySet":
        return cls(record.n_features, record.units, np.asarray(record.included, dtype=bool))

    def __len__(self) -> int:
        return len(self.included)

    @property
    def columns(self) -> int:
        return -(-len(self) // self.units)

    @property
    def width(self) -> int:
        """The model's input width during training: the real features, then the canary columns."""
        return self.n_features + self.columns

    @property
    def coordinates(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, columns) of each canary's first-layer weight: all distinct."""
        i = np.arange(len(self))
        return i % self.units, self.n_features + i // self.units

    def pad(self, X: np.ndarray) -> np.ndarray:
        """Real rows with the canary columns at zero."""
        return np.hstack([np.asarray(X, dtype=np.float32), np.zeros((len(X), self.columns), dtype=np.float32)])


def make_canaries(count: int, n_features: int, units: int, source: NoiseSource) -> CanarySet:
    """m canaries with fair coins from `source`."""
    if count < 0:
        raise AuditError(f"need count >= 0, got {count}")
    return CanarySet(n_features, units, source.bernoulli(count, 0.5))


# A noise estimate never below this (x is in units of C): with the noise switched off the scores
# stay finite and still rank the canaries a step took above those it did not.
MIN_NOISE = 1e-3


def observed_noise(observed: np.ndarray) -> float:
    """The noise multiplier one step's canary coordinates show: a robust standard deviation
    (1.4826 x the median absolute deviation) of their values in units of C. Most of them carry
    noise alone (a canary joins a step with probability q / 2), so the few that carry a canary
    barely move it. Estimated from the observations, not taken from the plan: a run whose noise
    is smaller than the ledger was told is scored with the noise it really had."""
    x = np.asarray(observed, dtype=np.float64)
    return max(MIN_NOISE, 1.4826 * float(np.median(np.abs(x - np.median(x)))))


def step_scores(observed: np.ndarray, sample_rate: float, noise_multiplier: float) -> np.ndarray:
    """Per canary, the log likelihood ratio of one step's noisy sum at its coordinate (in units of
    the clip norm, x = b + N(0, sigma^2)): included (b ~ Bernoulli(q)) against excluded (b = 0)."""
    if not 0 < sample_rate <= 1 or not noise_multiplier > 0:
        raise AuditError(f"need 0 < q <= 1 and sigma > 0, got {sample_rate!r}, {noise_multiplier!r}")
    x = np.asarray(observed, dtype=np.float64)
    lifted = math.log(sample_rate) + (x - 0.5) / noise_multiplier ** 2
    return np.logaddexp(math.log1p(-sample_rate) if sample_rate < 1 else -np.inf, lifted)


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
          confidence: float = DEFAULT_CONFIDENCE) -> AuditBound:
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
    best = AuditBound(canaries=m, guesses=0, correct=0, epsilon_lower_bound=0.0, confidence=confidence,
                       delta=delta)
    for fraction in GUESS_FRACTIONS:
        k = int(fraction * m)
        if k < 1:
            continue
        correct = int(np.sum(included[order[-k:]]) + np.sum(~included[order[:k]]))
        bound = epsilon_lower_bound(m, 2 * k, correct, delta, beta)
        if bound >= best.epsilon_lower_bound:
            best = AuditBound(canaries=m, guesses=2 * k, correct=correct, epsilon_lower_bound=bound,
                               confidence=confidence, delta=delta)
    return best
