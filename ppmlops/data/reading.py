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
        # Taken before the first byte is read (the header included), compared after the last.
        before = FileState.of(self.path)
        if before is None:
            raise DataError(f"{self.path}: data source not found")
        self._before = before
        if fmt == "csv":
            if encoding not in CODECS:
                raise DataError(f"{self.path}: unsupported encoding {encoding!r}; use one of {sorted(CODECS)}")
            check_text_encoding(self.path)
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
        try:
            for chunk in chunks:
                self.rows_in += len(chunk)
                yield chunk
        except DataError as err:
            # A file cut short mid-read shows up as a parse error (an unclosed quote, a cut
            # multi-byte character, a damaged Parquet footer): the change is the cause to report.
            self._check_unchanged(err)
            raise
        self._check_unchanged()
        self._done = True

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
        again = SourceReader(self.path, self.format, self.encoding, self.delimiter, chunk_rows=rows)
        chunks = again._csv_chunks()
        try:
            return next(chunks, Chunk()).records
        finally:
            chunks.close()

    def _check_unchanged(self, cause: BaseException | None = None) -> None:
        change = self._before.change_to(FileState.of(self.path))
        if change is not None:
            raise SourceChanged(f"{self.path}: the file changed while it was being read ({change}): nothing was "
                                f"staged; re-run when the file is complete") from cause

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
                records = _text_records(batch)
                yield Chunk(records, list(range(row + 1, row + 1 + len(records))), [])
                row += len(records)
        except (pa.ArrowException, OSError) as err:
            raise DataError(f"{self.path}: cannot read Parquet: {err}") from None


# ---------------------------------------------------------------------------------------------- helpers


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
                    decoder.decode(block)
            decoder.decode(b"", final=True)
            return name
        except UnicodeDecodeError:
            continue
    return "latin-1"
