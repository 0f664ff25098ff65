"""An MLflow tracking server that is down or silent fails a task in seconds, naming the server
without its credentials, and is retried by Airflow (issue 26, item 7). MLflow's own defaults kept a
task waiting 4-5 minutes per try."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from ppmlops.airflow.tasks import retried
from ppmlops.registry import backend
from ppmlops.registry.backend import TrackingUnavailable
from ppmlops.registry.store import Registry

MLFLOW_VARS = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
               "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "MLFLOW_HTTP_REQUEST_TIMEOUT")


@pytest.fixture
def mlflow_defaults(monkeypatch):
    """MLflow's variables unset, as on a fresh worker; whatever ppmlops sets is undone after."""
    saved = {k: os.environ.get(k) for k in MLFLOW_VARS}
    for k in MLFLOW_VARS:
        monkeypatch.delenv(k, raising=False)
    backend._client.cache_clear()
    yield
    backend._client.cache_clear()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_server_that_is_down_fails_in_seconds_naming_it_without_credentials(tmp_path, mlflow_defaults):
    uri = f"http://admin:s3cret@127.0.0.1:{_free_port()}"
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    start = time.monotonic()
    with pytest.raises(TrackingUnavailable) as err:
        Registry(tmp_path, tracking_uri=uri).register("m", model, {})
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert "s3cret" not in message and "admin" not in message
    assert f"http://***@127.0.0.1:{uri.rsplit(':', 1)[1]} cannot be reached (connection refused" in message
    assert "no alias moved" in message
    assert retried(err.value)


def test_a_server_that_accepts_and_never_answers_is_bounded_by_the_timeout(tmp_path, monkeypatch, mlflow_defaults):
    monkeypatch.setenv(backend.TIMEOUT_ENV, "1")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept_and_hold():  # takes connections and never answers: a hung server
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept_and_hold, daemon=True)
    thread.start()
    try:
        uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(TrackingUnavailable, match=r"cannot be reached \(no answer within 1 s"):
            Registry(tmp_path, tracking_uri=uri).versions("m")
        # 3 tries of 1 s and backoff 1 s, 2 s with jitter: MLflow's defaults would wait minutes.
        assert time.monotonic() - start < 20
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()


def test_the_timeout_must_be_a_positive_number(monkeypatch):
    monkeypatch.setenv(backend.TIMEOUT_ENV, "soon")
    with pytest.raises(backend.RegistryError, match="PPMLOPS_MLFLOW_TIMEOUT_S must be a number of seconds"):
        backend.timeout_s()
