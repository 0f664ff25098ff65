"""What a tuner may see: statistics of private rows released with their own noise and cost.

The held-out rows are a partition of the dataset disjoint from the training rows, so a release
about them is charged to the ledger's ``holdout`` partition and composes in parallel with
training (the dataset's epsilon is the worst partition's). That only holds while the split is
the same for every run of the dataset; the split's description travels in each entry's note and
the plan refuses a run whose split differs (see ``split_conflict``).

Noisy holdout accuracy: the number of correct predictions changes by at most 1 when one
held-out row is added or removed, so the Gaussian mechanism with standard deviation ``sigma``
on that count has RDP alpha / (2 sigma^2): exactly ``Segment(sigma, 1.0, 1)`` in the ledger.
The count is divided by the holdout size, which this product treats as public (row counts are
reported exactly, and the README says so).
"""

from __future__ import annotations

import secrets

import numpy as np

from ppmlops.privacy.accountant import Segment, calibrate_noise

PARTITION = "holdout"
SPLIT_MARK = "; split "


def holdout_noise(epsilon: float, delta: float, releases: int, *, prior_rdp=None) -> float:
    """The noise multiplier for `releases` noisy accuracy counts costing `epsilon` in total."""
    return calibrate_noise(epsilon, delta, 1.0, releases, prior_rdp=prior_rdp)


def release_segment(sigma: float) -> Segment:
    return Segment(float(sigma), 1.0, 1)


def entry_note(epoch: int, split: str) -> str:
    return f"noisy holdout accuracy, epoch {epoch}{SPLIT_MARK}{split}"


def noisy_accuracy(correct: int, rows: int, sigma: float) -> float:
    """Correct count plus N(0, sigma^2) noise from OS entropy, over the public row count, in [0, 1]."""
    rng = np.random.default_rng(secrets.randbits(128))
    return float(min(1.0, max(0.0, (correct + rng.normal(0.0, sigma)) / rows)))


def split_conflict(entries, split: str) -> str | None:
    """A reason to refuse when earlier holdout releases of the dataset used another split."""
    for e in entries:
        if e.partition == PARTITION and SPLIT_MARK in (e.note or ""):
            earlier = e.note.split(SPLIT_MARK, 1)[1]
            if earlier != split:
                return (f"the held-out partition changed (earlier runs: {earlier!r}, this run: {split!r}); "
                        "parallel composition of the train and holdout partitions needs the same split for "
                        "every run of a dataset: restore the spec's seed, test_fraction or test_source, or "
                        "use a new dataset id")
    return None
