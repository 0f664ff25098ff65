from __future__ import annotations

import copy
import csv
import json
import time
from collections import Counter
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from ppmlops.data.ingest import IngestResult, ingest, snapshot_sha256
from ppmlops.data.synthetic import generate
from ppmlops.window import DataInterval
from ppmlops.errors import DataError
from ppmlops.risk.screen import DirectIdentifierScreen
from ppmlops.run.records import StagedData
from ppmlops.spec import PipelineSpec, load_spec, parse_spec

REPO = Path(__file__).resolve().parents[2]
DEMO_DOC = yaml.safe_load((REPO / "dags" / "pipelines" / "demo.yaml").read_text())

SMALL = {
    "name": "small",
    "dataset": {
        "id": "small",
        "source": {"path": "PLACEHOLDER"},
        "label": {"column": "y", "positive": "yes", "values": ["yes", "no"]},
        "consent": {"column": "consent"},
        "identifiers": ["email"],
        "features": [
            {"name": "age", "type": "numeric", "range": [18, 90]},
            {"name": "plan", "type": "categorical", "categories": ["basic", "premium"]},
        ],
    },
    "privacy": {"epsilon": 1.0, "delta": 1e-5, "run_epsilon": 1.0},
    "training": {"test_fraction": 0.5, "seed": 0},
    "deploy": {"model_name": "small"},
}


HOLDOUT = "email,age,plan,consent,y\nz@x,50,basic,yes,no\n"


def small_spec(path: Path, test_path: Path | None = None, **dataset) -> PipelineSpec:
    """A two-feature spec over `path`; a one-row held-out file keeps tiny tests off the hash split."""
    doc = copy.deepcopy(SMALL)
    doc["dataset"]["source"] = {"path": str(path)}
    if test_path is None:
        test_path = path.parent / "holdout.csv"
        test_path.write_text(HOLDOUT)
    doc["dataset"]["test_source"] = {"path": str(test_path)}
    doc["dataset"].update(dataset)
    return parse_spec(doc)


def demo_spec(tmp: Path, rows: int = 6000, windowed: bool = True) -> PipelineSpec:
    """The demo spec on a generated table; `windowed=False`: no event_time column, no schedule,
    no window (the table is then the same whatever the day)."""
    doc = copy.deepcopy(DEMO_DOC)
    doc["dataset"]["source"] = {"path": str(tmp / "demo" / "customers.csv"), "generate": {"rows": rows, "seed": 7}}
    if windowed:
        doc["dataset"]["source"]["generate"]["event_weeks"] = 12
    else:
        unwindowed(doc)
    return parse_spec(doc)


def unwindowed(doc: dict) -> dict:
    doc.pop("schedule", None)
    doc["dataset"].pop("window", None)
    doc.get("privacy", {}).pop("blocks", None)  # blocks need a window column
    return doc


# Up to today's midnight (UTC), where the generator's events end: the same rows all day.
DEMO_INTERVAL = DataInterval(None, datetime.combine(date.today(), datetime.min.time(), tzinfo=timezone.utc))


