"""Bad input at ingest (issue 26): headers that differ from the spec in letter case, undeclared
identifier columns, a source that changes while it is read, UTF-16 files."""

from __future__ import annotations

import copy
import csv
import logging
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ppmlops.data import ingest as ingest_mod
from ppmlops.data.ingest import ingest
from ppmlops.data.reading import SourceChanged
from ppmlops.errors import DataError
from ppmlops.risk.screen import DirectIdentifierScreen
from ppmlops.spec import parse_spec

SPEC = {
    "name": "people",
    "dataset": {
        "id": "people",
        "source": {"path": "PLACEHOLDER"},
        "label": {"column": "y", "positive": "yes", "values": ["yes", "no"]},
        "consent": {"column": "consent"},
        "identifiers": ["email", "name"],
        "features": [
            {"name": "age", "type": "numeric", "range": [18, 90]},
            {"name": "plan", "type": "categorical", "categories": ["basic", "premium"]},
        ],
    },
    "privacy": {"epsilon": 1.0, "delta": 1e-5, "run_epsilon": 1.0},
    "training": {"test_fraction": 0.5, "seed": 0},
    "deploy": {"model_name": "people"},
}

GIVEN = ["Olivia", "Liam", "Emma", "Noah", "Sofia", "Lucas", "Mia", "Elias", "James", "Maria"]
FAMILY = ["Smith", "Garcia", "Jones", "Brown", "Miller", "Davis", "Wilson", "Moore", "Taylor", "Clark"]


def spec_for(path: Path, **source):
    doc = copy.deepcopy(SPEC)
    doc["dataset"]["source"] = {"path": str(path), **source}
    return parse_spec(doc)


def people(path: Path, header: list[str], rows: int = 30, bad_every: int = 2, extra=None) -> Path:
    """A table of `rows` people with e-mails and names; every `bad_every`-th row has a bad age
    (quarantined with its other columns). `extra(i)` gives the values of extra header columns."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for i in range(rows):
            given, family = GIVEN[i % 10], FAMILY[(i // 10) % 10]
            values = {"email": f"{given.lower()}.{family.lower()}{i}@example.org", "name": f"{given} {family}",
                      "age": "abc" if i % bad_every == 0 else str(20 + i % 50), "plan": "basic", "consent": "yes",
                      "y": "yes" if i % 3 else "no"}
            w.writerow([values[h.lower()] if h.lower() in values else extra(i)[h] for h in header])
    return path


def read_quarantine(result) -> tuple[list[dict[str, str]], str]:
    text = Path(result.quarantine_path).read_text(encoding="utf-8")
    with open(result.quarantine_path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh)), text


# --------------------------------------------------------------------------- item 5: letter case, undeclared identifiers


def test_declared_identifiers_spelt_in_another_case_never_reach_quarantine(tmp_path):
    """Issue 26, 5: `Email` and `NAME` in the file, `email` and `name` in the spec: they are the
    spec's identifiers, dropped; no raw e-mail or name is written anywhere."""
    src = people(tmp_path / "people.csv", ["Email", "NAME", "AGE", "Plan", "consent", "y"])
    r = ingest(spec_for(src), tmp_path / "run")
    rows, text = read_quarantine(r)
    assert r.rows_quarantined == 15 and len(rows) == 15
    assert "@example.org" not in text and not any(f"{g} " in text for g in GIVEN)
    assert set(rows[0]) == {"age", "plan", "consent", "y", "_source", "_line", "_reason", "_record_hmac", "_fields"}
    assert r.renamed_columns == {"Email": "email", "NAME": "name", "AGE": "age", "Plan": "plan"}
    assert r.rows_train + r.rows_test == 15  # the features matched too


def test_two_header_columns_differing_only_in_case_are_an_error_naming_both(tmp_path):
    src = people(tmp_path / "people.csv", ["email", "Email", "name", "age", "plan", "consent", "y"])
    with pytest.raises(DataError, match=r"people\.csv: columns 'email' and 'Email' differ only in letter case and "
                                        r"both match the spec's column 'email'"):
        ingest(spec_for(src), tmp_path / "run")
    assert not (tmp_path / "run" / "quarantine.csv").exists()
    src = people(tmp_path / "people2.csv", ["EMAIL", "Email", "name", "age", "plan", "consent", "y"])
    with pytest.raises(DataError, match=r"columns 'EMAIL' and 'Email' differ only in letter case"):
        ingest(spec_for(src), tmp_path / "run")


