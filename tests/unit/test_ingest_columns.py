"""Column-wise ingest (issue 28, item 3): each vectorised step gives what the row-wise step it
replaced gives, value for value and bit for bit."""

from __future__ import annotations

import math
import random
import struct
from datetime import date

import numpy as np
import pytest
import pyarrow as pa
import pyarrow.compute as pc

from ppmlops.data.consent import ConsentRules
from ppmlops.data.ingest import (
    _NUMBER, _PLAIN_NUMBER, _canonical_columns, _canonical_rows,
)
from ppmlops.spec import Consent


def test_the_split_comparison_is_exact_at_the_edges():
    """A uint64 draw against the fraction, in float64 as in Python's int / int."""
    draws = [0, 1, 2**53 - 1, 2**53 + 1, 2**63 - 1, 2**63, 2**63 + 1, 2**64 - 2**11 - 1, 2**64 - 1]
    rng = random.Random(2)
    draws += [rng.getrandbits(64) for _ in range(100_000)]
    fractions = [0.2, 0.5, (2**53 + 1) / 2**64, 1 - 2**-53, 2**-60]
    arr = np.frombuffer(b"".join(d.to_bytes(8, "big") for d in draws), dtype=">u8").astype(np.float64) / 2.0**64
    for f in fractions + [d / 2**64 for d in draws[:9]]:
        assert (arr < f).tolist() == [d / 2**64 < f for d in draws]


def _floats() -> list[float]:
    rng = random.Random(3)
    special = [0.0, -0.0, 1.0, 30.0, 1e15, 1e16, 1e-4, 1e-5, 123456789012345.6, 5e-324, 1.7976931348623157e308,
               0.1, 1 / 3, 2.5e-7, 1e22, -42.31]
    randoms = [struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0] for _ in range(3000)]
    money = [round(rng.lognormvariate(3.5, 0.6), rng.randint(0, 4)) for _ in range(3000)]
    return special + [x for x in randoms if math.isfinite(x)] + money


@pytest.mark.parametrize("joined_in", ["C", "pyarrow"])
def test_canonical_columns_write_what_the_row_writer_writes(joined_in, monkeypatch):
    """Whether the rows' texts are joined by the C extension (ppmlops/data/_rowtext.c) or by
    pyarrow, and for slices whose arrays start mid-buffer."""
    from ppmlops.data import ingest

    if joined_in == "C":
        assert ingest._join_rows is not None, "ppmlops.data._rowtext was not built (see docs/development.md)"
    else:
        monkeypatch.setattr(ingest, "_join_rows", None)
    rng = random.Random(4)
    xs = _floats()
    n = len(xs)
    words = ["basic", "", "a,b", 'say "hi"', "two\nlines", "cr\ronly", "café", " spaced ", "\u2028", "tab\there"]
    text = [rng.choice(words) for _ in range(n)]
    ints = np.array([float(rng.randint(0, 120)) for _ in range(n)])
    columns = [np.array(xs), pa.array(text), ints, pa.array([rng.choice(["yes", "no"]) for _ in range(n)])]
    rows = zip(*(c.tolist() if isinstance(c, np.ndarray) else c.to_pylist() for c in columns))
    assert _canonical_columns(columns) == _canonical_rows(rows).encode("utf-8")
    # from Parquet, the same columns as pyarrow arrays
    assert _canonical_columns([pa.array(c) if isinstance(c, np.ndarray) else c for c in columns]) == \
        _canonical_columns(columns)
    start, stop = 1234, n - 777  # arrays that start mid-buffer, as a partition's taken rows may
    sliced = [c[start:stop] for c in columns]
    rows = zip(*(c.tolist() if isinstance(c, np.ndarray) else c.to_pylist() for c in sliced))
    assert _canonical_columns(sliced) == _canonical_rows(rows).encode("utf-8")
    assert _canonical_columns([pa.array(["", ""]), pa.array(["", ""])]) == b",\n,\n"  # empty values: no data buffer
    assert _canonical_columns([np.array(xs)]) is None  # one column: left to the row writer
    assert _canonical_columns([pa.array([1, 2]), pa.array(["a", "b"])]) is None  # not float64 or text


def test_pyarrow_reads_plain_numbers_as_python_does():
    """The accepted numbers' doubles: pyarrow's cast of text in the _NUMBER form is float()."""
    rng = random.Random(5)
    texts = ["+5", ".5", "5.", "1e400", "-0", "1E+05", "00012", "1e-400", "-.5e-3", "0.1", "9007199254740993",
             "2.2250738585072011e-308", "4.9406564584124654e-324", "1.7976931348623159e308", "0.30000000000000004"]
    for _ in range(50_000):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 25)))
        cut = rng.randint(0, len(digits))
        t = digits[:cut] + ("." if rng.random() < 0.7 else "") + digits[cut:]
        if rng.random() < 0.3:
            t += rng.choice("eE") + rng.choice(["", "+", "-"]) + str(rng.randint(0, 330))
        texts.append(rng.choice(["", "-", "+"]) + t)
    texts = [t for t in texts if _NUMBER.fullmatch(t)]
    arr = pa.array(texts)
    assert pc.all(pc.match_substring_regex(arr, _PLAIN_NUMBER)).as_py()
    got = pc.cast(arr, pa.float64()).to_numpy()
    expected = np.array([float(t) for t in texts])
    assert got.view(np.int64).tolist() == expected.view(np.int64).tolist()
    assert not pc.any(pc.match_substring_regex(pa.array([" 5", "5 ", "1_000", "\u0663", "nan", "inf", "0x1", ""]),
                                               _PLAIN_NUMBER)).as_py()


