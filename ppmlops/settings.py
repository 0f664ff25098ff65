"""Settings, read from the environment at call time so a DAG picks up changes without restart.

Every variable is listed, with its default, in docs/settings.md. `Environment` (a
pydantic-settings model) reads and checks them, one field per variable under its own name;
`load()` resolves what depends on others (the home, the database, the policy) into `Settings`,
the frozen dataclass the code passes around (a dataclass so Airflow tasks can
`dataclasses.replace` the endpoints their connections define).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Environment(BaseSettings):
    """The variables ppmlops reads, as set (empty counts as unset). Each field's alias is the
    variable's exact name."""

    model_config = SettingsConfigDict(case_sensitive=True, env_ignore_empty=True, extra="ignore", frozen=True)

    home: Path | None = Field(None, validation_alias="PPMLOPS_HOME")
    airflow_home: Path | None = Field(None, validation_alias="AIRFLOW_HOME")
    db_url: str | None = Field(None, validation_alias="PPMLOPS_DB_URL")
    data_dir: Path | None = Field(None, validation_alias="PPMLOPS_DATA")
    policy_path: Path | None = Field(None, validation_alias="PPMLOPS_POLICY")
    opa_url: str | None = Field(None, validation_alias="PPMLOPS_OPA_URL")
    opa_timeout_s: float = Field(5.0, gt=0, validation_alias="PPMLOPS_OPA_TIMEOUT_S")
    ray_address: str | None = Field(None, validation_alias="RAY_ADDRESS")
    ray_jobs_url: str | None = Field(None, validation_alias="PPMLOPS_RAY_JOBS_URL")
    ray_ingest: bool = Field(True, validation_alias="PPMLOPS_RAY_INGEST")
    # None: follow the spec; 'secure' or 'reproducible' forces it (benchmarks).
    randomness: Literal["secure", "reproducible"] | None = Field(None, validation_alias="PPMLOPS_RANDOMNESS")
    project_root: Path | None = Field(None, validation_alias="PPMLOPS_PROJECT_ROOT")
    run_stale_after_s: float = Field(3600.0, gt=0, validation_alias="PPMLOPS_RUN_STALE_AFTER_S")

    @field_validator("randomness", mode="before")
    @classmethod
    def _randomness(cls, value: object) -> object:
        if value not in (None, "secure", "reproducible"):
            raise ValueError(f"PPMLOPS_RANDOMNESS must be secure or reproducible, got {value!r}")
        return value

    @field_validator("home", "airflow_home", "data_dir", "policy_path", "project_root")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None


def environment() -> Environment:
    """The environment now; a bad value is a ValueError naming the variable (never a traceback
    of pydantic's field names)."""
    try:
        return Environment()
    except ValidationError as err:
        problems = []
        for e in err.errors():
            if e["type"] == "value_error":  # our own message, which names the variable
                problems.append(str(e["ctx"]["error"]))
            else:
                name = ".".join(str(p) for p in e["loc"])
                problems.append(f"{name}: {e['msg'][:1].lower()}{e['msg'][1:]}, got {e['input']!r}")
        raise ValueError("; ".join(problems)) from None


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
    # None: follow the spec; 'secure' or 'reproducible' forces it (benchmarks).
    randomness: Literal["secure", "reproducible"] | None
    # A run with no end record that wrote nothing for this long reads "stalled" on the dashboard,
    # not "running" (no record says a task failed; a private search writes nothing until it ends).
    run_stale_after_s: float = 3600.0
    # With ray_address: ingest a CSV or Parquet file source on the cluster (ppmlops.data.ray_ingest).
    ray_ingest: bool = True
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


def _home(env: Environment) -> Path:
    if env.home is not None:
        return env.home
    if env.airflow_home is not None:
        return env.airflow_home / "ppmlops"
    return Path.home() / ".ppmlops"


def find_project_root(env: Environment | None = None) -> Path:
    """The folder holding dags/pipelines/, expectations/ and policies.rego.

    PPMLOPS_PROJECT_ROOT if set (the Docker image's /opt/airflow); else a source checkout is its own
    root; else (an installed package, whose REPO_ROOT is site-packages) the Airflow home, where
    `ppmlops init $AIRFLOW_HOME` puts a project beside Airflow's default dags folder.
    """
    env = env or environment()
    if env.project_root is not None:
        return env.project_root
    if (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "policies.rego").is_file():
        return REPO_ROOT
    return env.airflow_home or Path.home() / "airflow"


def load() -> Settings:
    env = environment()
    home, root = _home(env), find_project_root(env)
    return Settings(
        home=home,
        db_url=env.db_url or f"sqlite:///{home / 'ppmlops.db'}",
        data_dir=env.data_dir,
        policy_path=env.policy_path or root / "policies.rego",
        opa_url=env.opa_url,
        opa_timeout_s=env.opa_timeout_s,
        ray_address=env.ray_address,
        ray_jobs_url=env.ray_jobs_url,
        randomness=env.randomness,
        run_stale_after_s=env.run_stale_after_s,
        ray_ingest=env.ray_ingest,
        project_root=root,
    )
