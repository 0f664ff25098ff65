"""label.task end to end through Airflow's dag.test() (issue 29 items 3 and 7): the shipped
dags/pipelines/demo_digits.yaml (multiclass: scikit-learn's digits, a small CNN from
ppmlops.examples.models:cnn) and demo_hours_regression.yaml (regression: hours per week on UCI
Adult) ingest, train, evaluate with their task's releases, gate and register. Each evaluation is
one charge on the held-out partition whose RDP curve dp_accounting reproduces. Like every e2e
module, it runs with the policy's utility floors lowered (tests/policy_floors.py): the gate's
deny and allow per task are tested where the outcome is fixed (tests/unit/test_gate_tasks.py).
"""

from __future__ import annotations

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant

from ppmlops import pipeline, settings
from ppmlops.examples.digits import default_path, write_digits
from ppmlops.privacy.accountant import ORDERS, epsilon_from_rdp, segment_rdp
from ppmlops.privacy.ledger import Ledger
from ppmlops.run.records import EvaluationRecord, GateRecord, PlanRecord, StagedData

from dag_run import run_dag

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def digits_run(airflow_db):
    write_digits(default_path())
    return run_dag("demo_digits.yaml", {"epochs": 6})


@pytest.fixture(scope="module")
def hours_run(airflow_db):
    return run_dag("demo_hours_regression.yaml", {"epochs": 2})


def _evaluation_charge(ctx):
    plan = ctx.store.read(PlanRecord).privacy
    entries = [e for e in Ledger(settings.load().db_url).entries(plan.dataset_id, plan.run_id)
               if e.key == "holdout/evaluation"]
    assert len(entries) == 1, entries  # charged exactly once
    entry = entries[0]
    assert entry.status == "completed" and entry.segment.noise_multiplier == pytest.approx(plan.evaluation_sigma)
    acc = rdp_privacy_accountant.RdpAccountant(orders=ORDERS)
    acc.compose(dp_accounting.GaussianDpEvent(plan.evaluation_sigma))
    assert epsilon_from_rdp(segment_rdp(entry.segment), plan.delta)[0] == pytest.approx(acc.get_epsilon(plan.delta),
                                                                                         rel=1e-9)


def test_digits_trains_a_cnn_and_releases_a_noisy_confusion_matrix(digits_run):
    run, spec, ctx = digits_run
    summary = pipeline.summary(ctx)
    assert str(run.state) == "success", pipeline.format_summary(summary)
    r = ctx.store.read(EvaluationRecord)
    assert r.task == "multiclass" and r.classes == [str(d) for d in range(10)]
    assert np.array(r.confusion).shape == (10, 10) and r.auc is None
    assert 0 <= r.macro_f1 <= 1 and r.accuracy > r.majority_baseline  # a CNN on digits beats 1 class in 10
    _evaluation_charge(ctx)
    gate = ctx.store.read(GateRecord)
    assert gate.allowed, gate.reasons


def test_every_digits_row_has_a_declared_class(digits_run):
    _, _, ctx = digits_run
    staged = ctx.store.read(StagedData).result
    assert staged.rows_train + staged.rows_test == 1797 and not staged.quarantine_reasons


def test_hours_regression_trains_and_releases_noisy_errors_against_the_mean(hours_run):
    run, spec, ctx = hours_run
    summary = pipeline.summary(ctx)
    assert str(run.state) == "success", pipeline.format_summary(summary)
    r = ctx.store.read(EvaluationRecord)
    assert r.task == "regression" and r.accuracy is None and r.label_range == (1.0, 99.0)
    assert 0 < r.mae < 98 and 0 < r.rmse <= 98 and 1 <= r.baseline_mean <= 99
    assert abs(r.baseline_mean - 40.4) < 3  # the test file's mean hours, within the release's noise
    assert r.rmse < r.baseline_rmse  # the census columns say something about hours worked
    _evaluation_charge(ctx)
    assert ctx.store.read(GateRecord).allowed


def _registered(spec, ctx):
    import mlflow.pyfunc
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    from ppmlops.registry.store import Registry

    registry = Registry(settings.load().registry_dir)
    with _use_tracking_uri(registry.uri):
        return mlflow.pyfunc.load_model(registry.model_uri(spec.deploy.model_name, pipeline.summary(ctx)["model_version"]))


def test_the_registered_digits_model_answers_a_declared_class_with_a_signature(digits_run):
    import pandas as pd
    from sklearn.datasets import load_digits

    _, spec, ctx = digits_run
    model = _registered(spec, ctx)
    assert [c.name for c in model.metadata.signature.inputs.inputs] == [f"px_{i}" for i in range(64)]
    images = load_digits()
    rows = pd.DataFrame(images.data[:50].astype(int), columns=[f"px_{i}" for i in range(64)])
    out = model.predict(rows)
    assert set(out["label"]) <= set(spec.dataset.label.classes)
    assert (out["label"].astype(int) == images.target[:50]).mean() > 0.3  # well above one in ten


def test_the_registered_hours_model_predicts_inside_the_declared_range(hours_run):
    import pandas as pd

    _, spec, ctx = hours_run
    model = _registered(spec, ctx)
    rows = pd.read_csv(f"{settings.load().data_dir}/adult/test.csv", nrows=200, skipinitialspace=True)
    out = model.predict(rows)["prediction"]
    assert out.between(1, 99).all() and out.std() > 0
    assert [c.name for c in model.metadata.signature.outputs.inputs] == ["prediction"]