def test_undeclared_identifier_columns_are_left_out_by_name_or_values_and_said_so(tmp_path, caplog):
    """Columns the spec does not declare: one whose name says phone, one of e-mails under an
    innocent name, one of free text that holds an e-mail in one row, one harmless."""
    def extra(i):
        return {"Phone_Number": f"+44 20 7946 {i:04d}", "contact": f"someone{i}@example.net",
                "notes": f"Asked to be called back at x{i}@example.com" if i == 4 else "no remarks today at all",
                "segment": "retail"}

    src = people(tmp_path / "people.csv", ["email", "name", "age", "plan", "consent", "y",
                                           "Phone_Number", "contact", "notes", "segment"], extra=extra)
    with caplog.at_level(logging.WARNING, logger="ppmlops.data.ingest"):
        r = ingest(spec_for(src), tmp_path / "run", screen=DirectIdentifierScreen())
    rows, text = read_quarantine(r)
    assert "@example.net" not in text and "@example.com" not in text and "7946" not in text
    assert "Phone_Number" not in rows[0] and "contact" not in rows[0]
    assert set(r.quarantine_withheld) == {"Phone_Number", "contact"}
    assert "by its name" in r.quarantine_withheld["Phone_Number"]
    assert "e-mail" in r.quarantine_withheld["contact"] and "by its values" in r.quarantine_withheld["contact"]
    by_line = {q["_line"]: q for q in rows}
    assert by_line["6"]["notes"] == "[withheld: looks like email]"  # row i=4 is on line 6
    assert by_line["4"]["notes"] == "no remarks today at all" and by_line["4"]["segment"] == "retail"
    assert r.quarantine_cells_withheld == {"notes": {"email": 1}}
    logged = caplog.text
    # The public log names a column judged by its name (the header is public) but not one
    # judged by its values: that is a fact about private rows, kept in the private record.
    assert "column Phone_Number (not declared in the spec) is left out of the quarantine file" in logged
    assert "column contact (not declared" not in logged and "e-mail" not in logged
    assert "@example" not in logged


def test_without_a_screen_no_undeclared_column_is_kept(tmp_path):
    src = people(tmp_path / "people.csv", ["email", "name", "age", "plan", "consent", "y", "contact"],
                 extra=lambda i: {"contact": f"someone{i}@example.net"})
    r = ingest(spec_for(src), tmp_path / "run")
    rows, text = read_quarantine(r)
    assert "contact" not in rows[0] and "@example" not in text
    assert r.quarantine_withheld == {"contact": "no identifier screen was given to judge it"}


def test_the_ingest_stage_screens_undeclared_columns(tmp_path, monkeypatch):
    """The pipeline's ingest stage hands PRAM's screen in: a harmless undeclared column is kept."""
    from ppmlops.stages import ingest as stage
    from ppmlops.run.context import RunContext, RunParams

    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path / "home"))
    src = people(tmp_path / "people.csv", ["Email", "name", "age", "plan", "consent", "y", "contact", "segment"],
                 extra=lambda i: {"contact": f"someone{i}@example.net", "segment": "retail"})
    spec = spec_for(src)
    ctx = RunContext(spec, "run-1", RunParams.defaults(spec))
    stage.run(ctx)
    text = (ctx.store.private_dir / "quarantine.csv").read_text()
    assert "@example" not in text and "retail" in text


# --------------------------------------------------------------------------- item 6: a source that changes while read


def _truncate_at_first_chunk(monkeypatch, path: Path, keep: float) -> None:
    """Cut the file to `keep` of its size once ingest has taken its first chunk: a writer that
    rewrites the file while the run reads it."""
    original = ingest_mod._IngestRun._chunk
    done = []

    def chunk(self, n, reader, rows):
        if not done:
            done.append(True)
            size = path.stat().st_size
            with open(path, "r+b") as fh:
                fh.truncate(int(size * keep))
        return original(self, n, reader, rows)

    monkeypatch.setattr(ingest_mod._IngestRun, "_chunk", chunk)


