"""Data windows: each run of a scheduled pipeline reads the rows of its own data interval."""

from __future__ import annotations

import copy
import csv
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from ppmlops.privacy.split import LEGACY_RULE
from ppmlops.data.ingest import ingest
from ppmlops.data.synthetic import generate
from ppmlops.window import DataInterval, RowWindow, parse_timestamp
from ppmlops.errors import DataError, SpecError
from ppmlops.spec import parse_spec

UTC = timezone.utc
WEEK = timedelta(days=7)
MONDAY = datetime(2026, 11, 2, tzinfo=UTC)

SPEC = {
    "name": "weekly",
    "schedule": "@weekly",
    "dataset": {
        "id": "weekly",
        "source": {"path": "PLACEHOLDER"},
        "label": {"column": "y", "positive": "yes", "values": ["yes", "no"]},
        "consent": {"column": "consent", "expiry_column": "consent_expires"},
        "features": [{"name": "age", "type": "numeric", "range": [18, 90]}],
        "window": {"column": "seen_at"},
    },
    "privacy": {"epsilon": 1.0, "delta": 1e-5, "run_epsilon": 1.0},
    "training": {"test_fraction": 0.5, "seed": 0},
    "deploy": {"model_name": "weekly"},
}


def spec_for(path: Path | str, **window):
    doc = copy.deepcopy(SPEC)
    doc["dataset"]["source"] = {"path": str(path)}
    if window:
        doc["dataset"]["window"] = window
    return parse_spec(doc)


