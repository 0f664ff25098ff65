from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ppmlops.data.features import encode, feature_names
from ppmlops.data.ingest import ingest
from ppmlops.errors import DataError
from ppmlops.spec import load_spec, parse_spec

REPO = Path(__file__).resolve().parents[2]
DEMO_DOC = yaml.safe_load((REPO / "dags" / "pipelines" / "demo.yaml").read_text())
DEMO = parse_spec(DEMO_DOC)
DEMO_WIDTH = 5 + 2 + 4 + 5 + 3  # numeric + sex + region + education + plan


@pytest.fixture(scope="module")
def demo_staged(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("features")
    doc = copy.deepcopy(DEMO_DOC)
    doc["dataset"]["source"] = {"path": str(tmp / "customers.csv"), "generate": {"event_weeks": 12, "rows": 2000, "seed": 3}}
    spec = parse_spec(doc)
    return spec, ingest(spec, tmp / "run")


def frame(**overrides) -> pd.DataFrame:
    row = {"age": 40.0, "sex": "male", "region": "east", "education": "master", "plan": "plus",
           "tenure_months": 12.0, "monthly_spend": 50.0, "sessions_per_week": 5.0, "support_tickets": 1.0,
           "churned": "no"}
    rows = []
    for key, values in overrides.items():
        for v in values:
            rows.append({**row, key: v})
    return pd.DataFrame(rows or [row])


def test_width_names_and_ranges_on_staged_demo(demo_staged):
    spec, staged = demo_staged
    names = feature_names(spec)
    for path in (staged.snapshot_train, staged.snapshot_test):
        df = pd.read_parquet(path)
        X, y, got = encode(df, spec)  # every staged value encodes: ingestion quarantined the rest
        assert X.shape == (len(df), DEMO_WIDTH) and X.dtype == np.float32 and y.dtype == np.int64
        assert got == names
        assert X.min() >= 0.0 and X.max() <= 1.0
        assert np.array_equal(y, (df["churned"] == "yes").to_numpy().astype(np.int64))
        for prefix, width in (("sex=", 2), ("region=", 4), ("education=", 5), ("plan=", 3)):
            block = X[:, [i for i, n in enumerate(names) if n.startswith(prefix)]]
            assert block.shape[1] == width and (block.sum(axis=1) == 1).all()
    assert names[:2] == ["age", "sex=female"] and "plan=premium" in names


def test_scaling_clipping_and_log():
    X, _, names = encode(frame(age=[18.0, 90.0, 54.0, 10.0, 120.0]), DEMO)
    assert X[:, names.index("age")].tolist() == pytest.approx([0.0, 1.0, 0.5, 0.0, 1.0])  # clipped at the bounds
    X, _, names = encode(frame(monthly_spend=[0.0, 2000.0, 100.0, 5000.0]), DEMO)
    assert X[:, names.index("monthly_spend")].tolist() == pytest.approx(
        [0.0, 1.0, np.log1p(100) / np.log1p(2000), 1.0])  # log1p of value and bounds


def test_width_is_fixed_by_the_spec_not_the_data():
    X, y, names = encode(frame(region=["north"]), DEMO)
    assert X.shape == (1, DEMO_WIDTH)
    assert X[0, names.index("region=north")] == 1.0 and X[0, names.index("region=west")] == 0.0
    assert y.tolist() == [0]


def test_unknown_category_and_bad_values_are_errors_that_do_not_show_the_value():
    with pytest.raises(DataError, match=r"column plan: row 0 is not a declared category") as err:
        encode(frame(plan=["gold"]), DEMO)
    assert "gold" not in str(err.value)
    with pytest.raises(DataError, match=r"column age: row 1 is not a finite number"):
        encode(frame(age=[30.0, float("nan")]), DEMO)
    with pytest.raises(DataError, match=r"label churned: row 0 is not one of") as err:
        encode(frame(churned=["maybe"]), DEMO)
    assert "maybe" not in str(err.value)
    with pytest.raises(DataError, match=r"column\(s\) \['plan'\] missing"):
        encode(frame().drop(columns=["plan"]), DEMO)


def test_adult_width(adult_dir, tmp_path):
    spec = load_spec(REPO / "dags" / "pipelines" / "adult_income.yaml")
    staged = ingest(spec, tmp_path / "run")
    X, y, names = encode(pd.read_parquet(staged.snapshot_test), spec)
    categorical = sum(len(f.categories) for f in spec.dataset.features if f.type == "categorical")
    numeric = sum(1 for f in spec.dataset.features if f.type == "numeric")
    assert X.shape == (16281, categorical + numeric) == (16281, 91)
    assert 0.0 <= X.min() and X.max() <= 1.0
    assert y.sum() == 3846
