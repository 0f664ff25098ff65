"""Fixed-shape tensor features (issue 29, item 4): the spec declares a tensor's shape, range and
dtype; ingestion stages it as a fixed_size_list column and quarantines malformed rows (reasons
name the column and the element, never a value); encoding scales from the declared range, never
from the data; an NPZ of arrays with a label file is a source; the GX suite, the risk scan, the
model factory and the served model's signature all follow the declaration."""

from __future__ import annotations

import copy
import csv
import hashlib
import io

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ppmlops.data import tensors
from ppmlops.data.features import encode, encode_features, feature_names
from ppmlops.data.ingest import INVALID_VALUE, ingest, snapshot_sha256
from ppmlops.data.reading import SourceReader
from ppmlops.errors import DataError, SpecError, ValidationFailed
from ppmlops.spec import TensorFeature, parse_spec

PIXELS = {"name": "pixels", "type": "tensor", "shape": [1, 2, 2], "range": [0, 16], "dtype": "float32"}
SPEC = {
    "name": "images",
    "dataset": {
        "id": "images",
        "source": {"path": "PLACEHOLDER"},
        "label": {"column": "y", "task": "multiclass", "classes": ["a", "b", "c"]},
        "features": [PIXELS],
    },
    "privacy": {"epsilon": 1.0, "delta": 1e-5, "run_epsilon": 1.0},
    "training": {"test_fraction": 0.5, "seed": 0},
    "deploy": {"model_name": "images"},
}


def spec_with(source=None, features=None, **dataset):
    doc = copy.deepcopy(SPEC)
    if source is not None:
        doc["dataset"]["source"] = source
    if features is not None:
        doc["dataset"]["features"] = features
    doc["dataset"].update(dataset)
    return parse_spec(doc)


def _error(**tensor) -> str:
    feature = {k: v for k, v in (PIXELS | tensor).items() if v is not None}
    with pytest.raises(SpecError) as err:
        spec_with(features=[feature])
    return str(err.value)


# ------------------------------------------------------------------------------------------------ spec


def test_a_tensor_without_a_shape_or_a_range_is_refused_naming_what_is_missing():
    assert "tensor feature 'pixels' needs shape" in _error(shape=None)
    msg = _error(range=None)
    assert "tensor feature 'pixels' needs range" in msg and "never from the data" in msg


@pytest.mark.parametrize("shape", [[], [0, 8], [8, -1], [1, 1, 1, 1, 2]])
def test_a_bad_shape_is_refused_with_the_shape_shown(shape):
    assert f"shape must be 1 to 4 positive integers (e.g. [1, 8, 8]), got {shape}" in _error(shape=shape)


def test_a_range_must_be_ordered_finite_and_within_the_dtype():
    assert "low < high" in _error(range=[16, 0])
    assert "range [0.0, 300.0] lies outside what dtype uint8 holds [0, 255]" in _error(range=[0, 300], dtype="uint8")
    assert "dataset.features.0.tensor.dtype" in _error(dtype="complex64")


def test_a_tensor_is_listed_alone_and_is_never_a_quasi_identifier():
    with pytest.raises(SpecError, match="tensor feature 'pixels' is the model's whole input: list it alone"):
        spec_with(features=[PIXELS, {"name": "age", "type": "numeric", "range": [0, 1]}])
    with pytest.raises(SpecError, match="quasi_identifiers lists tensor feature 'pixels'"):
        spec_with(quasi_identifiers=["pixels"])


def test_the_factory_gets_the_declared_shape_and_args_may_not_set_it():
    doc = copy.deepcopy(SPEC) | {"model": {"factory": "ppmlops.examples.models:cnn", "args": {"channels": 2}}}
    spec = parse_spec(doc)
    assert spec.model.own.input_shape == [1, 2, 2]
    doc["model"]["args"] = {"input_shape": [4]}
    with pytest.raises(SpecError, match=r"model.args may not set \['input_shape'\]"):
        parse_spec(doc)
    table = copy.deepcopy(doc)
    table["dataset"]["features"] = [{"name": "age", "type": "numeric", "range": [0, 1]}]
    table["model"]["args"] = {}
    assert parse_spec(table).model.own.input_shape is None  # a table's factory is called as before


