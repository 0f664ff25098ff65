"""A SQL source: a spec's SELECT, read from PostgreSQL in chunks, as ingest reads a file.

    source: {sql: "SELECT ... FROM events", connection: ppmlops_source}   # an Airflow Connection
    source: {sql: "SELECT ...", url: "postgresql+psycopg2://reader@db:5432/warehouse"}

The reader (`SqlReader`) has what ingest and the risk scan use of reading.SourceReader: `header`,
`batches()` of reading.Batch (so every check, the split, the snapshot and quarantine downstream are
the same code as for CSV), `head`, `rows_in` and `sha256`. A "line" is the 1-based row number in
the query's result, as for Parquet.

* Window: with dataset.window.column the run's interval is pushed into the query as bound
  parameters: SELECT * FROM (<sql>) AS src WHERE src."<column>" >= :start AND src."<column>" < :end
  (the identifier quoted by the dialect). The column must be a date or timestamp type; the session
  time zone is UTC, so a timestamp without a zone is UTC, as ppmlops.window reads text. Ingest
  still applies its own window check to the rows, which then keeps everything.
* Values become text as a CSV export writes them (`sql_text`): ISO 8601 dates and times, repr()
  of a float, str() of an integer or decimal, true/false, empty for NULL. The split hash reads
  this text, so the same rows in a CSV written that way stage the same snapshot.
* Streaming: a server-side cursor (psycopg2's named cursor, via stream_results) fetched
  `chunk_rows` rows at a time; a chunk is converted and handed on before the next is fetched.
* Read only: the query runs in a READ ONLY transaction (the spec's SELECT check is the first
  line, this is the guarantee).
* Errors (SqlQueryError, SqlSourceUnavailable) name the source field, the server
  (host:port/database) and what the server said when it cannot quote row values (a syntax error,
  a missing table or column); a server that is down or a connection dropped mid-read is transient,
  so Airflow's retry applies; a bad query is not. A URL's password is never shown.
* `sha256` is over the header and the rows' text as read (in the order the server gave them):
  assess re-reads the query and refuses a source that changed since ingest.

Nothing here logs a row count: counts of private rows are private.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import date, datetime, time as dtime, timezone
from decimal import Decimal
from typing import Any, Iterator, Mapping, Sequence

from ppmlops import sql_query
from ppmlops.data.reading import CHUNK_ROWS, UNIT, Batch, _Rows, check_header
from ppmlops.errors import DataError
from ppmlops.window import DataInterval

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10


class SqlQueryError(DataError):
    """The query itself is at fault (syntax, a missing table or column, not read-only): a retry
    cannot pass."""

    transient = False


class SqlSourceUnavailable(DataError):
    """The server cannot be reached or dropped the connection: a later try can pass."""

    transient = True


class QueryName(str):
    """What a SQL source is called where a file's path would go (quarantine `_source`, messages):
    `sql:<connection>` or `sql:<redacted url>`; `.name` as a Path's."""

    @property
    def name(self) -> str:
        return str(self)


@dataclass(frozen=True)
class SqlTarget:
    """Where a query runs: the URL (may hold a password: never shown) and how messages name it."""

    url: str = ""
    shown: str = ""  # the connection id, or the URL redacted
    server: str = ""  # host:port/database

    def __repr__(self) -> str:  # the dataclass repr would print the URL
        return f"SqlTarget({self.shown!r}, {self.server!r})"

    @classmethod
    def of(cls, url: str, shown: str) -> "SqlTarget":
        return cls(url, shown, sql_query.server_of(url))


def target(source: Any, connections: Mapping[str, str] | None = None) -> SqlTarget:
    """The spec source's server (see sql_query.source_url)."""
    return SqlTarget.of(*sql_query.source_url(source, connections))


source_field = sql_query.source_field


