from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ppmlops.data.features import encode
from ppmlops.data.synthetic import COLUMNS, generate, write_demo
from ppmlops.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
DEMO = load_spec(REPO / "dags" / "pipelines" / "demo.yaml")


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return generate(6000, 7)


def test_columns_match_demo_spec(table):
    ds = DEMO.dataset
    declared = ds.identifiers + [f.name for f in ds.features] + [ds.consent.column, ds.label.column]
    assert list(table.columns) == COLUMNS
    assert sorted(COLUMNS) == sorted(declared)
    assert len(table) == 6000
    assert (table.dtypes == object).all() or all(pd.api.types.is_string_dtype(t) for t in table.dtypes)


def test_same_seed_same_table_other_seed_other_table():
    a, b, c = generate(800, 3), generate(800, 3), generate(800, 4)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)


def test_write_demo_round_trips_atomically(tmp_path):
    path = tmp_path / "deep" / "er" / "customers.csv"
    assert write_demo(path, 300, 5) == path
    back = pd.read_csv(path, dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(back, generate(300, 5), check_dtype=False)
    assert [p.name for p in path.parent.iterdir()] == ["customers.csv"]  # no temporary file left
    first = path.read_bytes()
    write_demo(path, 300, 5)
    assert path.read_bytes() == first


def test_consent_and_label_rates(table):
    assert 0.05 <= (table["consent"] == "no").mean() <= 0.08
    assert set(table["consent"]) == {"yes", "no"}
    labels = table["churned"][table["churned"] != ""]
    assert 0.25 <= (labels == "yes").mean() <= 0.40


def test_identifier_formats(table):
    ssn = table["national_id"].str.extract(r"^(\d{3})-(\d{2})-(\d{4})$").astype(int)
    assert ssn.notna().all().all()
    area, group, serial = ssn[0], ssn[1], ssn[2]
    assert area.between(1, 899).all() and (area != 666).all()
    assert group.between(1, 99).all() and serial.between(1, 9999).all()
    phones = table["phone"]
    assert phones.str.startswith("+").mean() > 0.2  # international
    assert (~phones.str.startswith("+")).mean() > 0.2  # national
    assert table["email"].str.fullmatch(r"[a-z0-9._]+@[a-z0-9.]+\.[a-z]{2,}").all()
    assert table["customer_id"].is_unique


def test_values_within_declared_domain_except_the_planted_defects(table):
    ds = DEMO.dataset
    bad = pd.Series(False, index=table.index)
    for f in ds.features:
        col = table[f.name]
        if f.type == "numeric":
            x = pd.to_numeric(col, errors="coerce")
            bad |= ~x.between(*f.range)
        else:
            bad |= ~col.isin(f.categories)
    bad |= ~table["churned"].isin(ds.label.values)
    # ~0.5 % malformed, each on a consenting row
    assert 20 <= bad.sum() <= 40
    assert (table.loc[bad, "consent"] == "yes").all()
    assert (~table["age"].str.fullmatch(r"\d+")).any()
    assert (table["churned"] == "").any()
    assert (~table["plan"].isin(["basic", "plus", "premium"])).any()
    tenure = pd.to_numeric(table["tenure_months"], errors="coerce")
    assert ((tenure < 0) | (tenure > 240)).any()


def test_label_is_learnable(table):
    """A linear model on the spec's encoding beats the majority class clearly on held-out rows."""
    clean = table[table["consent"] == "yes"].copy()
    for f in DEMO.dataset.features:
        if f.type == "numeric":
            clean = clean[pd.to_numeric(clean[f.name], errors="coerce").between(*f.range)]
            clean[f.name] = clean[f.name].astype(float)
        else:
            clean = clean[clean[f.name].isin(f.categories)]
    clean = clean[clean["churned"].isin(["yes", "no"])]
    X, y, _ = encode(clean, DEMO)
    X = np.hstack([X, np.ones((len(X), 1), np.float32)])
    n = int(0.8 * len(X))
    w = np.zeros(X.shape[1])
    for _ in range(3000):  # plain full-batch gradient descent on the logistic loss
        p = 1 / (1 + np.exp(-X[:n] @ w))
        w -= 2.0 * X[:n].T @ (p - y[:n]) / n
    accuracy = ((X[n:] @ w > 0) == y[n:]).mean()
    majority = max(y[n:].mean(), 1 - y[n:].mean())
    assert accuracy >= majority + 0.08, (accuracy, majority)


def test_too_few_rows_rejected():
    with pytest.raises(ValueError, match=re.escape("at least 4")):
        generate(2, 0)


def test_consent_detail_adds_two_columns_and_changes_nothing_else(table):
    detailed = generate(6000, 7, consent_detail=True)
    assert list(detailed.columns) == COLUMNS[:COLUMNS.index("consent") + 1] + [
        "consent_purposes", "consent_expires"] + COLUMNS[COLUMNS.index("consent") + 1:]
    pd.testing.assert_frame_equal(detailed[COLUMNS], table)
    no_training = ~detailed["consent_purposes"].str.split(";").apply(lambda p: "training" in p)
    expired = detailed["consent_expires"] < "2024"
    assert 50 <= no_training.sum() <= 70 and 50 <= expired.sum() <= 70
    # refusals by purpose or expiry fall on rows that consented and are not broken
    assert (detailed.loc[no_training | expired, "consent"] == "yes").all()
    assert not (no_training & expired).any()


def test_demo_with_consent_detail_reconciles(tmp_path):
    import copy
    from datetime import date

    import yaml

    from ppmlops.data.ingest import ingest
    from ppmlops.spec import parse_spec

    doc = copy.deepcopy(yaml.safe_load((REPO / "dags" / "pipelines" / "demo.yaml").read_text()))
    doc["dataset"]["source"] = {"path": str(tmp_path / "c.csv"),
                                "generate": {"event_weeks": 12, "rows": 3000, "seed": 7, "consent_detail": True}}
    doc["dataset"]["consent"] = {"column": "consent", "purposes_column": "consent_purposes",
                                 "expiry_column": "consent_expires"}
    r = ingest(parse_spec(doc), tmp_path / "run", as_of=date(2025, 1, 1))
    assert set(r.consent_refusals) == {"flag", "purpose", "expired"}
    assert sum(r.consent_refusals.values()) == r.quarantine_reasons["no consent"]
    assert r.rows_in == r.rows_staged + r.rows_quarantined + r.rows_outside_window == 3000
    assert 1 - r.quarantine_reasons["no consent"] / r.rows_in > 0.9  # still above the GDPR policy's floor
