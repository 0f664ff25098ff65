"""What a tuner may see: statistics of private rows released with their own noise and cost.

Two releases, each written to the ledger (mechanism and cost in the entry's note) before it is
computed:

Noisy holdout accuracy (ledger partition ``holdout``). The held-out rows are a partition of the
dataset disjoint from the training rows, so a release about them composes in parallel with
training (the dataset's epsilon is the worst partition's). That only holds while the split is
the same for every run of the dataset; the split's description travels in each entry's note and
the plan refuses a run whose split differs (see ``split_conflict``).
  The release is the pair (correct, wrong) of prediction counts plus N(0, sigma^2) on each.
  Adding or removing one held-out row changes exactly one of the two counts by 1, so the pair
  has L2 sensitivity 1 and the Gaussian mechanism's RDP is alpha / (2 sigma^2): exactly
  ``Segment(sigma, 1.0, 1)`` in the ledger, the same as a single count would cost. Accuracy is
  correct~ / (correct~ + wrong~). Why not divide one noisy count by the holdout's row count:
  that count is itself a function of the private rows (it changes by one with the row we
  protect), so publishing it next to the noisy count would leak; the noisy denominator is free.

Noisy clipped fraction (Andrew et al. 2021, "Differentially Private Learning with Adaptive
Clipping", arXiv 1905.03871; ledger partition ``train``). In every DP-SGD step each sampled row
adds one to either the clipped or the unclipped count, besides its clipped gradient. Scaled by
their noise, a row's joint contribution (clipped gradient / (C sigma_g), count / sigma_b) has L2
norm at most sqrt(sigma_g^-2 + sigma_b^-2) = 1 / sigma, so the step with both releases is one
Poisson-subsampled Gaussian step with noise multiplier sigma: the ledger entry and the privacy
filter charge ``Segment(sigma, q, steps)`` as before and the gradient gets a slightly larger
sigma_g (``gradient_noise``). The counts are summed over the epoch's steps on all ranks and
noised once with std sigma_b * sqrt(steps), which has the same distribution as noising every
step and releasing the sum (post-processing).
"""

from __future__ import annotations

import math
import secrets

import numpy as np

from ppmlops.privacy.accountant import Segment, calibrate_noise

PARTITION = "holdout"
SPLIT_MARK = "; split "
# sigma_b / sigma: the gradient noise grows by 1/sqrt(1 - 1/25), about 2%, to pay for the counts.
COUNT_NOISE_RATIO = 5.0


def holdout_noise(epsilon: float, delta: float, releases: int, *, prior_rdp=None) -> float:
    """The noise multiplier for `releases` noisy accuracy releases costing `epsilon` in total.

    The pipeline's plan calls this with the run's epoch count (one release after each epoch)
    and the spec's ``privacy.holdout_epsilon``; the worker refuses any release beyond that count.
    """
    return calibrate_noise(epsilon, delta, 1.0, releases, prior_rdp=prior_rdp)


def release_segment(sigma: float) -> Segment:
    return Segment(float(sigma), 1.0, 1)


def entry_note(epoch: int, split: str, sigma: float | None = None) -> str:
    mech = "" if sigma is None else (
        f" (Gaussian mechanism on the (correct, wrong) counts, L2 sensitivity 1, sigma {sigma:.6g}; "
        f"RDP alpha/(2 sigma^2))")
    return f"noisy holdout accuracy, epoch {epoch}{mech}{SPLIT_MARK}{split}"


def _rng() -> np.random.Generator:
    # OS entropy: these draws protect people, so nothing seeds them (not even in tests).
    return np.random.default_rng(secrets.randbits(128))


def noisy_accuracy(correct: int, rows: int, sigma: float) -> float:
    """correct~ / (correct~ + wrong~) with N(0, sigma^2) on each of the counts correct and
    wrong = rows - correct; `rows` itself is never released."""
    c, w = np.asarray([correct, rows - correct], dtype=np.float64) + _rng().normal(0.0, sigma, 2)
    c, w = max(c, 0.0), max(w, 0.0)
    return float(c / (c + w)) if c + w > 0 else 0.5


# -- noisy clipped fraction --------------------------------------------------------------------

def count_noise(sigma: float) -> float:
    return COUNT_NOISE_RATIO * float(sigma)


def gradient_noise(sigma: float, sigma_b: float | None) -> float:
    """The gradient's noise multiplier when the counts take noise sigma_b out of a step's sigma."""
    if not sigma_b:
        return float(sigma)
    rest = sigma ** -2 - sigma_b ** -2
    if rest <= 0:
        raise ValueError(f"count noise {sigma_b} must exceed the step's noise multiplier {sigma}")
    return float(rest ** -0.5)


def train_note(epoch: int, sigma: float, clip: float, sigma_b: float | None) -> str:
    base = (f"epoch {epoch}: DP-SGD, Poisson-subsampled Gaussian, clip norm {clip:.6g}, noise multiplier "
            f"{sigma:.6g}")
    if not sigma_b:
        return base
    return (base + f" = gradient sum (noise {gradient_noise(sigma, sigma_b):.6g}) joint with the noisy "
            f"(clipped, unclipped) row counts (noise {sigma_b:.6g}, Andrew et al. 2021)")


def noisy_clipped_fraction(clipped: int, unclipped: int, sigma_b: float, steps: int) -> float:
    """Epoch's clipped fraction from the summed exact counts, noised once with std sigma_b * sqrt(steps)."""
    scale = sigma_b * math.sqrt(steps)
    c, u = np.asarray([clipped, unclipped], dtype=np.float64) + _rng().normal(0.0, scale, 2)
    c, u = max(c, 0.0), max(u, 0.0)
    return float(c / (c + u)) if c + u > 0 else 0.5


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
