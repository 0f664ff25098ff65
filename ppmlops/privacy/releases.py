"""Noisy releases of counts about private rows, and what each costs.

Every number that leaves a run's folder and is computed from private rows is a count released
here (or a function of such counts: post-processing is free). A release is a set of groups of
integer counts; in each group one row adds one to at most one count (a histogram: rows by
partition, by prediction outcome, by score bin), except that a group may declare a larger
per-row sensitivity (the rows in equivalence classes smaller than k move by up to k - 1 when one
row is added or removed). Each group gets the exact discrete Gaussian with its own sigma.

Cost. Under add/remove-one-row adjacency the worst row changes one count of every group by its
sensitivity, so the release is the Gaussian mechanism with unit sensitivity and the effective
noise multiplier

    sigma_eff = (sum over groups of (sensitivity_g / sigma_g)^2) ** -1/2,

that is RDP alpha / (2 sigma_eff^2) (the discrete Gaussian's RDP is at most the continuous one's,
Canonne, Kamath & Steinke 2020). The ledger charges exactly ``Segment(sigma_eff, 1, 1)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from ppmlops.errors import PpmlopsError
from ppmlops.privacy.accountant import Segment
from ppmlops.privacy.randomness import NoiseSource


class ReleaseError(PpmlopsError):
    """A release was asked for with counts or noise it cannot use."""


@dataclass(frozen=True)
class CountGroup:
    """Counts of which one row changes at most one, by at most `sensitivity`."""

    sigma: float
    sensitivity: int = 1

    def __post_init__(self) -> None:
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise ReleaseError(f"count noise sigma must be a finite number > 0, got {self.sigma!r}")
        if isinstance(self.sensitivity, bool) or int(self.sensitivity) != self.sensitivity or self.sensitivity < 1:
            raise ReleaseError(f"sensitivity must be a whole number >= 1, got {self.sensitivity!r}")


def effective_sigma(groups: Sequence[CountGroup]) -> float:
    """The Gaussian-mechanism noise multiplier (unit sensitivity) that the release costs."""
    if not groups:
        raise ReleaseError("a release needs at least one group of counts")
    return sum((g.sensitivity / g.sigma) ** 2 for g in groups) ** -0.5


def release_segment(groups: Sequence[CountGroup]) -> Segment:
    return Segment(effective_sigma(groups), 1.0, 1)


def sigmas_for(target_sigma: float, weights: Sequence[float], sensitivities: Sequence[int]) -> list[float]:
    """Per-group sigmas proportional to `weights` whose release costs exactly `target_sigma`.

    With sigma_g = c * w_g the cost is sigma_eff^-2 = sum (s_g / (c w_g))^2, so
    c = target_sigma * sqrt(sum (s_g / w_g)^2).
    """
    if len(weights) != len(sensitivities) or not weights or any(w <= 0 for w in weights):
        raise ReleaseError(f"need one positive weight per group, got {list(weights)} for {list(sensitivities)}")
    c = target_sigma * math.sqrt(sum((s / w) ** 2 for w, s in zip(weights, sensitivities)))
    sigmas = [c * w for w in weights]
    # Rounding must never leave the release cheaper-looking than its noise: nudge up until the
    # effective sigma is at least the target (the ledger compares curves exactly).
    while effective_sigma([CountGroup(x, s) for x, s in zip(sigmas, sensitivities)]) < target_sigma:
        sigmas = [x * (1 + 1e-12) for x in sigmas]
    return sigmas


@dataclass
class NoisyCounts:
    """A release: the noisy counts by group and name, with the noise each group got."""

    values: dict[str, dict[str, int]] = field(default_factory=dict)
    sigmas: dict[str, float] = field(default_factory=dict)
    sensitivities: dict[str, int] = field(default_factory=dict)

    def get(self, group: str, name: str) -> int:
        return self.values[group][name]

    def total(self, group: str) -> int:
        return sum(self.values[group].values())

    @property
    def noise_multiplier(self) -> float:
        return effective_sigma([CountGroup(self.sigmas[g], self.sensitivities[g]) for g in self.values])


def noisy_counts(exact: Mapping[str, Mapping[str, int]], groups: Mapping[str, CountGroup],
                 source: NoiseSource) -> NoisyCounts:
    """Add the discrete Gaussian of each group to its exact integer counts.

    The caller must have charged ``release_segment(groups.values())`` before calling this.
    """
    if set(exact) != set(groups):
        raise ReleaseError(f"counts for groups {sorted(exact)} do not match noise for groups {sorted(groups)}")
    out = NoisyCounts()
    for name, counts in exact.items():
        g = groups[name]
        bad = [k for k, v in counts.items() if isinstance(v, bool) or int(v) != v or v < 0]
        if bad:
            raise ReleaseError(f"counts must be whole numbers >= 0; group {name!r} has {bad}")
        noise = source.discrete_gaussian(g.sigma, len(counts))
        out.values[name] = {k: int(v) + z for (k, v), z in zip(counts.items(), noise)}
        out.sigmas[name] = g.sigma
        out.sensitivities[name] = g.sensitivity
    return out


def clamp_count(value: float) -> float:
    """A noisy count as a size: never below zero (post-processing)."""
    return max(0.0, float(value))


def ratio(numerator: float, denominator: float, *, empty: float = 0.0) -> float:
    """numerator / denominator of noisy counts, both clamped at 0, kept in [0, 1]."""
    n, d = clamp_count(numerator), clamp_count(denominator)
    if d <= 0:
        return empty
    return min(1.0, n / d)


@dataclass
class NoisySums:
    """A release of real-valued sums: the noisy sums by group and name, with each group's noise."""

    values: dict[str, dict[str, float]] = field(default_factory=dict)
    sigmas: dict[str, float] = field(default_factory=dict)
    sensitivities: dict[str, int] = field(default_factory=dict)

    @property
    def noise_multiplier(self) -> float:
        return effective_sigma([CountGroup(self.sigmas[g], self.sensitivities[g]) for g in self.values])


def noisy_sums(exact: Mapping[str, Mapping[str, float]], groups: Mapping[str, CountGroup],
               source: NoiseSource) -> NoisySums:
    """Add the continuous Gaussian of each group to its exact sums.

    The same accounting as `noisy_counts`, for sums of bounded real values: in each group one
    row's contribution to the group's sums is a vector of L2 norm at most the group's
    `sensitivity` (the caller bounds it: clips each row's values first), so the release is the
    Gaussian mechanism of ``effective_sigma(groups)``. The noise comes from the source's CSPRNG
    (ppmlops.privacy.randomness.NoiseSource.gaussian); the caller must have charged
    ``release_segment(groups.values())`` before calling this.
    """
    if set(exact) != set(groups):
        raise ReleaseError(f"sums for groups {sorted(exact)} do not match noise for groups {sorted(groups)}")
    out = NoisySums()
    for name, sums in exact.items():
        g = groups[name]
        bad = [k for k, v in sums.items() if not math.isfinite(float(v))]
        if bad:
            raise ReleaseError(f"sums must be finite numbers; group {name!r} has {bad}")
        noise = source.gaussian((len(sums),), g.sigma)
        out.values[name] = {k: float(v) + float(z) for (k, v), z in zip(sums.items(), noise)}
        out.sigmas[name] = g.sigma
        out.sensitivities[name] = g.sensitivity
    return out
