"""The Airflow provider: its info as Airflow validates it, its hooks on real Airflow Connections,
and `ppmlops init` (the wheel's own discovery by Airflow: tests/integration/test_wheel_install.py)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import jsonschema
import pytest

from ppmlops.airflow.provider_info import get_provider_info
from ppmlops.errors import AirflowConfigError

REPO = Path(__file__).resolve().parents[2]


def _airflow_schema(name: str) -> dict:
    import airflow

    return json.loads((Path(airflow.__file__).parent / name).read_text())


def test_provider_info_is_what_airflow_accepts():
    info = get_provider_info()
    # The runtime schema ProvidersManager validates with, then the stricter one of provider.yaml,
    # whose connection-types say what conn-fields and ui-field-behaviour may hold.
    jsonschema.validate(info, _airflow_schema("provider_info.schema.json"))
    strict = _airflow_schema("provider.yaml.schema.json")["properties"]["connection-types"]
    jsonschema.validate(info["connection-types"], strict)
    assert info["package-name"] == "ppmlops"
    assert {c["connection-type"] for c in info["connection-types"]} == {"ppmlops_ray", "ppmlops_opa", "ppmlops_source"}


def test_everything_the_provider_names_imports_and_is_what_it_claims():
    from airflow.plugins_manager import AirflowPlugin
    from airflow.sdk import BaseHook, BaseOperator
    from airflow.triggers.base import BaseTrigger

    info = get_provider_info()
    for conn in info["connection-types"]:
        module, _, name = conn["hook-class-name"].rpartition(".")
        hook = getattr(importlib.import_module(module), name)
        assert issubclass(hook, BaseHook)
        # ProvidersManager warns of an inconsistency unless the hook says the same.
        assert (hook.conn_type, hook.hook_name) == (conn["connection-type"], conn["hook-name"])
        assert hook.conn_name_attr in hook.__init__.__code__.co_varnames
    for kind, base in (("operators", BaseOperator), ("triggers", BaseTrigger)):
        [entry] = info[kind]
        found = [obj for m in entry["python-modules"] for obj in vars(importlib.import_module(m)).values()
                 if isinstance(obj, type) and issubclass(obj, base) and obj.__module__ == m]
        assert found, kind
    [plugin] = info["plugins"]
    module, _, name = plugin["plugin-class"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, AirflowPlugin) and cls.name == plugin["name"]


def test_the_connection_forms_write_the_extra_keys_that_are_read(monkeypatch):
    """A form field is stored in the connection's extra under its own name: what connections.py reads."""
    from ppmlops.airflow.hooks import PpmlopsOpaHook, PpmlopsRayHook

    fields = {c["connection-type"]: set(c.get("conn-fields", {})) for c in get_provider_info()["connection-types"]}
    assert fields == {"ppmlops_opa": {"timeout_s"}, "ppmlops_ray": {"address"}, "ppmlops_source": set()}
    # What the UI stores when a field is left empty: "" (ignored), not a broken deadline.
    monkeypatch.setenv("AIRFLOW_CONN_PPMLOPS_OPA", json.dumps({"conn_type": "ppmlops_opa", "host": "opa",
                                                               "extra": {"timeout_s": ""}}))
    assert PpmlopsOpaHook().get_conn().timeout_s is None
    monkeypatch.setenv("AIRFLOW_CONN_PPMLOPS_RAY", json.dumps({"conn_type": "ppmlops_ray",
                                                               "extra": {"address": "ray-head:6379"}}))
    assert PpmlopsRayHook().get_conn().address == "ray-head:6379"


def test_hooks_return_what_the_tasks_resolve(monkeypatch, tmp_path):
    """Real Airflow Connections (AIRFLOW_CONN_* is one of Airflow's secrets backends) through the
    hooks and through connections.apply/source_urls, which the tasks use: the same answers."""
    from ppmlops import settings as settings_mod
    from ppmlops.airflow import connections
    from ppmlops.airflow.hooks import PpmlopsOpaHook, PpmlopsRayHook, PpmlopsSourceHook
    from ppmlops.spec import parse_spec

    for var in ("PPMLOPS_OPA_URL", "PPMLOPS_RAY_JOBS_URL", "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path))
    monkeypatch.setenv("AIRFLOW_CONN_PPMLOPS_OPA", json.dumps(
        {"conn_type": "ppmlops_opa", "host": "opa.internal", "port": 9191, "extra": {"timeout_s": "2.5"}}))
    monkeypatch.setenv("AIRFLOW_CONN_PPMLOPS_RAY", json.dumps(
        {"conn_type": "ppmlops_ray", "host": "ray-head", "schema": "https"}))
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps(
        {"conn_type": "ppmlops_source", "host": "db.internal", "port": 5433, "schema": "dw", "login": "reader",
         "password": "p@ss/word", "extra": {"sslmode": "require"}}))

    opa, ray = PpmlopsOpaHook().get_conn(), PpmlopsRayHook().get_conn()
    assert (opa.url, opa.timeout_s) == ("http://opa.internal:9191", 2.5)
    assert (ray.jobs_url, ray.address) == ("https://ray-head:8265", None)
    resolved = connections.apply(settings_mod.load())
    assert (resolved.opa_url, resolved.opa_timeout_s, resolved.ray_jobs_url) == (opa.url, opa.timeout_s, ray.jobs_url)

    url = PpmlopsSourceHook("warehouse").get_conn()
    assert url == "postgresql+psycopg2://reader:p%40ss%2Fword@db.internal:5433/dw?sslmode=require"
    doc = {"name": "p", "dataset": {"id": "d", "source": {"sql": "SELECT * FROM t", "connection": "warehouse"},
                                    "label": {"column": "y", "positive": "yes", "values": ["yes", "no"]},
                                    "features": [{"name": "age", "type": "numeric", "range": [0, 1]}]},
           "privacy": {"epsilon": 1.0, "delta": 1e-5, "run_epsilon": 1.0}, "deploy": {"model_name": "m"}}
    assert connections.source_urls(parse_spec(doc)) == {"warehouse": url}

    monkeypatch.setenv("AIRFLOW_CONN_PPMLOPS_OPA", json.dumps({"conn_type": "ppmlops_opa", "host": "opa",
                                                               "login": "u", "password": "hunter2"}))
    with pytest.raises(AirflowConfigError, match="ppmlops_opa has a login or password") as err:
        PpmlopsOpaHook().get_conn()
    assert "hunter2" not in str(err.value)


