"""The one place ppmlops opens a database: engines, transactions, and messages about them.

The privacy ledger and the audit log share one SQLAlchemy URL (settings.db_url): an SQLite file
by default, PostgreSQL on a cluster. Whatever differs between the two is handled here:

- SQLite: WAL journal for a file (readers do not block the writer), a busy timeout so waiting
  writers queue instead of failing, and transactions begun explicitly: pysqlite's own lazy BEGIN
  lets two writers read the same state before either takes the write lock, so a writer's
  connection carries the execution option WRITE and begins with BEGIN IMMEDIATE. An in-memory
  database uses one shared connection (StaticPool), or every checkout would see a new empty one.
- PostgreSQL: pre-ping, so a connection the server dropped is replaced rather than failing a task.
- Messages: a URL is shown with its password hidden (`redact`), and a database that is missing,
  unreachable or read-only is a DatabaseUnavailable naming that URL and what to check, never a
  driver traceback.

Opening an engine never creates anything; `ensure_parent` makes an SQLite file's folder for the
writers that should create the file (ledger, audit log appends), and `must_exist` is for the
readers that must not (`ppmlops audit verify`, the dashboard).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InternalError, OperationalError
from sqlalchemy.exc import DatabaseError as SQLAlchemyDatabaseError
from sqlalchemy.pool import StaticPool

from ppmlops.errors import PpmlopsError

# Execution options of a writer's connection: on SQLite it begins with BEGIN IMMEDIATE.
SQLITE_BEGIN = "ppmlops_sqlite_begin"
WRITE = {SQLITE_BEGIN: "IMMEDIATE"}
BUSY_TIMEOUT_S = 60


class DatabaseUnavailable(PpmlopsError):
    """The database cannot be opened, reached or written; the message names the (redacted) URL.

    `transient` says whether trying again can pass: a server that is down or a lock held by another
    writer may clear; a corrupted file, a full disk, a read-only file, wrong credentials or a
    missing database will not, so an Airflow task fails at once on them instead of retrying.
    """

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.transient = transient


def parse(db_url: str) -> URL:
    try:
        return make_url(db_url)
    except ArgumentError:
        # Not echoed: a malformed URL may still hold a password.
        raise DatabaseUnavailable("the database URL (PPMLOPS_DB_URL) is not a valid SQLAlchemy URL, "
                                  "e.g. sqlite:////path/ppmlops.db or postgresql+psycopg2://user@host/db") from None


def redact(db_url: str) -> str:
    """The URL as a message may show it: the password replaced by ***."""
    try:
        return make_url(db_url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only used in messages
        return "(an unparseable database URL)"


def is_sqlite(db_url: str) -> bool:
    return parse(db_url).get_backend_name() == "sqlite"


def sqlite_file(db_url: str) -> Path | None:
    """The file an SQLite URL names; None for other databases and in-memory or URI-form SQLite."""
    url = parse(db_url)
    if url.get_backend_name() != "sqlite":
        return None
    db = url.database
    if not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db).expanduser()


def ensure_parent(db_url: str) -> None:
    """Create the folder of an SQLite file (for writers, which create the file on first use)."""
    path = sqlite_file(db_url)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DatabaseUnavailable(f"cannot create the folder of the database {redact(db_url)}: "
                                      f"{err.strerror or err}") from None


def must_exist(db_url: str) -> None:
    """DatabaseUnavailable when db_url names an SQLite file that does not exist.

    Connecting would create an empty one, and a reader would then report on nothing as if it were
    the real database (a mistyped PPMLOPS_DB_URL must not look like an empty, intact log).
    """
    path = sqlite_file(db_url)
    if path is not None and not path.exists():
        raise DatabaseUnavailable(
            f"no database at {redact(db_url)}: the file does not exist. Check PPMLOPS_HOME / "
            f"PPMLOPS_DB_URL (no pipeline has recorded anything with these settings yet, or they point "
            f"somewhere else)")


def make_engine(db_url: str) -> Engine:
    """An engine for db_url with the settings above; connects lazily, creates nothing."""
    url = parse(db_url)
    if url.get_backend_name() != "sqlite":
        try:
            return create_engine(url, pool_pre_ping=True)
        except ImportError as err:
            raise DatabaseUnavailable(f"the database driver for {redact(db_url)} is not installed ({err}); "
                                      f"PostgreSQL needs psycopg2 (postgresql+psycopg2://...)") from None

    path = sqlite_file(db_url)
    if path is not None:
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S})
    else:
        engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from pysqlite so "begin" below decides the BEGIN kind.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
        if path is not None:
            try:
                cur.execute("PRAGMA journal_mode = WAL")
            except Exception:  # noqa: BLE001 - a read-only file keeps its journal mode; reads still work
                pass
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(SQLITE_BEGIN, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def writer(engine: Engine) -> Engine:
    """The same engine whose transactions are write transactions (BEGIN IMMEDIATE on SQLite)."""
    return engine.execution_options(**WRITE)


def unavailable(db_url: str, err: BaseException, doing: str) -> DatabaseUnavailable:
    """A message for a database error: what was being done, where, the driver's first line, a hint."""
    orig = getattr(err, "orig", None) or err
    text = " ".join(str(orig).split()) or type(orig).__name__
    low = text.lower()
    transient = False
    if "file is not a database" in low or "malformed" in low or "not a database" in low:
        path = sqlite_file(db_url)
        hint = (f"{path or 'the file'} is damaged or is not an SQLite database: restore it from a backup, or "
                "point PPMLOPS_DB_URL / PPMLOPS_HOME at the right file. Do not delete it to start over: the "
                "ledger in it is the only record of the privacy budget already spent")
    elif "disk is full" in low or "disk full" in low or "no space left" in low:
        path = sqlite_file(db_url)
        hint = (f"the disk holding {path.parent if path else 'the database'} is full: free space "
                f"(df -h {path.parent if path else '.'}) and run the task again; the transaction was rolled "
                "back, nothing was half-written")
    elif "readonly" in low or "read-only" in low or "read only" in low:
        hint = "the database is read-only for this process: check the file's permissions or the role's grants"
    elif "unable to open database file" in low:
        hint = "the file or its folder cannot be opened: check the path and its permissions"
    elif "does not exist" in low and "database" in low:
        hint = "the database does not exist on that server: create it, or fix PPMLOPS_DB_URL"
    elif any(s in low for s in ("could not connect", "connection refused", "could not translate host",
                                "timeout expired", "server closed the connection", "no route")):
        hint = "the server cannot be reached: is it running, and are host and port in PPMLOPS_DB_URL right?"
        transient = True
    elif "password authentication failed" in low or "authentication" in low:
        hint = "the server refused the credentials in PPMLOPS_DB_URL"
    elif "locked" in low or "busy" in low:
        hint = "another process held the database's lock past the busy timeout; trying again can pass"
        transient = True
    else:
        hint = "check PPMLOPS_DB_URL and the database server"
        transient = True  # unknown: one more try is cheap, and a retried stage is idempotent
    # The driver's text names hosts, roles and SQL, not row values; cut long SQL short anyway.
    first = text.split(" [SQL:")[0][:300]
    return DatabaseUnavailable(f"cannot {doing} the database at {redact(db_url)}: {first} ({hint})", transient=transient)


