"""Hooks for the provider's three connection types: the Ray job server, the OPA server and a SQL
data source (PostgreSQL).

Thin on purpose: each reads its Airflow Connection and returns what ppmlops.airflow.connections
makes of it, the same function the tasks use (one place decides what a connection means). Their
forms in the Connections UI are declared in ppmlops.airflow.provider_info: Airflow 3.2 deprecated
the hooks' get_connection_form_widgets / get_ui_field_behaviour for provider metadata.
"""

from __future__ import annotations

from airflow.sdk import BaseHook

# What Airflow's Test button waits for a server (the connection's own deadline when it has one).
TEST_TIMEOUT_S = 5.0

from ppmlops.airflow import connections


class PpmlopsRayHook(BaseHook):
    """The Ray cluster training runs on: its job server (host, port), or a cluster address in the
    extra field to join as the Ray driver."""

    conn_name_attr = "ray_conn_id"
    default_conn_name = connections.RAY_CONN_ID
    conn_type = "ppmlops_ray"
    hook_name = "ppmlops: Ray job server"

    def __init__(self, ray_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.ray_conn_id = ray_conn_id

    def get_conn(self) -> connections.RayEndpoint:
        return connections.ray_endpoint(self.get_connection(self.ray_conn_id), self.ray_conn_id)


class PpmlopsOpaHook(BaseHook):
    """The OPA server that decides the policy queries (engine ``opa-http``)."""

    conn_name_attr = "opa_conn_id"
    default_conn_name = connections.OPA_CONN_ID
    conn_type = "ppmlops_opa"
    hook_name = "ppmlops: OPA server"

    def __init__(self, opa_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.opa_conn_id = opa_conn_id

    def get_conn(self) -> connections.OpaEndpoint:
        return connections.opa_endpoint(self.get_connection(self.opa_conn_id), self.opa_conn_id)

    def test_connection(self) -> tuple[bool, str]:
        """Airflow's Test button: OPA's health API (GET /health) answers 200."""
        import urllib.request

        endpoint = self.get_conn()
        if endpoint.url is None:
            return False, f"connection {self.opa_conn_id} has no host"
        try:
            with urllib.request.urlopen(f"{endpoint.url}/health", timeout=endpoint.timeout_s or TEST_TIMEOUT_S):
                return True, f"OPA at {endpoint.url} is healthy"
        except (OSError, ValueError) as err:  # HTTPError, URLError and timeouts are OSErrors
            return False, f"OPA at {endpoint.url}: {err}"


class PpmlopsSourceHook(BaseHook):
    """A SQL data source (``dataset.source: {sql: ..., connection: NAME}``): a PostgreSQL database."""

    conn_name_attr = "source_conn_id"
    default_conn_name = "ppmlops_source"
    conn_type = "ppmlops_source"
    hook_name = "ppmlops: SQL data source (PostgreSQL)"

    def __init__(self, source_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.source_conn_id = source_conn_id

    def get_conn(self) -> str:
        """The source's SQLAlchemy URL; it holds the password, so it is for a driver, not a log."""
        return connections.source_url(self.get_connection(self.source_conn_id), self.source_conn_id)

    def test_connection(self) -> tuple[bool, str]:
        """Airflow's Test button: log in and run SELECT 1. A failure names the server, never the password."""
        import sqlalchemy as sa

        url = sa.engine.make_url(self.get_conn())
        where = f"{url.host}:{url.port or 5432}/{url.database}"
        engine = sa.create_engine(url, connect_args={"connect_timeout": int(TEST_TIMEOUT_S)})
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            return True, f"connected to {where} as {url.username}"
        except sa.exc.SQLAlchemyError as err:
            # The driver's first line (e.g. password authentication failed for user "reader").
            reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
            return False, f"{where}: " + (reason.replace(url.password, "***") if url.password else reason)
        finally:
            engine.dispose()
