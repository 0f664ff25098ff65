"""The unit of privacy: one row (the default) or one person with at most k rows.

With `privacy.unit: {column: customer_id, max_rows: k}` neighbouring datasets differ by adding
or removing ONE PERSON, that is up to k rows (ingest keeps at most k rows per person:
ppmlops.data.person_bound). Every mechanism the ledger charges is written as a Segment of the
Poisson-subsampled Gaussian with per-row sensitivity 1 (a count changes by 1, a clipped
gradient by at most C, the noise std is sigma * C); `unit_scaled` turns such a row-level
Segment into one whose RDP curve bounds the same mechanism under person adjacency:

    unit_scaled(Segment(sigma, q, n), k) = Segment(sigma / k, 1 - (1 - q)^k, n)

Why this is sound (each step; steps then compose as before, and the Renyi filter applies to
these curves unchanged):

* Sensitivity. A person's rows change the summed clipped gradient by the sum of their sampled
  rows' gradients, a vector of norm at most |S| * C <= k * C (S: the person's sampled rows),
  and each released count by at most k. Noise std sigma * C is then sigma / k times the
  person's sensitivity k * C: the Gaussian part has noise multiplier sigma / k.
* Sampling. Each row is sampled independently with rate q, so the person contributes nothing
  with probability (1 - q)^k and something (a vector of norm <= k*C) with probability
  q' = 1 - (1 - q)^k <= min(1, k*q). The output under "person present" is the mixture
  (1 - q') N(0, .) + q' E_S[N(v_S, .)]. The map (P, Q) -> E_Q[(P/Q)^alpha] is jointly convex
  for alpha >= 1 (the perspective of x^alpha), so in both directions of the divergence the
  mixture over S (and over the other rows' sampling) is at most the worst single component,
  a subsampled Gaussian with rate q' and shift ||v_S|| <= k*C; its RDP grows with the shift
  (it is the same mechanism at a smaller noise multiplier) and with the rate (t -> E[((1-t) +
  t L)^alpha] is convex with its minimum 1 at t = 0, so nondecreasing). Hence the step is
  bounded by the subsampled Gaussian with rate q' and noise multiplier sigma / k, which is what
  accountant.step_rdp computes for the Segment above (Mironov, Talwar & Zhang 2019).

This is the exact rate 1 - (1 - q)^k, not the cruder min(1, k*q) (both are valid by the
monotonicity in the rate; the exact one charges less and is computed with log1p/expm1).
Mironov 2017's RDP group-privacy conversion (Prop. 2: (alpha, eps)-RDP at order 2^c * alpha
gives (alpha, 3^c eps(2^c alpha))-RDP for groups of 2^c) is also valid but much looser and
needs k to be a power of two; it is not used. tests/unit/test_privacy_unit.py checks the curve
against dp-accounting's privacy-loss distribution of the exact person-level mechanism with
aligned gradients (a mixture of Gaussians with Binomial(k, q) shifts), which it must bound.

k = 1 returns the Segment itself, so a dataset whose unit is one row is charged bit for bit
as before. A person with rows in several privacy blocks is protected per block: the blocks'
charges compose for that person (their budgets add up), which the model card says.
"""

from __future__ import annotations

import math

from ppmlops.errors import PpmlopsError
from ppmlops.privacy.accountant import Segment

ONE_ROW = 1


class UnitError(PpmlopsError, ValueError):
    """A unit of privacy that cannot be used (k not a whole number >= 1)."""


def check_max_rows(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise UnitError(f"privacy.unit.max_rows must be a whole number >= 1, got {k!r}")
    return k


def unit_sample_rate(q: float, k: int) -> float:
    """1 - (1 - q)^k: the chance that at least one of a person's k rows is sampled."""
    k = check_max_rows(k)
    if k == 1 or q >= 1.0:
        return q
    rate = -math.expm1(k * math.log1p(-q))
    # Rounding must never make the rate smaller than the probability it bounds: step up one ulp
    # (an RDP curve only grows with the rate, so a hair more is conservative).
    return min(1.0, math.nextafter(rate, math.inf))


def unit_scaled(segment: Segment, k: int) -> Segment:
    """A row-level Segment's bound under add/remove of one person with at most k rows (see the
    module docstring for why): Segment(sigma / k, 1 - (1 - q)^k, steps); k = 1: unchanged."""
    k = check_max_rows(k)
    if k == 1:
        return segment
    sigma = segment.noise_multiplier / k
    # Rounding down here would under-charge: the person-level multiplier is at most sigma / k.
    if sigma * k > segment.noise_multiplier:
        sigma = math.nextafter(sigma, 0.0)
    return Segment(sigma, unit_sample_rate(segment.sample_rate, k), segment.steps)


def row_noise(person_sigma: float, k: int) -> float:
    """The noise multiplier (per-row clip / unit-sensitivity counts) to draw with so that the
    person-level multiplier unit_scaled charges is at least `person_sigma`."""
    k = check_max_rows(k)
    if k == 1:
        return person_sigma
    sigma = person_sigma * k
    while unit_scaled(Segment(sigma, 1.0, 1), k).noise_multiplier < person_sigma:
        sigma = math.nextafter(sigma, math.inf)
    return sigma


def describe(k: int, column: str | None = None) -> str:
    """The unit as the model card states it."""
    if k == 1 and column is None:
        return "one row"
    return f"one person (column {column}), at most {k} row{'s' if k != 1 else ''} per person per run"
