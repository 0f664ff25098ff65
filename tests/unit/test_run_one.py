"""What `python dags/ppmlops_retrain.py NAME` (./dev demo) sets up before the whole DAG runs in its
process (ppmlops.airflow.run_one.prepare_process, issue 28 item 6)."""

from __future__ import annotations

import gc
import sys

from ppmlops.airflow import run_one


def test_it_starts_the_mlflow_store_early_tunes_the_collector_and_loads_torch(tmp_path, monkeypatch):
    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    threshold = gc.get_threshold()
    try:
        helper = run_one.prepare_process()
        assert gc.get_threshold() == (50_000, 100, 100) and gc.get_freeze_count() > 0
        assert helper is not None and helper.wait(timeout=240) == 0
        assert (tmp_path / "mlflow" / "mlflow.db").exists()  # made by the helper, before any task
        assert "torch" in sys.modules
        assert run_one.prepare_process() is None  # the store is there now: no helper
    finally:  # this test process's collector as it was
        gc.unfreeze()
        gc.set_threshold(*threshold)
