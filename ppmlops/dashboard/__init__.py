"""Compliance dashboard: privacy budgets, policy decisions, deployed models and tuner runs.

A FastAPI app (`create_app`) with JSON endpoints and server-rendered HTML pages, read-only over
the privacy ledger, the audit log, the model registry and the run directories. Airflow mounts
it through `ppmlops.airflow.plugin` (loaded from `plugins/ppmlops_dashboard.py`); it runs the same anywhere FastAPI runs.
"""

from ppmlops.dashboard.app import create_app

__all__ = ["create_app"]
