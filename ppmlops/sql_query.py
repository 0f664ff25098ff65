"""A SQL source's query as text: is it one SELECT, its normalized form, and the window wrapped around it.

No database is touched here (the spec checks a query when it is loaded, so this sits beside
ppmlops.window rather than under ppmlops.data, which imports the spec); reading is
ppmlops.data.sql_source. The checks are a first line only: the query runs in a READ ONLY
transaction, which is what actually stops a write (a function with side effects, SELECT ... FOR
UPDATE, a data-modifying WITH), whatever the text looks like.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Mapping

# Statements and clauses that write or change the schema; matched as whole words outside string
# literals, quoted identifiers and comments. INTO catches SELECT ... INTO new_table.
_WRITES = ("insert", "update", "delete", "merge", "truncate", "drop", "create", "alter", "grant", "revoke",
           "copy", "into", "vacuum", "call", "do", "lock", "refresh", "reindex", "cluster", "comment", "security")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_DOLLAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")


@dataclass(frozen=True)
class _Piece:
    text: str
    code: bool  # False: a string literal or a quoted identifier, kept byte for byte


def _pieces(sql: str) -> list[_Piece]:
    """The query split into code and literals, comments removed; ValueError for an unclosed one."""
    out: list[_Piece] = []
    code: list[str] = []
    i, n = 0, len(sql)

    def flush() -> None:
        if code:
            out.append(_Piece("".join(code), True))
            code.clear()

    while i < n:
        c = sql[i]
        if sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j
            code.append(" ")
        elif sql.startswith("/*", i):
            depth, j = 1, i + 2  # PostgreSQL's block comments nest
            while depth and j < n:
                if sql.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif sql.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            if depth:
                raise ValueError("a /* comment is not closed")
            i = j
            code.append(" ")
        elif c in "'\"":
            j = i + 1
            while True:
                j = sql.find(c, j)
                if j < 0:
                    raise ValueError(f"a {'string' if c == chr(39) else 'quoted identifier'} ({c}) is not closed")
                if sql.startswith(c * 2, j):  # a doubled quote stands for itself
                    j += 2
                    continue
                break
            flush()
            out.append(_Piece(sql[i:j + 1], False))
            i = j + 1
        elif c == "$" and (m := _DOLLAR.match(sql, i)) and not (i and (sql[i - 1].isalnum() or sql[i - 1] == "_")):
            tag = m.group(0)
            j = sql.find(tag, m.end())
            if j < 0:
                raise ValueError(f"a dollar-quoted string ({tag}) is not closed")
            flush()
            out.append(_Piece(sql[i:j + len(tag)], False))
            i = j + len(tag)
        else:
            code.append(c)
            i += 1
    flush()
    return out


def _stripped(pieces: list[_Piece]) -> list[_Piece]:
    """Whitespace collapsed and unquoted words lower-cased in the code (PostgreSQL folds them),
    trailing semicolons dropped."""
    out = []
    for p in pieces:
        out.append(_Piece(re.sub(r"\s+", " ", p.text).lower(), True) if p.code else p)
    while out and out[-1].code and out[-1].text.strip(" ;") == "":
        out.pop()
    if out and out[-1].code:
        out[-1] = _Piece(out[-1].text.rstrip(" ;"), True)
    if out and out[0].code:
        out[0] = _Piece(out[0].text.lstrip(), True)
    return [p for p in out if p.text]


def select_problem(sql: str) -> str | None:
    """Why `sql` is not one read-only SELECT (or WITH ... SELECT), or None."""
    try:
        pieces = _stripped(_pieces(sql))
    except ValueError as err:
        return str(err)
    code = " ".join(p.text for p in pieces if p.code)
    if not code.strip():
        return "the query is empty"
    if ";" in code:
        return "one statement only (a ; separates statements; a trailing one is allowed)"
    words = _WORD.findall(code)
    if not words or words[0] not in ("select", "with"):
        return f"only a SELECT (or WITH ... SELECT) query is read, got {words[0].upper() if words else 'no statement'}"
    found = sorted({w for w in words if w in _WRITES})
    if found:
        return (f"only a read-only SELECT is read; the query has {', '.join(w.upper() for w in found)} "
                "(outside quotes)")
    return None


def normalized(sql: str) -> str:
    """The query with comments removed, whitespace collapsed, unquoted words lower-cased and the
    trailing semicolon dropped: two specs that differ only in layout read the same rows."""
    return "".join(p.text for p in _stripped(_pieces(sql))).strip()


def query_sha256(sql: str) -> str:
    return hashlib.sha256(normalized(sql).encode("utf-8")).hexdigest()


def url_problem(url: str) -> str | None:
    """Why `url` cannot be a SQL source's URL, or None (never shows the URL: it may hold a password)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return "not a valid SQLAlchemy URL (e.g. postgresql+psycopg2://reader@db.internal:5432/warehouse)"
    if parsed.get_backend_name() != "postgresql":
        return f"a SQL source reads PostgreSQL (postgresql+psycopg2://...), got {parsed.get_backend_name()!r}"
    if not parsed.database:
        return "names no database (postgresql+psycopg2://user@host:port/DATABASE)"
    return None


def windowed(sql: str, quoted_column: str, has_start: bool) -> str:
    """The user's query wrapped so that the server keeps only rows in [:start, :end) of the
    column (an identifier the dialect quoted); the bounds are bind parameters, never text."""
    where = f"src.{quoted_column} < :end"
    if has_start:
        where = f"src.{quoted_column} >= :start AND " + where
    return f"SELECT * FROM ({as_subquery(sql)}) AS src WHERE {where}"


def as_subquery(sql: str) -> str:
    """The user's query as it goes inside the wrapper: comments removed (a trailing -- comment
    would swallow the wrapper's parenthesis), trailing semicolons dropped, and colons in the code
    escaped so SQLAlchemy's text() takes none of them for a bind parameter."""
    pieces = _pieces(sql)
    while pieces and pieces[-1].code and pieces[-1].text.strip(" \t\r\n;") == "":
        pieces.pop()
    if pieces and pieces[-1].code:
        pieces[-1] = _Piece(pieces[-1].text.rstrip(" \t\r\n;"), True)
    return "".join(p.text.replace(":", r"\:") for p in pieces).strip()


def server_of(url: str) -> str:
    """host:port/database of a PostgreSQL URL: where a query runs, without the user or password."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    return f"{u.host or 'localhost'}:{u.port or 5432}/{u.database}"


def source_url(source: Any, connections: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(URL, how messages name it) of a spec's SQL source: its url (shown redacted), or the URL
    of its connection from `connections` (the Airflow adapter resolves them, see
    ppmlops.airflow.connections.source_urls), shown by the connection's id."""
    from ppmlops.db import redact
    from ppmlops.errors import SpecError

    if source.url is not None:
        return source.url, redact(source.url)
    url = (connections or {}).get(source.connection)
    if url is None:
        field = source_field(source)
        raise SpecError(f"{field}.connection: no connection {source.connection!r} is defined: add an Airflow "
                        f"Connection of that id (type postgres; Admin -> Connections, `airflow connections add`, "
                        f"or AIRFLOW_CONN_{source.connection.upper()}), or give {field}.url instead")
    return url, source.connection


def source_field(source: Any) -> str:
    """`dataset.source` or `dataset.test_source`: where in the spec this source is."""
    return getattr(source, "_field", "dataset.source.path").rsplit(".", 1)[0]
