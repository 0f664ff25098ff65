"""UCI Adult for the benchmarks, and a worker job planned by the product's own planner and ledger.

The job comes from tests/plans.py (`make_job`: the planner, ledger and grant the plan stage uses,
without the rest of a pipeline), with the model set to the Adult MLP.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

DELTA = 1e-5
BATCH = 256


def load(subset: int | None, seed: int, validation: float = 0.2, offset: int = 0):
    """Adult's train.csv split into (train, validation) Arrays, and test.csv as (X_test, y_test).

    The tuners read their noisy signal from the validation rows; what a benchmark reports comes
    from the test set, which no tuner sees. `offset` (with `subset`): a disjoint block of rows."""
    import pandas as pd

    from ppmlops.data.features import encode
    from ppmlops.spec import load_spec
    from ppmlops.training.loop import Arrays

    data = Path(os.environ.get("PPMLOPS_DATA", REPO.parent / "shared" / "data")) / "adult"
    spec = load_spec(REPO / "dags" / "pipelines" / "adult_income.yaml")
    X, y, _ = encode(pd.read_csv(data / "train.csv"), spec)
    Xt, yt, _ = encode(pd.read_csv(data / "test.csv"), spec)
    order = np.random.default_rng(seed).permutation(len(X))
    if subset:  # `offset` picks a disjoint block of the same shuffle (another week's rows)
        order = order[offset:offset + subset]
    cut = int(len(order) * (1 - validation))
    train, val = order[:cut], order[cut:]
    return Arrays(X[train], y[train], X[val], y[val]), Xt, yt


def adult_job(ledger_dir: Path, arrays, *, run_id: str, epsilon: float, epochs: int, tuner: str = "fixed",
              clip: float = 1.0, lr: float = 0.5, workers: int = 1, hidden: tuple[int, ...] = (64,),
              holdout_epsilon: float = 0.1, seed: int = 0, **search):
    """A planned WorkerJob (noise calibrated to `epsilon` over `epochs`, its grant reserved) with
    secure randomness, as production runs train; `search` goes to make_job (a private search)."""
    from plans import make_job

    url = f"sqlite:///{ledger_dir / (run_id + '.db')}"
    job = make_job(url, arrays, run_id=run_id, epochs=epochs, batch=BATCH, tuner=tuner, randomness="secure",
                   run_epsilon=epsilon, seed=seed, workers=workers, lifetime=100.0, dataset="adult",
                   learning_rate=lr, max_grad_norm=clip, holdout_epsilon=holdout_epsilon, **search)
    kind = "mlp" if hidden else "logistic"
    return dataclasses.replace(job, model_kind=kind, hidden=tuple(hidden), storage_path=str(ledger_dir / "ray"))
