"""What `python dags/ppmlops_retrain.py NAME` (./dev demo) sets up before the whole DAG runs in its
process (ppmlops.airflow.run_one.prepare_process, issue 28 item 6)."""

from __future__ import annotations

import gc
import sys

from ppmlops.airflow import gc_tuning, run_one


def test_it_starts_the_mlflow_store_early_tunes_the_collector_and_loads_torch(tmp_path, monkeypatch):
    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    threshold = gc.get_threshold()
    try:
        helper = run_one.prepare_process()
        assert gc.get_threshold() == gc_tuning.THRESHOLDS == (50_000, 100, 100) and gc.get_freeze_count() > 0
        assert helper is not None and helper.wait(timeout=240) == 0
        assert (tmp_path / "mlflow" / "mlflow.db").exists()  # made by the helper, before any task
        assert "torch" in sys.modules
        assert run_one.prepare_process() is None  # the store is there now: no helper
    finally:  # this test process's collector as it was
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_the_dag_file_tunes_the_collector_before_any_heavy_import():
    """The DAG file run as a script tunes the collector before its first import of the DAG
    factory, through gc_tuning, whose import loads no library (Airflow, pandas, torch), or the
    million objects those imports allocate would meet the default thresholds."""
    import ast
    import subprocess
    from pathlib import Path

    dag_file = Path(__file__).resolve().parents[2] / "dags" / "ppmlops_retrain.py"
    tree = ast.parse(dag_file.read_text())
    first_main, factory = next((i, n) for i, n in enumerate(tree.body) if isinstance(n, ast.If)), next(
        i for i, n in enumerate(tree.body) if isinstance(n, ast.ImportFrom) and n.module == "ppmlops.airflow")
    assert first_main[0] < factory and "gc_tuning.tune()" in ast.unparse(first_main[1])
    probe = ("import sys; import ppmlops.airflow.gc_tuning as t; t.tune(); import gc; "
             "print(sorted(m for m in ('airflow', 'pandas', 'torch', 'numpy') if m in sys.modules), gc.get_threshold())")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[] (50000, 100, 100)"