def test_a_label_file_goes_with_an_npz_source_only():
    with pytest.raises(SpecError, match="source.labels goes with an NPZ source"):
        spec_with(source={"path": "/tmp/x.parquet", "labels": "/tmp/y.csv"})
    assert spec_with(source={"path": "/tmp/x.npz", "labels": "/tmp/y.csv"}).dataset.source.resolved_format() == "npz"


# ------------------------------------------------------------------------------------------------ encoding


def test_encoding_scales_from_the_declared_range_never_from_the_data():
    f = TensorFeature(**PIXELS)
    # Every value lies in [4, 8]: a min-max scaler fitted on the rows would map 4 to 0 and 8 to 1.
    rows = pd.Series([np.array([4.0, 6.0, 8.0, 4.0]), np.array([8.0, 8.0, 4.0, 6.0])])
    X = encode_features(pd.DataFrame({"pixels": rows}), [f])
    assert X.dtype == np.float32
    assert X.tolist() == [[0.25, 0.375, 0.5, 0.25], [0.5, 0.5, 0.25, 0.375]]


def test_values_outside_the_declared_range_are_clipped_to_it():
    f = TensorFeature(**PIXELS)
    X = tensors.encode(np.array([[[[-3.0, 0.0], [16.0, 99.0]]]]), f)  # (1, 1, 2, 2), the served input's shape
    assert X.tolist() == [[0.0, 0.0, 1.0, 1.0]]
    assert feature_names(spec_with()) == ["pixels[0]", "pixels[1]", "pixels[2]", "pixels[3]"]


# ------------------------------------------------------------------------------------------------ ingest


def _parquet(path, rows, labels, value_type=pa.float64()):
    table = pa.table({"pixels": pa.array(rows, pa.list_(value_type)), "y": pa.array(labels, pa.string())})
    pq.write_table(table, path)
    return path


