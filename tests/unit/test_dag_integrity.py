"""Every DAG file imports cleanly and every spec becomes a DAG of the expected shape."""

from __future__ import annotations

from pathlib import Path

import pytest

from ppmlops.spec import load_specs

REPO = Path(__file__).resolve().parents[2]
EXPECTED_TASKS = {"ingest", "validate", "assess", "plan", "train", "evaluate", "gate", "deploy", "withhold",
                  "approve", "rejected"}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_one_dag_per_repo_spec(dagbag):
    specs = load_specs(REPO / "dags" / "pipelines")
    assert {s.name for _, s in specs} >= {"demo_churn", "adult_income"}
    for _, spec in specs:
        assert spec.dag_id in dagbag.dags, f"no DAG for {spec.name}"


@pytest.mark.parametrize("dag_id", ["ppmlops_demo_churn", "ppmlops_adult_income"])
def test_dag_shape(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    assert set(dag.task_dict) == EXPECTED_TASKS
    chain = ["ingest", "validate", "assess", "plan", "train", "evaluate", "gate"]
    for up, down in zip(chain, chain[1:]):
        assert dag.task_dict[up].downstream_task_ids == {down}
    assert dag.task_dict["gate"].downstream_task_ids == {"deploy", "withhold", "approve"}
    # needs-approval: a person's answer branches to deploy or to the failing "rejected" task
    approve = dag.task_dict["approve"]
    assert approve.downstream_task_ids == {"deploy", "rejected"}
    assert approve.options_mapping == {"Approve": "deploy", "Reject": "rejected"}
    assert dag.task_dict["deploy"].trigger_rule == "none_failed_min_one_success"
    assert dag.max_active_runs == 1


def test_params_have_json_schema_types(dagbag):
    params = dagbag.dags["ppmlops_demo_churn"].params
    schema = {k: params.get_param(k).schema for k in params.keys()}
    assert schema["epsilon_cap"]["type"] == "number"
    assert schema["epochs"]["type"] == "integer"
    assert schema["workers"]["type"] == "integer"
    assert schema["seed"]["type"] == "integer"
    assert schema["tuner"]["enum"] == ["fixed", "rule", "bayes"]
    assert schema["use_gpu"]["type"] == "boolean" and params["use_gpu"] is False
    assert schema["environment"]["enum"] == ["development", "test", "staging", "production"]
    # The trigger form cannot ask for more than the spec allows one run to spend.
    assert schema["epsilon_cap"]["maximum"] == 1.0


@pytest.mark.parametrize("given, expected", [(True, True), (False, False), ("false", False), ("true", True), (None, False)])
def test_use_gpu_param_reaches_the_run(given, expected):
    from ppmlops import pipeline
    from ppmlops.spec import load_spec

    spec = load_spec(REPO / "dags" / "pipelines" / "demo.yaml")
    assert pipeline.RunParams.from_mapping(spec, {"use_gpu": given}).use_gpu is expected
