"""The block reader (issue 28, item 3): pyarrow parses blocks of plain lines, the csv module the
rest; what a caller gets must be what the csv module alone gives, byte for byte and error for
error."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from ppmlops.data import reading
from ppmlops.data.reading import SourceReader
from ppmlops.errors import DataError


def read(path: Path, arrow: bool = True, **kw):
    """Everything a caller can see of a read: header, chunks, counts and hash, or the error."""
    try:
        r = SourceReader(path, **kw)
        r._arrow = arrow
        chunks = [(c.records, c.lines, c.ragged) for c in r]
        return "ok", r.header, chunks, r.rows_in, r.sha256
    except DataError as err:
        return "error", type(err).__name__, str(err)


FIELD_CHARS = ["a", "b", "1", " ", "é", "€", "\t", "Zz", ".", "-", "\u2028", "\x85", "\x0b"]
LINE_CHARS = FIELD_CHARS + [",", ";", '"', "\n", "\r\n", "\r", "\x1f", "\x00", '""', '"q"', "\ufeff"]


def messy_text(rng: random.Random, width: int, delimiter: str) -> str:
    """A header and lines of every kind: plain records, blank lines, ragged lines, and lines of
    random characters (quotes, lone CRs, NULs, unit separators) mixed with any line break."""
    lines = [delimiter.join(f"h{i}" for i in range(width))]
    for _ in range(rng.randint(0, 80)):
        kind = rng.random()
        if kind < 0.7:
            lines.append(delimiter.join("".join(rng.choice(FIELD_CHARS) for _ in range(rng.randint(0, 5)))
                                        .replace(delimiter, "_") for _ in range(width)))
        elif kind < 0.78:
            lines.append("")
        elif kind < 0.88:
            lines.append(delimiter.join(["r"] * rng.randint(1, width + 2)))
        else:
            lines.append("".join(rng.choice(LINE_CHARS) for _ in range(rng.randint(0, 12))))
    eol = rng.choice(["\n", "\n", "\r\n", "\r", None])
    if eol is None:  # mixed line breaks
        return "".join(line + rng.choice(["\n", "\r\n", "\r"]) for line in lines)
    return eol.join(lines) + (eol if rng.random() < 0.8 else "")


@pytest.mark.parametrize("seed", range(4))
def test_blocks_read_exactly_what_the_csv_module_reads(tmp_path, monkeypatch, seed):
    rng = random.Random(seed)
    for n in range(120):
        delimiter = rng.choice([",", ";", "\t", "|"])
        text = rng.choice(["", "", "\n", "\ufeff"]) + messy_text(rng, rng.randint(1, 5), delimiter)
        encoding = rng.choice(["utf-8", "utf-8", "latin-1", "cp1252"])
        try:
            data = text.encode(encoding)
        except UnicodeEncodeError:
            encoding, data = "utf-8", text.encode("utf-8")
        if rng.random() < 0.05:  # a byte the encoding may not decode
            at = rng.randint(0, len(data))
            data = data[:at] + bytes([rng.choice([0xFF, 0x81, 0xE9])]) + data[at:]
        path = tmp_path / f"f{n}.csv"
        path.write_bytes(data)
        kw = {"encoding": encoding, "delimiter": delimiter, "chunk_rows": rng.choice([1, 3, 7, 50_000])}
        # Tiny blocks put block boundaries everywhere: a quoted field across them, a CRLF at one.
        monkeypatch.setattr(reading, "BLOCK_BYTES", rng.choice([7, 64, 2 << 20]))
        got = read(path, **kw)
        assert got == read(path, arrow=False, **kw), (path.read_bytes(), kw)
        if got[0] == "ok":
            records = [r for recs, _, _ in got[2] for r in recs]
            lines = [n for _, ls, _ in got[2] for n in ls]
            ragged = [(n, f) for _, _, rs in got[2] for n, f, _ in rs]
            assert (records, lines, ragged) == csv_module(path, encoding, delimiter), (path.read_bytes(), kw)


def csv_module(path: Path, encoding: str, delimiter: str):
    """The records, their lines and the ragged lines as the csv module reads the file through
    io's universal line breaks (what SourceReader did before it read blocks)."""
    import csv

    with open(path, encoding=reading.CODECS[encoding], newline="") as fh:
        rows = csv.reader(fh, delimiter=delimiter)
        end = 0
        for fields in rows:
            end = rows.line_num
            if fields and any(f.strip() for f in fields):
                width = len(fields)
                break
        records, lines, ragged = [], [], []
        for fields in rows:
            start, end = end + 1, rows.line_num
            if len(fields) == width:
                records.append(fields)
                lines.append(start)
            elif fields:
                ragged.append((start, fields))
    return records, lines, ragged


