"""Source files as text, streamed in chunks: every record with the line it starts on.

Both ingestion (which keeps the whole table) and the risk scan (which must not, files may be
larger than memory) read through here, so a line number means the same in the quarantine file
and in a scan report: the 1-based physical line where the record starts (a quoted field may
span lines); for Parquet, the 1-based row number.

CSV text is decoded as declared (UTF-8 strictly, with or without a byte-order mark; latin-1;
cp1252); a UTF-16 or UTF-32 file (by its byte-order mark, or NULs in every other byte) is an
error saying so and how to convert it, whatever the declared encoding. A byte the encoding
cannot decode is an error naming its line, found by a second pass over the bytes, because the
streaming decoder reports it a buffer later. A file whose size, modification time or inode
after the read differs from before it changed while it was read (a writer still at work, a
truncation): SourceChanged, and the caller stages nothing. The delimiter is declared or
detected from the first 64 KiB: among , ; tab and |, the one that splits the header into the
most columns with the most following lines agreeing on that width. A line with a different
number of fields than the header is not an error but a ragged record, kept with its text for
the caller to quarantine. The SHA-256 of the file's bytes is computed while reading.

CSV is read a block of whole lines at a time (BLOCK_BYTES). A block that holds no quote, NUL or
unit separator (\x1f), whose line breaks are all LF or all CRLF, that decodes and does not begin
with a byte-order mark (pyarrow would drop it) is split by pyarrow's CSV parser with quoting off:
there every line is one record and every delimiter splits fields, which is exactly what the csv
module does with such lines, so the two cannot differ, and line numbers are counted from the
line breaks. Any other block, from the line where the first
such byte occurs, goes through the csv module as before (quoted fields, fields that span lines,
unclosed quotes, undecodable bytes and the errors that name them), until the block's end is
passed at a record boundary. `SourceReader.batches` gives the records column-wise (`Batch`);
iterating the reader gives them as lists of strings (`Chunk`), as it always did.
"""

from __future__ import annotations

import bisect
import codecs
import csv
import difflib
import gc
import hashlib
import io
import itertools
import math
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from ppmlops.errors import DataError

CODECS = {"utf-8": "utf-8-sig", "latin-1": "latin-1", "cp1252": "cp1252"}
DELIMITERS = (",", ";", "\t", "|")
SNIFF_BYTES = 64 * 1024
CHUNK_ROWS = 50_000
# The csv module's default (128 KiB) rejects long free-text fields; an unclosed quote still
# fails, at the line where the runaway field started.
FIELD_LIMIT = 64 * 1024 * 1024
# A record may span lines (a quoted field holding line breaks). One that spans more than this,
# or whose quoted text holds RUNAWAY_RECORDS or more lines that look like records of the file
# (as many delimiters as a row has), is an unclosed quote that swallowed the rows after it.
MAX_RECORD_LINES = 1000
RUNAWAY_RECORDS = 2
# Whole lines parsed at once by the block path, and the size of each read from the file. A line
# longer than a block goes through the csv module.
BLOCK_BYTES = 2 << 20
READ_BYTES = 4 << 20
# Record fields are joined with this byte for the split hash and the quarantine HMAC (see
# Batch.joined); a block holding it goes through the csv module, so a joined record of the block
# path splits back into its fields.
UNIT = "\x1f"
_CSV_ONLY = (b'"', b"\x00", UNIT.encode())
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")


class UnclosedQuote(DataError):
    """A quoted field opened on `line` and swallowed the lines after it."""

    def __init__(self, message: str, line: int):
        super().__init__(message)
        self.line = line


class SourceChanged(DataError):
    """A source file changed (size, modification time or identity) while it was being read.

    What was read is a mix of two versions of the file; nothing of it may be staged. Trying again
    can pass once whoever writes the file has finished, so `transient` is set (see
    ppmlops.airflow.tasks: a transient error is retried by Airflow, the rest fail at once).
    """

    transient = True


class EncodingMismatch(DataError):
    """A CSV file holds bytes its declared encoding cannot decode."""

    def __init__(self, message: str, encoding: str, line: int):
        super().__init__(message)
        self.encoding = encoding
        self.line = line