def test_consent_refusals_are_check_per_row():
    rng = random.Random(6)
    header = ["consent", "purposes", "until"]
    rules = ConsentRules(Consent(column="consent", purposes_column="purposes", expiry_column="until"), header,
                         date(2024, 6, 1))
    values = {
        0: ["yes", "Yes", " yes ", "no", "", "true", "y", "YES\t"],
        1: ["training", "training;analytics", "analytics", "", " TRAINING ", "training|marketing", ";;"],
        2: ["2030-01-01", "", "2023-12-31", "soon", "2024-06-01T23:59:00Z", "2024-05-31", " 2024-06-01 "],
    }
    records = [[rng.choice(values[i]) for i in range(3)] for _ in range(5000)]
    columns = {i: pa.array([r[i] for r in records]) for i in range(3)}
    codes, found = rules.refusals(columns.__getitem__, len(records))
    assert [None if c < 0 else found[c] for c in codes] == [rules.check(r) for r in records]


def test_the_refusals_macs_are_record_hmac_for_any_key_length():
    from ppmlops.data.quarantine import _RecordMacs, record_hmac

    rng = random.Random(5)
    records = [["".join(rng.choice("ab1é€ ,") for _ in range(rng.randint(0, 30))) for _ in range(rng.randint(1, 6))]
               for _ in range(200)]
    for size in (0, 1, 16, 32, 63, 64, 65, 200):
        key = bytes(rng.getrandbits(8) for _ in range(size))
        got = list(_RecordMacs(key).hexdigests(["\x1f".join(r).encode("utf-8") for r in records]))
        assert got == [record_hmac(key, r) for r in records]


def test_refusals_written_together_are_the_rows_refused_writes_one_by_one(tmp_path):
    """refused_many puts each row's line and MAC between text it renders once per (source,
    reason): the file must be the one csv.writer makes row by row, quoting included."""
    from pathlib import Path

    from ppmlops.data.quarantine import QuarantineWriter

    rng = random.Random(8)
    key = b"k" * 32
    headers = [["email", "age", "plan", "consent"], ["age", "extra,col", "consent", "note"]]
    sources = [Path('/data/a "quoted", file.csv'), Path("/data/plain.csv")]
    reasons = ["consent column consent is 'no'", 'purpose "training" not granted, see policy', "plain"]
    rows = [(rng.choice(sources), rng.randint(2, 10**6), rng.choice(reasons),
             [rng.choice(["x", "é,", '"q"', ""]) for _ in range(4)]) for _ in range(300)]
    one = QuarantineWriter(tmp_path / "one.csv", headers, ["email"], key)
    many = QuarantineWriter(tmp_path / "many.csv", headers, ["email"], key)
    for source, line, reason, record in rows:
        one.refused(source, line, reason, record)
    for source in sources:  # refused_many takes one source's rows at a time
        mine = [r for r in rows if r[0] == source]
        many.refused_many(source, [r[1] for r in mine], [r[2] for r in mine],
                          ["\x1f".join(r[3]).encode("utf-8") for r in mine])
    one.commit()
    many.commit()
    by_source = sorted(range(len(rows)), key=lambda i: sources.index(rows[i][0]))
    one_lines = (tmp_path / "one.csv").read_text().splitlines()
    assert (tmp_path / "many.csv").read_text().splitlines() == [one_lines[0]] + [one_lines[1 + i] for i in by_source]


def test_a_category_column_is_judged_and_staged_as_check_does():
    """_in_set: per row whether value.strip() is a declared category, and value.strip() to stage,
    for a column of only good values (the fast path), one with spaces and one with bad values."""
    from ppmlops.data.ingest import _in_set

    rng = random.Random(9)
    allowed = {"basic", "premium"}
    pools = [["basic", "premium"], ["basic", " premium", "basic\t", "premium"],
             ["basic", "Basic", "", "premium", "gold"], ["basic", " x ", "premium\u2003", "\u00a0basic"]]
    for pool in pools:
        values = [rng.choice(pool) for _ in range(2000)]
        good, staged = _in_set(pa.array(values, pa.string()), allowed)
        assert good.tolist() == [v.strip() in allowed for v in values]
        assert [s for s, g in zip(staged.to_pylist(), good) if g] == [v.strip() for v in values if v.strip() in allowed]
