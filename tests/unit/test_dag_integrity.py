"""Every DAG file imports cleanly and every spec becomes a DAG of the expected shape."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
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
    # The trigger form cannot ask for more than the spec allows one run to spend; the bounds sit
    # under allOf, so the UI's number field does not clamp what a person types (trigger_form.py).
    # Nor less than a run needs to train at all: its noisy counts (stats_epsilon 0.2, released at
    # assess before training) plus the policy's GDPR minimum 0.05, rounded down (issue 27, item 7).
    assert schema["epsilon_cap"]["allOf"] == [{"minimum": 0.2499, "maximum": 1.0}]
    assert "maximum" not in schema["epsilon_cap"] and "minimum" not in schema["epochs"]


def test_every_param_has_a_title_and_a_description(dagbag):
    params = dagbag.dags["ppmlops_demo_churn"].params
    for name in params.keys():
        param = params.get_param(name)
        assert param.schema.get("title") and param.description, name
    assert "demo_customers" in params.get_param("epsilon_cap").description


@pytest.mark.parametrize("conf, words", [({"epsilon_cap": 5}, "5 is greater than the maximum of 1.0"),
                                         ({"epsilon_cap": 0}, "0 is less than the minimum of 0.2499"),
                                         ({"epsilon_cap": 0.01}, "0.01 is less than the minimum of 0.2499"),
                                         ({"epochs": 0}, "0 is less than the minimum of 1"),
                                         ({"seed": -1}, "-1 is less than the minimum of 0")])
def test_out_of_range_params_are_refused_not_clamped(dagbag, conf, words):
    from airflow.sdk.exceptions import ParamValidationError

    params = copy.deepcopy(dagbag.dags["ppmlops_demo_churn"].params)
    with pytest.raises(ParamValidationError, match=re.escape(words)):
        for key, value in conf.items():
            params[key] = value
        params.validate()


def test_run_params_refuse_what_the_form_would():
    from ppmlops.errors import PpmlopsError
    from ppmlops.spec import load_spec
    from ppmlops.run.context import RunParams

    spec = load_spec(REPO / "dags" / "pipelines" / "demo.yaml")
    with pytest.raises(PpmlopsError, match=r"epsilon_cap 5 is not above 0 and at most 1 .*epochs 0 is below 1"):
        RunParams.from_mapping(spec, {"epsilon_cap": 5, "epochs": 0})


@pytest.mark.parametrize("cap, minimum, refused", [(0.01, 0.0, True), (0.19, 0.0, True), (0.21, 0.0, False),
                                                   (0.21, 0.05, True), (0.25, 0.05, False)])
def test_run_params_refuse_a_cap_that_cannot_train(cap, minimum, refused):
    """An API or --conf caller's cap below what the run's noisy counts cost (plus the policy's
    minimum, when the caller has it) is refused before the run starts, naming the dataset."""
    from ppmlops.errors import PpmlopsError
    from ppmlops.run.context import count_release_floor
    from ppmlops.spec import load_spec
    from ppmlops.run.context import RunParams

    spec = load_spec(REPO / "dags" / "pipelines" / "demo.yaml")
    assert 0.1999 < count_release_floor(spec) <= 0.2  # stats_epsilon 0.2, never above it
    if refused:
        with pytest.raises(PpmlopsError, match=rf"epsilon_cap {cap:g} cannot train on dataset 'demo_customers'"):
            RunParams.from_mapping(spec, {"epsilon_cap": cap}, minimum)
    else:
        assert RunParams.from_mapping(spec, {"epsilon_cap": cap}, minimum).epsilon_cap == cap


def test_spending_budget_makes_no_new_dag_version(tmp_path, monkeypatch):
    """The serialised DAG (what Airflow hashes into a DAG version) does not change when runs spend
    the dataset's budget: the form and the docs state the spec's fixed terms and link to the
    dashboard's dataset page (issue 30: a figure from the ledger made a new version each time)."""
    from airflow.serialization.serialized_objects import DagSerialization

    from ppmlops.privacy.accountant import Segment
    from ppmlops.privacy.ledger import Charge, Ledger
    from ppmlops.spec import load_spec

    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path))
    monkeypatch.delenv("PPMLOPS_DB_URL", raising=False)
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    _dag_module(monkeypatch, pipelines)
    from ppmlops.airflow import dag_factory as module

    spec = load_spec(REPO / "dags" / "pipelines" / "demo.yaml")

    def serialised():
        dag = module.build_dag(spec)
        module._forget(dag.dag_id)
        return json.dumps(DagSerialization.to_dict(dag), sort_keys=True, default=str)

    before = serialised()  # no ledger yet
    ledger = Ledger(f"sqlite:///{tmp_path / 'ppmlops.db'}")
    ledger.register_dataset(spec.dataset.id, epsilon_budget=spec.privacy.epsilon, delta=spec.privacy.delta)
    for sigma, key in ((60.0, "sliver"), (2.0, "large"), (3.0, "more")):
        [entry] = ledger.charge(dataset_id=spec.dataset.id, run_id=key, kind="release", key=key,
                                charges=[Charge("train", Segment(sigma, 1.0, 1))], randomness="secure")
        ledger.complete(entry)
        assert serialised() == before, key
    assert f"/ppmlops/datasets/{spec.dataset.id}" in before and "What is left is on the dashboard" in before


