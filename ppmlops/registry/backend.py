"""Where the MLflow registry and tracking store live, and the one client per location.

Embedded default: a SQLite backend store `<root>/mlflow.db` and artifacts under `<root>/<model>/`
(one experiment per model, so its versions and its runs' files sit together), no server.
Production: MLFLOW_TRACKING_URI names a tracking server (`http://mlflow:5000`) or a database URL.

mlflow is imported here, lazily: the Airflow DAG file and the stages that never touch the
registry do not pay its import (about 2 s).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import multiprocessing
import os
import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Iterator
from urllib.parse import urlsplit, urlunsplit

from ppmlops.errors import PpmlopsError

if TYPE_CHECKING:
    from mlflow import MlflowClient

URI_ENV = "MLFLOW_TRACKING_URI"
EXPERIMENT_PREFIX = "ppmlops/"
# MLflow 3's UI files an experiment without this tag by what it finds in it (traces make it a GenAI
# experiment, whose runs without a model output it lists as "Evaluation runs") and then writes
# its guess as the tag. Said up front, ppmlops's runs are listed as training runs of a custom model.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
_GUESSED_KINDS = ("genai_development", "genai_development_inferred", "no_inferred_type", "")


class RegistryError(PpmlopsError):
    """A model, version or alias is missing or malformed in the registry, or MLflow refused a call."""


class TrackingUnavailable(RegistryError):
    """The MLflow tracking server cannot be reached or did not answer in time. A server can come
    back, so the task is retried (ppmlops.airflow.tasks.retried); each try is bounded (TIMEOUT_ENV)."""

    transient = True


# How long one MLflow call may take before the task fails with TrackingUnavailable. MLflow's own
# defaults (7 retries with backoff factor 2, 120 s a request) kept an Airflow task waiting 4-5
# minutes per try on a server that was down, 15 minutes over three tries. MLflow's variables, when
# set, still win.
TIMEOUT_ENV = "PPMLOPS_MLFLOW_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 10
BOUNDED_REQUESTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5"}


def timeout_s() -> float:
    raw = os.environ.get(TIMEOUT_ENV) or str(DEFAULT_TIMEOUT_S)
    try:
        value = float(raw)
    except ValueError:
        raise RegistryError(f"{TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from None
    if not value > 0:
        raise RegistryError(f"{TIMEOUT_ENV} must be above 0 seconds, got {raw!r}")
    return value


def is_remote(uri: str) -> bool:
    return urlsplit(uri).scheme in ("http", "https")


def check_reachable(uri: str) -> None:
    """Fail at once, naming the server, when nothing listens at a tracking server's address.

    A TCP connect bounded by TIMEOUT_ENV: MLflow would retry a refused connection for minutes before
    saying so in a urllib3 traceback. A server that accepts and then hangs is bounded by
    MLFLOW_HTTP_REQUEST_TIMEOUT, which `client` sets to the same timeout.
    """
    if not is_remote(uri):
        return
    parts = urlsplit(uri)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "localhost", port), timeout=timeout_s()).close()
    except OSError as err:
        raise unreachable(uri, _why(str(err)) if isinstance(err, TimeoutError) else
                          (err.strerror or type(err).__name__).lower()) from None


def unreachable(uri: str, why: str) -> TrackingUnavailable:
    return TrackingUnavailable(
        f"the MLflow tracking server {shown(uri)} cannot be reached ({scrub(why)}; each request is bounded "
        f"by {TIMEOUT_ENV}={timeout_s():g} s): is it running, and is MLFLOW_TRACKING_URI right? Nothing was "
        f"registered and no alias moved; Airflow tries the task again")


_NETWORK = ("max retries exceeded", "connection refused", "timed out", "read timeout", "connecttimeout",
            "failed to establish a new connection", "name or service not known", "connection aborted",
            "remote end closed connection", "connection reset")


@contextlib.contextmanager
def network_errors(uri: str) -> Iterator[None]:
    """MLflow's (and requests') errors for a server that is down or silent as TrackingUnavailable."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (MlflowException, OSError) as err:
        text = " ".join(str(getattr(err, "message", err)).split())
        if is_remote(uri) and any(s in text.lower() for s in _NETWORK):
            raise unreachable(uri, _why(text)) from None
        raise


