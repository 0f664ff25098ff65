"""The streaming scan: encodings, delimiters, malformed lines, empty files, chunking, equivalence classes."""

from __future__ import annotations

import csv
import hashlib
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ppmlops.data.reading import EncodingMismatch, SourceReader, detect_delimiter, detect_encoding
from ppmlops.errors import DataError
from ppmlops.risk.assess import assess_file
from ppmlops.risk.kanon import ClassCounter, class_stats, row_hashes
from ppmlops.risk.scan import SourceInput, scan_sources
from ppmlops.spec import Consent


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


PEOPLE = "name,email,age,city\n" + "".join(
    f"Person {i},p{i}@example.com,{20 + i % 50},{['Lyon', 'Graz', 'Cork'][i % 3]}\n" for i in range(60))


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_delimiter_is_detected(tmp_path, delimiter):
    path = write(tmp_path / "d.csv", PEOPLE.replace(",", delimiter))
    assert detect_delimiter(path) == delimiter
    reader = SourceReader(path)
    assert reader.header == ["name", "email", "age", "city"]
    rows = [r for chunk in reader for r in chunk.records]
    assert len(rows) == 60 and rows[0] == ["Person 0", "p0@example.com", "20", "Lyon"]


def test_quoted_delimiters_do_not_fool_detection(tmp_path):
    path = write(tmp_path / "q.csv", 'a,b,c\n"1;2;3",x,y\n"4;5;6",z,w\n')
    assert detect_delimiter(path) == ","


def test_utf8_latin1_and_cp1252_are_told_apart(tmp_path):
    text = "name,city\nJosé,Zürich\nRenée,Besançon\n"
    assert detect_encoding(write(tmp_path / "u.csv", text)) == "utf-8"
    assert detect_encoding(write(tmp_path / "w.csv", text + "Ärger,„Köln“\n", "cp1252")) == "cp1252"
    latin = tmp_path / "l.csv"
    latin.write_bytes(text.encode("latin-1") + b"ctrl\x81,x\n")  # 0x81 is undefined in cp1252
    assert detect_encoding(latin) == "latin-1"
    rows = [r for chunk in SourceReader(latin, encoding="latin-1") for r in chunk.records]
    assert rows[0] == ["José", "Zürich"]


def test_undecodable_byte_is_named_with_its_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(b"a,b\n" + b"x,y\n" * 5000 + "Jos\xe9,z\n".encode("latin-1"))
    with pytest.raises(EncodingMismatch, match=r"bad\.csv: line 5002: byte 0xe9 .*not valid UTF-8") as err:
        for _ in SourceReader(path):
            pass
    assert err.value.line == 5002


def test_malformed_lines_are_counted_with_line_numbers_and_quarantined(tmp_path):
    path = write(tmp_path / "m.csv", 'a,b,c\n1,2,3\n4,5\n"multi\nline",6,7\n8,9,10,11\n\n12,13,14\n')
    quarantine = tmp_path / "q" / "malformed.csv"
    data = scan_sources([SourceInput(path)], quarantine=quarantine)
    f = data.files[0]
    assert (f.rows_in, f.rows_malformed, f.malformed_lines) == (5, 2, [3, 6])
    assert data.rows_used == 3
    with open(quarantine, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["_line"], r["_reason"], r["_raw"]) for r in rows] == [
        ("3", "line 3 has 2 fields, the header has 3", "4,5"),
        ("6", "line 6 has 4 fields, the header has 3", "8,9,10,11"),
    ]
    assert f.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("content,message", [
    ("", "file is empty"), ("\n\n", "file is empty"), ("a,b\n", "has a header but no data rows"),
    ("a,,c\n1,2,3\n", "column 2 of the header has no name"), ("a,b,a\n1,2,3\n", r"header names columns more than once"),
])
def test_empty_and_broken_headers_are_named(tmp_path, content, message):
    path = write(tmp_path / "e.csv", content)
    with pytest.raises(DataError, match=rf"e\.csv: {message}"):
        scan_sources([SourceInput(path)])


