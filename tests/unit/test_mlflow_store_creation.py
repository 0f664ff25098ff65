"""The embedded MLflow store is created once when several task processes open it at the same time
(a backfill's runs reach plan together, and plan opens each run's MLflow run)."""

from __future__ import annotations

import multiprocessing as mp
import time

from ppmlops.registry import backend


def _open(uri: str, start_at: float, out) -> None:
    time.sleep(max(0.0, start_at - time.time()))
    try:
        c = backend.client(uri)
        c.search_experiments(max_results=1)
        out.put("ok")
    except Exception as e:  # noqa: BLE001 - reported to the test
        out.put(f"{type(e).__name__}: {str(e)[:300]}")


def test_processes_opening_a_new_embedded_store_at_once_all_succeed(tmp_path):
    uri = backend.resolve_uri(tmp_path / "registry")
    ctx = mp.get_context("spawn")  # fresh interpreters, as Airflow's task processes are
    out = ctx.Queue()
    start_at = time.time() + 8.0  # after every interpreter has imported MLflow
    procs = [ctx.Process(target=_open, args=(uri, start_at, out)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert results == ["ok"] * 4, results
    assert (tmp_path / "registry" / "mlflow.db").exists()


def test_a_helper_started_early_makes_the_store_and_this_process_opens_it_meanwhile(tmp_path):
    """ppmlops.airflow.run_one forks the helper before a whole DAG run; the plan task may open the
    store while the helper is still at it: the lock makes one wait for the other."""
    uri = backend.resolve_uri(tmp_path / "registry")
    helper = backend.start_creating(uri)
    assert helper is not None
    backend._client.cache_clear()
    try:
        backend.client(uri).search_experiments(max_results=1)
    finally:
        backend._client.cache_clear()
    helper.join(timeout=240)
    assert helper.exitcode == 0
    assert (tmp_path / "registry" / "mlflow.db").exists()
    assert backend.start_creating(uri) is None  # a store already there: nothing to make
    assert backend.start_creating("http://localhost:5000") is None  # a server makes its own
