"""A pipeline over a SQL source (issue 29, item 4) end to end through Airflow's dag.test(): the demo
table lives in PostgreSQL, the spec reads it with `source: {sql: ..., connection: ppmlops_source}`,
the connection is an Airflow Connection (an AIRFLOW_CONN_* variable, as a deployment may define
it), and the run ingests, assesses, trains, gates and registers; its public records name the
query and the connection, never the password."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from ppmlops import pipeline, settings
from ppmlops.data.synthetic import generate
from ppmlops.run.records import Staged

from conftest import REPO, fresh_database
from dag_run import run_dag

pytestmark = [pytest.mark.e2e]
SPEC_FILE = "sql_small.yaml"
QUERY = "SELECT * FROM customers ORDER BY customer_id"


@pytest.fixture(scope="module")
def sql_run(airflow_db, postgres_server):
    table = generate(4000, 11)
    with fresh_database(postgres_server, "sql_dag") as url:
        engine = sa.create_engine(url)
        columns = ", ".join(f'"{c}" text' for c in table.columns)
        buf = io.StringIO()
        table.to_csv(buf, index=False, header=False)
        with engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE TABLE customers ({columns})")
            cursor = conn.connection.cursor()
            cursor.copy_expert("COPY customers FROM STDIN WITH (FORMAT csv)", io.StringIO(buf.getvalue()))
        engine.dispose()
        doc = yaml.safe_load((REPO / "tests" / "e2e" / "e2e_small.yaml").read_text())
        doc["name"] = "sql_small"
        doc["dataset"]["id"] = "sql_customers"
        doc["dataset"]["source"] = {"sql": QUERY, "connection": "ppmlops_source"}
        doc["deploy"]["model_name"] = "sql_churn"
        path = Path(os.environ["PPMLOPS_PIPELINES"]) / SPEC_FILE
        path.write_text(yaml.safe_dump(doc))
        u = sa.engine.make_url(url)
        os.environ["AIRFLOW_CONN_PPMLOPS_SOURCE"] = (f"postgres://{u.username}:{u.password}@{u.host}:{u.port}/"
                                                     f"{u.database}")
        try:
            run, spec, ctx = run_dag(SPEC_FILE, {"epochs": 1})
            yield run, spec, ctx, u
        finally:
            os.environ.pop("AIRFLOW_CONN_PPMLOPS_SOURCE", None)
            path.unlink()


def test_a_dag_over_a_sql_source_runs_and_records_the_query_not_the_password(sql_run):
    from ppmlops.registry.store import Registry

    run, spec, ctx, url = sql_run
    summary = pipeline.summary(ctx)
    assert str(run.state) == "success", pipeline.format_summary(summary)
    staged = ctx.store.read(Staged)
    assert staged.sources == ["sql:ppmlops_source"]
    [query] = staged.queries
    assert query.connection == "ppmlops_source" and query.server == f"{url.host}:{url.port}/{url.database}"
    card = Registry(settings.load().registry_dir).card(spec.deploy.model_name, summary["model_version"])
    assert card["data_queries"] == [query.model_dump(mode="json", exclude_none=True)]
    public = [p for p in ctx.store.root.rglob("*") if p.is_file() and ctx.store.private_dir not in p.parents]
    assert public and not any(url.password in p.read_text(errors="replace") for p in public)