def test_parsing_does_not_create_the_database(tmp_path, monkeypatch):
    """The DAG processor parses every few seconds beside running tasks: building a DAG reads no
    ledger, and a database without tables stays without them."""
    import sqlite3

    from ppmlops.spec import load_spec

    db_file = tmp_path / "ppmlops.db"
    sqlite3.connect(db_file).close()  # a database with no ledger tables yet
    monkeypatch.setenv("PPMLOPS_DB_URL", f"sqlite:///{db_file}")
    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path))
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    _dag_module(monkeypatch, pipelines)
    from ppmlops.airflow import dag_factory as module

    module._forget(module.build_dag(load_spec(REPO / "dags" / "pipelines" / "demo.yaml")).dag_id)
    with sqlite3.connect(db_file) as conn:
        assert conn.execute("select name from sqlite_master").fetchall() == []


@pytest.mark.parametrize("given, expected", [(True, True), (False, False), ("false", False), ("true", True), (None, False)])
def test_use_gpu_param_reaches_the_run(given, expected):
    from ppmlops import pipeline
    from ppmlops.spec import load_spec

    spec = load_spec(REPO / "dags" / "pipelines" / "demo.yaml")
    assert pipeline.RunParams.from_mapping(spec, {"use_gpu": given}).use_gpu is expected


# --------------------------------------------------------------------------- invalid specs


def _folder(tmp_path: Path, **files: str) -> Path:
    folder = tmp_path / "pipelines"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def _demo_named(name: str, **changes: str) -> str:
    text = (REPO / "dags" / "pipelines" / "demo.yaml").read_text().replace("name: demo_churn", f"name: {name}")
    for old, new in changes.items():
        text = text.replace(old, new)
    return text


@pytest.fixture()
def mixed(tmp_path, monkeypatch):
    """A pipelines folder with two good specs and four bad ones."""
    folder = _folder(
        tmp_path,
        **{"a_good.yaml": _demo_named("good_one"),
           "b_typo.yaml": _demo_named("typo_one", **{"epochs: 4": "epochs: many"}),
           "c_broken.yaml": "name: [unclosed",
           "d_copy.yaml": _demo_named("good_one"),
           "e_cron.yaml": _demo_named("bad_cron", **{'schedule: "@weekly"': 'schedule: "every tuesday"'}),
           "f_good.yaml": _demo_named("good_two")})
    monkeypatch.setenv("PPMLOPS_PIPELINES", str(folder))
    from airflow.dag_processing.dagbag import DagBag

    return folder, DagBag(dag_folder=str(REPO / "dags" / "ppmlops_retrain.py"))


