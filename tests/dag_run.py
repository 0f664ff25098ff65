"""One pipeline's DAG run through Airflow's dag.test(), as the e2e tests start it."""

from __future__ import annotations

import os
from pathlib import Path

from ppmlops.spec import load_spec
from ppmlops.run.context import RunContext, RunParams

REPO = Path(__file__).resolve().parents[1]


def run_dag(spec_file: str, conf: dict):
    """(the DagRun, its spec, its RunContext) for the spec `spec_file` in PPMLOPS_PIPELINES, run
    from the DAG folder's own parse (which must have no import errors)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    spec = load_spec(Path(os.environ["PPMLOPS_PIPELINES"]) / spec_file)
    run = bag.dags[spec.dag_id].test(run_conf=conf)
    return run, spec, RunContext(spec=spec, run_id=run.run_id, params=RunParams.from_mapping(spec, conf))
