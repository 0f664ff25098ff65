"""What a tuner may see: statistics of private rows released with their own noise and cost.

Noisy holdout accuracy (ledger partition ``holdout``). The held-out rows are a partition of the
dataset disjoint from the training rows, so a release about them composes in parallel with
training (the dataset's epsilon is the worst partition's). That only holds while the split is
the same for every run of the dataset (ppmlops.privacy.planning.split_conflict).
  The release is the pair (correct, wrong) of prediction counts plus the exact discrete
  Gaussian on each (ppmlops.privacy.releases). Adding or removing one held-out row changes
  exactly one of the two counts by 1, so the pair costs one Gaussian mechanism of that sigma.
  Accuracy is correct~ / (correct~ + wrong~): the holdout's exact size is itself a function of
  the private rows, so the noisy denominator is the only one that may be used.

Other tasks (label.task, ppmlops.training.tasks). Multiclass: (correct, wrong) as above, a row
right when its argmax is its class. Regression: each held-out row has a score s = 1 - |error| on
the label's [0, 1] scale (prediction and label clipped to the declared range, so s is in [0, 1])
and adds (s, 1 - s) to the pair of sums, a vector of L2 norm sqrt(s^2 + (1-s)^2) <= 1: the same
sensitivity, so the same Gaussian of that sigma (continuous, ppmlops.privacy.releases.noisy_sums)
costs the same and the signal correct~ / (correct~ + wrong~) is a noisy 1 - MAE / range width.

Noisy clipped fraction (Andrew et al. 2021, "Differentially Private Learning with Adaptive
Clipping", arXiv 1905.03871; ledger partition ``train``). In every DP-SGD step each sampled row
adds one to either the clipped or the unclipped count, besides its clipped gradient. Scaled by
their noise, a row's joint contribution (clipped gradient / (C sigma_g), count / sigma_b) has L2
norm at most sqrt(sigma_g^-2 + sigma_b^-2) = 1 / sigma, so the step with both releases is one
Poisson-subsampled Gaussian step with noise multiplier sigma: the usage row and the privacy
filter charge ``Segment(sigma, q, steps)`` as before and the gradient gets a slightly larger
sigma_g (``gradient_noise``). The counts are summed over the epoch's steps on all ranks and
noised once with std sigma_b * sqrt(steps), which has the same distribution as noising every
step and releasing the sum (post-processing). Their noise is continuous (the step's mechanism
is the continuous subsampled Gaussian) and comes from the run's CSPRNG.
"""

from __future__ import annotations

import math

from ppmlops.privacy.randomness import NoiseSource
from ppmlops.privacy.releases import CountGroup, ratio

PARTITION = "holdout"
# sigma_b / sigma: the gradient noise grows by 1/sqrt(1 - 1/25), about 2%, to pay for the counts.
COUNT_NOISE_RATIO = 5.0
OUTCOME = "outcome"  # the release group of (correct, wrong)


def accuracy_groups(sigma: float) -> dict[str, CountGroup]:
    return {OUTCOME: CountGroup(float(sigma))}


def accuracy_counts(correct: int, rows: int) -> dict[str, dict[str, int]]:
    return {OUTCOME: {"correct": int(correct), "wrong": int(rows) - int(correct)}}


def accuracy_of(noisy: dict[str, dict[str, int]]) -> float:
    """correct~ / (correct~ + wrong~), each clamped at 0; 0.5 when both are 0."""
    c, w = noisy[OUTCOME]["correct"], noisy[OUTCOME]["wrong"]
    return ratio(c, max(c, 0) + max(w, 0), empty=0.5)


def score_sums(scores) -> dict[str, dict[str, float]]:
    """The regression signal's exact pair: sum of the rows' scores in [0, 1] and of 1 - score."""
    import numpy as np

    s = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)  # the sensitivity rests on this bound
    return {OUTCOME: {"correct": float(s.sum()), "wrong": float((1.0 - s).sum())}}


def noisy_signal(task: str, scores, sigma: float, source: NoiseSource) -> float:
    """The tuner's noisy held-out signal for `task` from each row's score (ppmlops.training.tasks.
    scores); the caller has charged Segment(sigma, 1, 1) on the held-out partition."""
    from ppmlops.privacy.releases import noisy_counts, noisy_sums

    if task == "regression":
        noisy = noisy_sums(score_sums(scores), accuracy_groups(sigma), source)
    else:
        correct = int(round(float(sum(scores))))
        noisy = noisy_counts(accuracy_counts(correct, len(scores)), accuracy_groups(sigma), source)
    return accuracy_of(noisy.values)


def holdout_note(epoch: int, sigma: float) -> str:
    return (f"noisy holdout accuracy after epoch {epoch}: the (correct, wrong) counts plus the discrete "
            f"Gaussian, sigma {sigma:.6g} (L2 sensitivity 1)")


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


def noisy_clipped_fraction(clipped: int, unclipped: int, sigma_b: float, steps: int, source: NoiseSource) -> float:
    """Epoch's clipped fraction from the summed exact counts, noised once with std sigma_b * sqrt(steps)."""
    c, u = source.gaussian((2,), sigma_b * math.sqrt(steps)) + (clipped, unclipped)
    return ratio(c, max(c, 0.0) + max(u, 0.0), empty=0.5)
