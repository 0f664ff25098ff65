"""The production path: the registry and run tracking against a real `mlflow server` on loopback.

The server is MLflow's own (the `mlflow` package, ppmlops's `server` extra), with a SQLite
backend and proxied artifacts (`--artifacts-destination`), as the Docker stack runs it; ppmlops
reaches it only through MLFLOW_TRACKING_URI, so nothing of it is on the client's disk.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ppmlops.registry import Registry

MLFLOW = Path(sys.executable).with_name("mlflow")
# The server's start and its first requests take 30-90 s on two busy cores.
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    if not MLFLOW.exists():
        pytest.fail(f"{MLFLOW} not found: install ppmlops with its server extra (./dev setup does)")
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = open(folder / "server.log", "w")
    proc = subprocess.Popen(
        [str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination", str(folder / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=folder)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGTERM)
            pytest.fail(f"mlflow server did not come up on {url}: {(folder / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield url, folder
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(30)
    log.close()


def test_registry_over_the_rest_api(mlflow_server, tmp_path, monkeypatch):
    url, folder = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"weights over http")
    reg = Registry(tmp_path / "unused")
    assert reg.location == url
    v1 = reg.register("served", weights, {"epsilon": 0.5, "metrics": {"accuracy": 0.7}})
    v2 = reg.register("served", weights, {"epsilon": 0.6})
    reg.set_alias("served", "production", v1)
    reg.set_alias("served", "production", v2)
    assert (v1, v2) == (1, 2) and reg.versions("served") == [1, 2]
    assert reg.alias("served", "production") == 2
    assert [h["previous"] for h in reg.alias_history("served")] == [None, 1]
    assert reg.card("served", 1)["metrics"] == {"accuracy": 0.7} and "served" in reg.model_names()
    assert reg.model_path("served", 2).read_bytes() == b"weights over http"  # downloaded through the server
    # The artifacts went to the server's destination, the metadata to its database: none is local.
    assert any((folder / "artifacts").rglob("card.json"))
    assert not (tmp_path / "unused" / "mlflow.db").exists()
    from mlflow import MlflowClient

    mv = MlflowClient(tracking_uri=url, registry_uri=url).get_model_version_by_alias("served", "production")
    assert str(mv.version) == "2" and mv.tags["card.epsilon"] == "0.6"


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def deployed_run(mlflow_server, tmp_path_factory):
    """The small e2e spec from ingest to deploy, tracked on the server (the utility floors lowered:
    the subject here is what MLflow holds, not whether the table learns)."""
    import copy

    import yaml

    from policy_floors import lowered_policy
    from ppmlops.pipeline import STAGE_RUNNERS, STAGES
    from ppmlops.spec import parse_spec
    from ppmlops.run.context import RunContext, RunParams

    url, _ = mlflow_server
    tmp = tmp_path_factory.mktemp("tracked-run")
    (tmp / "policies.rego").write_text(lowered_policy((REPO / "policies.rego").read_text()))
    env = {"MLFLOW_TRACKING_URI": url, "PPMLOPS_HOME": str(tmp / "home"), "PPMLOPS_POLICY": str(tmp / "policies.rego")}
    mp = pytest.MonkeyPatch()
    for k, v in env.items():
        mp.setenv(k, v)
    doc = copy.deepcopy(yaml.safe_load((REPO / "tests" / "e2e" / "e2e_small.yaml").read_text()))
    doc["dataset"]["source"] = {"path": str(tmp / "customers.csv"), "generate": {"rows": 1500, "seed": 11}}
    spec = parse_spec(doc, "tracked.yaml")
    ctx = RunContext(spec=spec, run_id="manual__2026-12-03T10:00:00+00:00", params=RunParams.defaults(spec))
    for name in STAGES:
        STAGE_RUNNERS[name](ctx)
    yield ctx, url
    mp.undo()


def test_the_run_on_the_server_is_a_training_run_with_dataset_live_epochs_and_signature(deployed_run):
    import json

    import mlflow.models
    from mlflow import MlflowClient

    from ppmlops.run.records import DeployRecord, Staged, TrackedRun, TrainRecord

    ctx, url = deployed_run
    client = MlflowClient(tracking_uri=url, registry_uri=url)
    tracked, deploy = ctx.store.read(TrackedRun), ctx.store.read(DeployRecord)
    run = client.get_run(tracked.mlflow_run_id)
    # The dataset input: described, never its rows.
    (used,) = run.inputs.dataset_inputs
    staged = ctx.store.read(Staged)
    assert used.dataset.name == ctx.spec.dataset.id and used.dataset.digest == staged.data_fingerprint.rsplit(":", 1)[1][:36]
    assert json.loads(used.dataset.source)["window"] == staged.window.text() and used.dataset.profile is None
    # Live: every epoch's values reached the server while training ran, before train.json was written.
    train = ctx.store.read(TrainRecord)
    history = client.get_metric_history(run.info.run_id, "epoch/epsilon_used")
    assert sorted(m.step for m in history) == [h.epoch for h in train.history] and len(history) >= 2
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == [h.epsilon_used for h in train.history]
    written_ms = ctx.store.path_of(TrainRecord).stat().st_mtime * 1000
    assert all(m.timestamp <= written_ms for m in history), "epochs were logged after training, not live"
    assert {f"epoch/{k}" for k in ("noise_multiplier", "max_grad_norm", "learning_rate")} <= set(run.data.metrics)
    # Filed as a training run: the experiment's kind, the version's model as the run's output.
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development" and "mlflow.runType" not in run.data.tags
    mv = client.get_model_version(deploy.model_name, str(deploy.version))
    (output,) = run.outputs.model_outputs  # the server's model version does not echo its model id
    assert client.get_logged_model(output.model_id).source_run_id == run.info.run_id and mv.run_id == run.info.run_id
    # The version has a signature and an input example, from the spec's declarations.
    info = mlflow.models.get_model_info(f"models:/{deploy.model_name}/{deploy.version}")
    assert [c["name"] for c in info.signature.inputs.to_dict()] == [f.name for f in ctx.spec.dataset.features]
    assert info.saved_input_example_info is not None
    assert run.data.tags["ppmlops.card_sha256"] == deploy.card_sha256


def test_a_card_edited_on_the_server_fails_audit_verify(deployed_run, capsys):
    from mlflow import MlflowClient

    from ppmlops import cli
    from ppmlops.run.records import DeployRecord

    ctx, url = deployed_run
    deploy = ctx.store.read(DeployRecord)
    client = MlflowClient(tracking_uri=url, registry_uri=url)
    assert cli.main(["audit", "verify"]) == 0 and "model cards intact: 1 version(s)" in capsys.readouterr().out
    before = client.get_model_version(deploy.model_name, str(deploy.version)).tags["card.epsilon"]
    client.set_model_version_tag(deploy.model_name, str(deploy.version), "card.epsilon", "0.01")
    assert cli.main(["audit", "verify"]) == 1
    out = capsys.readouterr().out
    assert f"card of {deploy.model_name} v{deploy.version} changed in MLflow since deploy" in out and "'0.01'" in out
    client.set_model_version_tag(deploy.model_name, str(deploy.version), "card.epsilon", before)
    assert cli.main(["audit", "verify"]) == 0
