"""OPA and Ray endpoints from Airflow Connections, as Airflow users keep endpoints.

Two connections, both optional (Admin -> Connections, `airflow connections add`, an
`AIRFLOW_CONN_*` variable or a secrets backend):

* ``ppmlops_opa`` (type ``ppmlops_opa``, or ``http`` as before): the OPA server, e.g. host ``opa``, port 8181. Extra
  ``{"timeout_s": 5}`` sets the per-decision deadline.
* ``ppmlops_ray`` (type ``ppmlops_ray``, or ``http``): the Ray cluster's job server (its dashboard address, e.g. host
  ``ray-head``, port 8265): training runs as a Ray job that a deferred task follows. Extra
  ``{"address": "ray-head:6379"}`` instead joins the cluster as the Ray driver (no job server).

A SQL source (`dataset.source: {sql: ..., connection: NAME}`) names a third kind: a connection
of type ``ppmlops_source`` (or the postgres provider's ``postgres``: host, port, schema = the database, login, password; extra keys such as
``sslmode`` go to the driver). `source_urls` turns the ones a spec names into SQLAlchemy URLs for
ppmlops.data.sql_source; the password travels in the URL only and is never shown.

The three connection types, with their forms in the Connections UI, come from the provider
(ppmlops.airflow.provider_info); their hooks (ppmlops.airflow.hooks) return what is read here.

A connection that is not defined leaves the environment's value (``PPMLOPS_OPA_URL``,
``PPMLOPS_RAY_JOBS_URL``, ``RAY_ADDRESS``), which is also what the CLI reads outside Airflow.
Credentials in a connection are refused rather than silently dropped: ppmlops sends none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, Callable

from ppmlops.errors import AirflowConfigError
from ppmlops.settings import Settings

OPA_CONN_ID = "ppmlops_opa"
RAY_CONN_ID = "ppmlops_ray"


def _url(conn: Any, conn_id: str, default_port: int) -> str | None:
    """http(s)://host:port from a connection's fields; a scheme written into the host is accepted."""
    host = (conn.host or "").strip()
    if not host:
        return None
    scheme = (conn.schema or "").strip() or "http"
    if "://" in host:
        scheme, host = host.split("://", 1)
    host = host.rstrip("/")
    if scheme not in ("http", "https"):
        raise AirflowConfigError(f"Airflow connection {conn_id}: scheme {scheme!r} is not http or https")
    if ":" in host:  # a port written into the host wins over an empty port field
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{conn.port or default_port}"


def _refuse_credentials(conn: Any, conn_id: str) -> None:
    if conn.login or conn.password:
        raise AirflowConfigError(f"Airflow connection {conn_id} has a login or password; ppmlops sends no credentials "
                        "to this service, so put it behind your network's access control and clear them")


def _extra(conn: Any, conn_id: str) -> dict:
    # Parsed here rather than with extra_dejson, which logs a malformed extra and returns {}.
    try:
        extra = json.loads(conn.extra) if conn.extra else {}
    except ValueError:  # its text may hold secrets, so it is not shown
        raise AirflowConfigError(f"Airflow connection {conn_id}: its extra field is not a JSON object") from None
    if not isinstance(extra, dict):
        raise AirflowConfigError(f"Airflow connection {conn_id}: its extra field is not a JSON object")
    return extra


@dataclass(frozen=True)
class OpaEndpoint:
    """What a ``ppmlops_opa`` connection says: the server's URL and, when set, the per-decision deadline."""

    url: str | None
    timeout_s: float | None = None


@dataclass(frozen=True)
class RayEndpoint:
    """What a ``ppmlops_ray`` connection says: a job server's URL, or a cluster address to join as driver."""

    jobs_url: str | None
    address: str | None


def opa_endpoint(conn: Any, conn_id: str = OPA_CONN_ID) -> OpaEndpoint:
    _refuse_credentials(conn, conn_id)
    extra = _extra(conn, conn_id)
    timeout = None
    if extra.get("timeout_s") not in (None, ""):  # the connection form leaves an empty field as ""
        try:
            timeout = float(extra["timeout_s"])
        except (TypeError, ValueError):
            raise AirflowConfigError(f"Airflow connection {conn_id}: extra timeout_s must be a number") from None
    return OpaEndpoint(_url(conn, conn_id, 8181), timeout)


def ray_endpoint(conn: Any, conn_id: str = RAY_CONN_ID) -> RayEndpoint:
    _refuse_credentials(conn, conn_id)
    address = _extra(conn, conn_id).get("address")
    found = RayEndpoint(_url(conn, conn_id, 8265), str(address) if address else None)
    if found.jobs_url is None and found.address is None:
        raise AirflowConfigError(f"Airflow connection {conn_id} names neither a job server (host, port) nor "
                        'a cluster address (extra {"address": "head:6379"})')
    return found


def apply(settings: Settings, get: Callable[[str], Any] | None = None) -> Settings:
    """`settings` with the endpoints the two connections define (those not defined left alone).

    `get` looks a connection up by id and returns None when it is not defined; by default the
    task's Airflow API.
    """
    get = get or _airflow_get
    changes: dict[str, Any] = {}
    opa = get(OPA_CONN_ID)
    if opa is not None:
        found = opa_endpoint(opa)
        changes["opa_url"] = found.url
        if found.timeout_s is not None:
            changes["opa_timeout_s"] = found.timeout_s
    ray = get(RAY_CONN_ID)
    if ray is not None:
        found = ray_endpoint(ray)
        changes["ray_jobs_url"], changes["ray_address"] = found.jobs_url, found.address
    return replace(settings, **changes)


def _airflow_get(conn_id: str) -> Any:
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return Connection.get(conn_id)
    except AirflowNotFoundException:
        return None


# ppmlops_source is the provider's own type (its form in the Connections UI); postgres is the
# postgres provider's, accepted as well, as before.
SQL_CONN_TYPES = ("ppmlops_source", "postgres", "postgresql")


def source_url(conn: Any, conn_id: str) -> str:
    """The SQLAlchemy URL (psycopg2, password included) of a SQL source's connection."""
    from sqlalchemy.engine import URL

    if (conn.conn_type or "").lower() not in SQL_CONN_TYPES:
        raise AirflowConfigError(f"Airflow connection {conn_id}: type {conn.conn_type!r} is not ppmlops_source or postgres "
                        "(a SQL source reads PostgreSQL)")
    if not (conn.host or "").strip() or not (conn.schema or "").strip():
        raise AirflowConfigError(f"Airflow connection {conn_id}: a SQL source needs its host and its schema (the database)")
    # Driver options (sslmode, ...); the form's empty fields are left out rather than sent as "".
    extra = {str(k): str(v) for k, v in _extra(conn, conn_id).items() if v not in (None, "")}
    return URL.create("postgresql+psycopg2", username=conn.login or None, password=conn.password or None,
                      host=conn.host.strip(), port=conn.port or None, database=conn.schema.strip(),
                      query=extra).render_as_string(hide_password=False)


def source_urls(spec: Any, get: Callable[[str], Any] | None = None) -> dict[str, str]:
    """The SQLAlchemy URL of each Airflow Connection the spec's SQL sources name (id -> URL); a
    connection that is not defined is left out, and reading the source then names it."""
    get = get or _airflow_get
    ds = spec.dataset
    out: dict[str, str] = {}
    for source in (ds.source, ds.test_source):
        name = getattr(source, "connection", None) if source is not None else None
        if name is None or name in out:
            continue
        conn = get(name)
        if conn is not None:
            out[name] = source_url(conn, name)
    return out
