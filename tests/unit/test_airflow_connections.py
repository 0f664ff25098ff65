"""OPA and Ray endpoints from Airflow Connections (Airflow's own Connection objects and API)."""

from __future__ import annotations

import json

import pytest
from airflow.sdk import Connection

from ppmlops import settings as settings_mod
from ppmlops.airflow import connections
from ppmlops.errors import AirflowConfigError


@pytest.fixture
def base(monkeypatch, tmp_path):
    for var in ("PPMLOPS_OPA_URL", "PPMLOPS_RAY_JOBS_URL", "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path))
    return settings_mod.load()


def _lookup(**conns):
    return lambda conn_id: conns.get(conn_id)


def test_no_connections_leave_the_environment_as_it_is(base, monkeypatch):
    monkeypatch.setenv("PPMLOPS_OPA_URL", "http://opa-from-env:8181")
    env = settings_mod.load()
    assert connections.apply(env, _lookup()) == env


def test_opa_connection_gives_the_url_and_deadline(base):
    opa = Connection(conn_id="ppmlops_opa", conn_type="http", host="opa", port=9191, extra=json.dumps({"timeout_s": 2}))
    got = connections.apply(base, _lookup(ppmlops_opa=opa))
    assert (got.opa_url, got.opa_timeout_s) == ("http://opa:9191", 2.0)
    # a scheme written into the host, and the default port
    https = Connection(conn_id="ppmlops_opa", conn_type="http", host="https://opa.internal")
    assert connections.apply(base, _lookup(ppmlops_opa=https)).opa_url == "https://opa.internal:8181"


def test_ray_connection_names_a_job_server_or_a_cluster_address(base):
    jobs = Connection(conn_id="ppmlops_ray", conn_type="http", host="ray-head", port=8265)
    got = connections.apply(base, _lookup(ppmlops_ray=jobs))
    assert (got.ray_jobs_url, got.ray_address) == ("http://ray-head:8265", None)
    driver = Connection(conn_id="ppmlops_ray", conn_type="http", extra=json.dumps({"address": "ray-head:6379"}))
    got = connections.apply(base, _lookup(ppmlops_ray=driver))
    assert (got.ray_jobs_url, got.ray_address) == (None, "ray-head:6379")
    with pytest.raises(AirflowConfigError, match="names neither a job server"):
        connections.apply(base, _lookup(ppmlops_ray=Connection(conn_id="ppmlops_ray", conn_type="http")))


def test_bad_connections_are_named_without_their_secrets(base):
    secret = Connection(conn_id="ppmlops_opa", conn_type="http", host="opa", login="u", password="hunter2")
    with pytest.raises(AirflowConfigError, match="ppmlops_opa has a login or password") as err:
        connections.apply(base, _lookup(ppmlops_opa=secret))
    assert "hunter2" not in str(err.value)
    bad_extra = Connection(conn_id="ppmlops_ray", conn_type="http", host="h", extra="{not json token=abc")
    with pytest.raises(AirflowConfigError, match="extra field is not a JSON object") as err:
        connections.apply(base, _lookup(ppmlops_ray=bad_extra))
    assert "abc" not in str(err.value)
    ftp = Connection(conn_id="ppmlops_opa", conn_type="http", host="ftp://opa")
    with pytest.raises(AirflowConfigError, match="scheme 'ftp'"):
        connections.apply(base, _lookup(ppmlops_opa=ftp))


def test_a_sql_sources_postgres_connection_becomes_its_url():
    from sqlalchemy.engine import make_url

    from ppmlops.spec import parse_spec

    doc = {"name": "p", "dataset": {"id": "d", "source": {"sql": "SELECT * FROM t", "connection": "ppmlops_source"},
                                    "label": {"column": "y", "positive": "yes", "values": ["yes", "no"]},
                                    "features": [{"name": "age", "type": "numeric", "range": [0, 1]}]},
           "privacy": {"epsilon": 1.0, "delta": 1e-5, "run_epsilon": 1.0}, "deploy": {"model_name": "m"}}
    spec = parse_spec(doc)
    conn = Connection(conn_id="ppmlops_source", conn_type="postgres", host="db.internal", port=5433,
                      schema="warehouse", login="reader", password="p@ss/word", extra=json.dumps({"sslmode": "require"}))
    [(name, url)] = connections.source_urls(spec, _lookup(ppmlops_source=conn)).items()
    parsed = make_url(url)
    assert name == "ppmlops_source" and parsed.drivername == "postgresql+psycopg2"
    assert (parsed.host, parsed.port, parsed.database, parsed.username, parsed.password) == (
        "db.internal", 5433, "warehouse", "reader", "p@ss/word")
    assert parsed.query == {"sslmode": "require"}
    assert connections.source_urls(spec, _lookup()) == {}  # undefined: reading the source names it
    http = Connection(conn_id="ppmlops_source", conn_type="http", host="db.internal", schema="warehouse")
    with pytest.raises(AirflowConfigError, match="ppmlops_source: type 'http' is not ppmlops_source or postgres"):
        connections.source_urls(spec, _lookup(ppmlops_source=http))