def quarantine(result: IngestResult) -> list[dict[str, str]]:
    with open(result.quarantine_path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    spec = demo_spec(tmp)
    return spec, ingest(spec, tmp / "run", interval=DEMO_INTERVAL), tmp


# --------------------------------------------------------------------------- demo data


def test_demo_counts_reconcile(demo):
    spec, r, tmp = demo
    whole = source = pd.read_csv(spec.dataset.source.resolved_path(), dtype=str, keep_default_na=False)
    assert Path(spec.dataset.source.resolved_path()).exists()  # generated on first use
    assert r.rows_in == 6000
    # A CLI run's window: the 8 weeks (the spec's lookback) before now; the rest is not read.
    start, end = r.window.start, r.window.end
    assert end - start == timedelta(days=56) and r.window.mode == "column"
    t = pd.to_datetime(source["event_time"], utc=True)
    source = source[(t >= start) & (t < end)]
    assert 0 < r.rows_outside_window == 6000 - len(source)
    assert r.rows_in == r.rows_staged + r.rows_quarantined + r.rows_outside_window
    assert r.rows_staged == r.rows_train + r.rows_test
    assert r.quarantine_reasons["no consent"] == (source["consent"] == "no").sum()
    assert sum(r.quarantine_reasons.values()) == r.rows_quarantined
    assert set(r.quarantine_reasons) == {"no consent", "invalid label", "invalid value", "unknown category"}
    rows = quarantine(r)
    assert len(rows) == r.rows_quarantined
    assert len(Path(r.quarantine_path).read_text().splitlines()) == r.rows_quarantined + 1
    # no direct identifier is kept; a refused row keeps nothing but where, why and its HMAC; the
    # others keep their other columns, and the line number points at the row
    assert not set(rows[0]) & set(spec.dataset.identifiers)
    for q in rows[:200]:
        original = whole.iloc[int(q["_line"]) - 2]
        if q["_reason"].startswith("column consent"):
            assert q["age"] == q["plan"] == q["consent"] == ""
        else:
            assert q["age"] == original["age"] and q["plan"] == original["plan"]
        assert len(q["_record_hmac"]) == 64
    assert 0.15 < r.rows_test / r.rows_staged < 0.25


def test_demo_snapshot_has_only_features_and_label(demo):
    spec, r, _ = demo
    expected = [f.name for f in spec.dataset.features] + ["churned"]
    for path in (r.snapshot_train, r.snapshot_test):
        df = pd.read_parquet(path)
        assert list(df.columns) == expected
        assert not set(df.columns) & set(spec.dataset.identifiers + ["consent"])
        assert set(df["churned"]) <= {"yes", "no"}  # label kept as its original strings
        assert df["age"].dtype == "float64"
    assert len(pd.read_parquet(r.snapshot_train)) == r.rows_train
    assert r.columns == expected
    assert set(r.dropped_columns) == set(spec.dataset.identifiers) | {"consent", "event_time"}


def test_snapshot_footers_hold_no_minimum_or_maximum_of_private_values(demo):
    _, r, _ = demo
    for path in (r.snapshot_train, r.snapshot_test):
        meta = pq.ParquetFile(path).metadata
        for g in range(meta.num_row_groups):
            for c in range(meta.num_columns):
                assert not meta.row_group(g).column(c).is_stats_set


def test_demo_hash_is_canonical_and_deterministic(demo, tmp_path):
    spec, r, _ = demo
    assert snapshot_sha256(r.snapshot_train, r.snapshot_test) == r.sha256
    again = ingest(spec, tmp_path / "again", interval=DEMO_INTERVAL)
    assert again.sha256 == r.sha256 and again.source_sha256 == r.source_sha256
    assert again.rows_train == r.rows_train
    assert StagedData.model_validate_json(StagedData(result=r).model_dump_json()).result == r


def test_split_keeps_rows_in_their_partition_when_data_grows(tmp_path):
    base = generate(1000, 2)
    grown = pd.concat([base, generate(400, 9)], ignore_index=True)
    results = {}
    for name, df in (("base", base), ("grown", grown)):
        df.to_csv(tmp_path / f"{name}.csv", index=False)
        doc = unwindowed(copy.deepcopy(DEMO_DOC))
        doc["dataset"]["source"] = {"path": str(tmp_path / f"{name}.csv")}
        results[name] = ingest(parse_spec(doc), tmp_path / name)

    def rows(path):
        return Counter(map(tuple, pd.read_parquet(path).astype(str).to_numpy().tolist()))

    assert not rows(results["base"].snapshot_test) - rows(results["grown"].snapshot_test)
    assert not rows(results["base"].snapshot_train) - rows(results["grown"].snapshot_train)


# --------------------------------------------------------------------------- hand-made files


MESSY = """\
email,age,plan,consent,y
a@x.org,30,basic,yes,yes
b@x.org,31,premium,NO,yes
c@x.org,abc,basic,yes,no
d@x.org,40,basic,yes,maybe
e@x.org,95,basic,Yes,no
f@x.org,41,gold,yes,no
g@x.org,42,basic,yes,no,extra
h@x.org,43
"i@x.org
continued",44,premium,true,no
j@x.org,,basic,yes,

k@x.org,45,premium,y,no
l@x.org,1e400,basic,yes,no
m@x.org,50,basic,yes,yes
"""


def test_quarantine_reasons_and_line_numbers(tmp_path):
    src = tmp_path / "messy.csv"
    src.write_text(MESSY)
    r = ingest(small_spec(src), tmp_path / "run")
    assert r.rows_in == 13 + 1  # the blank line is not a row; one held-out row
    assert r.rows_in == r.rows_staged + r.rows_quarantined
    assert r.rows_train == 4  # a, i (multi-line), k, m
    got = {int(q["_line"]): q for q in quarantine(r)}
    assert {line: q["_reason"] for line, q in got.items()} == {
        3: "column consent: 'NO' does not grant consent",
        4: "column age: 'abc' is not a number",
        5: "column y: 'maybe' is not one of ['yes', 'no']",
        6: "column age: 95 is outside the declared range [18, 90]",
        7: "column plan: 'gold' is not a declared category",
        8: "line 8 has 6 fields, the header has 5",
        9: "line 9 has 2 fields, the header has 5",
        12: "column y: label is empty; column age: value is empty",
        15: "column age: '1e400' is not a finite number",
    }
    assert r.quarantine_reasons == {"no consent": 1, "invalid value": 3, "invalid label": 2,
                                    "unknown category": 1, "malformed line": 2}
    # a malformed line: its field count and keyed hash, never its text; no identifier anywhere
    assert got[8]["_fields"] == "6" and got[8]["age"] == "" and len(got[8]["_record_hmac"]) == 64
    assert "email" not in got[4] and got[4]["age"] == "abc"  # the bad value is kept, to be fixed
    assert got[3]["age"] == got[3]["plan"] == "" and got[3]["_reason"].startswith("column consent")
    text = Path(r.quarantine_path).read_text()
    assert "@x.org" not in text
    assert all(q["_source"] == str(src) for q in got.values())
    assert sorted(pd.read_parquet(r.snapshot_train)["age"]) == [30.0, 44.0, 45.0, 50.0]


def test_test_source_has_its_own_lines_and_source(tmp_path):
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    train.write_text("email,age,plan,consent,y\na@x,30,basic,yes,yes\nb@x,31,basic,yes,no\n")
    test.write_text("email,age,plan,consent,y\nc@x,32,basic,yes,no\nd@x,33,silver,yes,no\ne@x,34,basic,no,no\n")
    r = ingest(small_spec(train, test), tmp_path / "run")
    assert (r.rows_in, r.rows_train, r.rows_test, r.rows_quarantined) == (5, 2, 1, 2)
    q = quarantine(r)
    assert [(x["_source"], x["_line"]) for x in q] == [(str(test), "3"), (str(test), "4")]
    assert [s["rows_in"] for s in r.sources] == [2, 3]
    assert r.split.startswith("test_source")


def test_parquet_source(tmp_path):
    src = tmp_path / "data.parquet"
    table = pa.table({
        "email": ["a@x", "b@x", "c@x", "d@x", None],
        "age": pa.array([30, 31, None, 200, 44], pa.int64()),
        "plan": ["basic", "premium", "basic", "basic", "premium"],
        "consent": pa.array([True, True, True, True, False]),
        "y": ["yes", "no", "no", "yes", "no"],
    })
    pq.write_table(table, src)
    r = ingest(small_spec(src), tmp_path / "run")
    assert (r.rows_in, r.rows_train, r.rows_quarantined) == (5 + 1, 2, 3)
    reasons = {int(q["_line"]): q["_reason"] for q in quarantine(r)}
    assert reasons == {
        3: "column age: value is empty",
        4: "column age: 200 is outside the declared range [18, 90]",
        5: "column consent: 'False' does not grant consent",
    }
    assert r.sources[0]["format"] == "parquet"


def test_latin1_is_reported_with_its_line(tmp_path):
    src = tmp_path / "latin1.csv"
    src.write_bytes("email,age,plan,consent,y\na@x,30,basic,yes,yes\nJos\xe9@x,31,basic,yes,no\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.csv: line 3: .*not valid UTF-8"):
        ingest(small_spec(src), tmp_path / "run")


# --------------------------------------------------------------------------- errors


def test_missing_file_is_named(tmp_path):
    src = tmp_path / "nope.csv"
    with pytest.raises(DataError, match=r"nope\.csv: data source not found"):
        ingest(small_spec(src), tmp_path / "run")


@pytest.mark.parametrize("content,message", [("", "file is empty"), ("\n\n", "file is empty"),
                                              ("email,age,plan,consent,y\n", "has a header but no data rows")])
def test_empty_file_is_named(tmp_path, content, message):
    src = tmp_path / "empty.csv"
    src.write_text(content)
    with pytest.raises(DataError, match=rf"empty\.csv: {message}"):
        ingest(small_spec(src), tmp_path / "run")


@pytest.mark.parametrize("column,role", [("y", "label"), ("plan", "feature"), ("consent", "consent")])
def test_missing_column_is_named(tmp_path, column, role):
    header = [c for c in ["email", "age", "plan", "consent", "y"] if c != column]
    src = tmp_path / "cols.csv"
    src.write_text(",".join(header) + "\n" + ",".join("1" for _ in header) + "\n")
    with pytest.raises(DataError, match=rf"cols\.csv: missing column\(s\) required by the spec: {column} \({role}\)"):
        ingest(small_spec(src), tmp_path / "run")


def test_duplicate_header_is_named(tmp_path):
    src = tmp_path / "dup.csv"
    src.write_text("email,age,age,plan,consent,y\n")
    with pytest.raises(DataError, match=r"dup\.csv: header names columns more than once: \['age'\]"):
        ingest(small_spec(src), tmp_path / "run")


def test_nothing_left_after_quarantine_is_an_error_but_quarantine_is_kept(tmp_path):
    src = tmp_path / "refused.csv"
    src.write_text("email,age,plan,consent,y\na@x,30,basic,no,yes\nb@x,31,basic,no,no\n")
    with pytest.raises(DataError, match=r"no rows left for the training partition.*no consent"):
        ingest(small_spec(src), tmp_path / "run")
    assert len((tmp_path / "run" / "quarantine.csv").read_text().splitlines()) == 3


# --------------------------------------------------------------------------- UCI Adult


def test_adult(adult_dir, tmp_path):
    spec = load_spec(REPO / "dags" / "pipelines" / "adult_income.yaml")
    start = time.perf_counter()
    r = ingest(spec, tmp_path / "run")
    seconds = time.perf_counter() - start
    assert r.rows_in == 32561 + 16281
    assert (r.rows_train, r.rows_test, r.rows_quarantined) == (32561, 16281, 0)
    assert r.rows_in == r.rows_staged + r.rows_quarantined
    test = pd.read_parquet(r.snapshot_test)
    assert set(test["income"]) == {"<=50K", ">50K"}  # test.csv labels carry no trailing dot
    assert (test["income"] == ">50K").sum() == 3846
    assert set(r.dropped_columns) == {"fnlwgt", "education"}
    assert [s["path"] for s in r.sources] == [str(adult_dir / "train.csv"), str(adult_dir / "test.csv")]
    print(f"adult ingest: {seconds:.2f}s")


# --------------------------------------------------------------------------- consent rules, pseudonyms, formats


CONSENT_CSV = """\
email,age,plan,consent,purposes,consent_until,y
a@x.org,30,basic,yes,training;analytics,2030-01-01,yes
b@x.org,31,basic,yes,analytics,2030-01-01,no
c@x.org,32,basic,yes,TRAINING,2023-12-31,no
d@x.org,33,basic,yes,training,,yes
e@x.org,34,basic,yes,training,soon,no
f@x.org,35,basic,no,training,2030-01-01,no
g@x.org,36,premium,yes,training|marketing,2024-06-01T23:59:00Z,no
h@x.org,37,premium,yes,,2030-01-01,yes
"""


def consent_spec(tmp_path: Path, **consent) -> PipelineSpec:
    src = tmp_path / "consent.csv"
    src.write_text(CONSENT_CSV)
    holdout = tmp_path / "holdout_c.csv"
    holdout.write_text("email,age,plan,consent,purposes,consent_until,y\nz@x,50,basic,yes,training,2030-01-01,no\n")
    rules = {"column": "consent", "purposes_column": "purposes", "expiry_column": "consent_until", **consent}
    return small_spec(src, holdout, consent=rules)


def test_consent_purposes_and_expiry_quarantine_with_reasons(tmp_path):
    from datetime import timedelta, date

    r = ingest(consent_spec(tmp_path), tmp_path / "run", as_of=date(2024, 6, 1))
    got = {int(q["_line"]): q["_reason"] for q in quarantine(r)}
    assert got == {
        3: "column purposes: 'analytics' does not include the purpose 'training'",
        4: "column consent_until: consent expired on 2023-12-31 (run date 2024-06-01)",
        6: "column consent_until: 'soon' is not an ISO 8601 date (YYYY-MM-DD)",
        7: "column consent: 'no' does not grant consent",
        9: "column purposes: no purpose does not include the purpose 'training'",
    }
    assert r.quarantine_reasons == {"no consent": 5}
    assert r.consent_refusals == {"expired": 2, "flag": 1, "purpose": 2}
    assert sum(r.consent_refusals.values()) == r.quarantine_reasons["no consent"]
    assert r.rows_in == r.rows_staged + r.rows_quarantined == 8 + 1
    assert r.consent_as_of == "2024-06-01"
    # the expiry day itself still counts; the next day it does not
    later = ingest(consent_spec(tmp_path), tmp_path / "later", as_of=date(2024, 6, 2))
    assert later.consent_refusals["expired"] == 3


def test_expiry_can_be_required(tmp_path):
    from datetime import date

    r = ingest(consent_spec(tmp_path, expiry_required=True), tmp_path / "run", as_of=date(2024, 6, 1))
    reasons = {int(q["_line"]): q["_reason"] for q in quarantine(r)}
    assert reasons[5] == "column consent_until: no expiry date, and the spec requires one"


def test_consent_columns_must_exist(tmp_path):
    src = tmp_path / "c.csv"
    src.write_text("email,age,plan,consent,y\na@x,30,basic,yes,yes\n")
    spec = small_spec(src, consent={"column": "consent", "purposes_column": "purposes"})
    with pytest.raises(DataError, match=r"c\.csv: missing column\(s\) required by the spec: purposes \(consent\)"):
        ingest(spec, tmp_path / "run")


KEY = "k" * 32


def test_pseudonymize_needs_the_key_and_stages_nothing_without_it(tmp_path, monkeypatch):
    src = tmp_path / "p.csv"
    src.write_text("email,age,plan,consent,y\na@x.org,30,basic,yes,yes\nb@x.org,31,basic,yes,no\n")
    spec = small_spec(src, pseudonymize=["email"])
    monkeypatch.delenv("PPMLOPS_PSEUDONYM_KEY", raising=False)
    with pytest.raises(DataError, match=r"environment variable PPMLOPS_PSEUDONYM_KEY, which is not set"):
        ingest(spec, tmp_path / "run")
    assert not list((tmp_path / "run").glob("snapshot_*"))
    monkeypatch.setenv("PPMLOPS_PSEUDONYM_KEY", "short")
    with pytest.raises(DataError, match=r"key in PPMLOPS_PSEUDONYM_KEY is 5 bytes; use at least 16"):
        ingest(spec, tmp_path / "run")


def test_pseudonyms_are_keyed_hmacs_outside_the_feature_set(tmp_path, monkeypatch):
    import hashlib
    import hmac

    from ppmlops.data.features import encode, feature_names

    src = tmp_path / "p.csv"
    src.write_text("email,age,plan,consent,y\n a@x.org ,30,basic,yes,yes\nb@x.org,31,basic,yes,no\n,32,basic,yes,no\n")
    spec = small_spec(src, pseudonymize=["email"])
    monkeypatch.setenv("PPMLOPS_PSEUDONYM_KEY", KEY)
    r = ingest(spec, tmp_path / "run")
    df = pd.read_parquet(r.snapshot_train)
    assert list(df.columns) == ["age", "plan", "y", "email_pseudonym"] == r.columns
    assert r.pseudonymized == {"email": "email_pseudonym"} and "email" in r.dropped_columns
    expected = hmac.new(KEY.encode(), b"ppmlops-pseudonym-v1\x00a@x.org", hashlib.sha256).hexdigest()
    assert df["email_pseudonym"].tolist() == [expected, hmac.new(
        KEY.encode(), b"ppmlops-pseudonym-v1\x00b@x.org", hashlib.sha256).hexdigest(), ""]
    assert hashlib.sha256(b"a@x.org").hexdigest() not in df["email_pseudonym"].tolist()  # never a plain hash
    assert "a@x.org" not in Path(r.snapshot_train).read_bytes().decode("latin-1")
    X, y, names = encode(df, spec)
    assert names == feature_names(spec) and "email_pseudonym" not in names and X.shape == (3, 1 + 2)
    monkeypatch.setenv("PPMLOPS_PSEUDONYM_KEY", "another key of 32 bytes.........")
    other = pd.read_parquet(ingest(spec, tmp_path / "other").snapshot_train)
    assert other["email_pseudonym"][0] != expected  # the key matters


def test_declared_latin1_and_semicolons(tmp_path):
    src = tmp_path / "latin.csv"
    src.write_bytes("email;age;plan;consent;y\nJosé@x;30;basic;yes;yes\nb@x;31;basic;yes;no;extra\n".encode("latin-1"))
    spec = small_spec(src)
    with pytest.raises(DataError, match=r"latin\.csv: line 2: byte 0xe9 .*set source\.encoding to latin-1"):
        ingest(spec, tmp_path / "run")
    doc_spec = small_spec(src)
    doc = doc_spec.model_dump()
    doc["dataset"]["source"]["encoding"] = "latin-1"
    r = ingest(PipelineSpec.model_validate(doc), tmp_path / "run")
    assert r.sources[0]["encoding"] == "latin-1" and r.sources[0]["delimiter"] == ";"
    assert r.rows_train == 1
    q = quarantine(r)
    assert q[0]["_line"] == "3" and q[0]["_fields"] == "6" and "b@x" not in Path(r.quarantine_path).read_text()


# --------------------------------------------------------------------------- unclosed quotes


def _rows(n: int) -> list[str]:
    return [f"p{i}@x.org,{20 + i % 60},{'basic' if i % 3 else 'premium'},yes,{'yes' if i % 2 else 'no'}"
            for i in range(n)]


def test_an_unclosed_quote_stops_the_run_naming_its_line(tmp_path):
    """6,000 rows, one quote never closed on line 2,001: before, the rest of the file became one
    "malformed line" and the run trained on a third of the data."""
    rows = _rows(6000)
    rows[1999] = rows[1999].replace("p1999@x.org", '"p1999@x.org')  # line 2001 (the header is line 1)
    src = tmp_path / "quote.csv"
    src.write_text("email,age,plan,consent,y\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"quote\.csv: line 2001: a quoted field opens on this line and runs to "
                       r"line 6001, taking in the lines after it as its text: an unclosed quote") as err:
        ingest(small_spec(src), tmp_path / "run")
    assert err.value.line == 2001 and "p2000" not in str(err.value)
    assert not (tmp_path / "run" / "snapshot_train.parquet").exists()


def test_a_stray_quote_that_closes_later_is_caught_too(tmp_path):
    rows = _rows(50)
    rows[9] = rows[9].replace("basic", '"basic').replace("premium", '"premium')
    rows[30] = rows[30].replace("@x.org", '@x.org"')  # a second stray quote closes the runaway field
    src = tmp_path / "stray.csv"
    src.write_text("email,age,plan,consent,y\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"stray\.csv: line 11: a quoted field opens on this line and runs to line 32"):
        ingest(small_spec(src), tmp_path / "run")


def test_quoted_line_breaks_in_a_field_are_still_fine(tmp_path):
    src = tmp_path / "notes.csv"
    src.write_text('email,age,plan,consent,y\n"a@x\nsecond line, with a comma\nthird",30,basic,yes,yes\n'
                   'b@x,31,basic,yes,no\n')
    r = ingest(small_spec(src), tmp_path / "run")
    assert (r.rows_in, r.rows_train, r.rows_quarantined) == (2 + 1, 2, 0)


def test_a_runaway_record_is_caught_by_its_length_in_a_narrow_file(tmp_path, monkeypatch):
    from ppmlops.data import reading

    monkeypatch.setattr(reading, "MAX_RECORD_LINES", 5)
    src = tmp_path / "narrow.csv"
    src.write_text("a,b\n" + '1,"x\n' + "".join(f"{i},y\n" for i in range(20)))
    with pytest.raises(DataError, match=r"narrow\.csv: line 2: a quoted field opens on this line and runs to line 22"):
        list(reading.SourceReader(src))


def test_only_ascii_digits_are_numbers(tmp_path):
    src = tmp_path / "digits.csv"
    src.write_text("email,age,plan,consent,y\na@x,30,basic,yes,yes\nb@x,\u0663\u0660,basic,yes,no\n"
                   "c@x,\uff13\uff10,basic,yes,no\nd@x,3\u06f0,basic,yes,no\n", encoding="utf-8")
    r = ingest(small_spec(src), tmp_path / "run")
    assert r.rows_train == 1 and r.quarantine_reasons == {"invalid value": 3}
    assert all(q["_reason"].endswith("is not a number") for q in quarantine(r))


def test_consent_expiry_dates_need_ascii_digits():
    from ppmlops.data.consent import parse_expiry

    assert parse_expiry("2030-01-31").isoformat() == "2030-01-31"
    assert parse_expiry("\u0662\u0660\u0663\u0660-01-31") is None


# --------------------------------------------------------------------------- streaming


def test_streaming_keeps_the_canonical_hash_and_split(tmp_path):
    """The values ingest gave before it streamed (e5b07a2, same generated table), under the split
    rule of that time (ppmlops.privacy.split's legacy rule, which datasets registered then keep)."""
    from ppmlops.privacy.split import DEFAULT_RULE, LEGACY_RULE

    spec = demo_spec(tmp_path, windowed=False)
    r = ingest(spec, tmp_path / "run", split_rule=LEGACY_RULE)
    assert r.sha256 == "f7f3145e40ca8e9a7afea7e1acc8fb4d6f04d985ab07afd2adebebbd32a3cec7"
    assert (r.rows_train, r.rows_test, r.rows_quarantined) == (4489, 1091, 420)
    small = ingest(spec, tmp_path / "small_chunks", chunk_rows=97, split_rule=LEGACY_RULE)  # many row groups
    assert small.sha256 == r.sha256 and small.rows_train == r.rows_train
    assert pq.ParquetFile(small.snapshot_train).num_row_groups > 40
    assert Path(small.quarantine_path).read_text() == Path(r.quarantine_path).read_text()
    now = ingest(spec, tmp_path / "default_rule")
    again = ingest(spec, tmp_path / "default_rule_small", chunk_rows=97)
    assert now.split_rule == again.split_rule == DEFAULT_RULE and now.sha256 == again.sha256 != r.sha256
    assert now.rows_train + now.rows_test == 4489 + 1091 and abs(now.rows_test - 1091) < 100


def test_a_failed_ingest_leaves_no_partial_files(tmp_path):
    rows = _rows(300)
    rows[250] = rows[250].replace("basic", '"basic').replace("premium", '"premium')
    src = tmp_path / "late.csv"
    src.write_text("email,age,plan,consent,y\n" + "\n".join(rows) + "\n" + "\n".join(_rows(10)) + "\n")
    with pytest.raises(DataError, match="unclosed quote"):
        ingest(small_spec(src), tmp_path / "run", chunk_rows=50)  # fails after chunks were written
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == []


# --------------------------------------------------------------------------- quarantine minimisation


def test_quarantine_hmac_key_is_a_0600_file_per_dataset_without_a_pseudonym_key(tmp_path, monkeypatch):
    from ppmlops.data.quarantine import record_hmac

    monkeypatch.delenv("PPMLOPS_PSEUDONYM_KEY", raising=False)
    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path / "home"))
    src = tmp_path / "refused.csv"
    src.write_text("email,age,plan,consent,y\na@x,30,basic,yes,yes\nb@x,31,basic,no,no\nc@x,32,basic,yes,no\n")
    first = quarantine(ingest(small_spec(src), tmp_path / "run1"))
    key_file = tmp_path / "home" / "keys" / "small.quarantine.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    key = bytes.fromhex(key_file.read_text().strip())
    assert first[0]["_record_hmac"] == record_hmac(key, ["b@x", "31", "basic", "no", "no"])
    second = quarantine(ingest(small_spec(src), tmp_path / "run2"))
    assert second[0]["_record_hmac"] == first[0]["_record_hmac"]  # traceable across runs