@dataclass
class Chunk:
    """Consecutive records of one file: well-formed ones with their lines, and the ragged ones."""

    records: list[list[str]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    ragged: list[tuple[int, list[str], str]] = field(default_factory=list)  # (line, its fields, why)

    def __len__(self) -> int:
        return len(self.records) + len(self.ragged)


# (data, eol, delimiter) -> (a hash per line, where each line ends), or None: SplitRules.line_hashes
LineHashes = Callable[[bytes, bytes, bytes], "tuple[np.ndarray, np.ndarray] | None"]


class _Block:
    """A block of whole lines parsed by pyarrow: the records' wanted columns, their line numbers,
    and the ragged lines among them."""

    __slots__ = ("data", "eol", "delimiter", "unit", "table", "n_lines", "lines", "rows", "ragged", "_joined", "_ends",
                 "_hashed")

    def __init__(self, data: bytes, eol: bytes, delimiter: str, unit: bytes, table: Any, n_lines: int,
                 lines: np.ndarray, rows: list[int] | None, ragged: list[tuple[int, list[str], str]]):
        self.data, self.eol, self.delimiter, self.unit, self.table = data, eol, delimiter, unit, table
        self.n_lines = n_lines
        self.lines = lines  # line number of each record
        self.rows = rows  # which of the block's lines are records (None: every one)
        self.ragged = ragged
        self._joined: list[bytes] | None = None
        self._ends: np.ndarray | None = None  # each line's end: its LF (or where that would be)
        self._hashed: tuple[LineHashes, np.ndarray] | None = None  # a block may span two batches

    def joined(self) -> list[bytes]:
        """Each record's fields joined by UNIT, UTF-8: the line with its delimiters replaced."""
        if self._joined is None:
            parts = self.data.translate(self.unit).split(self.eol)
            if self.data.endswith(self.eol):
                parts.pop()
            self._joined = parts if self.rows is None else [parts[i] for i in self.rows]
        return self._joined

    def hashes(self, of_lines: LineHashes) -> np.ndarray | None:
        """Each record's hash by `of_lines(data, eol, delimiter)` (ppmlops.privacy.split's
        line_hashes), which reads the block's lines in place and says where each ends (kept, to
        find a quarantined row's line); None where it cannot."""
        if self._hashed is not None and self._hashed[0] == of_lines:
            return self._hashed[1]
        if self._joined is not None:  # the bytes are made already: the caller hashes those
            return None
        found = of_lines(self.data, self.eol, self.delimiter.encode("utf-8"))
        if found is None:
            return None
        hashes, ends = found
        if self._ends is None:
            self._ends = ends
        hashes = hashes if self.rows is None else hashes[np.asarray(self.rows, dtype=np.int64)]
        self._hashed = (of_lines, hashes)
        return hashes

    def joined_at(self, at: np.ndarray) -> list[bytes]:
        """joined()[i] for each i of `at`, from those records' lines alone."""
        if self._joined is not None:
            return [self._joined[i] for i in at.tolist()]
        starts, ends = self._bounds(at)
        data, unit = self.data, self.unit
        return [data[s:e].translate(unit) for s, e in zip(starts.tolist(), ends.tolist())]

    def record(self, at: int) -> list[str]:
        """Record `at` as a list of strings. Its line is found by the line breaks' offsets rather
        than by splitting the block: a sample asks for few records of most blocks."""
        if self._joined is not None:
            return self._joined[at].decode("utf-8").split(UNIT)
        return self._line(at).decode("utf-8").split(self.delimiter)

    def _line(self, at: int) -> bytes:
        """Record `at`'s line without its line break."""
        starts, ends = self._bounds(np.array([at]))
        return self.data[int(starts[0]):int(ends[0])]

    def _line_ends(self, breaks: np.ndarray) -> np.ndarray:
        return breaks if len(breaks) == self.n_lines else np.append(breaks, len(self.data) + len(self.eol) - 1)

    def _bounds(self, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where the lines of records `at` start and end (before the line break) in the block."""
        if self._ends is None:
            self._ends = self._line_ends(np.flatnonzero(np.frombuffer(self.data, dtype=np.uint8) == 10))
        i = at if self.rows is None else np.asarray(self.rows, dtype=np.int64)[at]
        starts = np.where(i == 0, 0, self._ends[np.maximum(i - 1, 0)] + 1)
        return starts, self._ends[i] + 1 - len(self.eol)


class _Rows:
    """Records read by the csv module (or from Parquet), as lists of strings."""

    __slots__ = ("records", "lines")

    def __init__(self, records: list[list[str]] | None = None, lines: list[int] | None = None):
        self.records = [] if records is None else records
        self.lines = [] if lines is None else lines


class Batch:
    """Consecutive records of one file, column-wise: the well-formed records (`column`, `lines`,
    `joined`, `records`) and the ragged ones, as in Chunk.

    Made of pieces: row ranges of parsed blocks and runs of records read by the csv module. Only
    the columns the reader was asked for are held as Arrow arrays; whole records are rebuilt on
    demand (for the rows a caller must see in full, e.g. those it quarantines).
    """

    def __init__(self, pieces: list[tuple[Any, int, int]], ragged: list[tuple[int, list[str], str]]):
        self._pieces = pieces  # (a _Block or _Rows, first row, end row)
        self.ragged = ragged
        self.num_rows = sum(b - a for _, a, b in pieces)
        self._columns: dict[int, Any] = {}
        self._lines: np.ndarray | None = None
        self._joined: list[bytes] | None = None

    def __len__(self) -> int:
        return self.num_rows + len(self.ragged)

    @property
    def lines(self) -> np.ndarray:
        """The line each record starts on (int64)."""
        if self._lines is None:
            parts = [p.lines[a:b] if isinstance(p, _Block) else np.asarray(p.lines[a:b], dtype=np.int64)
                     for p, a, b in self._pieces]
            self._lines = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return self._lines

    def column(self, index: int) -> Any:
        """Column `index` of the header (one the reader was asked for), as a pyarrow string array."""
        import pyarrow as pa

        if index not in self._columns:
            parts = []
            for p, a, b in self._pieces:
                if isinstance(p, _Block):
                    parts.extend(p.table.column(f"c{index}").slice(a, b - a).chunks)
                else:
                    parts.append(pa.array([r[index] for r in p.records[a:b]], pa.string()))
            self._columns[index] = (pa.chunked_array(parts, pa.string()).combine_chunks() if parts
                                    else pa.array([], pa.string()))
        return self._columns[index]

    def joined(self) -> list[bytes]:
        """Each record's fields joined by UNIT, encoded as UTF-8 (what the split hash and the
        quarantine HMAC take)."""
        if self._joined is None:
            out: list[bytes] = []
            for p, a, b in self._pieces:
                if isinstance(p, _Block):
                    out.extend(p.joined()[a:b])
                else:
                    out.extend(UNIT.join(r).encode("utf-8") for r in p.records[a:b])
            self._joined = out
        return self._joined

    def split_hashes(self, of_joined: Callable[[list[bytes]], np.ndarray], of_lines: LineHashes) -> np.ndarray:
        """`of_joined(self.joined())`, each parsed block's part by `of_lines` from its bytes where
        that can be (no bytes object per record: ppmlops.privacy.split.line_hashes)."""
        out = []
        for p, a, b in self._pieces:
            hashes = p.hashes(of_lines) if isinstance(p, _Block) else None
            if hashes is None:
                joined = (p.joined()[a:b] if isinstance(p, _Block)
                          else [UNIT.join(r).encode("utf-8") for r in p.records[a:b]])
                out.append(of_joined(joined))
            else:
                out.append(hashes[a:b])
        return np.concatenate(out) if out else np.zeros(0, dtype=np.uint64)

    def joined_at(self, rows: Sequence[int]) -> dict[int, bytes]:
        """joined()[row] for each of `rows` (ascending), without joining the others."""
        if self._joined is not None:
            return {row: self._joined[row] for row in rows}
        rows = np.asarray(rows, dtype=np.int64)
        out: dict[int, bytes] = {}
        first = 0
        for p, a, b in self._pieces:  # each piece's rows at once
            mine = rows[(rows >= first) & (rows < first + b - a)]
            at = mine - first + a
            joined = (p.joined_at(at) if isinstance(p, _Block)
                      else [UNIT.join(p.records[i]).encode("utf-8") for i in at.tolist()])
            out.update(zip(mine.tolist(), joined))
            first += b - a
        return out

    def records(self, rows: Sequence[int] | None = None) -> list[list[str]]:
        """The records at `rows` (ascending; default all) as lists of strings."""
        if rows is None:
            rows = range(self.num_rows)
        return [piece.record(at) if isinstance(piece, _Block) else piece.records[at]
                for _, piece, at in self._located(rows)]

    def _located(self, rows: Iterable[int]) -> Iterator[tuple[int, Any, int]]:
        """(row, its piece, its index there) for each of `rows`."""
        ends = list(itertools.accumulate(b - a for _, a, b in self._pieces))
        for row in rows:
            k = bisect.bisect_right(ends, row)
            piece, a, _ = self._pieces[k]
            yield row, piece, a + row - (ends[k - 1] if k else 0)

    def chunk(self) -> Chunk:
        return Chunk(self.records(), self.lines.tolist(), list(self.ragged))


class _Batches:
    """Cuts the records into batches of `limit` (the last may be shorter), as the reader always
    has: a ragged line goes with the batch being filled when it is read, so with the first batch
    whose last record lies after it."""

    def __init__(self, limit: int):
        self.limit = max(1, limit)
        self.pieces: list[tuple[Any, int, int]] = []
        self.rows = 0
        self.ragged: list[tuple[int, list[str], str]] = []
        self._open: _Rows | None = None  # the csv module's records, being appended to

    def block(self, block: _Block) -> Iterator[Batch]:
        self._close()
        self.ragged.extend(block.ragged)
        n = len(block.lines)
        if n:
            self.pieces.append((block, 0, n))
            self.rows += n
        while self.rows >= self.limit:
            yield self._cut()

    def record(self, fields: list[str], line: int) -> Batch | None:
        if self._open is None:
            self._open = _Rows()
        self._open.records.append(fields)
        self._open.lines.append(line)
        self.rows += 1
        if self.rows >= self.limit:
            return self._cut()
        return None

    def ragged_line(self, item: tuple[int, list[str], str]) -> None:
        self.ragged.append(item)

    def rest(self) -> Batch | None:
        self._close()
        if not self.pieces and not self.ragged:
            return None
        batch = Batch(self.pieces, self.ragged)
        self.pieces, self.ragged, self.rows = [], [], 0
        return batch

    def _close(self) -> None:
        if self._open is not None:
            self.pieces.append((self._open, 0, len(self._open.records)))
            self._open = None

    def _cut(self) -> Batch:
        self._close()
        taken, need = [], self.limit
        while need:
            piece, a, b = self.pieces[0]
            if b - a <= need:
                taken.append(self.pieces.pop(0))
                need -= b - a
            else:
                taken.append((piece, a, a + need))
                self.pieces[0] = (piece, a + need, b)
                need = 0
        piece, a, b = taken[-1]
        last = int(piece.lines[b - 1])
        ragged = [r for r in self.ragged if r[0] < last]
        self.ragged = [r for r in self.ragged if r[0] >= last]
        self.rows -= self.limit
        return Batch(taken, ragged)


@dataclass(frozen=True)
class Part:
    """A piece of a source read by itself (ppmlops.data.ray_ingest reads a file's parts on a Ray
    cluster): for CSV the bytes [start, end), which begin at a line boundary after the header, the
    first of them on line `first_line`; for Parquet the row groups [start, end), the first row
    numbered `first_line`. Records, lines and rows are those of the whole file; `state` is the
    file as it was planned (a change since then is SourceChanged); the reader's sha256 covers the
    part's bytes only (none for Parquet)."""

    start: int
    end: int
    first_line: int
    state: "FileState | None" = None


class _Source:
    """A file's bytes, read forward in large pieces and hashed as they are read; `line` counts
    the physical lines consumed (a line ends at CRLF, CR or LF, as io's newline="" splits).
    With a `part`, only its bytes are read, as if the file ended where it does."""

    def __init__(self, path: Path, digest: Any, part: Part | None = None):
        self._fh = open(path, "rb", buffering=0)
        self._digest = digest
        self.buf = b""
        self.pos = 0  # the next byte of buf to consume
        self.base = 0  # the file offset of buf[0]
        self.eof = False
        self.line = 0
        self._left: int | None = None  # bytes of the part not yet read (None: to the file's end)
        if part is not None:
            self._fh.seek(part.start)
            self.base, self.line, self._left = part.start, part.first_line - 1, part.end - part.start

    @property
    def offset(self) -> int:
        return self.base + self.pos

    def close(self) -> None:
        self._fh.close()

    def fill(self, want: int) -> None:
        """At least `want` unconsumed bytes in buf, or all that is left of the file."""
        have = len(self.buf) - self.pos
        if have >= want or self.eof:
            return
        parts = [self.buf[self.pos:]] if have else []
        self.base += self.pos
        while have < want:
            size = max(want - have, READ_BYTES)
            if self._left is not None:
                size = min(size, self._left)
            data = self._fh.read(size) if size else b""
            if self._left is not None:
                self._left -= len(data)
            if not data:
                self.eof = True
                break
            self._digest.update(data)
            parts.append(data)
            have += len(data)
        self.buf, self.pos = b"".join(parts), 0

    def line_bytes(self) -> bytes | None:
        """The next physical line with its line break; None at the end of the file."""
        while True:
            m = _LINE_BREAK.search(self.buf, self.pos)
            # A CR at the end of what is read may be the first half of a CRLF.
            if m is not None and (m.end() < len(self.buf) or self.eof or m.group() != b"\r"):
                line, self.pos = self.buf[self.pos:m.end()], m.end()
                self.line += 1
                return line
            if self.eof:
                if self.pos == len(self.buf):
                    return None
                line, self.pos = self.buf[self.pos:], len(self.buf)
                self.line += 1
                return line
            self.fill(len(self.buf) - self.pos + READ_BYTES)

    def block_end(self, size: int) -> int:
        """The end (in buf) of the whole lines that start at pos within `size` bytes: pos when
        the next line is longer, the end of the file when all that is left fits."""
        self.fill(size)
        if self.eof and len(self.buf) - self.pos <= size:
            return len(self.buf)
        return self.buf.rfind(b"\n", self.pos, self.pos + size) + 1 or self.pos


def _decoded_lines(source: _Source, codec: str) -> Iterator[str]:
    # Strict: an undecodable byte raises here, where the csv module asks for its line.
    while (line := source.line_bytes()) is not None:
        yield line.decode(codec)


class _BlockParser:
    """pyarrow's CSV parser with quoting off, for blocks where it reads what the csv module would."""

    def __init__(self, delimiter: str, width: int, wanted: Sequence[int], encoding: str):
        import pyarrow as pa
        import pyarrow.csv as pacsv

        self.delimiter, self.width = delimiter, width
        self.sep = delimiter.encode("utf-8")
        self.unit = bytes.maketrans(self.sep, UNIT.encode())
        self.codec = None if encoding == "utf-8" else CODECS[encoding]  # transcoded to UTF-8 first
        names = [f"c{i}" for i in range(width)]
        # At least one column: pyarrow reads every column when include_columns is empty.
        include = [names[i] for i in (wanted or [0])]
        self._read = pacsv.ReadOptions(column_names=names, use_threads=False, block_size=2 * BLOCK_BYTES + 1)
        self._parse = pacsv.ParseOptions(delimiter=delimiter, quote_char=False, double_quote=False,
                                         escape_char=False, newlines_in_values=False, ignore_empty_lines=True)
        self._convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in include}, include_columns=include,
                                             strings_can_be_null=False, quoted_strings_can_be_null=False,
                                             check_utf8=False)
        self._pa, self._csv = pa, pacsv

    @staticmethod
    def usable(delimiter: str | None) -> bool:
        # One ASCII byte that is neither a quote nor a line break nor one of _CSV_ONLY.
        return (delimiter is not None and len(delimiter) == 1 and delimiter.isascii()
                and delimiter not in '"\r\n\x00' + UNIT)

    def _table(self, data: bytes, rows: int | None) -> Any:
        if data.startswith(codecs.BOM_UTF8):
            return None  # pyarrow would drop it; the csv module keeps it in the first field
        try:
            table = self._csv.read_csv(self._pa.py_buffer(data), read_options=self._read,
                                       parse_options=self._parse, convert_options=self._convert)
        except (self._pa.ArrowInvalid, self._pa.ArrowException):
            return None
        return table if rows is None or table.num_rows == rows else None

    def parse(self, data: bytes, first_line: int) -> _Block | None:
        """The block's records, or None where only the csv module may read it."""
        try:
            if self.codec is None:
                if not data.isascii():  # ASCII is UTF-8; the check is much cheaper than decoding
                    data.decode("utf-8")
            else:
                data = data.decode(self.codec).encode("utf-8")
        except UnicodeDecodeError:
            return None  # the csv module reads up to the byte and names its line
        eol = b"\n"
        if b"\r" in data:
            cr = data.count(b"\r")
            if data.count(b"\r\n") != cr or data.count(b"\n") != cr:
                return None  # a lone CR breaks a line too; mixed line breaks are left to the csv module
            eol = b"\r\n"
        # pyarrow raises on a line with another number of fields: then each line is looked at.
        # Otherwise each line that is not blank is one of its rows (a line ends at LF or CRLF, for
        # both; the csv module skips a blank line, and pyarrow is told to). So its rows are the
        # block's lines one for one unless a line was blank, which the count of line breaks
        # shows: then, too, each line is looked at. (Counting in numpy: searching the block for
        # two line breaks in a row costs CPython a memchr call per line.)
        table = self._table(data, None)
        if table is not None:
            n_lines = int(np.count_nonzero(np.frombuffer(data, dtype=np.uint8) == 10)) + (not data.endswith(b"\n"))
            if table.num_rows == n_lines:
                lines = np.arange(first_line, first_line + n_lines, dtype=np.int64)
                return _Block(data, eol, self.delimiter, self.unit, table, n_lines, lines, None, [])
        parts = data.split(eol)
        if data.endswith(eol):
            parts.pop()
        n_lines = len(parts)
        rows, ragged, fields_less = [], [], self.width - 1
        for i, line in enumerate(parts):
            if not line:
                continue  # a blank line carries no row
            if line.count(self.sep) == fields_less:
                rows.append(i)
            else:
                fields = line.decode("utf-8").split(self.delimiter)
                n = first_line + i
                ragged.append((n, fields, f"line {n} has {len(fields)} fields, the header has {self.width}"))
        table = self._table(eol.join([parts[i] for i in rows]) + eol, len(rows)) if rows else None
        if rows and table is None:
            return None
        if table is None:
            table = self._table_of_nothing()
        lines = first_line + np.asarray(rows, dtype=np.int64)
        return _Block(data, eol, self.delimiter, self.unit, table, n_lines, lines, rows, ragged)

    def _table_of_nothing(self) -> Any:
        return self._pa.table({name: self._pa.array([], self._pa.string()) for name in self._convert.include_columns})