def test_one_invalid_spec_does_not_take_the_others_down(mixed):
    folder, bag = mixed
    # No import error for the file: Airflow 3.3 would mark every DAG of the file stale.
    assert bag.import_errors == {}
    assert set(bag.dags) == {"ppmlops_good_one", "ppmlops_good_two", "ppmlops_typo_one",
                             "ppmlops_invalid_c_broken", "ppmlops_invalid_d_copy", "ppmlops_bad_cron"}
    assert set(bag.dags["ppmlops_good_one"].task_dict) == EXPECTED_TASKS
    assert set(bag.dags["ppmlops_good_two"].task_dict) == EXPECTED_TASKS


def test_the_invalid_specs_show_in_import_errors_under_their_own_file(mixed):
    """The project's dags folder as the DAG processor parses it: the spec-errors file holds one
    import error naming each bad spec, and the pipelines' file is clean, with every DAG bagged."""
    from airflow.dag_processing.dagbag import DagBag

    folder, _ = mixed
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert list(bag.import_errors) == [str(REPO / "dags" / "ppmlops_spec_errors.py")]
    error = bag.import_errors[str(REPO / "dags" / "ppmlops_spec_errors.py")]
    assert "InvalidPipelineSpecs: 4 invalid pipeline spec(s)" in error
    for message in (r"b_typo\.yaml: invalid pipeline spec", r"c_broken\.yaml: not valid YAML",
                    r"d_copy\.yaml: pipeline name 'good_one' is already used",
                    r"e_cron\.yaml: schedule 'every tuesday' is not a schedule Airflow reads"):
        assert re.search(message, error), message
    assert not re.search(r"^- \S*(a|f)_good\.yaml:", error, re.M)  # a good spec is not listed
    assert {"ppmlops_good_one", "ppmlops_good_two"} <= set(bag.dags)


