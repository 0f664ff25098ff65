"""A real privacy plan and worker job for a small synthetic dataset, without the pipeline.

The planner, the ledger and the grant are the product's own; only the data is synthetic.
"""

from __future__ import annotations

import numpy as np

from ppmlops.privacy.ledger import Ledger
from ppmlops.privacy.planning import EpochShape, RunRequest, plan_run, plan_search
from ppmlops.privacy.search import TrialCount
from ppmlops.privacy.session import reserve
from ppmlops.run.grant import charge_records, grant_of
from ppmlops.run.records import PrivacyPlan, SearchPlan
from ppmlops.training.worker_job import WorkerJob
from ppmlops.training.loop import Arrays
from ppmlops.tuning.registry import wants_holdout_accuracy

DELTA = 1e-5


def synthetic(n: int = 600, d: int = 6, seed: int = 0, holdout: int = 200) -> Arrays:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=d)
    X = rng.normal(size=(n + holdout, d)).astype(np.float32)
    y = (X @ w + 0.3 * rng.normal(size=n + holdout) > 0).astype(np.int64)
    return Arrays(X[:n], y[:n], X[n:], y[n:])


def make_job(ledger_url: str, arrays: Arrays, *, run_id: str = "run-1", epochs: int = 2, batch: int = 64,
             tuner: str = "fixed", randomness: str = "reproducible", run_epsilon: float = 1.0, seed: int = 0,
             workers: int = 1, lifetime: float = 50.0, dataset: str = "synthetic", learning_rate: float = 0.5,
             max_grad_norm: float = 1.0, holdout_epsilon: float = 0.5, search: TrialCount | None = None,
             search_learning_rate: tuple[float, float] = (0.1, 4.0),
             search_max_grad_norm: tuple[float, float] = (0.05, 2.0),
             search_grid: list[tuple[float, float]] | None = None,
             search_centre: tuple[float, float] | None = None, search_tuner: str = "fixed") -> WorkerJob:
    """A planned job; with `search`, a private search's (trials drawn from `search`, settings
    from the two ranges), which trains at fixed settings within each trial."""
    ledger = Ledger(ledger_url)
    budget = ledger.register_dataset(dataset, epsilon_budget=lifetime, delta=DELTA)
    shape = EpochShape.of(len(arrays.y), 0, batch)
    tuner = "fixed" if search else tuner
    req = RunRequest(dataset, DELTA, epochs, shape, wants_holdout_accuracy(tuner), holdout_epsilon, {}, "test split")
    charged = ledger.charged_curves(dataset)
    planned = (plan_search(budget, charged, req, run_epsilon, search) if search
               else plan_run(budget, charged, req, run_epsilon))
    searched = None if search is None else SearchPlan(
        trials_mean=search.mean, trials_shape=search.eta, distribution=search.describe(),
        learning_rate=search_learning_rate, max_grad_norm=search_max_grad_norm, score_sigma=planned.score_sigma,
        grid=search_grid, centre=search_centre, tuner=search_tuner)
    plan = PrivacyPlan(
        dataset_id=dataset, run_id=run_id, delta=DELTA, randomness=randomness, accounting_order=budget.order,
        run_epsilon=run_epsilon, epsilon=planned.epsilon, epsilon_by_partition=planned.epsilon_by_partition,
        noise_multiplier=planned.noise_multiplier, sample_rate=shape.sample_rate, steps_per_epoch=shape.steps,
        epochs=epochs, divisor=shape.divisor, rows_estimate=float(len(arrays.y)), canaries=0,
        holdout_sigma=planned.holdout_sigma, evaluation_sigma=planned.evaluation_sigma,
        grant=charge_records(planned.charges), dataset_share_before=0.0, dataset_share_after=0.0, search=searched)
    reserve(ledger, grant_of(plan))
    return WorkerJob(plan=plan, ledger_url=ledger_url, model_kind="logistic", hidden=(),
                     learning_rate=learning_rate, momentum=0.0, max_grad_norm=max_grad_norm, tuner=tuner, seed=seed,
                     workers=workers)


def demo_table_run(tmp_path, monkeypatch, run_id: str, rows: int, seed: int = 3, **changes):
    """A RunContext for the demo spec on a generated table of `rows` rows, read whole (no window,
    no blocks, no schedule), in a home of its own under tmp_path; `changes` replace top-level
    sections of the spec after those edits (e.g. training={...}, model={...})."""
    import copy
    from pathlib import Path

    import yaml

    from ppmlops.spec import parse_spec
    from ppmlops.run.context import RunContext, RunParams

    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path / "home"))
    doc = copy.deepcopy(yaml.safe_load((Path(__file__).resolve().parents[1] / "dags" / "pipelines" / "demo.yaml")
                                       .read_text()))
    doc["dataset"]["source"] = {"path": str(tmp_path / "customers.csv"), "generate": {"rows": rows, "seed": seed}}
    doc["dataset"]["window"] = {"whole_table": True}
    doc["privacy"].pop("blocks", None)
    doc["schedule"] = None
    for section, value in changes.items():
        doc[section] = {**doc.get(section, {}), **value} if isinstance(value, dict) else value
    spec = parse_spec(doc)
    return RunContext(spec=spec, run_id=run_id, params=RunParams.defaults(spec))
