"""The Airflow provider: the DAG factory, operators, triggers, hooks, the dashboard's plugin, and
what ties ppmlops to a running Airflow at task start (connections, variables).

`from ppmlops.airflow import pipeline_dags` is all a project's DAG file needs (and
`report_spec_errors` its spec-errors file). It is imported on
first use (PEP 562), so `import ppmlops.airflow.connections` does not build DAGs' imports.
"""

from __future__ import annotations

from typing import Any

__all__ = ["pipeline_dags", "report_spec_errors"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from ppmlops.airflow import dag_factory

        return getattr(dag_factory, name)
    raise AttributeError(f"module 'ppmlops.airflow' has no attribute {name!r}")