def test_the_spec_errors_file_is_silent_when_every_spec_is_valid(tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("PPMLOPS_PIPELINES", str(_folder(tmp_path, **{"a.yaml": _demo_named("only_one")})))
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {} and set(bag.dags) == {"ppmlops_only_one"}


@pytest.mark.parametrize("dag_id,file,message", [
    ("ppmlops_typo_one", "b_typo.yaml", r"b_typo\.yaml: invalid pipeline spec\n  training\.epochs: Input should be a valid integer"),
    ("ppmlops_invalid_c_broken", "c_broken.yaml", r"c_broken\.yaml: not valid YAML"),
    ("ppmlops_invalid_d_copy", "d_copy.yaml", r"d_copy\.yaml: pipeline name 'good_one' is already used by .*a_good\.yaml"),
    ("ppmlops_bad_cron", "e_cron.yaml", r"e_cron\.yaml: schedule 'every tuesday' is not a schedule Airflow reads"),
])
def test_an_invalid_spec_becomes_a_dag_that_fails_with_its_error(mixed, dag_id, file, message):
    from airflow.sdk.exceptions import AirflowFailException

    folder, bag = mixed
    dag = bag.dags[dag_id]
    assert "invalid-spec" in dag.tags and type(dag.timetable).__name__ == "NullTimetable"
    assert dag.description.startswith(f"INVALID pipeline spec {file}")
    assert re.search(message, dag.doc_md)
    with pytest.raises(AirflowFailException, match=message):
        dag.task_dict["invalid_spec"].python_callable()


def _dag_module(monkeypatch, folder: Path):
    monkeypatch.setenv("PPMLOPS_PIPELINES", str(folder))
    spec = importlib.util.spec_from_file_location("ppmlops_retrain_under_test", REPO / "dags" / "ppmlops_retrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _picker(module):
    """What `python dags/ppmlops_retrain.py NAME` picks from, with the DAG file's own DAGs."""
    from ppmlops.airflow import run_one

    return lambda argument: run_one.pick(argument, vars(module))


def test_a_spec_file_outside_the_pipelines_folder_runs_by_path(tmp_path, monkeypatch):
    pick = _picker(_dag_module(monkeypatch, _folder(tmp_path, **{"a.yaml": _demo_named("in_folder")})))
    elsewhere = tmp_path / "elsewhere" / "mine.yaml"
    elsewhere.parent.mkdir()
    elsewhere.write_text(_demo_named("my_own"))
    spec, dag = pick(str(elsewhere))
    assert spec.name == "my_own" and dag.dag_id == "ppmlops_my_own" and set(dag.task_dict) == EXPECTED_TASKS
    spec, dag = pick("in_folder")
    assert dag.dag_id == "ppmlops_in_folder"


def test_picking_an_invalid_or_unknown_pipeline_says_why(tmp_path, monkeypatch):
    pick = _picker(_dag_module(monkeypatch, _folder(tmp_path, **{"b.yaml": _demo_named("broken", **{"epochs: 4": "epochs: -1"})})))
    with pytest.raises(SystemExit, match=r"b\.yaml: invalid pipeline spec\n  training\.epochs"):
        pick("broken")
    with pytest.raises(SystemExit, match=r"no pipeline named 'nothing' in .*, and no spec file nothing"):
        pick("nothing")
    bad_file = tmp_path / "bad.yaml"
    bad_file.write_text("name: [unclosed")
    with pytest.raises(SystemExit, match=r"bad\.yaml: not valid YAML"):
        pick(str(bad_file))


def test_spec_check_reports_every_file(tmp_path, capsys):
    from ppmlops import cli

    folder = _folder(tmp_path, **{"a.yaml": _demo_named("one"), "b.yaml": "name: [unclosed",
                                  "c.yaml": _demo_named("two", **{"epochs: 4": "epochs: -1"}),
                                  "d.yaml": _demo_named("one")})
    files = [str(folder / n) for n in ("a.yaml", "b.yaml", "c.yaml", "d.yaml")]
    assert cli.main(["spec", "check", *files]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{files[0]}: ok (ppmlops_one, dataset demo_customers, 9 features)"
    assert out[1].startswith(f"{files[1]}: not valid YAML")
    assert any(line.startswith(f"{files[2]}: invalid pipeline spec") for line in out)
    assert any(line.startswith(f"{files[3]}: invalid: pipeline name 'one' is already used by {files[0]}") for line in out)
    assert out[-1] == "1 ok, 3 invalid"
    assert cli.main(["spec", "check", files[0]]) == 0


# --------------------------------------------------------------------------- settings at task start


def test_the_settings_variable_accepts_only_operational_settings():
    from ppmlops.airflow.variables import ADJUSTABLE, parse
    from ppmlops.errors import AirflowConfigError

    assert parse(None) == {} and parse(" ") == {}
    assert parse('{"PPMLOPS_OPA_TIMEOUT_S": 10, "PPMLOPS_QUARANTINE_RETENTION_DAYS": "7"}') == {
        "PPMLOPS_OPA_TIMEOUT_S": "10", "PPMLOPS_QUARANTINE_RETENTION_DAYS": "7"}
    for raw, message in [("{not json", "is not JSON"), ("[1, 2]", "must be a JSON object"),
                         ('{"PPMLOPS_DB_URL": "sqlite:///elsewhere.db"}', "sets ['PPMLOPS_DB_URL']; only"),
                         ('{"PPMLOPS_RANDOMNESS": "reproducible"}', "the others belong in the deployment"),
                         ('{"PPMLOPS_VERBOSE": true}', "must be strings or numbers")]:
        with pytest.raises(AirflowConfigError, match=re.escape(message)) as info:
            parse(raw)
        assert "elsewhere" not in str(info.value)  # names the setting, never echoes the value
    assert "PPMLOPS_DB_URL" not in ADJUSTABLE and "PPMLOPS_POLICY" not in ADJUSTABLE
