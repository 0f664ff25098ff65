"""A small synthetic training job shared by the Ray integration tests.

Test modules import the `data` and `ledger_url` fixtures from here by name (a second
conftest.py would shadow the root one, which tests import by name).
"""

from __future__ import annotations

import numpy as np
import pytest

from ppmlops.privacy.ledger import Ledger
from ppmlops.training.launch import TrainJob

DELTA = 1e-5
N_TRAIN, N_TEST, N_FEATURES, BATCH = 2000, 500, 10, 64


def make_data():
    rng = np.random.default_rng(3)
    w = rng.normal(size=N_FEATURES)
    X = rng.normal(size=(N_TRAIN + N_TEST, N_FEATURES)).astype(np.float32)
    # imbalanced (about 70/30) so that "beats the majority" means something
    y = (X @ w + 0.3 * rng.normal(size=len(X)) > 0.8).astype(np.int64)
    return X[:N_TRAIN], y[:N_TRAIN], X[N_TRAIN:], y[N_TRAIN:]


def make_ledger(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    Ledger(url).register_dataset("synth", epsilon_budget=50.0, delta=DELTA)
    return url


def make_job(data, ledger_url, tmp_path, run_id, *, epochs, budget, sigma=1.0, tuner=None, **kw) -> TrainJob:
    X, y, Xt, yt = data
    fields = dict(
        run_id=run_id, dataset_id="synth", ledger_url=ledger_url, delta=DELTA,
        X_train=X, y_train=y, X_test=Xt, y_test=yt, model_kind="logistic", hidden=[],
        epochs=epochs, batch_size=BATCH, learning_rate=0.5, momentum=0.0, max_grad_norm=1.0,
        noise_multiplier=sigma, budget_rdp=[float(b) for b in budget], secure_rng=False, seed=0,
        workers=2, storage_path=str(tmp_path / "ray"), tuner=tuner,
    )
    fields.update(kw)
    return TrainJob(**fields)


@pytest.fixture(scope="module")
def data():
    return make_data()


@pytest.fixture
def ledger_url(tmp_path):
    return make_ledger(tmp_path)