def test_quarantine_hmac_uses_the_pseudonym_key_when_set(tmp_path, monkeypatch):
    import hashlib
    import hmac

    monkeypatch.setenv("PPMLOPS_PSEUDONYM_KEY", "q" * 32)
    src = tmp_path / "refused.csv"
    src.write_text("email,age,plan,consent,y\na@x,30,basic,yes,yes\nb@x,31,basic,no,no\nc@x,32,basic,yes,no\n")
    [row] = quarantine(ingest(small_spec(src), tmp_path / "run"))
    expected = hmac.new(b"q" * 32, b"ppmlops-quarantine-v1\x00" + "\x1f".join(["b@x", "31", "basic", "no", "no"]).encode(),
                        hashlib.sha256).hexdigest()
    assert row["_record_hmac"] == expected


def test_quarantine_stays_readable_at_the_default_csv_field_limit(tmp_path):
    import subprocess
    import sys

    src = tmp_path / "long.csv"
    src.write_text("email,age,plan,consent,y,notes\na@x,30,basic,yes,yes,short\n"
                   f'b@x,abc,basic,yes,no,"{"x" * 300_000}"\nc@x,32,basic,yes,no,ok\n')
    r = ingest(small_spec(src), tmp_path / "run", screen=DirectIdentifierScreen())
    # A fresh interpreter: this one raised csv's limit for reading sources.
    script = ("import csv,sys; rows=list(csv.DictReader(open(sys.argv[1], newline='', encoding='utf-8')));"
              "print(len(rows), len(rows[0]['notes']))")
    out = subprocess.run([sys.executable, "-c", script, r.quarantine_path], capture_output=True, text=True, check=True)
    n, width = map(int, out.stdout.split())
    assert n == 1 and width < 131072


