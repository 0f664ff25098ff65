"""Where the MLflow registry and tracking store live, and the one client per location.

Embedded default: a SQLite backend store `<root>/mlflow.db` and artifacts under `<root>/<model>/`
(one experiment per model, so its versions and its runs' files sit together), no server.
Production: MLFLOW_TRACKING_URI names a tracking server (`http://mlflow:5000`) or a database URL.

mlflow is imported here, lazily: the Airflow DAG file and the stages that never touch the
registry do not pay its import (about 2 s).
"""

from __future__ import annotations

import functools
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from ppmlops.errors import PpmlopsError

if TYPE_CHECKING:
    from mlflow import MlflowClient

URI_ENV = "MLFLOW_TRACKING_URI"
EXPERIMENT_PREFIX = "ppmlops/"


class RegistryError(PpmlopsError):
    """A model, version or alias is missing or malformed in the registry, or MLflow refused a call."""


def resolve_uri(root: Path, explicit: str | None = None) -> str:
    """The explicit URI, else MLFLOW_TRACKING_URI, else the embedded SQLite store under `root`."""
    uri = explicit or os.environ.get(URI_ENV) or ""
    if uri:
        return uri
    root = Path(root).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    # timeout: concurrent registrations from several task processes wait for SQLite's write lock.
    return f"sqlite:///{root / 'mlflow.db'}?timeout=30"


def is_embedded(uri: str) -> bool:
    return uri.startswith("sqlite:")


def shown(uri: str) -> str:
    """The URI as safe to print: a password or token in it is never echoed."""
    parts = urlsplit(uri)
    if parts.password is None and not parts.username:
        return uri.split("?", 1)[0] if is_embedded(uri) else uri
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def scrub(text: str) -> str:
    """A message with every URL's user and password masked (MLflow's errors quote the URL)."""
    return _USERINFO.sub(r"\1***@", text)


_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


@functools.cache
def client(uri: str) -> "MlflowClient":
    quiet()
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(uri: str, root: Path, model_name: str) -> str:
    """The experiment of `model_name` (created on first use); it holds the model's runs too."""
    from mlflow.exceptions import MlflowException

    c = client(uri)
    name = EXPERIMENT_PREFIX + model_name
    found = c.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = str(Path(root).expanduser().resolve() / model_name) if is_embedded(uri) else None
    try:
        return c.create_experiment(name, artifact_location=location)
    except MlflowException:
        found = c.get_experiment_by_name(name)  # another process created it first
        if found is None:
            raise
        return found.experiment_id


def quiet() -> None:
    # Progress bars and migration notices are MLflow's business, not a task log's.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration", "mlflow.models.model"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # "Failed to infer model signature": the deployed model takes raw rows, so it has none on purpose.
    logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)
