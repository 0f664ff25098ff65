"""Utility metrics computed with numpy only, so workers need nothing beyond the training stack."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def _binary_labels(y_true) -> np.ndarray:
    y = np.asarray(y_true).reshape(-1)
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        raise ValueError(f"labels must be 0 or 1; found {np.unique(y[bad])[:5].tolist()}")
    return y.astype(np.int64)


def accuracy(y_true, y_pred) -> float:
    """Fraction of rows where the predicted class equals the label."""
    y_true = np.asarray(y_true).reshape(-1)
    y_pred = np.asarray(y_pred).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} rows but y_pred has {y_pred.size}")
    if y_true.size == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return float(np.mean(y_true == y_pred))


def roc_auc(y_true, scores) -> float:
    """Area under the ROC curve for labels in {0,1} and real-valued scores.

    Uses the Mann-Whitney identity AUC = P(score_pos > score_neg) + P(tie)/2, with tied scores
    given their average rank, which is what the trapezoidal ROC area equals.
    """
    y = _binary_labels(y_true)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.size} rows but scores has {s.size}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinity")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC AUC is undefined when the labels contain only one class")
    ranks = rankdata(s)  # average ranks for ties
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def majority_rate(y_true) -> float:
    """Accuracy of always predicting the more frequent class: the floor a model must beat."""
    y = _binary_labels(y_true)
    if y.size == 0:
        raise ValueError("majority rate of an empty set is undefined")
    p = float(y.mean())
    return max(p, 1.0 - p)


def evaluate(model, X, y) -> dict[str, float]:
    """Accuracy (threshold 0.5) and ROC AUC of `model` on (X, y)."""
    from ppmlops.training.models import predict_proba

    p = predict_proba(model, X).numpy()
    y = _binary_labels(y)
    out = {"accuracy": accuracy(y, (p >= 0.5).astype(np.int64))}
    out["auc"] = roc_auc(y, p) if 0 < y.sum() < y.size else float("nan")
    return out
