"""Settings, read from the environment at call time so a DAG picks up changes without restart.

Every variable is listed, with its default, in docs/settings.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping


def _home() -> Path:
    if os.environ.get("PPMLOPS_HOME"):
        return Path(os.environ["PPMLOPS_HOME"]).expanduser()
    if os.environ.get("AIRFLOW_HOME"):
        return Path(os.environ["AIRFLOW_HOME"]).expanduser() / "ppmlops"
    return Path.home() / ".ppmlops"


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    home: Path
    db_url: str
    data_dir: Path | None
    policy_path: Path
    opa_url: str | None
    opa_timeout_s: float
    ray_address: str | None
    ray_jobs_url: str | None  # set: train through a Ray Jobs submission instead of as the Ray driver
    randomness: str | None  # None: follow the spec; 'secure' or 'reproducible' forces it (benchmarks)
    # A run with no end record that wrote nothing for this long reads "stalled" on the dashboard,
    # not "running" (no record says a task failed; a private search writes nothing until it ends).
    run_stale_after_s: float = 3600.0
    project_root: Path = Path(__file__).resolve().parent.parent  # holds expectations/, policies.rego, dags/pipelines/
    # SQL sources' Airflow Connections, id -> SQLAlchemy URL (ppmlops.airflow.connections.source_urls);
    # a URL may hold a password, so it is in no repr.
    source_urls: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False, hash=False)

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def registry_dir(self) -> Path:
        """The embedded MLflow registry and tracking store (unused when MLFLOW_TRACKING_URI is set)."""
        return self.home / "mlflow"


REPO_ROOT = Path(__file__).resolve().parent.parent


def find_project_root() -> Path:
    """The folder holding dags/pipelines/, expectations/ and policies.rego.

    PPMLOPS_PROJECT_ROOT if set (the Docker image's /opt/airflow); else a source checkout is its own
    root; else (an installed package, whose REPO_ROOT is site-packages) the Airflow home, where
    `ppmlops init $AIRFLOW_HOME` puts a project beside Airflow's default dags folder.
    """
    if os.environ.get("PPMLOPS_PROJECT_ROOT"):
        return Path(os.environ["PPMLOPS_PROJECT_ROOT"]).expanduser()
    if (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "policies.rego").is_file():
        return REPO_ROOT
    return Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow").expanduser()


def load() -> Settings:
    home = _home()
    randomness = os.environ.get("PPMLOPS_RANDOMNESS") or None
    if randomness not in (None, "secure", "reproducible"):
        raise ValueError(f"PPMLOPS_RANDOMNESS must be secure or reproducible, got {randomness!r}")
    root = find_project_root()
    return Settings(
        home=home,
        db_url=os.environ.get("PPMLOPS_DB_URL") or f"sqlite:///{home / 'ppmlops.db'}",
        data_dir=Path(os.environ["PPMLOPS_DATA"]).expanduser() if os.environ.get("PPMLOPS_DATA") else None,
        policy_path=Path(os.environ.get("PPMLOPS_POLICY") or root / "policies.rego"),
        opa_url=os.environ.get("PPMLOPS_OPA_URL") or None,
        opa_timeout_s=float(os.environ.get("PPMLOPS_OPA_TIMEOUT_S", "5")),
        ray_address=os.environ.get("RAY_ADDRESS") or None,
        ray_jobs_url=os.environ.get("PPMLOPS_RAY_JOBS_URL") or None,
        randomness=randomness,
        run_stale_after_s=float(os.environ.get("PPMLOPS_RUN_STALE_AFTER_S") or 3600),
        project_root=root,
    )
