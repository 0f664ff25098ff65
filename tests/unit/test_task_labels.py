"""Issue 29 item 3: label.task. The classes and the range are declared in the spec (public); a row
whose label is not one of them is quarantined with a reason, and the encoding follows the task."""

from __future__ import annotations

import copy
import csv

import numpy as np
import pandas as pd
import pytest

from ppmlops.data.features import encode, unscale
from ppmlops.data.ingest import ingest
from ppmlops.errors import SpecError
from ppmlops.spec import parse_spec

BASE = {
    "name": "tasks",
    "dataset": {
        "id": "tasks",
        "source": {"path": "PLACEHOLDER"},
        "label": {"column": "y", "positive": "yes", "values": ["yes", "no"]},
        "features": [{"name": "age", "type": "numeric", "range": [18, 90]}],
    },
    "privacy": {"epsilon": 1.0, "delta": 1e-5, "run_epsilon": 1.0},
    "deploy": {"model_name": "tasks"},
}


def spec_with(label: dict, path="x.csv", test_path=None):
    doc = copy.deepcopy(BASE)
    doc["dataset"]["label"] = label
    doc["dataset"]["source"] = {"path": str(path)}
    if test_path is not None:
        doc["dataset"]["test_source"] = {"path": str(test_path)}
    return parse_spec(doc)


def test_binary_is_the_default_task_with_two_outputs():
    label = spec_with(BASE["dataset"]["label"]).dataset.label
    assert label.task == "binary" and label.n_outputs == 2 and label.allowed == ["yes", "no"]


@pytest.mark.parametrize("label, message", [
    ({"column": "y", "task": "multiclass"}, "needs label.classes"),
    ({"column": "y", "task": "multiclass", "classes": ["a", "b"], "positive": "a"}, "do not apply"),
    ({"column": "y", "task": "multiclass", "classes": ["a", "a"]}, "unique"),
    ({"column": "y", "task": "regression"}, "needs label.range"),
    ({"column": "y", "task": "regression", "range": [5, 5]}, "low < high"),
    ({"column": "y", "task": "regression", "range": [0, 10], "values": ["a", "b"]}, "do not apply"),
    ({"column": "y", "task": "ordinal", "range": [0, 10]}, "task"),
])
def test_each_task_declares_its_own_fields(label, message):
    with pytest.raises(SpecError, match=message):
        spec_with(label)


def _ingest(tmp_path, label, rows):
    src, test = tmp_path / "train.csv", tmp_path / "test.csv"
    src.write_text("age,y\n" + "".join(f"{a},{y}\n" for a, y in rows))
    test.write_text("age,y\n40," + rows[0][1] + "\n")
    spec = spec_with(label, src, test)
    result = ingest(spec, tmp_path / "run")
    with open(result.quarantine_path, newline="", encoding="utf-8") as fh:
        reasons = {int(q["_line"]): q["_reason"] for q in csv.DictReader(fh) if q["_source"] == str(src)}
    return spec, result, reasons


def test_multiclass_rows_outside_the_declared_classes_are_quarantined(tmp_path):
    label = {"column": "y", "task": "multiclass", "classes": ["cat", "dog", "eel"]}
    spec, result, reasons = _ingest(tmp_path, label, [(30, "cat"), (31, "eel"), (32, "owl"), (33, ""), (34, "dog")])
    assert reasons == {4: "column y: 'owl' is not one of ['cat', 'dog', 'eel']", 5: "column y: label is empty"}
    assert result.quarantine_reasons == {"invalid label": 2}
    X, y, _ = encode(pd.read_parquet(result.snapshot_train), spec)
    assert y.dtype == np.int64 and sorted(y.tolist()) == [0, 1, 2]
    assert spec.dataset.label.n_outputs == 3


def test_regression_labels_outside_the_declared_range_are_quarantined(tmp_path):
    label = {"column": "y", "task": "regression", "range": [0, 100]}
    spec, result, reasons = _ingest(tmp_path, label, [(30, "25"), (31, "100"), (32, "101"), (33, "abc"),
                                                      (34, "0"), (35, " 50 ")])
    assert reasons == {4: "column y: label 101 is outside the declared range [0, 100]",
                       5: "column y: label 'abc' is not a number"}
    X, y, _ = encode(pd.read_parquet(result.snapshot_train), spec)
    assert y.dtype == np.float32 and sorted(y.tolist()) == [0.0, 0.25, 0.5, 1.0]
    assert spec.dataset.label.n_outputs == 1
    # predictions come back in the label's units, never outside the declared range
    assert unscale([-0.5, 0.25, 2.0], spec.dataset.label).tolist() == [0.0, 25.0, 100.0]
