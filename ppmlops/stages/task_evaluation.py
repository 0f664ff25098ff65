"""The evaluate stage's releases for label.task multiclass and regression (binary keeps its own,
ppmlops.stages.evaluate). Each is ONE Gaussian release on the held-out partition, charged once as
``release_segment(groups)`` at the plan's evaluation_sigma, exactly like the binary one; every
metric, baseline and confidence bound below is post-processing of it (free).

multiclass  the k x k confusion matrix (true class by predicted class) plus the discrete Gaussian
            on each cell. One row adds one to exactly one cell, so the whole matrix has L2
            sensitivity 1 and costs what one count costs. Accuracy (trace / total), the majority
            baseline (largest true-class row / total), macro-F1 and the bounds follow.

regression  predictions and labels on the [0, 1] scale of the declared range (the prediction
            clipped to it), so each row's error e = |yhat - y| is at most 1 (the range's width w
            in the label's units: the sensitivity comes from the declaration, never the data).
            With d = y - 1/2 (the range's midpoint, public), released: the row count, sum e,
            sum (d^2 - e^2) (the "gain"), sum 2d and sum 4d^2: per row each value lies in [-1, 1],
            each sum is its own group with its own continuous Gaussian (noise from the CSPRNG,
            ppmlops.privacy.releases.noisy_sums), so scaled by its noise a row moves the vector
            by at most (sum over groups of sigma_g^-2)^-1/2 = 1 / sigma in L2: the release is the
            Gaussian mechanism at sigma, however the noise is split (WEIGHTS: the gate's sum gets
            the least). The baseline is the noisy MEAN of the held-out labels: its squared error
            is sum d^2 - (sum d)^2 / n, post-processing of the same release, so no constant has
            to be fixed beforehand and nothing is charged twice. It is the best constant
            predictor in hindsight on these rows (stricter than the training mean). Centring on
            the midpoint keeps (sum d)^2 / n, whose noise would swamp the comparison for
            uncentred labels, small. The gate compares squared errors (RMSE); MAE is reported.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

from ppmlops.privacy.releases import CountGroup, sigmas_for

CONFUSION = "confusion"
# The regression release's sums on the [0, 1] scale, each its own group (d = y - CENTRE):
# rows, sum |e|, the gain sum (d^2 - e^2), sum 2d and sum 4d^2.
SUMS = ("rows", "abs_error", "gain", "label", "label_sq")
CENTRE = 0.5  # the declared range's midpoint: public, fixed before any row is read
# Relative noise of each sum (ppmlops.privacy.releases.sigmas_for): the gate reads the gain, so it
# gets the least; the rest are reported (and n and sum d enter the gate's bound only weakly).
WEIGHTS = {"rows": 3.0, "abs_error": 3.0, "gain": 1.0, "label": 2.0, "label_sq": 3.0}


def _cell(i: int, j: int) -> str:
    return f"{i}:{j}"  # true class i, predicted class j (indices into label.classes)


# ------------------------------------------------------------------------------ multiclass

def multiclass_counts(predicted: np.ndarray, y: np.ndarray, k: int) -> dict[str, dict[str, int]]:
    """The exact k x k confusion matrix (private: released only with noise)."""
    predicted, y = np.asarray(predicted, dtype=np.int64), np.asarray(y, dtype=np.int64)
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (y, predicted), 1)
    return {CONFUSION: {_cell(i, j): int(matrix[i, j]) for i in range(k) for j in range(k)}}


def multiclass_groups(sigma: float) -> dict[str, CountGroup]:
    # One group whose sigma is nudged up as sigmas_for does: the release's cost is computed back
    # from its noise ((1/sigma)^2)^-1/2, which can land an ulp below sigma, and the run's filter
    # compares curves exactly, so an evaluation planned to use the held-out budget to the last
    # digit was refused (a 1-epoch multiclass run, by 2e-15).
    return {CONFUSION: CountGroup(sigmas_for(float(sigma), [1.0], [1])[0])}


def noisy_matrix(noisy: dict[str, dict[str, int]], k: int) -> np.ndarray:
    return np.array([[noisy[CONFUSION][_cell(i, j)] for j in range(k)] for i in range(k)], dtype=np.int64)


def multiclass_metrics(matrix: np.ndarray, cell_sigma: float, confidence: float) -> dict:
    """The record's fields from the noisy matrix (rows: true class). Metrics use the cells clamped
    at 0; the bounds use the noisy cells as released (their noise is symmetric).

    advantage_lower bounds accuracy minus the majority rate on the held-out rows: against class c
    a row contributes [correct] - [label is c], whose sum is the diagonal outside c minus row c
    outside the diagonal: 2(k-1) distinct cells, noise std sqrt(2(k-1)) sigma (for k = 2 this is
    the binary stage's tn - fn and tp - fp). The smallest over c, since which class is the
    majority is itself noisy. class_rows_lower bounds the rows outside the largest class (k(k-1)
    cells per class): below min_class_rows the held-out rows may hold a single class. The k
    advantage events, the k class events and n's two sides share 1 - confidence (Bonferroni)."""
    k = matrix.shape[0]
    c = np.maximum(matrix, 0).astype(float)
    n = c.sum()
    correct = np.trace(c)
    truth, said = c.sum(axis=1), c.sum(axis=0)
    f1 = [2 * c[i, i] / (truth[i] + said[i]) if truth[i] + said[i] > 0 else 0.0 for i in range(k)]
    z = NormalDist().inv_cdf(1 - (1 - confidence) / (2 * k + 2))
    raw = matrix.astype(float)
    n_raw = raw.sum()
    n_lo, n_hi = max(0.0, n_raw - z * k * cell_sigma), max(1.0, n_raw + z * k * cell_sigma)
    diag, rows = np.diag(raw), raw.sum(axis=1)
    lows, outside = [], []
    for cls in range(k):
        d = (diag.sum() - diag[cls]) - (rows[cls] - diag[cls])
        low = d - z * math.sqrt(2 * (k - 1)) * cell_sigma
        lows.append(low / (n_hi if low >= 0 else max(1.0, n_lo)))
        outside.append(n_raw - rows[cls] - z * math.sqrt(k * (k - 1)) * cell_sigma)
    largest = int(np.argmax(truth))
    return {"accuracy": correct / n if n else 1.0 / k, "auc": None,
            "majority_baseline": truth.max() / n if n else 1.0 / k, "macro_f1": float(np.mean(f1)),
            "rows": int(n), "positives": int(matrix[largest].sum()), "negatives": int(matrix.sum() - matrix[largest].sum()),
            "confusion": matrix.tolist(), "advantage_lower": max(-1.0, min(1.0, min(lows))), "rows_lower": n_lo,
            "class_rows_lower": max(0.0, min(outside))}


# ------------------------------------------------------------------------------ regression

def regression_sums(predicted: np.ndarray, y: np.ndarray) -> dict[str, dict[str, float]]:
    """The exact sums on the [0, 1] scale (private: released only with noise). Each row's value in
    each sum is at most 1 in absolute value; the clipping is what that rests on."""
    p = np.clip(np.asarray(predicted, dtype=np.float64), 0.0, 1.0)
    t = np.clip(np.asarray(y, dtype=np.float64), 0.0, 1.0)
    e, d = np.abs(p - t), t - CENTRE
    values = {"rows": float(len(t)), "abs_error": float(e.sum()),
              "gain": float((d * d - e * e).sum()),  # in [-1, 0.25] per row
              "label": float((2 * d).sum()),  # in [-1, 1] per row
              "label_sq": float((4 * d * d).sum())}  # in [0, 1] per row
    return {name: {"sum": values[name]} for name in SUMS}


def regression_groups(sigma: float) -> dict[str, CountGroup]:
    """The five sums' noise, in the ratios of WEIGHTS, together costing exactly the Gaussian at
    `sigma`: the gate's sum gets the least noise."""
    sigmas = sigmas_for(sigma, [WEIGHTS[n] for n in SUMS], [1] * len(SUMS))
    return {name: CountGroup(s) for name, s in zip(SUMS, sigmas)}


# Five one-sided events: n's two sides, sum (y - c)'s two sides and the gain's lower side.
_REGRESSION_EVENTS = 5


def regression_metrics(noisy: dict[str, dict[str, float]], sigmas: dict[str, float], confidence: float,
                       label_range: tuple[float, float]) -> dict:
    """The record's fields from the noisy sums (`sigmas`: each sum's noise std), in the label's
    units (the range's width w).

    With d = y - c, the mean baseline's squared error is sum d^2 - (sum d)^2 / n for any constant
    c, so baseline SSE - model SSE = gain - (sum d)^2 / n. advantage_lower is a lower confidence
    bound on that over n w^2 (on the held-out rows): gain at its lower bound, (sum d)^2 at the
    larger square of its interval's ends, n at its lower bound in that division; then divided
    by n's upper bound when positive, its lower bound when negative."""
    lo, hi = label_range
    w = hi - lo
    v = {name: noisy[name]["sum"] for name in SUMS}
    n = max(1.0, v["rows"])
    clamp = lambda x, top=1.0: min(top, max(0.0, x))  # noqa: E731 - a metric on the [0, 1] scale
    d_mean = v["label"] / 2 / n
    var = clamp(v["label_sq"] / 4 / n - d_mean * d_mean)
    mse = clamp(v["label_sq"] / 4 / n - v["gain"] / n)
    z = NormalDist().inv_cdf(1 - (1 - confidence) / _REGRESSION_EVENTS)
    n_lo, n_hi = max(0.0, v["rows"] - z * sigmas["rows"]), max(1.0, v["rows"] + z * sigmas["rows"])
    s_ends = [(v["label"] + sign * z * sigmas["label"]) / 2 for sign in (-1, 1)]
    d_lo = v["gain"] - z * sigmas["gain"] - max(x * x for x in s_ends) / max(1.0, n_lo)
    advantage = d_lo / (n_hi if d_lo >= 0 else max(1.0, n_lo))
    return {"accuracy": None, "auc": None, "majority_baseline": None, "rows": int(round(max(0.0, v["rows"]))),
            "mae": clamp(v["abs_error"] / n) * w, "rmse": math.sqrt(mse) * w,
            "baseline_mean": lo + clamp(CENTRE + d_mean) * w, "baseline_rmse": math.sqrt(var) * w,
            "advantage_lower": max(-1.0, min(1.0, advantage)), "rows_lower": n_lo}