def _why(text: str) -> str:
    """The cause in a few words (urllib3's text repeats the URL and the request's path)."""
    low = text.lower()
    for needle, words in (("timed out", f"no answer within {timeout_s():g} s"), ("refused", "connection refused"),
                          ("name or service not known", "host name not found"), ("reset", "connection reset"),
                          ("remote end closed", "the server closed the connection")):
        if needle in low:
            return words
    return text.split(" (Caused by")[0][:200]


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


def client(uri: str) -> "MlflowClient":
    """The client for `uri`, after a bounded check that a tracking server is there."""
    check_reachable(uri)
    return _client(uri)


@functools.cache
def _client(uri: str) -> "MlflowClient":
    quiet()
    for name, value in {**BOUNDED_REQUESTS, "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, round(timeout_s())))}.items():
        os.environ.setdefault(name, value)
    from mlflow import MlflowClient

    if not is_embedded(uri):
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    with _creating_embedded_store(uri):
        made = MlflowClient(tracking_uri=uri, registry_uri=uri)
        made.search_experiments(max_results=1)  # the tracking store's tables
        made.search_registered_models(max_results=1)  # the model registry's
    return made


@contextlib.contextmanager
def _creating_embedded_store(uri: str) -> Iterator[None]:
    """Create (or upgrade) the embedded store's tables, one process at a time.

    MLflow runs its schema migrations when a process first opens a SQLite store. Two task
    processes doing that at once (a backfill's runs reach plan together, and plan opens the MLflow
    run) interleave the migrations: the loser fails with "table _alembic_tmp_tags already exists"
    and the file is left half-migrated, so every retry fails too. An exclusive lock beside the file
    lets one process migrate while the others wait, then find the tables made.
    """
    db = _db_file(uri)
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".init-lock"), "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _db_file(uri: str) -> Path:
    return Path(uri[len("sqlite:///"):].split("?", 1)[0])  # sqlite:////abs/path?opts: the file's own path


def start_creating(uri: str) -> multiprocessing.Process | None:
    """Create a new embedded store's tables in a helper process, for a process that opens the
    store later (a whole DAG run in one process: ppmlops.airflow.run_one): MLflow's schema
    migrations on an empty file (about 1.5 s, plus MLflow's import) then run on the other core,
    at a lower priority than the tasks, while the first tasks run. None when there is nothing to
    make: a server, or a store already there.

    The helper is forked (before the caller starts any thread): it shares the SQLAlchemy and
    pydantic the parent has loaded, and leaves through os._exit, touching nothing the parent
    holds. Nothing can see a half-made store: the helper makes it as `client` does, under the
    lock beside the file (_creating_embedded_store), which `client` in this process waits for.
    The helper's failure is its own (its output is discarded): `client` then makes the tables
    itself, and says what fails."""
    if not is_embedded(uri) or _db_file(uri).exists():
        return None
    fork = multiprocessing.get_context("fork")
    helper = fork.Process(target=_create, args=(uri,), name="ppmlops-mlflow-store", daemon=True)
    try:
        helper.start()
    except OSError:
        return None
    return helper


def _create(uri: str) -> None:
    os.nice(10)  # the other core's spare time: the parent's tasks come first
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)
    os.dup2(quiet, 2)
    client(uri)


def experiment_id(uri: str, root: Path, model_name: str) -> str:
    """The experiment of `model_name` (created on first use); it holds the model's runs too."""
    from mlflow.exceptions import MlflowException

    c = client(uri)
    name = EXPERIMENT_PREFIX + model_name
    found = c.get_experiment_by_name(name)
    if found is not None:
        return _filed_as_training(c, found)
    location = str(Path(root).expanduser().resolve() / model_name) if is_embedded(uri) else None
    try:
        return c.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except MlflowException:
        found = c.get_experiment_by_name(name)  # another process created it first
        if found is None:
            raise
        return _filed_as_training(c, found)


def _filed_as_training(c, experiment) -> str:
    """An experiment made before the tag, or that the UI guessed to be GenAI, is set right; a kind a
    person chose among MLflow's machine-learning ones (classification, ...) is left as it is."""
    if experiment.tags.get(EXPERIMENT_KIND_TAG, "") in _GUESSED_KINDS:
        c.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


def quiet() -> None:
    # Progress bars and migration notices are MLflow's business, not a task log's.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration", "mlflow.models.model"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # "Failed to infer model signature": a model registered without its encoding (tests) has none.
    logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)
