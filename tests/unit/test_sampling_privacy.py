"""Privacy: the sampler is the Poisson sampler at rate q that the ledger charges for: every row is
in a step with probability q, independently, so a batch's size is Binomial(rows, q); and every row
is sampled on exactly one rank."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from ppmlops.privacy.randomness import Randomness
from ppmlops.training.sampling import LockstepPoissonSampler

ROWS, Q, STEPS = 1000, 0.05, 2000


def _batches(rank: int = 0, world: int = 1) -> list[np.ndarray]:
    sampler = LockstepPoissonSampler(total_size=ROWS, sample_rate=Q, steps=STEPS, rank=rank, world_size=world)
    return [b.numpy() for b in sampler.batches(Randomness.reproducible("sampling-test", rank).source("sample"))]


def test_privacy_sampler_includes_each_row_with_probability_q():
    batches = _batches()
    assert len(batches) == STEPS
    counts = np.bincount(np.concatenate(batches), minlength=ROWS)
    # Per row: Binomial(STEPS, q), mean 100, sd 9.7; the mean over rows has sd 0.31.
    assert abs(counts.mean() / (STEPS * Q) - 1) < 0.02
    assert np.all(np.abs(counts - STEPS * Q) < 6 * math.sqrt(STEPS * Q * (1 - Q)))  # no row sampled apart


def test_privacy_sampler_batch_sizes_follow_the_binomial_law():
    sizes = np.array([len(b) for b in _batches()])
    assert all(len(np.unique(b)) == len(b) for b in _batches()[:50])  # no row twice in one batch
    law = stats.binom(ROWS, Q)
    assert abs(sizes.mean() - law.mean()) < 5 * law.std() / math.sqrt(len(sizes))
    assert abs(sizes.var() / law.var() - 1) < 0.2  # Poisson sampling's spread, not a fixed batch
    # Chi-square over the sizes (tails pooled to expected counts >= 5): Kolmogorov-Smirnov is not
    # valid for a discrete law (its statistic picks up the probability of the mode itself and
    # rejects a coin per row too, at p 3e-10 for one seed).
    ks = np.arange(ROWS + 1)
    expected, observed = law.pmf(ks) * len(sizes), np.bincount(sizes, minlength=ROWS + 1)
    cuts = np.searchsorted(np.cumsum(expected), np.arange(5, len(sizes), 5))
    obs = [o.sum() for o in np.split(observed, np.unique(cuts))]
    exp = [e.sum() for e in np.split(expected, np.unique(cuts))]
    assert stats.chisquare(obs, np.array(exp) * sum(obs) / sum(exp)).pvalue > 1e-4


def test_privacy_sampler_puts_each_row_on_exactly_one_rank():
    world = 3
    owned = [LockstepPoissonSampler(total_size=ROWS, sample_rate=Q, steps=1, rank=r, world_size=world).rows.numpy()
             for r in range(world)]
    assert sorted(np.concatenate(owned).tolist()) == list(range(ROWS))
    for rank in range(world):
        counts = np.bincount(np.concatenate(_batches(rank, world)), minlength=ROWS)[owned[rank]]
        assert abs(counts.mean() / (STEPS * Q) - 1) < 0.03
