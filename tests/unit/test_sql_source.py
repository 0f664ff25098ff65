"""A SQL source (issue 29, item 4) against the real PostgreSQL the tests start: the window pushed into
the query, the result staged exactly as the same rows from a CSV, read in chunks through a
server-side cursor, and a bad query, a missing table and a dropped connection each named."""

from __future__ import annotations

import copy
import csv
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from ppmlops.airflow.tasks import retried
from ppmlops import sql_query
from ppmlops.data.ingest import ingest
from ppmlops.data.sql_source import SqlQueryError, SqlSourceUnavailable, open_reader
from ppmlops.errors import SpecError
from ppmlops.spec import parse_spec
from ppmlops.window import DataInterval

UTC = timezone.utc
MONDAY = datetime(2026, 1, 5, tzinfo=UTC)
WEEK = timedelta(days=7)
# ORDER BY: a table has no row order, and the snapshot's content hash follows the order rows come in.
QUERY = "SELECT email, age, plan, consent, y, seen_at, note FROM people ORDER BY seen_at"

DOC = {
    "name": "sqlsmall",
    "dataset": {
        "id": "sqlsmall",
        "source": {"sql": QUERY, "connection": "ppmlops_source"},
        "label": {"column": "y", "positive": "yes", "values": ["yes", "no"]},
        "consent": {"column": "consent"},
        "identifiers": ["email"],
        "features": [
            {"name": "age", "type": "numeric", "range": [18, 90]},
            {"name": "plan", "type": "categorical", "categories": ["basic", "premium"]},
        ],
        "window": {"column": "seen_at"},
    },
    "privacy": {"epsilon": 1.0, "delta": 1e-5, "run_epsilon": 1.0},
    "training": {"test_fraction": 0.3, "seed": 0},
    "deploy": {"model_name": "sqlsmall"},
}


def spec_of(source: dict, **dataset):
    doc = copy.deepcopy(DOC)
    doc["dataset"]["source"] = source
    doc["dataset"].update(dataset)
    return parse_spec(doc)


def _rows() -> list[dict]:
    """Three weeks of people: refusals, bad ages, unknown plans, empty labels, text with commas."""
    out = []
    for i in range(600):
        out.append({
            "email": f"p{i}@example.org",
            "age": None if i % 41 == 0 else (150 if i % 37 == 0 else 18 + i % 70),
            "plan": "gold" if i % 29 == 0 else ("basic" if i % 3 else "premium"),
            "consent": i % 11 != 0,
            "y": "" if i % 43 == 0 else ("yes" if i % 4 == 0 else "no"),
            "seen_at": MONDAY + timedelta(hours=i * 0.84),  # ~3 weeks
            "note": f'said "hi", then {i / 7!r}',
        })
    return out


