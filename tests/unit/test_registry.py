"""ppmlops.registry.Registry on MLflow's embedded store: versions, cards, aliases and their history,
checked through MLflow's own client as well as ours, and the deployed pyfunc model's predictions."""

from __future__ import annotations

import hashlib
import multiprocessing

import pytest

from ppmlops.registry import Registry, RegistryError

CARD = {"dataset_id": "demo_customers", "data_fingerprint": "ab12", "epsilon": 0.97, "delta": 1e-5,
        "accountant": "rdp", "metrics": {"accuracy": 0.81}, "intended_use": "demo churn scoring"}


@pytest.fixture()
def model_file(tmp_path):
    path = tmp_path / "trained.pt"
    path.write_bytes(b"weights-v1" * 1000)
    return path


@pytest.fixture()
def reg(registry_root):
    return Registry(registry_root)


def test_register_makes_an_mlflow_version_with_the_card_as_artifact_and_tags(reg, registry_root, model_file):
    assert reg.register("churn", model_file, CARD) == 1
    assert reg.model_path("churn", 1).read_bytes() == model_file.read_bytes()
    card = reg.card("churn", 1)
    assert card["version"] == 1 and card["model_name"] == "churn"
    assert card["model_sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert card["created_at"].endswith("+00:00")
    assert {k: card[k] for k in CARD} == CARD
    # What MLflow itself holds: a model version under the embedded store, the card as tags.
    from mlflow import MlflowClient

    uri = f"sqlite:///{registry_root / 'mlflow.db'}"
    mv = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version("churn", "1")
    assert mv.tags["card.epsilon"] == "0.97" and mv.tags["card.dataset_id"] == "demo_customers"
    assert mv.tags["card.metrics"] == '{"accuracy": 0.81}' and mv.description == "demo churn scoring"
    assert mv.source.startswith(str(registry_root / "churn"))  # the artifact folder under the root
    assert (registry_root / "churn").is_dir() and not (registry_root.parent / "mlruns").exists()


def test_versions_increase(reg, model_file):
    assert reg.versions("churn") == []
    for expected in (1, 2, 3):
        model_file.write_bytes(f"weights-{expected}".encode())
        assert reg.register("churn", model_file, CARD) == expected
    assert reg.versions("churn") == [1, 2, 3]
    assert reg.model_path("churn", 2).read_bytes() == b"weights-2"
    assert reg.versions("other") == [] and reg.model_names() == ["churn"]


def test_alias_moves_and_keeps_history(reg, registry_root, model_file):
    reg.register("churn", model_file, CARD)
    reg.register("churn", model_file, CARD)
    assert reg.alias("churn", "production") is None
    reg.set_alias("churn", "production", 1)
    assert reg.alias("churn", "production") == 1
    reg.set_alias("churn", "production", 2)
    reg.set_alias("churn", "staging", 1)
    assert reg.alias("churn", "production") == 2
    assert reg.alias("churn", "staging") == 1
    history = reg.alias_history("churn")
    assert [(h["alias"], h["version"], h["previous"]) for h in history] == [
        ("production", 1, None), ("production", 2, 1), ("staging", 1, None)]
    from mlflow import MlflowClient

    uri = f"sqlite:///{registry_root / 'mlflow.db'}"
    assert str(MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias("churn", "production").version) == "2"


def test_alias_to_missing_version_is_refused(reg, model_file):
    reg.register("churn", model_file, CARD)
    with pytest.raises(RegistryError, match="churn has no version 7 .*versions: 1"):
        reg.set_alias("churn", "production", 7)
    assert reg.alias("churn", "production") is None


def test_missing_things_are_named(reg, tmp_path):
    with pytest.raises(RegistryError, match="model file .*nope.pt not found"):
        reg.register("churn", tmp_path / "nope.pt", CARD)
    with pytest.raises(RegistryError, match="churn has no version 1"):
        reg.card("churn", 1)
    with pytest.raises(RegistryError, match="churn has no version 1"):
        reg.model_path("churn", 1)


@pytest.mark.parametrize("name", ["../escape", ".hidden", "a/b", "", "x" * 201, "it's"])
def test_unsafe_names_are_refused(reg, model_file, name):
    with pytest.raises(RegistryError, match="must be letters"):
        reg.register(name, model_file, CARD)


def test_card_naming_another_model_is_refused(reg, model_file):
    with pytest.raises(RegistryError, match="names model 'other'"):
        reg.register("churn", model_file, {**CARD, "model_name": "other"})


def test_unserialisable_card_leaves_no_version(reg, model_file):
    with pytest.raises(RegistryError, match="not JSON-serialisable"):
        reg.register("churn", model_file, {**CARD, "epsilon": float("nan")})
    assert reg.versions("churn") == []
    assert reg.register("churn", model_file, CARD) == 1


def test_an_unreachable_server_is_a_named_error_without_its_password(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's default backoff takes minutes
    reg = Registry(tmp_path, tracking_uri="http://user:s3cret@127.0.0.1:9/")
    with pytest.raises(RegistryError) as err:
        reg.versions("churn")
    assert "127.0.0.1:9" in str(err.value) and "s3cret" not in str(err.value)


def _register_many(root: str, model_file: str, count: int) -> None:
    reg = Registry(root)
    for _ in range(count):
        reg.register("churn", model_file, CARD)


def test_concurrent_registrations_get_distinct_versions(registry_root, model_file):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_register_many, args=(str(registry_root), str(model_file), 3)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0
    reg = Registry(registry_root)
    assert reg.versions("churn") == list(range(1, 10))
    assert sorted(reg.card("churn", v)["version"] for v in reg.versions("churn")) == list(range(1, 10))


def test_the_registered_model_loads_as_pyfunc_and_scores_raw_rows(reg, tmp_path):
    """The version carries its feature encoding: raw rows in, the same probabilities as the
    training code's own encode + predict_proba."""
    import mlflow
    import pandas as pd
    import torch
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    from ppmlops.data.features import encode_features, columns_of
    from ppmlops.spec import CategoricalFeature, NumericFeature
    from ppmlops.training.models import build_model, predict_proba

    features = [NumericFeature(name="age", type="numeric", range=[18, 90]),
                CategoricalFeature(name="plan", type="categorical", categories=["basic", "pro"])]
    torch.manual_seed(0)
    net = build_model("mlp", 3, [4])
    weights = tmp_path / "model.pt"
    torch.save({"state_dict": net.state_dict(), "kind": "mlp", "hidden": [4], "features": columns_of(features)}, weights)
    encoding = {"features": [f.model_dump(mode="json") for f in features],
                "label": {"column": "churned", "positive": "yes", "values": ["no", "yes"]}}
    version = reg.register("scorer", weights, CARD, encoding=encoding)
    rows = pd.DataFrame({"age": [20, 55, 120], "plan": ["pro", "basic", "pro"]})
    with _use_tracking_uri(reg.uri):
        model = mlflow.pyfunc.load_model(reg.model_uri("scorer", version))
    out = model.predict(rows)
    expected = predict_proba(net, encode_features(rows, features)).numpy()
    assert out["probability"].tolist() == pytest.approx(expected.tolist(), abs=1e-6)
    assert out["positive"].tolist() == (expected >= 0.5).tolist()
    with pytest.raises(Exception, match="not a declared category"):
        model.predict(pd.DataFrame({"age": [30], "plan": ["gold"]}))


def test_parsing_the_dag_file_does_not_import_mlflow():
    """The DAG processor parses the file often: mlflow (about 2 s) is imported by the tasks that
    use the registry, never at parse time (nor torch)."""
    import subprocess
    import sys
    from pathlib import Path

    dag_file = Path(__file__).resolve().parents[2] / "dags" / "ppmlops_retrain.py"
    code = ("import runpy, sys; runpy.run_path(sys.argv[1], run_name='dag_parse'); "
            "print(sorted(m for m in ('mlflow', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(dag_file)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_reading_an_embedded_registry_that_does_not_exist_creates_nothing(tmp_path):
    """The dashboard lists models through the registry: on a new home it shows none and leaves
    no MLflow store behind (creating one is deploy's job)."""
    from ppmlops.registry import Registry

    assert Registry(tmp_path / "mlflow").model_names() == []
    assert not (tmp_path / "mlflow" / "mlflow.db").exists()


def test_registry_show_of_an_unknown_model_is_an_error_naming_the_models(tmp_path, registry_root, model_file,
                                                                         monkeypatch, capsys):
    """Issue 26, 9: `ppmlops registry show demo_chrun` (a typo) printed empty JSON and exited 0."""
    import json

    from ppmlops import cli

    monkeypatch.setenv("PPMLOPS_HOME", str(registry_root.parent))  # registry_dir is $PPMLOPS_HOME/mlflow
    Registry(registry_root).register("demo_churn", model_file, {**CARD, "model_name": "demo_churn"})
    assert cli.main(["registry", "show", "demo_chrun"]) == 2
    _, err = capsys.readouterr()
    assert "no model 'demo_chrun' in the registry at" in err
    assert "registered models: demo_churn; did you mean 'demo_churn'?" in err
    assert cli.main(["registry", "show", "demo_churn", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["versions"] == [1]


def test_registry_show_on_a_new_home_says_there_are_no_models_and_creates_nothing(tmp_path, monkeypatch, capsys):
    from ppmlops import cli

    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path))
    assert cli.main(["registry", "show", "demo_churn"]) == 2
    assert "registered models: none" in capsys.readouterr().err
    assert not (tmp_path / "mlflow" / "mlflow.db").exists()
