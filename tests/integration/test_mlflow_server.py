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