class SourceReader:
    """One CSV, Parquet or NPZ file; `header` is known on construction, chunks come from iteration.

    `sha256` (of the file's bytes) and `rows_in` are final once iteration has finished.

    NPZ (numpy's savez): each array is a column whose rows are the indices of its first axis (all
    arrays the same length); an array of more dimensions is a tensor column, each row's values
    as text like a Parquet list's (ppmlops.data.tensors). `labels`, a CSV file, adds its columns,
    its i-th record belonging to index i (the same number of records as the arrays have rows).
    Row numbers (`_line` in quarantine) are 1-based indices of the first axis. Arrays are loaded
    with allow_pickle=False (an object array would run code to load: refused, named); the file is
    read whole, and `sha256` is that of its bytes followed by the label file's.
    """

    def __init__(self, path: Path | str, fmt: str = "csv", encoding: str = "utf-8",
                 delimiter: str | None = None, chunk_rows: int = CHUNK_ROWS, labels: Path | str | None = None,
                 part: Part | None = None):
        self.path = Path(path)
        self.part = part  # read only this piece of the file (see Part)
        self.labels = Path(labels) if labels is not None else None
        self.format = fmt
        self.encoding = encoding
        self.chunk_rows = chunk_rows
        self.rows_in = 0
        self._digest = hashlib.sha256()
        self._done = False
        self._arrow = True  # blocks of plain lines through pyarrow (tests turn it off to compare)
        _check_file(self.path)
        # Taken before the first byte is read (the header included), compared after the last.
        before = FileState.of(self.path)
        if before is None:
            raise DataError(f"{self.path}: data source not found")
        self._before = before if part is None or part.state is None else part.state
        if part is not None and fmt not in ("csv", "parquet"):
            raise DataError(f"{self.path}: only a CSV or Parquet file is read in parts, not {fmt}")
        if fmt == "csv":
            if encoding not in CODECS:
                raise DataError(f"{self.path}: unsupported encoding {encoding!r}; use one of {sorted(CODECS)}")
            check_text_encoding(self.path)
            self.delimiter = delimiter or detect_delimiter(self.path, encoding)
            self.header = self._csv_header()
        elif fmt == "parquet":
            self.delimiter = None
            self.header = self._parquet_header()
        elif fmt == "npz":
            self.delimiter = None
            if self.labels is not None:
                _check_file(self.labels)
            self._labels_before = FileState.of(self.labels) if self.labels is not None else None
            self.header = self._npz_header()
        else:
            raise DataError(f"{self.path}: unsupported format {fmt!r} (csv, parquet or npz)")
        if self.labels is not None and fmt != "npz":
            raise DataError(f"{self.path}: a label file goes with an NPZ source, not {fmt}")

    def again(self) -> "SourceReader":
        """A fresh reader of the same file (its own read, rows and hash)."""
        return SourceReader(self.path, self.format, self.encoding, self.delimiter, chunk_rows=self.chunk_rows,
                            labels=self.labels, part=self.part)

    @property
    def sha256(self) -> str:
        if not self._done:
            raise RuntimeError("sha256 is known only after the whole file has been read")
        return self._digest.hexdigest()

    def batches(self, columns: Sequence[int] | None = None) -> Iterator[Batch]:
        """The records column-wise, `chunk_rows` at a time; `columns` (header positions, default
        all) are the ones `Batch.column` gives."""
        wanted = list(range(len(self.header))) if columns is None else sorted(set(columns))
        batches = (self._csv_batches(wanted) if self.format == "csv" else self._npz_batches() if self.format == "npz"
                   else self._parquet_batches())
        try:
            for batch in batches:
                self.rows_in += len(batch)
                yield batch
                del batch  # not held while the next one is read: a batch holds its blocks
        except DataError as err:
            # A file cut short mid-read shows up as a parse error (an unclosed quote, a cut
            # multi-byte character, a damaged Parquet footer): the change is the cause to report.
            self._check_unchanged(err)
            raise
        self._check_unchanged()
        self._done = True

    def fraction_read(self) -> float | None:
        """How much of the source has been read so far, 0 to 1 (a share, never a count): a CSV's
        bytes against its size, a Parquet or NPZ file's rows against the rows it holds."""
        if self.format == "csv":
            source, size = getattr(self, "_reading", None), self._before.size
            return None if source is None or not size else min(1.0, source.offset / size)
        total = getattr(self, "_total_rows", None)
        return None if not total else min(1.0, self.rows_in / total)

    def __iter__(self) -> Iterator[Chunk]:
        for batch in self.batches():
            yield batch.chunk()
            del batch

    def head(self, rows: int) -> list[list[str]]:
        """The first `rows` well-formed records, from a read of their own (this reader's
        iteration, its rows and its hash are untouched)."""
        if self.format == "parquet":
            import pyarrow as pa

            try:
                batch = next(self._parquet_file().iter_batches(batch_size=rows), None)
            except (pa.ArrowException, OSError) as err:
                raise DataError(f"{self.path}: cannot read Parquet: {err}") from None
            return [] if batch is None else _text_records(batch)
        if self.format == "npz":
            arrays, labels = self._npz_arrays()
            return self._npz_records(arrays, labels, 0, min(rows, _npz_rows(arrays)))
        again = SourceReader(self.path, self.format, self.encoding, self.delimiter, chunk_rows=rows)
        again.header = self.header
        batches = again._csv_batches(list(range(len(self.header))))
        try:
            first = next(batches, None)
            return [] if first is None else first.records()
        finally:
            batches.close()

    def _check_unchanged(self, cause: BaseException | None = None) -> None:
        states = [(self.path, self._before)]
        states += [(self.labels, self._labels_before)] if self.format == "npz" and self.labels is not None else []
        for path, before in states:
            change = before.change_to(FileState.of(path))
            if change is not None:
                raise SourceChanged(f"{path}: the file changed while it was being read ({change}): nothing was "
                                    f"staged; re-run when the file is complete") from cause

    # ------------------------------------------------------------------------------------ CSV

    def _open_text(self) -> io.TextIOWrapper:
        return open(self.path, encoding=CODECS[self.encoding], newline="", buffering=1 << 20)

    def _csv_header(self) -> list[str]:
        csv.field_size_limit(max(csv.field_size_limit(), FIELD_LIMIT))
        with self._decoding(), self._open_text() as text:
            for fields in csv.reader(text, delimiter=self.delimiter):
                if fields and any(f.strip() for f in fields):
                    return check_header(self.path, fields)
        raise DataError(f"{self.path}: file is empty (expected a header line and data rows)")

    def _csv_batches(self, wanted: list[int]) -> Iterator[Batch]:
        # Blocks of plain lines go to pyarrow; the rest, from the first line that needs it, to the
        # csv module (see the module docstring). The cyclic garbage collector is paused while
        # records are read: the csv module's tens of thousands of new lists of strings (which
        # cannot form cycles) would otherwise trigger a collection every few hundred rows and
        # more than double the time per row. It runs again while a batch is out.
        width = len(self.header)
        blocks = (_BlockParser(self.delimiter, width, wanted, self.encoding)
                  if self._arrow and _BlockParser.usable(self.delimiter) else None)
        codec = "utf-8" if self.encoding == "utf-8" else CODECS[self.encoding]
        out = _Batches(self.chunk_rows)
        source = self._reading = _Source(self.path, self._digest, self.part)
        collecting = gc.isenabled()
        try:
            gc.disable()
            with self._decoding():
                if self.part is None:
                    self._skip_bom_and_header(source, codec)
                while True:
                    end = source.block_end(BLOCK_BYTES)
                    start = source.pos
                    if start == len(source.buf) and source.eof:
                        break
                    if blocks is not None and end > start:
                        data = source.buf[start:end]
                        hits = [i for i in (data.find(b) for b in _CSV_ONLY) if i >= 0]
                        plain = len(data) if not hits else data.rfind(b"\n", 0, min(hits)) + 1
                        block = blocks.parse(data[:plain] if plain < len(data) else data, source.line + 1) if plain else None
                        if block is not None:
                            source.pos += plain
                            source.line += block.n_lines
                            for batch in out.block(block):
                                if collecting:
                                    gc.enable()
                                yield batch
                                del batch  # see batches()
                                gc.disable()
                            if plain == len(data):
                                continue
                    # The csv module, from here to the end of the block (at least one record).
                    until = source.base + max(end, source.pos + 1)
                    for batch in self._csv_records(source, codec, until, out):
                        if collecting:
                            gc.enable()
                        yield batch
                        del batch
                        gc.disable()
        finally:
            source.close()
            if collecting:
                gc.enable()
        last = out.rest()
        if last is not None:
            yield last

    def _skip_bom_and_header(self, source: _Source, codec: str) -> None:
        if self.encoding == "utf-8":
            source.fill(len(codecs.BOM_UTF8))
            if source.buf.startswith(codecs.BOM_UTF8):
                source.pos = len(codecs.BOM_UTF8)  # as the utf-8-sig codec does
        self._skip_header(source, codec)

    def data_start(self) -> tuple[int, int]:
        """(the byte offset where a CSV file's data lines begin, the lines before it): what the
        header, any blank lines before it and a byte-order mark take up. Where a Part may start."""
        codec = "utf-8" if self.encoding == "utf-8" else CODECS[self.encoding]
        source = _Source(self.path, hashlib.sha256())
        try:
            with self._decoding():
                self._skip_bom_and_header(source, codec)
            return source.offset, source.line
        finally:
            source.close()

    def _skip_header(self, source: _Source, codec: str) -> None:
        """Consume the lines up to and including the header's (blank ones may come before it)."""
        reader = csv.reader(_decoded_lines(source, codec), delimiter=self.delimiter)
        start = 1
        try:
            for fields in reader:
                if fields and any(f.strip() for f in fields):
                    return
                start = source.line + 1
        except csv.Error as err:
            raise self._csv_error(err, start, source.line) from None

    def _csv_records(self, source: _Source, codec: str, until: int, out: _Batches) -> Iterator[Batch]:
        """Records through the csv module from the source's position until its offset passes
        `until`, at a record boundary; a full batch is given as soon as it is."""
        width = len(self.header)
        reader = csv.reader(_decoded_lines(source, codec), delimiter=self.delimiter)
        start = source.line + 1
        try:
            while True:
                start = source.line + 1
                fields = next(reader, None)
                if fields is None:
                    return
                end = source.line
                if end > start and self._runaway(fields, start, end, width):
                    raise self._unclosed(start, end, "runs to line")
                if len(fields) == width:
                    batch = out.record(fields, start)
                    if batch is not None:
                        yield batch
                        del batch
                elif fields:  # a blank line carries no row
                    where = f"line {start}" if end == start else f"the record on lines {start}-{end}"
                    out.ragged_line((start, fields, f"{where} has {len(fields)} fields, the header has {width}"))
                if source.offset >= until:
                    return
        except csv.Error as err:
            raise self._csv_error(err, start, source.line) from None

    def _csv_error(self, err: csv.Error, start: int, line: int) -> DataError:
        if "field larger than field limit" in str(err):
            return self._unclosed(start, line, "is still open at line")
        return DataError(f"{self.path}: line {line}: cannot parse CSV: {err}")

    def _runaway(self, fields: list[str], start: int, end: int, width: int) -> bool:
        if end - start + 1 > MAX_RECORD_LINES:
            return True
        if width < 3:
            return False  # one delimiter per line is common in prose; only the span counts
        d = self.delimiter
        looks_like_rows = sum(line.count(d) >= width - 1
                              for f in fields if "\n" in f or "\r" in f for line in f.splitlines()[1:])
        return looks_like_rows >= RUNAWAY_RECORDS

    def _unclosed(self, start: int, end: int, how: str) -> UnclosedQuote:
        return UnclosedQuote(
            f"{self.path}: line {start}: a quoted field opens on this line and {how} {end}, taking in the "
            f"lines after it as its text: an unclosed quote (\"). Nothing was staged from this file; close "
            f"or remove the quote on line {start} (a field that holds line breaks must end with a quote)",
            start)

    @contextmanager
    def _decoding(self) -> Iterator[None]:
        try:
            yield
        except UnicodeDecodeError:
            raise self._encoding_error() from None

    def _encoding_error(self) -> EncodingMismatch:
        offset, byte, line = first_undecodable(self.path, CODECS[self.encoding])
        hint = ("set source.encoding to latin-1 or cp1252 if the file uses one" if self.encoding == "utf-8"
                else "set source.encoding to the file's encoding")
        return EncodingMismatch(
            f"{self.path}: line {line}: byte 0x{byte:02x} at offset {offset} is not valid "
            f"{self.encoding.upper() if self.encoding == 'utf-8' else self.encoding} ({hint})",
            self.encoding, line)

    # ------------------------------------------------------------------------------------ Parquet

    def _parquet_file(self):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(self.path)
        except (pa.ArrowException, OSError) as err:
            raise DataError(f"{self.path}: cannot read Parquet: {err}") from None

    def _parquet_header(self) -> list[str]:
        pf = self._parquet_file()
        header = check_header(self.path, [str(n) for n in pf.schema_arrow.names])
        if pf.metadata.num_rows == 0:
            raise DataError(f"{self.path}: has columns but no data rows")
        return header

    def _parquet_batches(self) -> Iterator[Batch]:
        import pyarrow as pa

        if self.part is None:
            with open(self.path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    self._digest.update(block)
        row = 0 if self.part is None else self.part.first_line - 1
        groups = None if self.part is None else list(range(self.part.start, self.part.end))
        try:
            parquet = self._parquet_file()
            self._total_rows = parquet.metadata.num_rows
            for batch in parquet.iter_batches(batch_size=self.chunk_rows, row_groups=groups):
                records = _text_records(batch)
                rows = _Rows(records, list(range(row + 1, row + 1 + len(records))))
                yield Batch([(rows, 0, len(records))] if records else [], [])
                row += len(records)
        except (pa.ArrowException, OSError) as err:
            raise DataError(f"{self.path}: cannot read Parquet: {err}") from None


    # ------------------------------------------------------------------------------------ NPZ

    def _npz_arrays(self, digest: Any = None) -> tuple[dict[str, np.ndarray], list[list[str]] | None]:
        """(the NPZ's arrays by name, the label file's records or None); `digest` takes the bytes."""
        import zipfile

        data = self.path.read_bytes()
        if digest is not None:
            digest.update(data)
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {}
                for name in npz.files:
                    try:
                        arrays[name] = npz[name]
                    except ValueError as err:  # an object array: loading it would unpickle
                        raise DataError(f"{self.path}: array {name!r} cannot be read without pickle ({err}); "
                                        "save numbers or strings, not Python objects") from None
        except AttributeError:  # np.load gave one array: a .npy, not an archive
            raise DataError(f"{self.path}: is a single .npy array, not an NPZ of named arrays (np.savez)") from None
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
            raise DataError(f"{self.path}: cannot read NPZ: {type(err).__name__}: {err}") from None
        if not arrays:
            raise DataError(f"{self.path}: the NPZ holds no arrays")
        flat = [n for n, a in arrays.items() if a.ndim == 0]
        if flat:
            raise DataError(f"{self.path}: array(s) {flat} are single values; every array needs a first axis of rows")
        if len({len(a) for a in arrays.values()}) > 1:
            raise DataError(f"{self.path}: arrays {sorted(arrays)} differ in length along their first axis; index i "
                            "of every array must be the same row")
        labels = None
        if self.labels is not None:
            reader = SourceReader(self.labels, "csv", chunk_rows=self.chunk_rows)
            labels = []
            for chunk in reader:
                if chunk.ragged:
                    line, _, why = chunk.ragged[0]
                    raise DataError(f"{self.labels}: {why} (each record of a label file belongs to one row; line "
                                    f"{line})")
                labels.extend(chunk.records)
            if digest is not None:
                with open(self.labels, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(block)
            if len(labels) != _npz_rows(arrays):
                raise DataError(f"{self.labels}: the label file's records and the rows of {self.path.name} (its "
                                "arrays' first axis) differ in number; record i must belong to row i")
            self._label_header = reader.header
        return arrays, labels

    def _npz_header(self) -> list[str]:
        arrays, labels = self._npz_arrays()
        header = check_header(self.path, list(arrays) + (self._label_header if labels is not None else []))
        if _npz_rows(arrays) == 0:
            raise DataError(f"{self.path}: has arrays but no rows")
        return header

    def _npz_records(self, arrays: dict[str, np.ndarray], labels: list[list[str]] | None, start: int,
                     end: int) -> list[list[str]]:
        """Rows start..end as text records (a tensor's row as its flat list, like Parquet's)."""
        import pyarrow as pa

        columns = []
        for a in arrays.values():
            part = np.ascontiguousarray(a[start:end])
            if part.ndim == 1:
                columns.append(pa.array(part))
            else:
                width = int(np.prod(part.shape[1:]))
                columns.append(pa.FixedSizeListArray.from_arrays(pa.array(part.reshape(-1)), width))
        records = _text_records(pa.RecordBatch.from_arrays(columns, names=[f"c{i}" for i in range(len(columns))]))
        if labels is not None:
            records = [r + list(lab) for r, lab in zip(records, labels[start:end])]
        return records

    def _npz_batches(self) -> Iterator[Batch]:
        arrays, labels = self._npz_arrays(self._digest)
        n = self._total_rows = _npz_rows(arrays)
        for start in range(0, n, self.chunk_rows):
            end = min(n, start + self.chunk_rows)
            records = self._npz_records(arrays, labels, start, end)
            yield Batch([(_Rows(records, list(range(start + 1, end + 1))), 0, len(records))], [])


# ---------------------------------------------------------------------------------------------- helpers


def _npz_rows(arrays: dict[str, np.ndarray]) -> int:
    return len(next(iter(arrays.values())))



@dataclass(frozen=True)
class FileState:
    """What `stat` says of a file; a different state after a read means it changed during it."""

    size: int
    mtime_ns: int
    inode: int
    device: int

    @classmethod
    def of(cls, path: Path) -> "FileState | None":
        try:
            st = path.stat()
        except OSError:
            return None  # gone (deleted or renamed away)
        return cls(st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)

    def change_to(self, after: "FileState | None") -> str | None:
        """How the file changed since this state, in words, or None."""
        if after is None:
            return "it was deleted or moved away"
        if (after.inode, after.device) != (self.inode, self.device):
            return f"it was replaced by another file (size {human_size(self.size)} -> {human_size(after.size)})"
        if after.size != self.size:
            return f"size {human_size(self.size)} -> {human_size(after.size)}"
        if after.mtime_ns != self.mtime_ns:
            return f"same size {human_size(self.size)}, but it was written to"
        return None


def human_size(n: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


# Byte-order marks of encodings ppmlops does not read; UTF-32's come first (UTF-32 LE's starts
# with UTF-16 LE's). A UTF-16 file would otherwise decode as latin-1 into text full of NULs.
_FOREIGN_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32", "UTF-32LE"), (codecs.BOM_UTF32_BE, "UTF-32", "UTF-32BE"),
    (codecs.BOM_UTF16_LE, "UTF-16", "UTF-16LE"), (codecs.BOM_UTF16_BE, "UTF-16", "UTF-16BE"),
)


def check_text_encoding(path: Path) -> None:
    """A DataError if the file is UTF-16 or UTF-32 (by its byte-order mark, or by the NUL bytes
    that fill every other byte of UTF-16 text without one), which no declarable encoding reads."""
    with open(path, "rb") as fh:
        head = fh.read(4096)
    bom = next(((name, order) for mark, name, order in _FOREIGN_BOMS if head.startswith(mark)), None)
    if bom is not None:
        # iconv reads the mark itself given the plain name (and then drops it from the output)
        name, iconv, how = bom[0], bom[0], f"it starts with a {bom[1]} byte-order mark"
    elif len(head) >= 8 and head.count(0) * 3 >= len(head):
        name, how = "UTF-16", "no byte-order mark, but every other byte is NUL"
        iconv = "UTF-16LE" if head[1::2].count(0) >= head[0::2].count(0) else "UTF-16BE"
    else:
        return
    raise DataError(
        f"{path}: the file is {name} ({how}); ppmlops reads UTF-8, latin-1 or cp1252 (source.encoding), and "
        f"no setting of source.encoding reads {name}. Convert it to UTF-8, e.g. `iconv -f {iconv} -t UTF-8 "
        f"{path.name} > {path.stem}.utf8{path.suffix}` (or save it as \"CSV UTF-8\"), and point source.path at "
        f"the converted file")


def by_value(array: Any) -> tuple[np.ndarray, list[str]]:
    """(per row an index into the values, the distinct values as Python strings) of a pyarrow
    string array: a rule written for one value is then run once per distinct value, not per row."""
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(array)
    return encoded.indices.to_numpy(zero_copy_only=False), encoded.dictionary.to_pylist()


# The ASCII characters str.strip() removes; every other character it removes is not ASCII.
_ASCII_SPACE = np.zeros(256, dtype=bool)
_ASCII_SPACE[[9, 10, 11, 12, 13, 28, 29, 30, 31, 32]] = True
_ASCII_SPACE[128:] = True  # the bytes of any non-ASCII character: maybe one of those


def may_need_strip(array: Any) -> bool:
    """False when no value of a pyarrow string array starts or ends with a character str.strip()
    removes (read from the first and last byte of each value, conservatively: a non-ASCII byte
    there counts as one), so that .strip() of each value can be skipped."""
    import pyarrow as pa

    if not len(array):
        return False
    array = array.cast(pa.string())
    _, offsets, data = array.buffers()
    if data is None:
        return False
    offsets = np.frombuffer(offsets, dtype=np.int32)[array.offset: array.offset + len(array) + 1]
    starts, ends = offsets[:-1], offsets[1:]
    filled = ends > starts
    raw = np.frombuffer(data, dtype=np.uint8)
    return bool(_ASCII_SPACE[raw[starts[filled]]].any() or _ASCII_SPACE[raw[ends[filled] - 1]].any())


def _text_records(batch: Any) -> list[list[str]]:
    """A Parquet record batch's rows, every value as text (as_text)."""
    columns = [[as_text(v) for v in batch.column(i).to_pylist()] for i in range(batch.num_columns)]
    return [list(r) for r in zip(*columns)]


def _check_file(path: Path) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataError(f"{path}: data source not found") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read data source: {err.strerror or err}") from None
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a data file")
    if size == 0:
        raise DataError(f"{path}: file is empty (expected a header line and data rows)")


def check_header(path: Path, names: Sequence[str]) -> list[str]:
    header = [n.strip() for n in names]
    for i, name in enumerate(header, start=1):
        if not name:
            raise DataError(f"{path}: column {i} of the header has no name")
    dupes = sorted({n for n in header if header.count(n) > 1})
    if dupes:
        shown = [d for d in dupes if looks_like_name(d)]
        raise DataError(f"{path}: header names columns more than once: {shown}"
                        + (f" and {len(dupes) - len(shown)} other(s)" if len(shown) < len(dupes) else ""))
    return header


# What a column name looks like. The first line of a file that is not the expected CSV (a wrong
# path, a wrong delimiter, no header) is data, and a message must not show data: header entries
# are shown only when they look like names, and even then only as a hint for a name the spec has.
_NAME_LIKE = re.compile(r"[^\W\d][\w .()/-]{0,63}")


def looks_like_name(text: str) -> bool:
    return bool(_NAME_LIKE.fullmatch(text)) and "@" not in text


def missing_columns(path: Path, wanted: Sequence[tuple[str, str]], header: Sequence[str]) -> DataError:
    """The error for spec columns (name, role) that the file's header lacks.

    Names the missing columns and, for each, a header entry that differs only in case or by a
    typo when there is one; the header itself is not listed (see _NAME_LIKE).
    """
    names = [h for h in header if looks_like_name(h)]
    parts = []
    for col, role in wanted:
        same_case = [h for h in names if h.lower() == col.lower()]
        close = same_case or difflib.get_close_matches(col, names, n=1, cutoff=0.8)
        parts.append(f"{col} ({role})" + (f" - the file has {close[0]!r}" if close else ""))
    width = len(header)
    hint = (" - one column only: is the delimiter right (source.delimiter)?" if width == 1 else "")
    return DataError(f"{path}: missing column(s) required by the spec: {', '.join(parts)}; the file's "
                     f"header has {width} column(s){hint} (run `head -1` on the file to see them)")


def match_declared(path: Path, header: Sequence[str], declared: Sequence[str]) -> list[str]:
    """`header` with each entry that matches a declared column name only up to letter case
    renamed to the declared spelling (`Email` -> `email`).

    Whitespace around names is already stripped (check_header); case must be matched too, or a
    declared identifier spelt differently in the file would be an unknown column, its values
    kept. An exact match wins. Two entries that both match one declared name (`email` and
    `Email`), or one entry matching two declared names, are an error naming both: which one the
    spec means cannot be told.
    """
    names = list(dict.fromkeys(declared))
    out = list(header)
    claimed: dict[int, str] = {header.index(n): n for n in names if n in header}
    for name in names:
        key = name.casefold()
        others = [i for i, h in enumerate(header) if h != name and h.casefold() == key and h not in names]
        if name in header and others:
            raise DataError(f"{path}: columns {name!r} and {header[others[0]]!r} differ only in letter case and both "
                            f"match the spec's column {name!r}: rename or remove one of them")
        if name in header or not others:
            continue
        if len(others) > 1:
            raise DataError(f"{path}: columns {header[others[0]]!r} and {header[others[1]]!r} differ only in letter "
                            f"case and both match the spec's column {name!r}: rename or remove one of them")
        i = others[0]
        if i in claimed:
            raise DataError(f"{path}: column {header[i]!r} matches both {claimed[i]!r} and {name!r} of the spec up to "
                            f"letter case: spell the spec's names as the file does")
        claimed[i] = out[i] = name
    return out


def to_csv_line(fields: Sequence[str], delimiter: str = ",") -> str:
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter, lineterminator="").writerow(fields)
    return buf.getvalue()


def as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def detect_delimiter(path: Path, encoding: str = "utf-8") -> str:
    """The delimiter of a CSV file, from its first SNIFF_BYTES (see the module docstring)."""
    with open(path, "rb") as fh:
        head = fh.read(SNIFF_BYTES)
        truncated = bool(fh.read(1))
    # Decoding errors are reported by the real read with their line; here they only blur a sample.
    text = head.decode(CODECS.get(encoding, "utf-8"), errors="replace")
    if truncated and "\n" in text:
        text = text[: text.rindex("\n")]  # the last line may be cut short
    best, best_score = ",", (0.0, 0)
    for d in DELIMITERS:
        try:
            rows = [r for r in csv.reader(io.StringIO(text, newline=""), delimiter=d) if r][:200]
        except csv.Error:
            continue
        if not rows or len(rows[0]) < 2:
            continue
        width = len(rows[0])
        agree = sum(len(r) == width for r in rows[1:]) / max(1, len(rows) - 1)
        score = (agree, width)
        if score > best_score:
            best, best_score = d, score
    return best


def first_undecodable(path: Path, codec: str) -> tuple[int, int, int]:
    """(offset, byte, line) of the first byte `codec` cannot decode in the file."""
    decoder = codecs.getincrementaldecoder(codec)("strict")
    consumed = 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            pending = len(decoder.getstate()[0])
            try:
                decoder.decode(block)
            except UnicodeDecodeError as err:
                offset = consumed - pending + err.start
                with open(path, "rb") as again:
                    prefix = again.read(offset + 1)
                return offset, prefix[offset], prefix[:offset].count(b"\n") + 1
            consumed += len(block)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as err:
            offset = consumed - (len(err.object) - err.start)
            with open(path, "rb") as again:
                prefix = again.read(offset + 1)
            return offset, prefix[offset], prefix[:offset].count(b"\n") + 1
    raise DataError(f"{path}: {codec} decoding failed but no undecodable byte was found")


def detect_encoding(path: Path) -> str:
    """utf-8 if the whole file decodes as UTF-8, else cp1252 if it decodes as that, else latin-1
    (which decodes any bytes). Used only where no encoding is declared (`ppmlops risk scan`)."""
    _check_file(path)
    check_text_encoding(path)
    for name in ("utf-8", "cp1252"):
        decoder = codecs.getincrementaldecoder(CODECS[name])("strict")
        try:
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    # ASCII decodes in both and leaves no partial character pending (isascii runs
                    # ten times faster than decoding); only other blocks are decoded.
                    if not (block.isascii() and not decoder.getstate()[0]):
                        decoder.decode(block)
            decoder.decode(b"", final=True)
            return name
        except UnicodeDecodeError:
            continue
    return "latin-1"
