"""The O(batch) Poisson sampler draws the same law as a coin per row (issue 28, item 1).

NoiseSource.poisson_subset draws a Binomial(n, q) size and then a uniform subset of that size.
These tests check the law it must have, not its code: the size distribution against
Binomial(n, q), each index's inclusion frequency against q, pairs of indices included
independently, and subsets of one size equally likely. Each test uses a fixed reproducible stream
so it cannot flake; the thresholds are ones a wrong law (a fixed size, a biased subset, a skewed
index) fails by a wide margin (see the last test).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest
import torch
from scipy import stats

from ppmlops.privacy.randomness import NoiseSource, RandomnessError
from ppmlops.training.sampling import LockstepPoissonSampler

DRAWS = 20_000


def _source(tag: int = 0) -> NoiseSource:
    return NoiseSource(0xC0FFEE + tag, secure=False)


def _size_pvalue(sizes: np.ndarray, n: int, q: float) -> float:
    """Chi-square of the sizes against Binomial(n, q), tails pooled to expected counts >= 5."""
    ks = np.arange(n + 1)
    expected = stats.binom.pmf(ks, n, q) * len(sizes)
    observed = np.bincount(sizes, minlength=n + 1).astype(float)
    obs, exp, acc_o, acc_e = [], [], 0.0, 0.0
    for o, e in zip(observed, expected):
        acc_o, acc_e = acc_o + o, acc_e + e
        if acc_e >= 5:
            obs.append(acc_o)
            exp.append(acc_e)
            acc_o = acc_e = 0.0
    obs[-1] += acc_o
    exp[-1] += acc_e
    return float(stats.chisquare(obs, np.array(exp) * sum(obs) / sum(exp)).pvalue)


def test_sizes_follow_the_binomial_and_every_index_is_included_at_rate_q():
    n, q = 60, 0.1
    src = _source()
    hits = np.zeros(n)
    sizes = np.empty(DRAWS, dtype=int)
    for i in range(DRAWS):
        s = src.poisson_subset(n, q)
        assert np.all(np.diff(s) > 0) and (len(s) == 0 or (s[0] >= 0 and s[-1] < n))  # sorted, distinct
        sizes[i] = len(s)
        hits[s] += 1
    assert _size_pvalue(sizes, n, q) > 1e-3
    # Inclusion counts are Binomial(DRAWS, q) per index: all within 4.5 standard deviations.
    sd = math.sqrt(DRAWS * q * (1 - q))
    assert np.max(np.abs(hits - DRAWS * q)) < 4.5 * sd
    assert stats.chisquare(hits).pvalue > 1e-3  # no index favoured


def test_two_indices_are_included_independently():
    n, q = 12, 0.3
    src = _source(1)
    both = Counter()
    for _ in range(DRAWS):
        s = set(src.poisson_subset(n, q).tolist())
        both[(0 in s, 7 in s)] += 1
    table = np.array([[both[(False, False)], both[(False, True)]], [both[(True, False)], both[(True, True)]]])
    assert stats.chi2_contingency(table).pvalue > 1e-3
    assert table[1, 1] / DRAWS == pytest.approx(q * q, abs=4.5 * math.sqrt(q * q * (1 - q * q) / DRAWS))


def test_given_its_size_every_subset_is_equally_likely():
    n, q = 6, 0.5
    src = _source(2)
    of_size_3 = Counter()
    for _ in range(DRAWS):
        s = src.poisson_subset(n, q)
        if len(s) == 3:
            of_size_3[tuple(s.tolist())] += 1
    assert set(of_size_3) == set(itertools.combinations(range(n), 3))
    assert stats.chisquare(list(of_size_3.values())).pvalue > 1e-3


def test_the_edges_and_a_bad_rate():
    src = _source(3)
    assert len(src.poisson_subset(0, 0.5)) == 0
    assert len(src.poisson_subset(100, 0.0)) == 0
    assert src.poisson_subset(5, 1.0).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(RandomnessError, match="inclusion probability"):
        src.poisson_subset(5, 1.5)


def test_the_lockstep_sampler_draws_each_ranks_rows_by_that_law():
    """Ranks own rows rank::world; every row of a rank is in a batch at rate q, and no row of
    another rank ever appears."""
    sampler = LockstepPoissonSampler(total_size=101, sample_rate=0.2, steps=4000, rank=1, world_size=3)
    counts = torch.zeros(101)
    sizes = []
    for batch in sampler.batches(_source(4)):
        counts[batch] += 1
        sizes.append(len(batch))
    own = torch.arange(1, 101, 3)
    assert counts.sum() == counts[own].sum()
    sd = math.sqrt(4000 * 0.2 * 0.8)
    assert float((counts[own] - 800).abs().max()) < 4.5 * sd
    assert _size_pvalue(np.array(sizes), len(own), 0.2) > 1e-3


def test_the_checks_reject_a_wrong_law():
    """The same checks on laws that are not Poisson sampling: each fails by far."""
    n, q = 60, 0.1
    rng = np.random.default_rng(5)
    fixed = np.full(DRAWS, round(n * q))  # a fixed batch size (sampling without replacement)
    assert _size_pvalue(fixed, n, q) < 1e-6
    skew = np.zeros(n)
    for _ in range(DRAWS):  # right sizes, but low indices twice as likely
        k = rng.binomial(n, q)
        w = np.where(np.arange(n) < n // 2, 2.0, 1.0)
        skew[rng.choice(n, size=k, replace=False, p=w / w.sum())] += 1
    assert stats.chisquare(skew).pvalue < 1e-6