def _quarantine(result) -> list[dict]:
    with open(result.quarantine_path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_malformed_tensor_rows_are_quarantined_with_reasons_that_show_no_value(tmp_path):
    def good(i):
        return [float(i), 2.0, 3.0, 4.0]

    rows = [good(0), good(1), [1.0, 2.0, 3.0],            # 3: three values, not four
            None,                                          # 4: no array
            [1.0, None, 3.0, 4.0],                         # 5: a null value
            [1.0, 2.0, float("nan"), 4.0],                 # 6: NaN
            [1.0, 2.0, 3.0, float("inf")],                 # 7: inf
            [777.125, 2.0, 3.0, 4.0, 5.0],                 # 8: five values
            good(2), good(3), good(4), good(5)]
    src = _parquet(tmp_path / "images.parquet", rows, ["a", "b", "c", "a", "b", "c", "a", "b", "c", "a", "b", "c"])
    result = ingest(spec_with(source={"path": str(src)}), tmp_path / "run")
    assert result.quarantine_reasons == {INVALID_VALUE: 6}
    assert result.rows_train + result.rows_test == 6
    reasons = {int(r["_line"]): r["_reason"] for r in _quarantine(result)}
    assert reasons == {
        3: "column pixels: 3 values, the declared shape [1, 2, 2] has 4",
        4: "column pixels: the array is empty or null",
        5: "column pixels: value [0, 0, 1] is null",
        6: "column pixels: value [0, 1, 0] is not a finite number",
        7: "column pixels: value [0, 1, 1] is not a finite number",
        8: "column pixels: 5 values, the declared shape [1, 2, 2] has 4",
    }
    assert not any("777" in r for r in reasons.values())
    assert pq.read_schema(result.snapshot_train).field("pixels").type == pa.list_(pa.float32(), 4)
    assert result.sha256 == snapshot_sha256(result.snapshot_train, result.snapshot_test)


def test_an_integer_dtype_refuses_fractions_and_values_beyond_it_and_nesting_must_match(tmp_path):
    feature = PIXELS | {"dtype": "uint8", "shape": [2, 2]}
    rows = [[[1, 2], [3, 4]], [[1, 2], [3, 4]], [[1.5, 2], [3, 4]], [[1, 2], [3, 256]], [[1, 2, 3], [4]],
            [[1], [2], [3], [4]], [[0, 16], [16, 0]], [[5, 5], [5, 5]]]
    src = tmp_path / "nested.parquet"
    pq.write_table(pa.table({"pixels": pa.array(rows, pa.list_(pa.list_(pa.float64()))),
                             "y": ["a", "b", "c", "a", "b", "c", "a", "b"]}), src)
    result = ingest(spec_with(source={"path": str(src)}, features=[feature]), tmp_path / "run")
    reasons = {int(r["_line"]): r["_reason"] for r in _quarantine(result)}
    assert reasons == {3: "column pixels: value [0, 0] is not a uint8", 4: "column pixels: value [1, 1] is not a uint8",
                       5: "column pixels: ragged: its nested lists differ in length",
                       6: "column pixels: nested as [4, 1], the declared shape is [2, 2]"}
    staged = pd.concat([pd.read_parquet(result.snapshot_train), pd.read_parquet(result.snapshot_test)])
    assert sorted(staged["pixels"].map(lambda a: a.tolist())) == [[0, 16, 16, 0], [1, 2, 3, 4], [1, 2, 3, 4],
                                                                  [5, 5, 5, 5]]
    assert pq.read_schema(result.snapshot_train).field("pixels").type == pa.list_(pa.uint8(), 4)


def test_a_csv_cell_may_hold_a_json_array(tmp_path):
    src = tmp_path / "images.csv"
    src.write_text('pixels,y\n"[0, 4, 8, 16]",a\n"[1, 2]",b\n"[16, 16, 16, 16]",c\nnot an array,a\n')
    result = ingest(spec_with(source={"path": str(src)}), tmp_path / "run")
    assert result.rows_train + result.rows_test == 2 and result.quarantine_reasons == {INVALID_VALUE: 2}
    staged = pd.concat([pd.read_parquet(result.snapshot_train), pd.read_parquet(result.snapshot_test)])
    X, y, _ = encode(staged, spec_with(source={"path": str(src)}))
    assert sorted(X.tolist()) == [[0.0, 0.25, 0.5, 1.0], [1.0, 1.0, 1.0, 1.0]]


# ------------------------------------------------------------------------------------------------ NPZ


def _npz(tmp_path, images, labels=None, **extra):
    path = tmp_path / "images.npz"
    np.savez(path, pixels=images, **extra)
    label_path = None
    if labels is not None:
        label_path = tmp_path / "labels.csv"
        label_path.write_text("y\n" + "".join(f"{v}\n" for v in labels))
    return path, label_path


def test_an_npz_of_images_with_a_label_file_is_read_row_by_row(tmp_path):
    images = np.arange(6 * 4, dtype=np.uint8).reshape(6, 1, 2, 2) % 17
    path, labels = _npz(tmp_path, images, ["a", "b", "c", "a", "b", "c"])
    reader = SourceReader(path, "npz", labels=labels)
    assert reader.header == ["pixels", "y"]
    records = [r for chunk in reader for r in chunk.records]
    assert records[1] == [str(images[1].reshape(-1).tolist()), "b"]
    assert reader.rows_in == 6
    assert reader.sha256 == hashlib.sha256(path.read_bytes() + labels.read_bytes()).hexdigest()
    spec = spec_with(source={"path": str(path), "labels": str(labels)})
    result = ingest(spec, tmp_path / "run")
    assert result.rows_train + result.rows_test == 6 and not result.quarantine_reasons
    assert result.sources[0]["format"] == "npz" and result.sources[0]["labels"] == str(labels)
    X, y, _ = encode(pd.concat([pd.read_parquet(result.snapshot_train), pd.read_parquet(result.snapshot_test)]), spec)
    assert X.shape == (6, 4) and sorted(y.tolist()) == [0, 0, 1, 1, 2, 2]


def test_a_label_array_inside_the_npz_needs_no_label_file(tmp_path):
    path, _ = _npz(tmp_path, np.arange(32.0).reshape(8, 2, 2), y=np.array(list("abcabcab")))
    result = ingest(spec_with(source={"path": str(path)}), tmp_path / "run")
    assert result.rows_train + result.rows_test == 8


def test_npz_problems_are_named(tmp_path):
    path, labels = _npz(tmp_path, np.zeros((4, 2, 2)), ["a", "b", "c"])
    with pytest.raises(DataError, match="the label file's records and the rows of images.npz"):
        SourceReader(path, "npz", labels=labels)
    np.savez(tmp_path / "uneven.npz", pixels=np.zeros((4, 2, 2)), y=np.array(["a", "b"]))
    with pytest.raises(DataError, match="differ in length along their first axis"):
        SourceReader(tmp_path / "uneven.npz", "npz")
    np.savez(tmp_path / "objects.npz", pixels=np.array([object(), object()], dtype=object))
    with pytest.raises(DataError, match="array 'pixels' cannot be read without pickle"):
        SourceReader(tmp_path / "objects.npz", "npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match="cannot read NPZ"):
        SourceReader(tmp_path / "junk.npz", "npz")


# ------------------------------------------------------------------------------------------------ the rest


def test_the_gx_suite_checks_each_rows_number_of_values(tmp_path):
    from ppmlops.data.suites import write_suite
    from ppmlops.data.validate import validate

    spec = spec_with()
    suite = write_suite(spec, tmp_path / "suite.json")
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"pixels": pa.array([[1.0, 2.0, 3.0, 4.0]] * 3, pa.list_(pa.float32(), 4)),
                             "y": ["a", "b", "c"]}), good)
    assert validate([good], suite, tmp_path / "ok")["success"]
    bad = tmp_path / "bad.parquet"  # edited after ingest: a short row and a NaN
    pq.write_table(pa.table({"pixels": pa.array([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0], [np.nan, 1.0, 1.0, 1.0]],
                                                pa.list_(pa.float32())), "y": ["a", "b", "c"]}), bad)
    with pytest.raises(ValidationFailed) as err:
        validate([bad], suite, tmp_path / "failed")
    assert "on pixels#values" in str(err.value) and "on pixels#min" in str(err.value)


