import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ppmlops.training.metrics import accuracy, majority_rate, roc_auc


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_sklearn_on_random_data(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 500)
    scores = rng.normal(size=500) + 0.7 * y
    assert roc_auc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)


def test_auc_with_heavy_ties_matches_sklearn():
    rng = np.random.default_rng(11)
    y = rng.integers(0, 2, 400)
    scores = rng.integers(0, 4, 400) + y  # only five distinct scores
    assert roc_auc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)


def test_auc_extremes():
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc(y, [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert roc_auc(y, [0.5, 0.5, 0.5, 0.5]) == 0.5


def test_auc_rejects_one_class_and_bad_labels():
    with pytest.raises(ValueError, match="only one class"):
        roc_auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="0 or 1"):
        roc_auc([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([0, 1], [0.1, float("nan")])


def test_accuracy_and_majority():
    assert accuracy([0, 1, 1, 0], [0, 1, 0, 0]) == 0.75
    assert majority_rate([0, 1, 1, 1]) == 0.75
    with pytest.raises(ValueError, match="rows"):
        accuracy([0, 1], [0])
