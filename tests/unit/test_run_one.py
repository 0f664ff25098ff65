"""What `python dags/ppmlops_retrain.py NAME` (./dev demo) sets up before the whole DAG runs in its
process (ppmlops.airflow.run_one.prepare_process, issue 28 item 6)."""

from __future__ import annotations

import gc
import sys

from ppmlops.airflow import gc_tuning, run_one
from ppmlops.stages import validate_helper


def test_it_forks_its_helpers_tunes_the_collector_and_loads_torch(tmp_path, monkeypatch):
    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    threshold = gc.get_threshold()
    try:
        helper = run_one.prepare_process()
        assert gc.get_threshold() == gc_tuning.THRESHOLDS == (50_000, 100, 100) and gc.get_freeze_count() > 0
        validation = validate_helper.take()  # forked for the validate task, the later tasks' imports meanwhile
        assert validation is not None and validation.proc.is_alive() and validation.meanwhile is run_one.import_ahead
        validation.close(wait_s=0)
        assert helper is not None
        helper.join(timeout=240)
        assert helper.exitcode == 0
        assert (tmp_path / "mlflow" / "mlflow.db").exists()  # made by the helper, before any task
        assert "torch" in sys.modules
        assert run_one.prepare_process() is None  # the store is there now: no helper
    finally:  # this test process's collector as it was
        validate_helper.stop()
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


def test_import_ahead_loads_what_the_later_tasks_import():
    """run_one's work while the validation helper validates: a module renamed under it would make
    it fail unseen (its failure is only logged), so the import is checked here, in a fresh process."""
    import subprocess

    probe = ("import sys; from ppmlops.airflow.run_one import import_ahead; import_ahead(); "
             "print(' '.join(m for m in ('mlflow', 'torch._dynamo', 'opacus', 'bayes_opt', 'sklearn.gaussian_process',"
             " 'ppmlops.training.private_model', 'ppmlops.training.in_process') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["mlflow", "torch._dynamo", "opacus", "bayes_opt", "sklearn.gaussian_process",
                   "ppmlops.training.private_model", "ppmlops.training.in_process"]