def test_both_paths_are_taken_and_quoted_lines_mid_file_go_to_csv(tmp_path, monkeypatch):
    """Plain blocks, then a quoted record that spans lines, then plain blocks again."""
    taken = []
    parse = reading._BlockParser.parse
    monkeypatch.setattr(reading._BlockParser, "parse",
                        lambda self, data, line: taken.append(line) or parse(self, data, line))
    monkeypatch.setattr(reading, "BLOCK_BYTES", 200)
    lines = ["a,b,c"] + [f"{i},x{i},y" for i in range(100)]
    lines[50] = '50,"two\nlines, one record",y'
    path = tmp_path / "q.csv"
    path.write_text("\n".join(lines) + "\n")
    ok, _, chunks, rows, _ = read(path, chunk_rows=30)
    assert read(path, chunk_rows=30) == read(path, arrow=False, chunk_rows=30)
    records = [r for recs, _, _ in chunks for r in recs]
    lines_of = [n for _, ls, _ in chunks for n in ls]
    assert rows == 100 and records[49] == ["50", "two\nlines, one record", "y"]
    assert lines_of[49:51] == [51, 53]  # the record after it starts a line later
    assert taken[0] == 2 and any(line > 53 for line in taken)  # blocks before and after it


def test_a_line_longer_than_a_block_and_ragged_lines_in_a_block(tmp_path, monkeypatch):
    monkeypatch.setattr(reading, "BLOCK_BYTES", 64)
    path = tmp_path / "long.csv"
    path.write_text("a,b\n1,2\n" + "x" * 500 + ",y\n3\n\n4,5,6\n7,8\n")
    ok, _, chunks, rows, _ = read(path)
    assert read(path) == read(path, arrow=False)
    assert chunks[0][0] == [["1", "2"], ["x" * 500, "y"], ["7", "8"]] and chunks[0][1] == [2, 3, 7]
    assert [(line, why) for line, _, why in chunks[0][2]] == [
        (4, "line 4 has 1 fields, the header has 2"), (6, "line 6 has 3 fields, the header has 2")]


def test_batches_give_columns_joined_fields_and_records(tmp_path):
    path = tmp_path / "b.csv"
    path.write_text('a;b;c\n1;é;x\n2;"q;uoted";y\n3;;z\n')
    reader = SourceReader(path, delimiter=";", chunk_rows=10)
    [batch] = list(reader.batches([0, 2]))
    assert batch.num_rows == 3 and batch.lines.tolist() == [2, 3, 4]
    assert batch.column(0).to_pylist() == ["1", "2", "3"] and batch.column(2).to_pylist() == ["x", "y", "z"]
    assert batch.joined() == ["\x1f".join(r).encode() for r in [["1", "é", "x"], ["2", "q;uoted", "y"], ["3", "", "z"]]]
    assert batch.records([0, 2]) == [["1", "é", "x"], ["3", "", "z"]]
    assert reader.sha256 and reader.rows_in == 3


def test_crlf_and_latin1_blocks_are_read_by_pyarrow(tmp_path, monkeypatch):
    taken = []
    parse = reading._BlockParser.parse
    monkeypatch.setattr(reading._BlockParser, "parse",
                        lambda self, data, line: (lambda b: taken.append(b is not None) or b)(parse(self, data, line)))
    path = tmp_path / "w.csv"
    path.write_bytes("name;city\r\nJosé;Zürich\r\nRenée;Besançon\r\n".encode("cp1252"))
    ok, _, chunks, _, _ = read(path, encoding="cp1252")
    assert chunks[0][0] == [["José", "Zürich"], ["Renée", "Besançon"]] and taken == [True]
    assert read(path, encoding="cp1252") == read(path, encoding="cp1252", arrow=False)


def test_may_need_strip_knows_every_character_strip_removes():
    import pyarrow as pa

    from ppmlops.data.reading import _ASCII_SPACE, may_need_strip

    spaces = [chr(c) for c in range(0x110000) if chr(c).isspace()]
    assert {ord(c) for c in spaces if c.isascii()} == set(map(int, _ASCII_SPACE[:128].nonzero()[0]))
    for c in spaces:  # at either end, by itself, or next to other text
        for value in (c, "a" + c, c + "a", "a" + c + "b" + c):
            assert may_need_strip(pa.array(["x", value, "y"])) == (value != value.strip() or not c.isascii())
    assert not may_need_strip(pa.array(["male", "", "a b", "é-x"[1:]]))
    assert may_need_strip(pa.array(["café"]))  # a non-ASCII last byte counts, conservatively
    assert not may_need_strip(pa.array(["  x", "y"]).slice(1))