def sql_text(value: Any) -> str:
    """A value as a CSV export writes it (see the module docstring)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "" if value != value else repr(value)
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc)
        return value.isoformat()
    if isinstance(value, (date, dtime)):
        return value.isoformat()
    if isinstance(value, (bytes, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, Decimal):
        return str(value)
    return str(value)


class SqlReader:
    """One SQL source, read like a file (see the module docstring)."""

    format = "sql"
    encoding = None
    delimiter = None

    def __init__(self, source: Any, where: SqlTarget, *, window_column: str | None = None,
                 interval: DataInterval | None = None, chunk_rows: int = CHUNK_ROWS):
        self.source, self.where = source, where
        self.field = source_field(source)
        self.path = QueryName(f"sql:{where.shown}")
        self.window_column, self.interval = window_column, interval
        self.chunk_rows = max(1, chunk_rows)
        self.sql = source.sql
        self.query_sha256 = sql_query.query_sha256(source.sql)
        self.rows_in = 0
        self._digest = hashlib.sha256()
        self._done = False
        self._names = self._columns()
        self.header = check_header(self.path, self._names)
        self._digest.update(UNIT.join(self.header).encode("utf-8") + b"\n")

    def again(self) -> "SqlReader":
        """A fresh reader of the same query and window (its own read, rows and hash)."""
        return SqlReader(self.source, self.where, window_column=self.window_column, interval=self.interval,
                         chunk_rows=self.chunk_rows)

    def describe(self) -> dict[str, Any]:
        """The source as lineage records it: the query, where it ran (never a password), its hash."""
        return {"field": self.field, "sql": sql_query.normalized(self.sql), "query_sha256": self.query_sha256,
                "connection" if self.source.connection is not None else "url": self.where.shown,
                "server": self.where.server, "window_pushed_down": self.window_column is not None}

    @property
    def sha256(self) -> str:
        if not self._done:
            raise RuntimeError("sha256 is known only after the whole result has been read")
        return self._digest.hexdigest()

    # ------------------------------------------------------------------------------ the query

    def _statement(self, limit: int | None = None):
        from sqlalchemy import text
        from sqlalchemy.dialects import postgresql

        if self.window_column is not None and self.interval is not None:
            quoted = postgresql.dialect().identifier_preparer.quote(self.window_column)
            body = sql_query.windowed(self.sql, quoted, self.interval.start is not None)
            params = {"end": self.interval.end} | ({"start": self.interval.start} if self.interval.start else {})
        else:
            body, params = f"SELECT * FROM ({sql_query.as_subquery(self.sql)}) AS src", {}
        if limit is not None:
            body, params = f"{body} LIMIT :ppmlops_limit", params | {"ppmlops_limit": limit}
        return text(body), params

    def _engine(self):
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        # No pool: one connection per read, closed with it; a short connect timeout so a server
        # that is down fails the task (and Airflow retries it) rather than hanging.
        return create_engine(self.where.url, poolclass=NullPool,
                             connect_args={"connect_timeout": CONNECT_TIMEOUT_S,
                                           "application_name": "ppmlops-ingest",
                                           # Timestamps without a zone are UTC, as ppmlops.window reads them.
                                           "options": "-c TimeZone=UTC"})

    def _rows(self, limit: int | None = None) -> Iterator[tuple[list[str], list[Any]]]:
        """(column names, then each fetched partition of rows), inside one read-only transaction."""
        engine = self._engine()
        statement, params = self._statement(limit)
        try:
            with self._translated():
                with engine.connect() as conn:
                    conn = conn.execution_options(postgresql_readonly=True)
                    with conn.begin():
                        streamed = statement.execution_options(stream_results=True, max_row_buffer=self.chunk_rows)
                        result = conn.execute(streamed, params)
                        yield list(result.keys()), []
                        for part in result.partitions(self.chunk_rows):
                            yield [], part
        finally:
            engine.dispose()

    def _columns(self) -> list[str]:
        rows = self._rows(limit=0)
        try:
            names, _ = next(rows)
        finally:
            rows.close()
        return names

    def head(self, rows: int) -> list[list[str]]:
        """The first `rows` records, from a read of their own."""
        out: list[list[str]] = []
        for _, part in self._rows(limit=rows):
            out.extend([sql_text(v) for v in r] for r in part)
        return out

    def batches(self, columns: Sequence[int] | None = None) -> Iterator[Batch]:
        """The rows `chunk_rows` at a time as reading.Batch (every column as text)."""
        started = time.monotonic()
        log.info("ingest: reading %s (%s)", self.field, self.path)
        gen = self._rows()
        names, _ = next(gen)
        if names != self._names:
            gen.close()
            raise SqlSourceUnavailable(f"{self.field} ({self.path}, {self.where.server}): the query's columns "
                                       "changed since it was first run; re-run when the schema is settled")
        row = 0
        try:
            for _, part in gen:
                records = [[sql_text(v) for v in r] for r in part]
                del part
                digest = self._digest
                for rec in records:
                    digest.update(UNIT.join(rec).encode("utf-8") + b"\n")
                n = len(records)
                batch = Batch([(_Rows(records, list(range(row + 1, row + 1 + n))), 0, n)], [])
                row += n
                self.rows_in += n
                del records
                yield batch
                del batch  # not held while the next chunk is fetched
        finally:
            gen.close()
        self._done = True
        log.info("ingest: read %s in %.1f s", self.field, time.monotonic() - started)

    def __iter__(self):
        for batch in self.batches():
            yield batch.chunk()

    # ------------------------------------------------------------------------------ errors

    def _translated(self):
        return translated(self.field, self.path, self.where.server)


class translated:
    """Driver errors inside the block as SqlQueryError / SqlSourceUnavailable (see `classify`)."""

    def __init__(self, field: str, name: str, server: str):
        self.field, self.name, self.server = field, name, server

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, err, tb) -> bool:
        from sqlalchemy.exc import DBAPIError

        if err is None or not isinstance(err, DBAPIError):
            return False
        raise classify(err, self.field, self.name, self.server) from None


# SQLSTATE classes and codes (https://www.postgresql.org/docs/current/errcodes-appendix.html)
_TRANSIENT_CLASSES = ("08", "53", "57", "58")  # connection, resources, operator intervention, system
_TRANSIENT_CODES = ("40001", "40P01", "55P03")  # serialization failure, deadlock, lock not available
# Whose server text names only the query's words, never row values: shown.
_QUERY_CLASSES = ("42",)  # syntax error or access rule violation (missing table, column, permission)


def classify(err: Any, field: str, name: str, server: str) -> DataError:
    """The error to raise for a driver error while reading the source (see the module docstring)."""
    orig = getattr(err, "orig", None) or err
    code = getattr(orig, "pgcode", None) or ""
    first = (" ".join(str(orig).split("\n")[0].split()) or type(orig).__name__)[:300]
    where = f"{field} ({name}, server {server})"
    low = str(orig).lower()
    if code == "42601":
        return SqlQueryError(f"{field}.sql: the query is not valid SQL on {server}: {first}")
    if code == "42P01":
        return SqlQueryError(f"{field}.sql: a table the query reads does not exist on {server}: {first}")
    if code == "42703":
        return SqlQueryError(f"{field}.sql: a column the query names does not exist on {server}: {first}")
    if code == "42501":
        return SqlQueryError(f"{where}: the role may not read what the query reads: {first} (grant it SELECT)")
    if code == "25006":
        return SqlQueryError(f"{field}.sql: the query tried to write (it runs read-only): {first}")
    if code.startswith(_QUERY_CLASSES):
        return SqlQueryError(f"{field}.sql: the server refused the query on {server}: {first}")
    if code.startswith("28") or "password authentication failed" in low or "no pg_hba.conf entry" in low:
        return SqlQueryError(f"{where}: the server refused the credentials (fix the connection's login or password)")
    if code == "3D000" or ("database" in low and "does not exist" in low):
        return SqlQueryError(f"{where}: the database does not exist on that server")
    if code.startswith(_TRANSIENT_CLASSES) or code in _TRANSIENT_CODES or not code:
        # No SQLSTATE: the client lost the server (refused, unreachable, closed mid-read).
        return SqlSourceUnavailable(f"{where}: the server cannot be reached or dropped the connection "
                                    f"({first}); nothing was staged, and a later try can pass")
    # Any other class (a value the query cannot convert, a division by zero...): the server's text
    # may quote a row's value, so only the SQLSTATE is shown.
    return SqlQueryError(f"{field}.sql: the query failed on {server} with SQLSTATE {code} (the server's message "
                         "is not shown: it may quote row values); run the query yourself to see it")


def open_reader(source: Any, *, connections: Mapping[str, str] | None = None, window: Any = None,
                interval: DataInterval | None = None, chunk_rows: int = CHUNK_ROWS) -> SqlReader:
    """The reader for a spec's SQL source, with the window pushed down when it has a column."""
    column = window.column if window is not None and not window.whole_table else None
    return SqlReader(source, target(source, connections), window_column=column,
                     interval=interval if column is not None else None, chunk_rows=chunk_rows)