def write(path: Path, rows: list[tuple], expires: str = "2030-01-01") -> Path:
    """rows: (seen_at, age, label[, consent expiry]); consent runs until `expires` by default."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["seen_at", "age", "consent", "consent_expires", "y"])
        for seen, age, y, *until in rows:
            w.writerow([seen, age, "yes", until[0] if until else expires, y])
    return path


def filler(day: datetime, n: int = 10, age: int = 60) -> list[tuple]:
    """Enough well-formed rows on `day` that both partitions of the hash split get some."""
    return [((day + timedelta(minutes=i)).isoformat(), age, "yes" if i % 2 else "no") for i in range(n)]


def weeks_of_rows(path: Path) -> Path:
    """Ten rows in each of three weeks from MONDAY, ages 20+week so the week is visible in the snapshot."""
    rows = [((MONDAY + w * WEEK + timedelta(hours=7 * i)).isoformat(), 20 + w, "yes" if i % 2 else "no")
            for w in range(3) for i in range(10)]
    return write(path, rows)


def ages(result) -> set[int]:
    frames = [pd.read_parquet(p) for p in (result.snapshot_train, result.snapshot_test)]
    return set(pd.concat(frames)["age"].astype(int))


def test_each_interval_reads_its_own_rows(tmp_path):
    spec = spec_for(weeks_of_rows(tmp_path / "events.csv"))
    seen = []
    for w in range(3):
        interval = DataInterval(MONDAY + w * WEEK, MONDAY + (w + 1) * WEEK)
        r = ingest(spec, tmp_path / f"run{w}", interval=interval)
        assert ages(r) == {20 + w}
        assert r.rows_staged == 10 and r.rows_outside_window == 20 and r.rows_in == 30
        assert r.window == RowWindow("column", "seen_at", interval.start, interval.end)
        seen.append(r.sha256)
    assert len(set(seen)) == 3


def test_the_interval_is_half_open(tmp_path):
    end = MONDAY + WEEK
    path = write(tmp_path / "edge.csv", [(MONDAY.isoformat(), 30, "yes"), (end.isoformat(), 31, "no"),
                                          ((end - timedelta(microseconds=1)).isoformat(), 32, "no")])
    # Two rows in the interval: under the legacy split rule one lands in each partition (ingest
    # refuses a run whose training partition is empty, which is not what this test is about).
    r = ingest(spec_for(path), tmp_path / "run", interval=DataInterval(MONDAY, end), split_rule=LEGACY_RULE)
    assert ages(r) == {30, 32}


def test_lookback_slides_with_the_interval_end(tmp_path):
    spec = spec_for(weeks_of_rows(tmp_path / "events.csv"), column="seen_at", lookback="P14D")
    # A weekly run at the end of week 3 reads weeks 2 and 3, whatever the interval's start.
    r = ingest(spec, tmp_path / "run", interval=DataInterval(MONDAY + 2 * WEEK, MONDAY + 3 * WEEK))
    assert ages(r) == {21, 22}
    assert r.window.start == MONDAY + WEEK


def test_timestamps_with_zones_and_dates_compare_in_utc(tmp_path):
    path = write(tmp_path / "zones.csv", [("2026-11-08T23:30:00-02:00", 40, "yes"),  # 01:30 UTC on the 9th
                                           ("2026-11-08", 41, "no"), ("2026-11-08T23:59:59Z", 42, "no")])
    r = ingest(spec_for(path), tmp_path / "run", interval=DataInterval(MONDAY, MONDAY + WEEK))
    assert ages(r) == {41, 42}


def test_a_row_without_a_timestamp_is_quarantined_with_the_reason(tmp_path):
    path = write(tmp_path / "bad.csv", [("last tuesday", 31, "no"), ("", 32, "no"), ("２０２６-11-03", 33, "yes")]
                 + filler(MONDAY))
    r = ingest(spec_for(path), tmp_path / "run", interval=DataInterval(MONDAY, MONDAY + WEEK))
    assert r.rows_staged == 10 and r.rows_quarantined == 3
    with open(r.quarantine_path, newline="") as fh:
        reasons = [q["_reason"] for q in csv.DictReader(fh)]
    assert reasons == ["column seen_at: not an ISO 8601 date or date-time (the run's window needs one)"] * 3
    assert r.rows_in == r.rows_staged + r.rows_quarantined + r.rows_outside_window


def test_consent_is_judged_as_of_the_interval_end(tmp_path):
    """A backfill of an old week keeps the rows whose consent was valid then, not today."""
    rows = [((MONDAY + timedelta(days=1)).isoformat(), 30 + i, "yes" if i % 2 else "no", "2026-11-06")
            for i in range(6)] + filler(MONDAY)
    spec = spec_for(write(tmp_path / "consent.csv", rows))
    early = ingest(spec, tmp_path / "early", interval=DataInterval(MONDAY, MONDAY + timedelta(days=4)))
    assert early.consent_as_of == "2026-11-05" and early.rows_staged == 16
    late = ingest(spec, tmp_path / "late", interval=DataInterval(MONDAY, MONDAY + WEEK))
    assert late.consent_as_of == "2026-11-08" and late.rows_staged == 10
    assert late.consent_refusals == {"expired": 6}


def test_partitioned_paths_read_the_interval_file(tmp_path):
    for w in range(2):
        day = (MONDAY + w * WEEK).date()
        write(tmp_path / f"events-{day:%Y-%m-%d}.csv", filler(MONDAY + w * WEEK, age=50 + w))
    spec = spec_for(tmp_path / "events-{start:%Y-%m-%d}.csv", partition=True)
    r = ingest(spec, tmp_path / "run", interval=DataInterval(MONDAY + WEEK, MONDAY + 2 * WEEK))
    assert ages(r) == {51}
    assert r.sources[0]["path"].endswith("events-2026-11-09.csv")
    assert r.window.mode == "partition" and r.window.start == MONDAY + WEEK
    with pytest.raises(DataError, match=r"events-2026-11-16\.csv: data source not found"):
        ingest(spec, tmp_path / "missing", interval=DataInterval(MONDAY + 2 * WEEK, MONDAY + 3 * WEEK))


def test_whole_table_reads_every_row_whatever_the_interval(tmp_path):
    spec = spec_for(weeks_of_rows(tmp_path / "events.csv"), whole_table=True)
    r = ingest(spec, tmp_path / "run", interval=DataInterval(MONDAY, MONDAY + WEEK))
    assert ages(r) == {20, 21, 22} and r.rows_outside_window == 0
    assert r.window == RowWindow() and r.window.text() == "the whole table"


def test_a_run_without_an_interval_reads_up_to_now(tmp_path):
    spec = spec_for(weeks_of_rows(tmp_path / "events.csv"))
    r = ingest(spec, tmp_path / "run")
    assert ages(r) == {20, 21, 22} and r.window.start is None
    assert datetime.now(UTC) - r.window.end < timedelta(minutes=5)


def test_generated_demo_rows_span_the_weeks_before_the_day_it_is_made():
    df = generate(2000, 7, event_weeks=4, made_on=date(2026, 11, 30))
    t = pd.to_datetime(df["event_time"], utc=True)
    assert t.max() < pd.Timestamp("2026-11-30", tz="UTC") <= t.min() + pd.Timedelta(days=28)
    assert t.dt.isocalendar().week.nunique() >= 4


@pytest.mark.parametrize("text,expected", [
    ("2026-11-02", datetime(2026, 11, 2, tzinfo=UTC)),
    ("2026-11-02T10:00:00Z", datetime(2026, 11, 2, 10, tzinfo=UTC)),
    ("2026-11-02 10:00:00+01:00", datetime(2026, 11, 2, 9, tzinfo=UTC)),
    (" 2026-11-02T10:00 ", datetime(2026, 11, 2, 10, tzinfo=UTC)),
    ("02/11/2026", None), ("2026-13-01", None), ("1604311200", None), ("", None), ("٢٠٢٦-11-02", None),
])
def test_parse_timestamp(text, expected):
    assert parse_timestamp(text) == expected


# --------------------------------------------------------------------------- the spec


def error_of(doc) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(doc)
    return str(info.value)


def test_a_scheduled_pipeline_must_declare_its_window():
    doc = copy.deepcopy(SPEC)
    doc["dataset"]["source"]["path"] = "/tmp/x.csv"
    del doc["dataset"]["window"]
    assert "a scheduled pipeline must say which rows each run reads" in error_of(doc)
    del doc["schedule"]
    assert parse_spec(doc).dataset.window is None  # manual-only pipelines may omit it


@pytest.mark.parametrize("window,message", [
    ({}, "a window is exactly one of"),
    ({"column": "seen_at", "whole_table": True}, "a window is exactly one of"),
    ({"whole_table": True, "lookback": "P7D"}, "lookback needs a window column"),
    ({"column": "seen_at", "lookback": "-P7D"}, "lookback must be positive"),
    ({"column": "age"}, "dataset.window.column 'age' is also a feature"),
    ({"column": "consent"}, "is also a feature, the label or a consent column"),
    ({"partition": True}, r"needs {start:FORMAT} or {end:FORMAT} in the source path"),
])
def test_window_mistakes_are_named(window, message):
    doc = copy.deepcopy(SPEC)
    doc["dataset"]["source"]["path"] = "/tmp/x.csv"
    doc["dataset"]["window"] = window
    assert message in error_of(doc)


@pytest.mark.parametrize("template,shown", [
    ("events-{start:%Y-%m-%d}-{week}.csv", "{week} is not allowed"),
    ("events-{start.__class__.__mro__}.csv", "{start.__class__.__mro__} is not allowed"),
    ("events-{end.year}.csv", "{end.year} is not allowed"),
    ("events-{start[0]}.csv", "{start[0]} is not allowed"),
    ("events-{0}-{start:%Y}.csv", "{0} is not allowed"),
    ("events-{start!r}.csv", "{start!r} is not allowed"),
    ("events-{start:{end}}.csv", "a FORMAT is strftime codes only"),
    ("events-{start:%Y.csv", "unmatched '{'"),
])
def test_a_partition_template_allows_only_start_and_end_with_strftime_formats(template, shown):
    """str.format would expand attribute access in a spec's path (`{start.__class__.__mro__}`):
    refused when the spec is read, naming the field."""
    doc = copy.deepcopy(SPEC)
    doc["dataset"]["source"] = {"path": "/data/" + template}
    doc["dataset"]["window"] = {"partition": True}
    message = error_of(doc)
    assert "dataset.source.path: partition template" in message and shown in message


def test_a_partition_template_in_the_test_source_is_checked_too():
    doc = copy.deepcopy(SPEC)
    doc["dataset"]["source"] = {"path": "/data/train-{start:%Y}.csv"}
    doc["dataset"]["test_source"] = {"path": "/data/test-{start.__init__}.csv"}
    doc["dataset"]["window"] = {"partition": True}
    assert "dataset.test_source.path: partition template: {start.__init__} is not allowed" in error_of(doc)


def test_a_template_that_reaches_the_formatter_unchecked_is_still_refused(tmp_path):
    """A variable's value is expanded after the spec's check: the formatter checks again and
    never follows an attribute. strftime codes, ${NAME} variables and {{ }} escapes still work."""
    from ppmlops.window import format_partition

    interval = DataInterval(MONDAY, MONDAY + WEEK)
    with pytest.raises(ValueError, match="is not allowed"):
        format_partition("/d/{start.__class__.__mro__}.csv", interval)
    spec = spec_for("${PPMLOPS_DATA:-" + str(tmp_path) + "}/{start:%Y/%m-%d}_{end:%d}{{x}}.csv", partition=True)
    assert spec.dataset.source.resolved_path(interval).name == "11-02_09{x}.csv"


def test_the_partition_is_confined_to_the_data_roots(tmp_path, monkeypatch):
    monkeypatch.setenv("PPMLOPS_DATA_ROOTS", str(tmp_path / "data"))
    (tmp_path / "data").mkdir()
    spec = spec_for(str(tmp_path / "data" / "{start:../%Y}.csv"), partition=True)
    with pytest.raises(SpecError, match="outside the data roots"):
        spec.dataset.source.resolved_path(DataInterval(MONDAY, MONDAY + WEEK))