def test_a_csv_truncated_while_it_is_read_fails_naming_the_file_and_stages_nothing(tmp_path, monkeypatch):
    """Issue 26, 6: a 60,000-row file (past the reader's 1 MiB buffer) cut to half after the first
    chunk: before, rows_in came out near half with one "malformed line" and no error."""
    src = people(tmp_path / "big.csv", ["email", "name", "age", "plan", "consent", "y"], rows=60_000, bad_every=97)
    size = src.stat().st_size
    assert size > 2 * 2**20
    _truncate_at_first_chunk(monkeypatch, src, 0.5)
    run = tmp_path / "run"
    with pytest.raises(SourceChanged) as info:
        ingest(spec_for(src), run, chunk_rows=1000)
    message = str(info.value)
    assert message.startswith(f"{src}: the file changed while it was being read (size ")
    assert f"{size / 1e6:.1f} MB -> {size // 2 / 1e6:.1f} MB" in message
    assert message.endswith("nothing was staged; re-run when the file is complete")
    assert info.value.transient and isinstance(info.value, DataError)
    assert sorted(p.name for p in run.iterdir()) == []  # no snapshot, no quarantine, no temporary file


def test_a_parquet_source_replaced_while_it_is_read_fails(tmp_path, monkeypatch):
    src = tmp_path / "people.parquet"
    n = 400
    table = pa.table({"email": [f"p{i}@x.org" for i in range(n)], "name": ["A B"] * n, "age": [30 + i % 40 for i in range(n)],
                      "plan": ["basic"] * n, "consent": ["yes"] * n, "y": ["yes" if i % 2 else "no" for i in range(n)]})
    pq.write_table(table, src)
    original = ingest_mod._IngestRun._chunk

    def chunk(self, i, reader, rows):
        if reader.rows_in <= 100:  # the first chunk: another export lands on the same path
            pq.write_table(table.slice(0, 10), tmp_path / "new.parquet")
            os.replace(tmp_path / "new.parquet", src)
        return original(self, i, reader, rows)

    monkeypatch.setattr(ingest_mod._IngestRun, "_chunk", chunk)
    with pytest.raises(SourceChanged, match=r"people\.parquet: the file changed while it was being read \(it was "
                                            r"replaced by another file"):
        ingest(spec_for(src), tmp_path / "run", chunk_rows=100)
    assert list((tmp_path / "run").iterdir()) == []


def test_a_file_written_to_without_a_size_change_is_caught(tmp_path):
    """The before/after comparison itself: same size, new modification time."""
    from ppmlops.data.reading import SourceReader

    src = people(tmp_path / "people.csv", ["email", "name", "age", "plan", "consent", "y"])
    reader = SourceReader(src)
    chunks = iter(reader)
    next(chunks)
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with pytest.raises(SourceChanged, match=r"same size .*, but it was written to"):
        next(chunks)


def test_a_changed_source_is_retried_by_airflow_and_bad_data_is_not():
    """A file still being written can be complete at the next try; a bad file cannot."""
    from ppmlops.airflow.tasks import retried

    assert retried(SourceChanged("x: the file changed while it was being read"))
    assert not retried(DataError("x: missing column(s)"))


# --------------------------------------------------------------------------- item 8: UTF-16


@pytest.mark.parametrize("codec,declared,says", [
    ("utf-16", "utf-8", "is UTF-16 (it starts with a UTF-16LE byte-order mark)"),
    ("utf-16", "latin-1", "is UTF-16 (it starts with a UTF-16LE byte-order mark)"),
    ("utf-16-be", "cp1252", "is UTF-16 (no byte-order mark, but every other byte is NUL)"),
    ("utf-32", "utf-8", "is UTF-32 (it starts with a UTF-32LE byte-order mark)"),
])
def test_a_utf16_file_is_named_as_such_with_how_to_convert_it(tmp_path, codec, declared, says):
    """Issue 26, 8: before, UTF-8 gave "set source.encoding to latin-1 or cp1252" (which cannot
    read it) and latin-1 decoded it into NUL-riddled column names."""
    src = tmp_path / "export.csv"
    src.write_bytes("email,name,age,plan,consent,y\na@x.org,Ann Lee,30,basic,yes,yes\n".encode(codec))
    with pytest.raises(DataError) as info:
        ingest(spec_for(src, encoding=declared), tmp_path / "run")
    message = str(info.value)
    assert message.startswith(f"{src}: the file {says}")
    assert "iconv -f UTF-" in message and "-t UTF-8 export.csv > export.utf8.csv" in message
    assert "latin-1 or cp1252 if" not in message