@contextlib.contextmanager
def translated(db_url: str, doing: str) -> Iterator[None]:
    """Turn a driver error inside the block into DatabaseUnavailable (see `unavailable`)."""
    try:
        yield
    except DBAPIError as err:
        if getattr(err, "connection_invalidated", False) or _operational(err) or _damaged(err):
            raise unavailable(db_url, err, doing) from None
        raise


def _damaged(err: DBAPIError) -> bool:
    """SQLite's DatabaseError for a file that is not (or no longer) a database: not a bug of ours."""
    return isinstance(err, SQLAlchemyDatabaseError) and any(
        s in str(getattr(err, "orig", "")).lower() for s in ("not a database", "malformed"))


def _operational(err: DBAPIError) -> bool:
    if isinstance(err, OperationalError):
        return True
    # PostgreSQL reports a write in a read-only transaction as an InternalError (SQLSTATE 25006).
    return isinstance(err, InternalError) and getattr(getattr(err, "orig", None), "pgcode", None) == "25006"


@contextlib.contextmanager
def transaction(engine: Engine, db_url: str, *, write: bool = False, doing: str | None = None
                ) -> Iterator[Connection]:
    """A connection inside one transaction, committed on success; errors as in `translated`."""
    target = writer(engine) if write else engine
    with translated(db_url, doing or ("write to" if write else "read")):
        with target.begin() as conn:
            yield conn