def test_missing_file_and_missing_label_are_named(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: data source not found"):
        assess_file(tmp_path / "nope.csv")
    path = write(tmp_path / "p.csv", PEOPLE)
    with pytest.raises(DataError, match=r"p\.csv: label column 'income' is not in the file"):
        assess_file(path, label="income")
    with pytest.raises(DataError, match=r"p\.csv: feature column\(s\) \['salary'\] are not in the file"):
        assess_file(path, features=["age", "salary"])


def test_sample_does_not_depend_on_chunking(tmp_path):
    path = write(tmp_path / "p.csv", PEOPLE * 1)
    big = scan_sources([SourceInput(path)], sample_rows=17, chunk_rows=50_000)
    small = scan_sources([SourceInput(path)], sample_rows=17, chunk_rows=7)
    assert big.sample == small.sample and big.sample_rows == 17
    assert len(set(big.sample["email"])) == 17  # without replacement
    other = scan_sources([SourceInput(path)], sample_rows=17, seed=1)
    assert other.sample != big.sample


def test_refused_rows_never_reach_the_sample(tmp_path):
    lines = ["email,consent,purposes,expires"]
    for i in range(40):
        consent, purposes, expires = "yes", "training;analytics", ""
        if i % 4 == 1:
            consent = "no"
        elif i % 4 == 2:
            purposes = "marketing"
        elif i % 4 == 3:
            expires = "2020-01-01"
        lines.append(f"r{i}@example.com,{consent},{purposes},{expires}")
    path = write(tmp_path / "c.csv", "\n".join(lines) + "\n")
    rules = Consent(column="consent", purposes_column="purposes", expiry_column="expires")
    data = scan_sources([SourceInput(path)], consent=rules, as_of=date(2024, 1, 1), sample_rows=100)
    assert data.refusals() == {"expired": 10, "flag": 10, "purpose": 10}
    assert data.rows_used == 10 and data.rows_refused == 30
    assert sorted(data.sample["email"]) == sorted(f"r{i}@example.com" for i in range(0, 40, 4))


def test_parquet_is_scanned_in_batches(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"email": [f"u{i}@example.org" for i in range(500)],
                             "age": pa.array(list(range(500)), pa.int64())}), path, row_group_size=64)
    data = scan_sources([SourceInput.of(path)], chunk_rows=100, qi_columns=["age"], k=2)
    assert data.files[0].format == "parquet" and data.rows_used == 500 and data.sample_rows == 500
    assert data.classes.unique_rows == 500 and data.classes.rows_below_k == 500


def test_class_counter_matches_an_in_memory_group_by(tmp_path):
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"age": rng.integers(18, 90, 20_000).astype(str),
                       "zip": rng.integers(100, 130, 20_000).astype(str),
                       "sex": rng.choice(["f", "m"], 20_000)})
    expected = class_stats(df, ["age", "zip", "sex"], 5)
    counter = ClassCounter(["age", "zip", "sex"], expected_bytes=2 << 30, workdir=tmp_path)
    counter.BUFFER = 3000  # force many spills
    for start in range(0, len(df), 1234):
        part = df.iloc[start:start + 1234]
        counter.add(row_hashes([part["age"], part["zip"], part["sex"]]))
    assert len(list(tmp_path.glob("ppmlops-classes-*/*.u64"))) > 16  # partitions on disk
    got = counter.finish(5)
    assert got == expected
    assert not list(tmp_path.glob("ppmlops-classes-*"))  # the spill is removed


def test_streamed_k_anonymity_matches_the_snapshot_computation(adult_dir):
    report = assess_file(adult_dir / "train.csv", label="income", features=["age", "race", "sex", "native_country"])
    df = pd.read_csv(adult_dir / "train.csv", dtype=str, keep_default_na=False)
    expected = class_stats(df, ["age", "race", "sex", "native_country"], 5)
    r = report.reidentification
    assert (r["rows"], r["classes"], r["rows_below_k"], r["unique_rows"]) == (
        expected.rows, expected.classes, expected.rows_below_k, expected.unique_rows)


def test_a_class_of_exactly_k_is_k_anonymous():
    """k-anonymity: every class of size k or more is safe; only smaller ones count as below k."""
    frame = pd.DataFrame({"age": ["30"] * 5 + ["40"] * 4 + ["50"] * 6, "sex": ["f"] * 15})
    stats = class_stats(frame, ["age", "sex"], 5)
    assert (stats.classes_below_k, stats.rows_below_k, stats.smallest_class) == (1, 4, 4)
    counter = ClassCounter(["age", "sex"])
    counter.add(row_hashes([frame["age"], frame["sex"]]))
    streamed = counter.finish(5)
    assert (streamed.classes_below_k, streamed.rows_below_k) == (1, 4)


def test_text_hashes_depend_on_the_value_alone():
    """A value hashes the same in any array (widths, slices, chunks); different values differ."""
    import pyarrow as pa

    from ppmlops.risk.kanon import text_hashes

    values = ["", "a", "ab", "abcdefgh", "abcdefghi", "é", "zip 10115", "0" * 40, "0" * 39, None]
    alone = [int(text_hashes(pa.array([v], pa.string()))[0]) for v in values]
    assert len(set(alone)) == len(values)
    together = text_hashes(pa.array(values, pa.string())).tolist()
    assert together == alone
    sliced = pa.array(["padding that is long", *values], pa.string()).slice(1)
    assert text_hashes(sliced).tolist() == alone
    chunked = pa.chunked_array([pa.array(values[:4], pa.string()), pa.array(values[4:], pa.string())])
    assert text_hashes(chunked).tolist() == alone
    same_width = pa.array(["10115", "80331", "10115"], pa.string())  # one width: hashed as read
    assert text_hashes(same_width).tolist() == [int(text_hashes(pa.array([v]))[0]) for v in ["10115", "80331", "10115"]]
    many = text_hashes(pa.array([str(i) for i in range(200_000)], pa.string()))
    assert len(np.unique(many)) == 200_000