def test_the_risk_scan_never_counts_a_tensor_as_a_quasi_identifier(tmp_path):
    from ppmlops.risk.assess import assess_spec

    # A name the scan reads as a quasi-identifier (a postal code), on a tensor column.
    feature = PIXELS | {"name": "postcode"}
    src = tmp_path / "images.parquet"
    pq.write_table(pa.table({"postcode": pa.array([[1.0, 2.0, 3.0, 4.0]] * 20, pa.list_(pa.float64())),
                             "y": ["a", "b"] * 10}), src)
    report = assess_spec(spec_with(source={"path": str(src)}, features=[feature]))
    assert report.quasi_identifiers == [] and not report.findings
    assert [d["column"] for d in report.dismissed] == ["postcode"]
    assert report.tensor_columns[0]["column"] == "postcode" and "not a quasi-identifier" in report.summary()


def test_the_factory_is_called_with_the_input_shape_and_the_signature_is_a_tensor():
    from ppmlops.registry.serving import input_example_for, signature_for
    from ppmlops.spec import FactoryRef
    from ppmlops.training.factory import build_own

    net, _ = build_own(FactoryRef(target="ppmlops.examples.models:cnn", args={"channels": 2}, input_shape=[1, 2, 2]),
                       4, 3)
    assert net.shape == (1, 2, 2)
    f = TensorFeature(**(PIXELS | {"dtype": "uint8"}))
    encoding = {"features": [f.model_dump(mode="json")], "label": SPEC["dataset"]["label"]}
    assert signature_for(encoding).inputs.to_dict() == [
        {"name": "pixels", "type": "tensor", "tensor-spec": {"dtype": "uint8", "shape": (-1, 1, 2, 2)}}]
    example = input_example_for(encoding)
    assert example.dtype == np.uint8 and example.shape == (2, 1, 2, 2)
    assert example[0].max() == 0 and example[1].min() == 16  # the declared low, then high: no row


def test_the_pipelines_risk_scan_rereads_an_npz_and_its_label_file_as_ingest_did(tmp_path):
    from ppmlops.risk.assess import assess

    images = (np.arange(8 * 4).reshape(8, 2, 2) % 17).astype(np.uint8)
    path, labels = _npz(tmp_path, images, list("abcabcab"))
    spec = spec_with(source={"path": str(path), "labels": str(labels)}, special_categories=["pixels"])
    report = assess(spec, ingest(spec, tmp_path / "run"))  # a scan without the label file would differ in sha256
    assert report.source["files"][0]["rows_in"] == 8 and report.quasi_identifiers == []
    # Declared a special category (a face would be biometric data): that still counts.
    assert [(f["column"], f["category"]) for f in report.findings] == [("pixels", "special_category")]
