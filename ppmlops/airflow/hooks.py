"""Hooks for the provider's three connection types: the Ray job server, the OPA server and a SQL
data source (PostgreSQL).

Thin on purpose: each reads its Airflow Connection and returns what ppmlops.airflow.connections
makes of it, the same function the tasks use (one place decides what a connection means). Their
forms in the Connections UI are declared in ppmlops.airflow.provider_info: Airflow 3.2 deprecated
the hooks' get_connection_form_widgets / get_ui_field_behaviour for provider metadata.
"""

from __future__ import annotations

from airflow.sdk import BaseHook

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
