"""A model of the spec's own (issue 29, item 1) end to end through Airflow's dag.test(): the shipped
dags/pipelines/demo_own_model.yaml names ppmlops.examples.models:build (a residual MLP with
LayerNorm), which is checked at assess before anything is charged, trained with ghost clipping
and the canary audit on its first layer, evaluated, gated and registered; the registered MLflow
model builds itself with the factory again and predicts raw rows. Like every e2e module, it runs
under the policy with the utility floors lowered (tests/policy_floors.py, applied by
tests/conftest.py): a small DP model ties the majority class in about one run of five.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from ppmlops import pipeline, settings
from ppmlops.data.features import feature_names
from ppmlops.run.records import EvaluationRecord, ModelCheck, TrackedRun, TrainRecord

from dag_run import run_dag

pytestmark = [pytest.mark.e2e]
CONF = {"epochs": 2}
FACTORY = "ppmlops.examples.models:build"


@pytest.fixture(scope="module")
def own_run(airflow_db):
    return run_dag("demo_own_model.yaml", CONF)


def _card(spec, ctx) -> dict:
    from ppmlops.registry.store import Registry

    return Registry(settings.load().registry_dir).card(spec.deploy.model_name, pipeline.summary(ctx)["model_version"])


def test_the_factory_model_trains_and_its_card_records_the_factory_and_the_code(own_run):
    import ppmlops.examples.models as example

    run, spec, ctx = own_run
    summary = pipeline.summary(ctx)
    assert str(run.state) == "success", pipeline.format_summary(summary)
    model = _card(spec, ctx)["model"]
    assert model["factory"] == FACTORY and model["args"] == {"width": 32, "blocks": 2}
    assert model["code"]["module"] == "ppmlops.examples.models"
    assert model["code"]["sha256"] == hashlib.sha256(Path(example.__file__).read_bytes()).hexdigest()
    assert model["code"]["distribution"] == "ppmlops" and model["code"]["version"]
    assert model["clipping"] == "ghost" and "layer 'input'" in model["canaries"]
    n = len(feature_names(spec))
    # n features -> 32 units, two residual blocks (LayerNorm + Linear), LayerNorm, 2 logits
    assert model["n_features"] == n and model["parameters"] == (n + 1) * 32 + 2 * (2 * 32 + 33 * 32) + 2 * 32 + 33 * 2


def test_the_canaries_sat_on_the_factory_models_first_linear_and_were_cut_off(own_run):
    import torch

    _, spec, ctx = own_run
    assert ctx.store.read(EvaluationRecord).audit.canaries == 32 * 512  # 16384 asked, 512 columns of 32 units
    saved = torch.load(ctx.store.read(TrainRecord).model_path, weights_only=True)
    assert saved["factory"]["target"] == FACTORY and saved["code"]["sha256"] == ctx.store.read(ModelCheck).code.sha256
    assert tuple(saved["state_dict"]["input.weight"].shape) == (32, len(feature_names(spec)))  # canary columns cut


def test_the_registered_model_builds_itself_with_the_factory_and_predicts_raw_rows(own_run):
    import mlflow.pyfunc
    import pandas as pd
    import torch
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    from ppmlops.data.features import encode_features
    from ppmlops.registry.store import Registry
    from ppmlops.training.factory import rebuild
    from ppmlops.training.models import predict_proba

    _, spec, ctx = own_run
    registry = Registry(settings.load().registry_dir)
    version = pipeline.summary(ctx)["model_version"]
    with _use_tracking_uri(registry.uri):
        loaded = mlflow.pyfunc.load_model(registry.model_uri(spec.deploy.model_name, version))
    rows = pd.DataFrame({"age": [25, 61], "sex": ["female", "male"], "region": ["north", "west"],
                         "education": ["master", "primary"], "plan": ["basic", "premium"], "tenure_months": [3, 200],
                         "monthly_spend": [20.0, 900.0], "sessions_per_week": [1, 30], "support_tickets": [9, 0]})
    out = loaded.predict(rows)
    saved = torch.load(ctx.store.read(TrainRecord).model_path, weights_only=True)
    expected = predict_proba(rebuild(saved, len(feature_names(spec))), encode_features(rows, list(spec.dataset.features))).numpy()
    assert out["probability"].tolist() == pytest.approx(expected.tolist(), abs=1e-6)
    assert out["positive"].tolist() == (expected >= 0.5).tolist()
    model_dir = registry.model_path(spec.deploy.model_name, version).parents[1]
    assert any(line.startswith("ppmlops==") for line in (model_dir / "requirements.txt").read_text().splitlines())


def test_the_mlflow_run_records_the_factory_and_its_code_version(own_run):
    from ppmlops.registry import backend

    _, _, ctx = own_run
    client = backend.client(backend.resolve_uri(settings.load().registry_dir))
    run = client.get_run(ctx.store.read(TrackedRun).mlflow_run_id)
    check = ctx.store.read(ModelCheck)
    assert run.data.params["spec.model.factory"] == FACTORY
    assert run.data.params["model.code.sha256"] == check.code.sha256 and run.data.tags["ppmlops.model_factory"] == FACTORY