def _csv_text(value) -> str:
    """How a CSV export (psql's \\copy ... csv, pandas) writes the value (written here independently
    of the reader's own conversion)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return str(value)


@pytest.fixture(scope="module")
def people(pg_url, tmp_path_factory) -> tuple[str, Path]:
    """The same rows in the table `people` and in a CSV file."""
    rows = _rows()
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE people (email text, age integer, plan text, consent boolean, y text, "
                             "seen_at timestamptz, note text)")
        conn.execute(sa.text("INSERT INTO people VALUES (:email, :age, :plan, :consent, :y, :seen_at, :note)"), rows)
        conn.exec_driver_sql("CREATE TABLE big AS SELECT g AS id, 'x' || g AS t FROM generate_series(1, 200000) g")
    engine.dispose()
    path = tmp_path_factory.mktemp("sqlsrc") / "people.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(list(rows[0]))
        for r in rows:
            w.writerow([_csv_text(v) for v in r.values()])
    return pg_url, path


def _quarantine(result) -> list[tuple[str, str]]:
    """(reason, record HMAC) of each quarantined row, sorted: what a row looks like there whatever
    its source (the _source and _line columns name the file or query)."""
    with open(result.quarantine_path, newline="", encoding="utf-8") as fh:
        return sorted((r["_reason"], r["_record_hmac"]) for r in csv.DictReader(fh))


def _ingest_both(people, tmp_path, window: dict | None, interval):
    url, path = people
    extra = {"window": window} if window is not None else {"window": None}
    csv_result = ingest(spec_of({"path": str(path)}, **extra), tmp_path / "csv", interval=interval, home=tmp_path)
    sql_spec = spec_of({"sql": QUERY + " ;", "connection": "ppmlops_source"}, **extra)
    sql_result = ingest(sql_spec, tmp_path / "sql", interval=interval, home=tmp_path, chunk_rows=64,
                        connections={"ppmlops_source": url})
    return csv_result, sql_result


@pytest.mark.parametrize("window,interval", [
    ({"column": "seen_at"}, DataInterval(MONDAY + WEEK, MONDAY + 2 * WEEK)),
    ({"column": "seen_at", "lookback": "P10D"}, DataInterval(MONDAY, MONDAY + 2 * WEEK)),
    ({"whole_table": True}, DataInterval(MONDAY + WEEK, MONDAY + 2 * WEEK)),
    (None, None),
], ids=["window", "lookback", "whole-table", "no-window"])
def test_the_query_stages_what_the_same_rows_in_a_csv_stage(people, tmp_path, window, interval):
    csv_result, sql_result = _ingest_both(people, tmp_path, window, interval)
    assert sql_result.sha256 == csv_result.sha256  # the snapshot's content hash, train then test
    for name in ("snapshot_train", "snapshot_test"):
        assert pq.read_table(getattr(sql_result, name)).equals(pq.read_table(getattr(csv_result, name)))
    for field in ("rows_train", "rows_test", "rows_quarantined", "quarantine_reasons", "consent_refusals",
                  "columns", "dropped_columns", "consent_as_of", "window"):
        assert getattr(sql_result, field) == getattr(csv_result, field), field
    assert _quarantine(sql_result) == _quarantine(csv_result)
    assert sql_result.quarantine_reasons.keys() >= {"no consent", "invalid value", "unknown category", "invalid label"}
    if window is not None and "column" in window:
        # Pushed down: the server sent only the window's rows; the CSV was read whole and filtered.
        assert sql_result.rows_outside_window == 0 < csv_result.rows_outside_window
        assert sql_result.rows_in == csv_result.rows_in - csv_result.rows_outside_window
    else:
        assert sql_result.rows_in == csv_result.rows_in == 600


def test_the_window_is_bound_parameters_around_the_query_with_the_column_quoted():
    statement = sql_query.windowed("SELECT * FROM t WHERE note = 'a:b';", '"seen at"', True)
    assert statement == ("SELECT * FROM (SELECT * FROM t WHERE note = 'a\\:b') AS src "
                         'WHERE src."seen at" >= :start AND src."seen at" < :end')
    assert sa.text(statement).compile().params == {"start": None, "end": None}  # 'a:b' is no parameter


def test_an_odd_window_column_name_is_quoted_not_spliced(people, tmp_path):
    url, _ = people
    spec = spec_of({"sql": 'SELECT seen_at AS "when"";--", age FROM people', "url": url},
                   window={"column": 'when";--'})
    reader = open_reader(spec.dataset.source, window=spec.dataset.window,
                         interval=DataInterval(MONDAY, MONDAY + timedelta(days=1)))
    ages = [r[1] for b in reader.batches() for r in b.records()]
    assert 0 < len(ages) < 600


def test_rows_stream_in_chunks_through_a_server_side_cursor(people):
    url, _ = people
    spec = spec_of({"sql": "SELECT id, t FROM big ORDER BY id", "url": url})
    reader = open_reader(spec.dataset.source, chunk_rows=1000)
    batches = reader.batches()
    first = next(batches)
    assert first.num_rows == 1000 and first.records()[0] == ["1", "x1"]
    watcher = sa.create_engine(url)
    with watcher.connect() as conn:
        # The reader's session sits in its transaction, having last fetched from a named cursor:
        # the rest of the 200,000 rows are still on the server.
        state, query = conn.execute(sa.text(
            "SELECT state, query FROM pg_stat_activity WHERE application_name = 'ppmlops-ingest'")).one()
    watcher.dispose()
    assert state == "idle in transaction" and query.startswith("FETCH FORWARD"), query
    sizes = [first.num_rows] + [b.num_rows for b in batches]
    assert sizes == [1000] * 200 and reader.rows_in == 200_000
    assert len(reader.sha256) == 64


def test_values_become_text_as_a_csv_export_writes_them(people):
    url, _ = people
    sql = ("SELECT 1.5::float8 AS f, 2::int AS i, 3.10::numeric AS d, true AS b, NULL::text AS n, "
           "'2026-01-05 10:00:00+02'::timestamptz AS tz, '2026-01-05 10:00'::timestamp AS ts, "
           "'2026-01-05'::date AS day")
    reader = open_reader(spec_of({"sql": sql, "url": url}).dataset.source)
    assert reader.header == ["f", "i", "d", "b", "n", "tz", "ts", "day"]
    assert [r for b in reader.batches() for r in b.records()] == [
        ["1.5", "2", "3.10", "true", "", "2026-01-05T08:00:00+00:00", "2026-01-05T10:00:00", "2026-01-05"]]


# --------------------------------------------------------------------------------------------- the spec


def test_a_sql_source_names_exactly_one_of_connection_and_url():
    url = "postgresql+psycopg2://reader:s3cret-pw@db.internal:5433/warehouse"
    by_url = spec_of({"sql": QUERY, "url": url}).dataset.source
    assert by_url.resolved_format() == "sql" and by_url.is_sql
    assert "s3cret-pw" not in repr(by_url) and "s3cret-pw" not in by_url.model_dump_json()
    assert by_url.model_dump()["url"] == "postgresql+psycopg2://reader:***@db.internal:5433/warehouse"
    # The training job rebuilds the spec from its JSON: the redacted URL still parses.
    spec = spec_of({"sql": QUERY, "url": url})
    assert type(spec).model_validate_json(spec.model_dump_json()).dataset.source.sql == QUERY
    for source, message in [
        ({"sql": QUERY}, "exactly one of source.connection"),
        ({"sql": QUERY, "connection": "a", "url": url}, "exactly one of source.connection"),
        ({"sql": QUERY, "connection": "a", "path": "x.csv"}, "exactly one of: path"),
        ({"path": "x.csv", "connection": "a"}, "source.connection goes with source.sql"),
        ({"sql": QUERY, "connection": "a", "delimiter": ";"}, "source.delimiter is for files"),
        ({"sql": QUERY, "url": "mysql://u:s3cret-pw@h/db"}, "reads PostgreSQL"),
        ({"sql": QUERY, "url": "not a url s3cret-pw"}, "source.url: not a valid SQLAlchemy URL"),
    ]:
        with pytest.raises(SpecError) as err:
            spec_of(source)
        assert message in str(err.value) and "s3cret-pw" not in str(err.value)


@pytest.mark.parametrize("sql,message", [
    ("DELETE FROM people", "got DELETE"),
    ("SELECT 1; DROP TABLE people", "one statement only"),
    ("SELECT * INTO copy_of FROM people", "has INTO"),
    ("WITH gone AS (DELETE FROM people RETURNING *) SELECT * FROM gone", "has DELETE"),
    ("SELECT 'unclosed FROM people", "is not closed"),
    ("-- nothing", "the query is empty"),
])
def test_only_a_select_is_accepted_and_the_error_names_the_field(sql, message):
    with pytest.raises(SpecError) as err:
        spec_of({"sql": sql, "connection": "c"})
    assert "source.sql" in str(err.value) and message in str(err.value)


def test_quoted_words_and_comments_do_not_count_as_writes():
    sql = 'SELECT "update", \'delete me\' AS t /* insert */ FROM people -- drop\n;'
    assert sql_query.select_problem(sql) is None
    assert sql_query.normalized(sql) == 'select "update", \'delete me\' as t from people'
    assert sql_query.normalized("select  \"update\",'delete me' AS T\nFROM People;") != sql_query.normalized(sql)


def test_a_partitioned_window_over_a_query_is_refused():
    with pytest.raises(SpecError, match="dataset.source is a SQL query"):
        spec_of({"sql": QUERY, "connection": "c"}, window={"partition": True})


def test_an_undefined_connection_is_named(people, tmp_path):
    with pytest.raises(SpecError, match="dataset.source.connection: no connection 'ppmlops_source' is defined"):
        ingest(spec_of({"sql": QUERY, "connection": "ppmlops_source"}), tmp_path, home=tmp_path,
               interval=DataInterval(MONDAY, MONDAY + WEEK))


# --------------------------------------------------------------------------------------------- errors


def _open(url: str, sql: str, **kw):
    return open_reader(spec_of({"sql": sql, "url": url}).dataset.source, **kw)


def _server(url: str) -> str:
    u = sa.engine.make_url(url)
    return f"{u.host}:{u.port}/{u.database}"


def test_a_bad_query_names_the_field_and_the_server_and_is_not_retried(people, tmp_path):
    url, _ = people
    with pytest.raises(SqlQueryError) as err:
        _open(url, "SELECT email, FROM people")
    message = str(err.value)
    assert message.startswith("dataset.source.sql: the query is not valid SQL on " + _server(url))
    assert "syntax error" in message and not retried(err.value)
    assert sa.engine.make_url(url).password not in message


def test_a_missing_table_is_named_and_not_retried(people):
    url, _ = people
    with pytest.raises(SqlQueryError) as err:
        _open(url, "SELECT * FROM peoples")
    assert "a table the query reads does not exist" in str(err.value) and '"peoples"' in str(err.value)
    assert not retried(err.value)


def test_a_write_hidden_in_a_select_is_stopped_by_the_read_only_transaction(people):
    url, _ = people
    with sa.create_engine(url).begin() as conn:
        conn.exec_driver_sql("CREATE SEQUENCE IF NOT EXISTS counter")
    with pytest.raises(SqlQueryError, match="the query tried to write"):
        list(_open(url, "SELECT nextval('counter') AS n").batches())


def test_a_failing_value_is_not_quoted_in_the_message(people):
    url, _ = people
    with pytest.raises(SqlQueryError) as err:
        list(_open(url, "SELECT CAST(email AS integer) AS n FROM people").batches())
    assert "SQLSTATE 22P02" in str(err.value) and "example.org" not in str(err.value)


def test_a_server_that_is_down_is_named_and_retried(people):
    url, _ = people
    closed = sa.engine.make_url(url).set(port=1).render_as_string(hide_password=False)
    with pytest.raises(SqlSourceUnavailable) as err:
        _open(closed, QUERY)
    message = str(err.value)
    assert "server 127.0.0.1:1/" in message and "cannot be reached" in message
    assert retried(err.value) and sa.engine.make_url(url).password not in message


def test_a_connection_dropped_mid_read_is_named_retried_and_stages_nothing(people, tmp_path):
    url, _ = people
    reader = _open(url, "SELECT id, t FROM big", chunk_rows=500)
    batches = reader.batches()
    next(batches)
    killer = sa.create_engine(url)
    with killer.connect() as conn:
        killed = conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                      "WHERE application_name = 'ppmlops-ingest'")).scalars().all()
    killer.dispose()
    assert killed == [True]
    with pytest.raises(SqlSourceUnavailable) as err:
        for _ in batches:
            pass
    assert f"dataset.source (sql:{reader.where.shown}, server {_server(url)})" in str(err.value)
    assert retried(err.value) and sa.engine.make_url(url).password not in str(err.value)


def test_a_dropped_connection_during_ingest_leaves_no_snapshot(people, tmp_path):
    url, _ = people
    spec = spec_of({"sql": "SELECT p.* FROM people p, generate_series(1, 400) g", "url": url}, window=None)
    done = threading.Event()

    def kill_when_reading():
        engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")  # a fresh view of the activity each time
        with engine.connect() as conn:
            while not done.is_set():
                if conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                                        "application_name = 'ppmlops-ingest' AND query LIKE 'FETCH%'")).scalars().all():
                    break
                done.wait(0.01)
        engine.dispose()

    killer = threading.Thread(target=kill_when_reading)
    killer.start()
    try:
        with pytest.raises(SqlSourceUnavailable):
            ingest(spec, tmp_path / "run", home=tmp_path, chunk_rows=500)
    finally:
        done.set()
        killer.join()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == []


# --------------------------------------------------------------------------------------------- identity, lineage


def test_two_specs_over_the_same_query_and_server_share_one_identity(people, tmp_path):
    from ppmlops.privacy.identity import DatasetSources, SourceAlreadyCovered, source_identity

    url, _ = people
    other_role = sa.engine.make_url(url).set(username="someone_else", password="other-pw")
    first = spec_of({"sql": QUERY, "url": url})
    renamed = copy.deepcopy(DOC)
    renamed["dataset"].update(id="sqlsmall_v2", source={"sql": QUERY.lower().replace(" from ", "\n  FROM ") + ";  -- v2",
                                                         "connection": "warehouse"})
    second = parse_spec(renamed)
    a = source_identity(first)
    b = source_identity(second, {"warehouse": other_role.render_as_string(hide_password=False)})
    assert a.sources == b.sources == (f"sql://{_server(url)} {sql_query.normalized(QUERY)}",)
    assert sa.engine.make_url(url).password not in a.sources[0]
    different = spec_of({"sql": QUERY.replace("ORDER BY seen_at", "WHERE age > 30"), "url": url})
    assert source_identity(different).sources != a.sources
    sources = DatasetSources(f"sqlite:///{tmp_path / 'ledger.db'}")
    sources.claim(a)
    with pytest.raises(SourceAlreadyCovered, match="dataset 'sqlsmall_v2' reads sql://.*which dataset 'sqlsmall'"):
        sources.claim(b)
    sources.close()


def test_the_stages_record_the_query_and_connection_not_the_password(people, tmp_path, monkeypatch):
    """ingest and assess as the DAG runs them: the public records name the query, its hash and the
    connection; the risk scan reads the query again over the same window; nothing public holds the
    password or a row."""
    from dataclasses import replace

    from ppmlops import settings as settings_mod
    from ppmlops.run.records import Staged
    from ppmlops.stages import assess, ingest as ingest_stage
    from ppmlops.run.context import RunContext, RunParams

    url, _ = people
    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path / "home"))
    spec = spec_of({"sql": QUERY, "connection": "ppmlops_source"}, test_data=True)
    settings = replace(settings_mod.load(), source_urls={"ppmlops_source": url})
    ctx = RunContext(spec=spec, run_id="sql-1", params=RunParams.defaults(spec), settings=settings,
                     interval=DataInterval(MONDAY + WEEK, MONDAY + 2 * WEEK))
    ingest_stage.run(ctx)
    staged = ctx.store.read(Staged)
    assert staged.sources == ["sql:ppmlops_source"]
    [query] = staged.queries
    assert (query.field, query.connection, query.url, query.server) == ("dataset.source", "ppmlops_source", None,
                                                                       _server(url))
    assert query.sql == sql_query.normalized(QUERY) and query.query_sha256 == sql_query.query_sha256(QUERY)
    assert query.window_pushed_down
    assess.run(ctx)
    password = sa.engine.make_url(url).password
    public = [p for p in ctx.store.root.rglob("*") if p.is_file() and ctx.store.private_dir not in p.parents]
    assert public and not any(password in p.read_text(errors="replace") for p in public)
    assert not any("example.org" in p.read_text(errors="replace") for p in public)


def test_assess_refuses_a_table_that_changed_since_ingest(people, tmp_path, monkeypatch):
    from dataclasses import replace

    from ppmlops import settings as settings_mod
    from ppmlops.errors import DataError
    from ppmlops.stages import assess, ingest as ingest_stage
    from ppmlops.run.context import RunContext, RunParams

    url, _ = people
    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path / "home"))
    spec = spec_of({"sql": QUERY, "url": url}, test_data=True)
    ctx = RunContext(spec=spec, run_id="sql-2", params=RunParams.defaults(spec), settings=settings_mod.load(),
                     interval=DataInterval(MONDAY + WEEK, MONDAY + 2 * WEEK))
    ingest_stage.run(ctx)
    engine = sa.create_engine(url)
    late = {"email": "late@example.org", "age": 40, "plan": "basic", "consent": True, "y": "no",
            "seen_at": MONDAY + WEEK + timedelta(hours=1), "note": "late"}
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO people VALUES (:email, :age, :plan, :consent, :y, :seen_at, :note)"), late)
    try:
        with pytest.raises(DataError, match="sql:postgresql.*source changed since ingestion"):
            assess.run(ctx)
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM people WHERE email = 'late@example.org'")
        engine.dispose()
