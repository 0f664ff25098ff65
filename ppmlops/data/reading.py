"""Source files as text, streamed in chunks: every record with the line it starts on.

Both ingestion (which keeps the whole table) and the risk scan (which must not, files may be
larger than memory) read through here, so a line number means the same in the quarantine file
and in a scan report: the 1-based physical line where the record starts (a quoted field may
span lines); for Parquet, the 1-based row number.

CSV text is decoded as declared (UTF-8 strictly, with or without a byte-order mark; latin-1;
cp1252). A byte the encoding cannot decode is an error naming its line, found by a second pass
over the bytes, because the streaming decoder reports it a buffer later. The delimiter is
declared or detected from the first 64 KiB: among , ; tab and |, the one that splits the
header into the most columns with the most following lines agreeing on that width. A line with
a different number of fields than the header is not an error but a ragged record, kept with its
text for the caller to quarantine. The SHA-256 of the file's bytes is computed while reading.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import gc
import hashlib
import io
import math
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

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


class UnclosedQuote(DataError):
    """A quoted field opened on `line` and swallowed the lines after it."""

    def __init__(self, message: str, line: int):
        super().__init__(message)
        self.line = line


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


class _HashingRaw(io.RawIOBase):
    def __init__(self, fh: Any, digest: Any):
        self._fh, self._digest = fh, digest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._fh.readinto(buffer)
        if n:
            self._digest.update(memoryview(buffer)[:n])
        return n


class SourceReader:
    """One CSV or Parquet file; `header` is known on construction, chunks come from iteration.

    `sha256` (of the file's bytes) and `rows_in` are final once iteration has finished.
    """

    def __init__(self, path: Path | str, fmt: str = "csv", encoding: str = "utf-8",
                 delimiter: str | None = None, chunk_rows: int = CHUNK_ROWS):
        self.path = Path(path)
        self.format = fmt
        self.encoding = encoding
        self.chunk_rows = chunk_rows
        self.rows_in = 0
        self._digest = hashlib.sha256()
        self._done = False
        _check_file(self.path)
        if fmt == "csv":
            if encoding not in CODECS:
                raise DataError(f"{self.path}: unsupported encoding {encoding!r}; use one of {sorted(CODECS)}")
            self.delimiter = delimiter or detect_delimiter(self.path, encoding)
            self.header = self._csv_header()
        elif fmt == "parquet":
            self.delimiter = None
            self.header = self._parquet_header()
        else:
            raise DataError(f"{self.path}: unsupported format {fmt!r} (csv or parquet)")

    @property
    def sha256(self) -> str:
        if not self._done:
            raise RuntimeError("sha256 is known only after the whole file has been read")
        return self._digest.hexdigest()

    def __iter__(self) -> Iterator[Chunk]:
        chunks = self._csv_chunks() if self.format == "csv" else self._parquet_chunks()
        for chunk in chunks:
            self.rows_in += len(chunk)
            yield chunk
        self._done = True

    # ------------------------------------------------------------------------------------ CSV

    def _open_text(self, digest: Any | None) -> io.TextIOWrapper:
        raw = open(self.path, "rb", buffering=0)
        stream = _HashingRaw(raw, digest) if digest is not None else raw
        return io.TextIOWrapper(io.BufferedReader(stream, 1 << 20), encoding=CODECS[self.encoding], newline="")

    def _csv_header(self) -> list[str]:
        csv.field_size_limit(max(csv.field_size_limit(), FIELD_LIMIT))
        with self._decoding(), self._open_text(None) as text:
            for fields in csv.reader(text, delimiter=self.delimiter):
                if fields and any(f.strip() for f in fields):
                    return check_header(self.path, fields)
        raise DataError(f"{self.path}: file is empty (expected a header line and data rows)")

    def _csv_chunks(self) -> Iterator[Chunk]:
        # The hot loop of every scan: kept flat, with the common case (a well-formed record) first.
        # The cyclic garbage collector is paused while a chunk fills: tens of thousands of new
        # lists of strings (which cannot form cycles) would otherwise trigger a collection every
        # few hundred rows and more than double the time per row. It runs again before each yield.
        width, limit = len(self.header), self.chunk_rows
        chunk = Chunk()
        records, lines = chunk.records, chunk.lines
        collecting = gc.isenabled()
        with self._decoding(), self._open_text(self._digest) as text:
            reader = csv.reader(text, delimiter=self.delimiter)
            prev_end = 0
            try:
                gc.disable()
                for fields in reader:  # up to and including the header
                    prev_end = reader.line_num
                    if fields and any(f.strip() for f in fields):
                        break
                for fields in reader:
                    start, prev_end = prev_end + 1, reader.line_num
                    if prev_end > start and self._runaway(fields, start, prev_end, width):
                        raise self._unclosed(start, prev_end, "runs to line")
                    if len(fields) == width:
                        records.append(fields)
                        lines.append(start)
                        if len(records) >= limit:
                            if collecting:
                                gc.enable()
                            yield chunk
                            gc.disable()
                            chunk = Chunk()
                            records, lines = chunk.records, chunk.lines
                    elif fields:  # a blank line carries no row
                        where = f"line {start}" if prev_end == start else f"the record on lines {start}-{prev_end}"
                        why = f"{where} has {len(fields)} fields, the header has {width}"
                        chunk.ragged.append((start, fields, why))
            except csv.Error as err:
                if "field larger than field limit" in str(err):
                    raise self._unclosed(prev_end + 1, reader.line_num, "is still open at line") from None
                raise DataError(f"{self.path}: line {reader.line_num}: cannot parse CSV: {err}") from None
            finally:
                if collecting:
                    gc.enable()
        if chunk:
            yield chunk

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

    def _parquet_chunks(self) -> Iterator[Chunk]:
        import pyarrow as pa

        with open(self.path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                self._digest.update(block)
        row = 0
        try:
            for batch in self._parquet_file().iter_batches(batch_size=self.chunk_rows):
                columns = [[as_text(v) for v in batch.column(i).to_pylist()] for i in range(batch.num_columns)]
                records = [list(r) for r in zip(*columns)]
                yield Chunk(records, list(range(row + 1, row + 1 + len(records))), [])
                row += len(records)
        except (pa.ArrowException, OSError) as err:
            raise DataError(f"{self.path}: cannot read Parquet: {err}") from None


# ---------------------------------------------------------------------------------------------- helpers


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
    for name in ("utf-8", "cp1252"):
        decoder = codecs.getincrementaldecoder(CODECS[name])("strict")
        try:
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    decoder.decode(block)
            decoder.decode(b"", final=True)
            return name
        except UnicodeDecodeError:
            continue
    return "latin-1"