def _earlier_run(runs: Path, spec, name: str, age_days: float) -> Path:
    """A finished earlier run of `spec` through the ingest stage, its quarantine file aged."""
    import os

    from ppmlops.stages import ingest as stage
    from ppmlops.run.context import RunContext, RunParams

    ctx = RunContext(spec, name, RunParams.defaults(spec))
    stage.run(ctx)
    q = ctx.store.private_dir / "quarantine.csv"
    old = time.time() - age_days * 86400
    os.utime(q, (old, old))
    return q


def test_old_quarantine_files_of_the_dataset_are_deleted_at_the_next_ingest(tmp_path, monkeypatch):
    from ppmlops.stages import ingest as stage
    from ppmlops.run.context import RunContext, RunParams

    monkeypatch.delenv("PPMLOPS_QUARANTINE_RETENTION_DAYS", raising=False)
    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path / "home"))
    src = tmp_path / "data.csv"
    src.write_text("email,age,plan,consent,y\na@x,30,basic,yes,yes\nb@x,31,basic,no,no\n")
    spec = small_spec(src)
    other_spec = spec.model_copy(update={"dataset": spec.dataset.model_copy(update={"id": "another_dataset"})})
    runs = tmp_path / "home" / "runs"
    monkeypatch.setenv("PPMLOPS_QUARANTINE_RETENTION_DAYS", "100000")  # keep everything while they are made
    old = _earlier_run(runs, spec, "run-old", 45)
    recent = _earlier_run(runs, spec, "run-recent", 3)
    other = _earlier_run(runs, other_spec, "run-other", 400)
    monkeypatch.delenv("PPMLOPS_QUARANTINE_RETENTION_DAYS")
    new = RunContext(spec, "run-new", RunParams.defaults(spec))
    r = ingest(spec, new.store.private_dir, earlier=stage.earlier_runs(new))
    assert r.quarantine_retention_days == 30 and r.quarantine_expired == [str(old)]
    assert not old.exists() and recent.exists() and other.exists()
    assert Path(r.quarantine_path).exists()
    monkeypatch.setenv("PPMLOPS_QUARANTINE_RETENTION_DAYS", "0")
    newer = RunContext(spec, "run-newer", RunParams.defaults(spec))
    r = ingest(spec, newer.store.private_dir, earlier=stage.earlier_runs(newer))
    # run-new wrote no ingest record (only the stage does): not a run folder to touch
    assert r.quarantine_expired == [str(recent)]
    assert other.exists() and (new.store.private_dir / "quarantine.csv").exists()


def test_a_bad_retention_setting_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("PPMLOPS_QUARANTINE_RETENTION_DAYS", "a month")
    src = tmp_path / "data.csv"
    src.write_text("email,age,plan,consent,y\na@x,30,basic,yes,yes\n")
    with pytest.raises(DataError, match=r"PPMLOPS_QUARANTINE_RETENTION_DAYS must be a whole number of days >= 0"):
        ingest(small_spec(src), tmp_path / "run")
