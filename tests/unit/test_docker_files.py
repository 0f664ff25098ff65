"""The Docker image and compose file match the code: services, settings, paths, policy.

No Docker engine runs here; what can be checked without one is checked: the compose file's
structure and wiring, and, where a docker-compose binary exists, that it validates.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker" / "docker-compose.yaml"
DOCKERFILE = REPO / "docker" / "Dockerfile"
AIRFLOW = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "airflow-init")
RAY = ("ray-head", "ray-worker", "ray-gpu-worker")


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def variables_the_code_reads() -> set[str]:
    names: set[str] = set()
    for path in (REPO / "ppmlops").rglob("*.py"):
        # os.environ lookups, and names given as defaults (e.g. a spec's pseudonym_key_env)
        names |= set(re.findall(r"""["']((?:PPMLOPS|RAY)_[A-Z][A-Z_]*)["']""", path.read_text()))
    return names


def test_every_service_is_there():
    services = compose()["services"]
    assert set(AIRFLOW) | set(RAY) | {"postgres", "opa", "mlflow"} <= set(services)
    assert services["ray-gpu-worker"]["profiles"] == ["gpu"]
    gpu = services["ray-gpu-worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]


def test_ppmlops_settings_are_ones_the_code_reads():
    read = variables_the_code_reads()
    assert {"PPMLOPS_DB_URL", "PPMLOPS_OPA_URL", "PPMLOPS_HOME", "RAY_ADDRESS"} <= read
    services = compose()["services"]
    for name in AIRFLOW + RAY:
        env = services[name]["environment"]
        used = {k for k in env if k.startswith(("PPMLOPS_", "RAY_"))} - {"RAY_USAGE_STATS_ENABLED"}
        assert used <= read, f"{name} sets {sorted(used - read)}, which ppmlops never reads"
        assert env["PPMLOPS_DB_URL"].startswith("postgresql+psycopg2://") and env["PPMLOPS_DB_URL"].endswith("/ppmlops")
        assert env["PPMLOPS_OPA_URL"] == "http://opa:8181" and env["RAY_ADDRESS"] == "ray-head:6379"


def test_shared_home_is_mounted_everywhere_at_the_same_path():
    services = compose()["services"]
    for name in AIRFLOW + RAY:
        assert "ppmlops-home:/opt/ppmlops" in services[name]["volumes"], name
        assert services[name]["environment"]["PPMLOPS_HOME"] == "/opt/ppmlops"


def test_opa_serves_the_repos_policy():
    opa = compose()["services"]["opa"]
    mount = next(v for v in opa["volumes"] if v.endswith(":ro"))
    host, container, _ = mount.split(":")
    assert (COMPOSE.parent / host).resolve() == REPO / "policies.rego"
    assert opa["command"][:2] == ["run", "--server"] and container in opa["command"]


def test_ray_nodes_and_airflow_join_one_cluster():
    services = compose()["services"]
    assert "ray start --head --port=6379" in services["ray-head"]["command"][-1]
    for worker in ("ray-worker", "ray-gpu-worker"):
        assert "ray start --address=ray-head:6379" in services[worker]["command"][-1]
    assert "--num-gpus=1" in services["ray-gpu-worker"]["command"][-1]


def test_postgres_holds_airflow_and_the_ledger():
    services = compose()["services"]
    init = next(v for v in services["postgres"]["volumes"] if "docker-entrypoint-initdb.d" in v)
    sql = (COMPOSE.parent / init.split(":")[0]).read_text()
    assert "CREATE DATABASE ppmlops" in sql
    assert services["airflow-scheduler"]["environment"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("/airflow")


def test_mlflow_server_holds_the_registry_for_every_airflow_service():
    services = compose()["services"]
    mlflow = services["mlflow"]
    command = mlflow["command"]
    assert command[:2] == ["mlflow", "server"]
    port = command[command.index("--port") + 1]
    store = command[command.index("--backend-store-uri") + 1]
    assert store.startswith("postgresql+psycopg2://") and store.endswith("@postgres:5432/mlflow")
    # artifacts go through the server, onto the shared volume
    assert command[command.index("--artifacts-destination") + 1].startswith("/opt/ppmlops/")
    assert "ppmlops-home:/opt/ppmlops" in mlflow["volumes"]
    assert f"http://localhost:{port}/health" in " ".join(mlflow["healthcheck"]["test"])
    init = next(v for v in services["postgres"]["volumes"] if "docker-entrypoint-initdb.d" in v)
    assert "CREATE DATABASE mlflow" in (COMPOSE.parent / init.split(":")[0]).read_text()
    for name in AIRFLOW:
        assert services[name]["environment"]["MLFLOW_TRACKING_URI"] == f"http://mlflow:{port}", name
    for name in set(AIRFLOW) - {"airflow-init"}:
        assert services[name]["depends_on"]["mlflow"]["condition"] == "service_healthy", name
    assert "MLFLOW_TRACKING_URI" in (REPO / "ppmlops" / "registry" / "backend.py").read_text()
    assert '/opt/ppmlops-src[server]' in DOCKERFILE.read_text()  # the image has `mlflow server`


def test_dockerfile_installs_with_the_constraints_and_ships_the_project():
    text = DOCKERFILE.read_text()
    assert text.splitlines()[next(i for i, l in enumerate(text.splitlines()) if l.startswith("FROM"))] == \
        "FROM apache/airflow:3.3.2-python3.11"
    assert re.search(r"pip install .*-c /opt/ppmlops-src/constraints\.txt", text)
    for path in ("dags", "plugins", "expectations", "policies.rego"):
        assert re.search(rf"^COPY .*\b{re.escape(path)} /opt/airflow/{re.escape(path)}$", text, re.M), path
        assert (REPO / path).exists()
    assert "PPMLOPS_PROJECT_ROOT=/opt/airflow" in text
    assert "PPMLOPS_PROJECT_ROOT" in variables_the_code_reads()


def test_compose_file_validates_where_docker_compose_exists():
    binary = shutil.which("docker-compose")
    if binary is None:
        # No binary on this machine: the structural checks above are what can run.
        assert yaml.safe_load(COMPOSE.read_text())["services"]
        return
    out = subprocess.run([binary, "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
