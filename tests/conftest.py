"""Test-wide settings: every test session gets its own Airflow home and ppmlops home.

Environment variables are set here, at import, because Airflow reads its configuration when it
is first imported.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="ppmlops-tests-"))

os.environ["AIRFLOW_HOME"] = str(_SESSION_DIR / "airflow")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(REPO / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["PPMLOPS_HOME"] = str(_SESSION_DIR / "ppmlops")
# A compliance officer who answers needs-approval gates through Airflow's REST API in the tests.
APPROVER, APPROVER_PASSWORD = "officer", "approve-in-tests"
os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] = f"{APPROVER}:admin"
os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] = str(_SESSION_DIR / "passwords.json")
(_SESSION_DIR / "passwords.json").write_text(f'{{"{APPROVER}": "{APPROVER_PASSWORD}"}}')
os.environ.pop("PPMLOPS_DB_URL", None)
os.environ.pop("PPMLOPS_OPA_URL", None)
os.environ.pop("RAY_ADDRESS", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)  # the embedded MLflow store under PPMLOPS_HOME, unless a test says
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
# The DAG file generates DAGs from this folder: the repo's specs plus a small end-to-end one.
_PIPELINES = _SESSION_DIR / "pipelines"
_PIPELINES.mkdir()
for _spec in (REPO / "dags" / "pipelines").glob("*.yaml"):
    (_PIPELINES / _spec.name).write_text(_spec.read_text())
E2E_SPEC = _PIPELINES / "e2e_small.yaml"
E2E_SPEC.write_text((REPO / "tests" / "e2e" / "e2e_small.yaml").read_text())
os.environ["PPMLOPS_PIPELINES"] = str(_PIPELINES)
if not os.environ.get("PPMLOPS_DATA") and (REPO.parent / "shared" / "data").is_dir():
    os.environ["PPMLOPS_DATA"] = str(REPO.parent / "shared" / "data")
# Tests stage sources from pytest's tmp_path folders: the temp folder is a data root here, next to
# the defaults (tests of the confinement itself set PPMLOPS_DATA_ROOTS their own way).
os.environ["PPMLOPS_DATA_ROOTS"] = os.pathsep.join(
    [tempfile.gettempdir(), os.environ["PPMLOPS_HOME"], str(REPO)] + [os.environ.get("PPMLOPS_DATA", "")])


@pytest.fixture(autouse=True, scope="module")
def _no_local_ray_left_behind():
    """Each module starts without a Ray runtime: a local Ray that ppmlops started for one
    module's runs would otherwise be the one the next module's tests connect to."""
    yield
    launch = sys.modules.get("ppmlops.training.launch")
    if launch is not None:
        launch.shutdown_local_ray()


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated SQLite metadata database for dag.test() runs."""
    home = Path(os.environ["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    airflow = Path(sys.executable).parent / "airflow"
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True, env=os.environ.copy())
    return home


@pytest.fixture(scope="session")
def mlflow_template() -> Path:
    """A migrated, empty embedded MLflow store: creating one runs MLflow's migrations (~6 s)."""
    from ppmlops.registry import backend

    root = _SESSION_DIR / "mlflow-template"
    backend.client(backend.resolve_uri(root)).search_registered_models()  # opening the store creates it
    return root / "mlflow.db"


@pytest.fixture()
def registry_root(tmp_path, mlflow_template) -> Path:
    """An empty embedded registry of the test's own (a copy of the migrated template)."""
    root = tmp_path / "mlflow"
    root.mkdir()
    shutil.copyfile(mlflow_template, root / "mlflow.db")
    return root


@pytest.fixture(scope="session")
def adult_dir() -> Path:
    """UCI Adult from $PPMLOPS_DATA/adult; CI and developers point PPMLOPS_DATA at ../shared/data."""
    data = os.environ.get("PPMLOPS_DATA")
    if not data or not (Path(data) / "adult" / "train.csv").exists():
        pytest.fail("UCI Adult not found: set PPMLOPS_DATA to the folder holding adult/train.csv")
    return Path(data) / "adult"


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server's URL (its `postgres` database): PPMLOPS_TEST_PG_URL (./dev test starts
    one), else a throwaway server started here from Debian's binaries and stopped at the end.
    No server is a failure, not a skip: the ledger and audit log must work on PostgreSQL."""
    sys.path.insert(0, str(REPO / "tests"))
    import pg_server

    url = os.environ.get("PPMLOPS_TEST_PG_URL")
    base = None
    if not url:
        base = Path(tempfile.mkdtemp(prefix="ppmlops-pg-"))
        try:
            url = pg_server.start(base)
        except pg_server.PostgresUnavailable as err:
            pytest.fail(f"PostgreSQL for the tests could not be started: {err}", pytrace=False)
    _wait_for_postgres(url)
    yield url
    if base is not None:
        pg_server.stop(base)
        shutil.rmtree(base, ignore_errors=True)


def _wait_for_postgres(url: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception as err:  # noqa: BLE001 - reported as the fixture's failure
        from ppmlops.db import redact

        pytest.fail(f"PostgreSQL at {redact(url)} (PPMLOPS_TEST_PG_URL) does not answer: "
                    f"{' '.join(str(getattr(err, 'orig', err)).split())}", pytrace=False)
    finally:
        engine.dispose()


@contextlib.contextmanager
def fresh_database(server_url: str, prefix: str) -> Iterator[str]:
    """A new, empty database on the server, dropped when the block ends."""
    import secrets

    import sqlalchemy as sa

    name = f"t_{prefix[:30]}_{secrets.token_hex(4)}".lower()
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield sa.engine.make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(scope="module")
def pg_url(postgres_server, request) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test module (dropped afterwards)."""
    with fresh_database(postgres_server, request.module.__name__.rsplit(".", 1)[-1]) as url:
        yield url


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def gloo_world_of_one():
    """A real torch.distributed process group of one (gloo), for the DP-SGD loop without Ray."""
    import torch.distributed as dist

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(free_port())
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.fixture(autouse=True, scope="module")
def _e2e_policy_floors_lowered(request, tmp_path_factory):
    """Modules under tests/e2e and tests/integration run with the office's utility floors lowered
    (tests/policy_floors.py): they test a pipeline's mechanics on small tables."""
    if not {"e2e", "integration"} & set(Path(str(request.node.path)).parts):
        yield None
        return
    from policy_floors import lowered_policy_file

    path = lowered_policy_file(tmp_path_factory.mktemp("e2e-policy"))
    before = os.environ.get("PPMLOPS_POLICY")
    os.environ["PPMLOPS_POLICY"] = str(path)
    yield path
    if before is None:
        os.environ.pop("PPMLOPS_POLICY", None)
    else:
        os.environ["PPMLOPS_POLICY"] = before