# -- ppmlops init ---------------------------------------------------------------------------------

SCAFFOLD = REPO / "ppmlops" / "_scaffold"
PROJECT_FILES = {"dags/ppmlops_retrain.py", "dags/ppmlops_spec_errors.py", "dags/pipelines/demo.yaml", "plugins/ppmlops_dashboard.py",
                 "policies.rego", "tests/policies/test_policies.rego", "expectations/demo_customers.json"}


def test_the_scaffold_is_the_repos_own_files():
    """Each file `init` writes is a link to the repo's file of the same path, so the two cannot drift
    (the wheel stores the content; tests/integration/test_wheel_install.py installs it)."""
    links = {str(p.relative_to(SCAFFOLD)) for p in SCAFFOLD.rglob("*") if not p.is_dir()}
    assert links == PROJECT_FILES
    for rel in links:
        link = SCAFFOLD / rel
        assert link.is_symlink() and link.resolve() == (REPO / rel).resolve(), rel


def test_init_writes_a_project_and_never_overwrites_without_force(tmp_path, capsys):
    from ppmlops import cli

    target = tmp_path / "project"
    assert cli.main(["init", str(target)]) == 0
    for rel in PROJECT_FILES:
        assert (target / rel).read_bytes() == (REPO / rel).read_bytes(), rel
    assert f"PPMLOPS_PROJECT_ROOT={target.resolve()}" in capsys.readouterr().out

    (target / "policies.rego").write_text("package ppmlops\n# the officer's edits\n")
    assert cli.main(["init", str(target)]) == 2
    assert "already has dags/pipelines/demo.yaml, dags/ppmlops_retrain.py" in capsys.readouterr().err
    assert (target / "policies.rego").read_text().endswith("the officer's edits\n")
    assert cli.main(["init", str(target), "--force"]) == 0
    assert (target / "policies.rego").read_bytes() == (REPO / "policies.rego").read_bytes()


def test_an_installed_package_finds_its_project_in_the_airflow_home(monkeypatch, tmp_path):
    """Outside a source checkout (site-packages has no pyproject.toml beside the package), the
    project is $AIRFLOW_HOME, where `ppmlops init $AIRFLOW_HOME` puts it; PPMLOPS_PROJECT_ROOT wins."""
    from ppmlops import settings as settings_mod
    from ppmlops.spec import pipelines_folder

    monkeypatch.setattr(settings_mod, "REPO_ROOT", tmp_path / "site-packages")
    monkeypatch.delenv("PPMLOPS_PROJECT_ROOT", raising=False)
    monkeypatch.delenv("PPMLOPS_PIPELINES", raising=False)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    assert settings_mod.load().project_root == tmp_path / "airflow"
    assert pipelines_folder() == tmp_path / "airflow" / "dags" / "pipelines"
    monkeypatch.setenv("PPMLOPS_PROJECT_ROOT", str(tmp_path / "elsewhere"))
    assert settings_mod.load().policy_path == tmp_path / "elsewhere" / "policies.rego"


# -- Airflow's Test button ------------------------------------------------------------------------

def test_the_opa_hook_tests_the_servers_health(monkeypatch):
    from opa_server import FakeOpa

    from ppmlops.airflow.hooks import PpmlopsOpaHook

    with FakeOpa() as opa:
        monkeypatch.setenv("AIRFLOW_CONN_PPMLOPS_OPA", json.dumps({"conn_type": "ppmlops_opa", "host": opa.url}))
        assert PpmlopsOpaHook().test_connection() == (True, f"OPA at {opa.url} is healthy")
        assert opa.requests == [("GET", "/health")]
        opa.mode = "error"
        ok, message = PpmlopsOpaHook().test_connection()
        assert not ok and "500" in message
    ok, message = PpmlopsOpaHook().test_connection()  # the server is gone
    assert not ok and opa.url in message


def test_the_source_hook_logs_in_to_postgresql(monkeypatch, pg_url):
    """Against the tests' real PostgreSQL server: the right password connects, a wrong one is named
    as such without being shown."""
    import sqlalchemy as sa

    from ppmlops.airflow.hooks import PpmlopsSourceHook

    url = sa.engine.make_url(pg_url)
    conn = {"conn_type": "ppmlops_source", "host": url.host, "port": url.port, "schema": url.database,
            "login": url.username, "password": url.password}
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps(conn))
    ok, message = PpmlopsSourceHook("warehouse").test_connection()
    assert ok and message == f"connected to {url.host}:{url.port}/{url.database} as {url.username}"
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", json.dumps({**conn, "password": "not-the-password-9"}))
    ok, message = PpmlopsSourceHook("warehouse").test_connection()
    assert not ok and "password authentication failed" in message and "not-the-password-9" not in message
