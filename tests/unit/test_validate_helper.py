"""The validation helper (ppmlops.stages.validate_helper): a forked process that has imported Great
Expectations validates a whole run's snapshots, with the same summary and the same errors as the
validate task gives in process; when it cannot answer, the task validates in process."""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ppmlops.stages import validate_helper
from ppmlops.data.ingest import ingest
from ppmlops.data.validate import validate
from ppmlops.errors import DataError, ValidationFailed
from ppmlops.spec import parse_spec

REPO = Path(__file__).resolve().parents[2]
DEMO_SUITE = REPO / "expectations" / "demo_customers.json"


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("validate_helper")
    doc = copy.deepcopy(yaml.safe_load((REPO / "dags" / "pipelines" / "demo.yaml").read_text()))
    doc["dataset"]["source"] = {"path": str(tmp / "customers.csv"), "generate": {"event_weeks": 12, "rows": 1500, "seed": 9}}
    staged = ingest(parse_spec(doc), tmp / "run")
    return [staged.snapshot_train, staged.snapshot_test]


def _comparable(summary: dict, folder: Path) -> str:
    """The summary without what differs between any two runs: its folder, the data docs' times."""
    text = json.dumps(summary, sort_keys=True, default=str).replace(str(folder), "<folder>")
    return re.sub(r"\d{8}T\d{6}\.\d+Z", "<time>", text)


def test_the_helper_gives_the_summary_the_task_gets_in_process_and_runs_meanwhile(snapshots, tmp_path):
    here, there = tmp_path / "here", tmp_path / "there"
    expected = validate(snapshots, DEMO_SUITE, here)
    ran = []
    helper = validate_helper.ValidationHelper(meanwhile=lambda: ran.append(os.getpid()))
    summary = helper.validate(snapshots, DEMO_SUITE, there)
    assert ran == [os.getpid()]  # in this process, while the helper worked
    assert helper.proc.exitcode == 0 and helper.proc.pid != os.getpid()
    assert _comparable(summary, there) == _comparable(expected, here)
    assert (there / "validation.json").exists() and (there / "data_docs" / "index.html").exists()
    assert (there / "logs" / "gx.log").exists()  # GX's records where the task writes them


def test_a_failed_expectation_raises_the_same_error_as_in_process(snapshots, tmp_path):
    df = pd.read_parquet(snapshots[0])
    df.loc[3, "region"] = "jane.doe@example.com"
    bad = tmp_path / "bad.parquet"
    df.to_parquet(bad, index=False)
    with pytest.raises(ValidationFailed) as in_process:
        validate([bad], DEMO_SUITE, tmp_path / "here")
    with pytest.raises(ValidationFailed) as helped:
        validate_helper.ValidationHelper().validate([bad], DEMO_SUITE, tmp_path / "there")
    assert str(helped.value).replace("there", "here") == str(in_process.value)
    with pytest.raises(DataError, match="expectation suite not found"):
        validate_helper.ValidationHelper().validate([bad], tmp_path / "no_suite.json", tmp_path / "there")


@pytest.mark.parametrize("fault, said", [("die", "exited with status 3"),
                                         ("garbage", "answered something other than an answer")])
def test_a_helper_that_gives_no_answer_is_named_and_the_task_validates_in_process(
        fault, said, tmp_path, monkeypatch, caplog):
    from plans import demo_table_run

    from ppmlops.run.records import Validated
    from ppmlops.stages import ingest as ingest_stage, validate as validate_stage

    ctx = demo_table_run(tmp_path, monkeypatch, f"helper-{fault}", rows=1500)
    ingest_stage.run(ctx)
    monkeypatch.setenv(validate_helper.FAULT_ENV, fault)
    with pytest.raises(validate_helper.HelperFailed, match=said):
        validate_helper.ValidationHelper().validate([], DEMO_SUITE, tmp_path)
    validate_helper.start()
    with caplog.at_level(logging.WARNING, logger="ppmlops.stages.validate"):
        validate_stage.run(ctx)
    assert f"the validation helper process {said}; validating in this process" in caplog.text
    assert validate_helper.take() is None  # used up
    record = ctx.store.read(Validated)
    assert record.suite == "demo_customers" and record.evaluated > 0


def test_an_unused_helper_is_stopped_and_a_forked_child_never_takes_its_parents(tmp_path):
    validate_helper.start()
    helper = validate_helper._started
    assert helper is not None and helper.proc.is_alive()
    helper.owner = -1  # as a process forked after the start sees it
    assert validate_helper.take() is None
    validate_helper._started = helper
    helper.owner = os.getpid()
    validate_helper.stop()
    assert not helper.proc.is_alive() and validate_helper.take() is None


def test_an_error_the_helper_names_is_raised_as_its_class_where_a_message_makes_one():
    assert type(validate_helper._error({"ok": False, "error": "DataError", "message": "m"})) is DataError
    for other in ("PolicyRefused", "KeyError", "os"):  # more than a message; not ppmlops'; not a class
        err = validate_helper._error({"ok": False, "error": other, "message": "m"})
        assert type(err) is RuntimeError and str(err) == f"validation failed in the helper process: {other}: m"
