"""What Airflow's ProvidersManager learns about ppmlops (entry point ``apache_airflow_provider``).

Validated against Airflow's provider_info.schema.json by the tests. The connection forms are
declared here (``conn-fields`` go to the connection's extra, under the names
ppmlops.airflow.connections reads); Airflow loads them without importing the hooks.
"""

from __future__ import annotations

from importlib import metadata

INTEGRATION = "ppmlops"
PLUGIN = "ppmlops.airflow.plugin.PpmlopsDashboardPlugin"

CONNECTION_TYPES = [
    {
        "connection-type": "ppmlops_ray",
        "hook-class-name": "ppmlops.airflow.hooks.PpmlopsRayHook",
        "hook-name": "ppmlops: Ray job server",
        "ui-field-behaviour": {
            "hidden-fields": ["login", "password", "extra"],
            "relabeling": {"host": "Job server host", "port": "Job server port (dashboard)", "schema": "Scheme"},
            "placeholders": {"host": "ray-head", "port": "8265", "schema": "http or https"},
        },
        "conn-fields": {
            "address": {
                "label": "Cluster address",
                "description": "Instead of a job server: join the cluster as the Ray driver at host:port "
                               "(e.g. ray-head:6379); leave the host empty then.",
                "schema": {"type": ["string", "null"]},
            },
        },
    },
    {
        "connection-type": "ppmlops_opa",
        "hook-class-name": "ppmlops.airflow.hooks.PpmlopsOpaHook",
        "hook-name": "ppmlops: OPA server",
        "ui-field-behaviour": {
            "hidden-fields": ["login", "password", "extra"],
            "relabeling": {"schema": "Scheme"},
            "placeholders": {"host": "opa", "port": "8181", "schema": "http or https"},
        },
        "conn-fields": {
            "timeout_s": {
                "label": "Decision timeout (s)",
                "description": "Deadline for one policy decision (the three requests together); a server "
                               "past it is a deny with the reason.",
                "schema": {"type": ["number", "null"], "minimum": 0},
            },
        },
    },
    {
        "connection-type": "ppmlops_source",
        "hook-class-name": "ppmlops.airflow.hooks.PpmlopsSourceHook",
        "hook-name": "ppmlops: SQL data source (PostgreSQL)",
        "ui-field-behaviour": {
            "hidden-fields": [],
            "relabeling": {"schema": "Database"},
            "placeholders": {"host": "db.internal", "port": "5432", "schema": "warehouse",
                             "extra": '{"sslmode": "require"}'},
        },
    },
]


def _version() -> str:
    try:
        return metadata.version("ppmlops")
    except metadata.PackageNotFoundError:  # a source tree on sys.path without an install
        return "0.0.0+source"


def get_provider_info() -> dict:
    modules = ["ppmlops.airflow.ray_job", "ppmlops.airflow.approval"]
    return {
        "package-name": "ppmlops",
        "name": "ppmlops",
        "description": "Privacy-preserving model retraining: one DAG per pipeline spec (DP-SGD on Ray, "
                       "Rego policy gates, a privacy ledger) and a compliance dashboard.",
        "versions": [_version()],
        "integrations": [{"integration-name": INTEGRATION, "tags": ["software"]}],
        "operators": [{"integration-name": INTEGRATION, "python-modules": modules}],
        "triggers": [{"integration-name": INTEGRATION, "python-modules": ["ppmlops.airflow.ray_job"]}],
        "hooks": [{"integration-name": INTEGRATION, "python-modules": ["ppmlops.airflow.hooks"]}],
        "connection-types": CONNECTION_TYPES,
        "plugins": [{"name": "ppmlops_dashboard", "plugin-class": PLUGIN}],
    }
