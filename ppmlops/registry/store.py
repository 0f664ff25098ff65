"""The model registry is MLflow's: versions with model cards, and aliases that deploys move.

Each registered version is an MLflow model version of a pyfunc model (ppmlops.registry.serving)
that carries the weights byte for byte as trained and the feature encoding. Its model card is
the `card.json` artifact beside the model (what `card()` returns) and, field by field, the
version's tags (what the MLflow UI shows and `search_model_versions` filters on). Aliases are
MLflow's; every move is also kept as a tag of the registered model (`ppmlops.alias_move.*`),
because MLflow keeps only where an alias points now and an auditor asks where it pointed.

Where it lives: ppmlops.registry.backend (embedded SQLite under the root, or MLFLOW_TRACKING_URI).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from ppmlops.registry import backend
from ppmlops.registry.backend import RegistryError

# No leading dot: rules out ".", ".." and names that would hide among temporary files.
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")
CARD_FILE = "card.json"
WEIGHTS_FILE = "model.pt"
ENCODING_FILE = "encoding.json"
MOVE_TAG = "ppmlops.alias_move."
CARD_TAG = "card."

__all__ = ["Registry", "RegistryError"]


class Registry:
    """`root` holds the embedded store; with MLFLOW_TRACKING_URI (or `tracking_uri`) it is unused."""

    def __init__(self, root: Path | None = None, *, tracking_uri: str | None = None):
        if root is None:
            from ppmlops import settings

            root = settings.load().registry_dir
        self.root = Path(root)
        self.uri = backend.resolve_uri(self.root, tracking_uri)

    @property
    def location(self) -> str:
        """Where the registry is, safe to show (no credentials)."""
        return backend.shown(self.uri)

    @property
    def _client(self):
        return backend.client(self.uri)

    # -- versions ------------------------------------------------------------------------------
    def register(self, model_name: str, model_file: Path, card: dict, *, encoding: dict | None = None,
                 run_id: str | None = None, requirements: list[str] | None = None) -> int:
        """Log `model_file` (with `encoding`, the spec's features) as the next version of
        `model_name`, `card` as its card; `run_id` is the MLflow run that produced it;
        `requirements`, pip requirements the served model needs besides ppmlops's own (a
        model.factory's distribution). Returns N."""
        _check_name("model name", model_name)
        src = Path(model_file)
        if not src.is_file():
            raise RegistryError(f"model file {src} not found")
        if not isinstance(card, dict):
            raise RegistryError(f"model card for {model_name} must be a mapping, got {type(card).__name__}")
        if card.get("model_name") not in (None, model_name):
            raise RegistryError(f"model card names model {card['model_name']!r}, registering as {model_name!r}")
        # A card may bring its created_at (a migrated version keeps the one it had).
        full = {"created_at": datetime.now(timezone.utc).isoformat(), **card, "model_name": model_name,
                "model_sha256": _sha256(src)}
        text = _json(full, what=f"model card for {model_name}")
        with tempfile.TemporaryDirectory(prefix="ppmlops-register-") as tmp:
            model_dir = _save_model(Path(tmp), src, encoding, requirements or [])
            (model_dir / CARD_FILE).write_text(text + "\n", encoding="utf-8")
            with self._errors(f"registering {model_name}"):
                logged = self._log_model(model_name, model_dir, run_id, full["model_sha256"])
                self._ensure_registered(model_name)
                # MLflow's SQL registry looks the logged model up through the process-wide tracking
                # URI, not the client's (a TODO in its sqlalchemy_store): point it here meanwhile.
                with _global_uri(self.uri):
                    mv = self._client.create_model_version(
                        model_name, source=logged.artifact_location, run_id=run_id, model_id=logged.model_id,
                        tags=card_tags(full), description=card.get("intended_use"))
        return int(mv.version)

    def versions(self, model_name: str) -> list[int]:
        """Registered versions of `model_name`, ascending; [] for an unknown model."""
        _check_name("model name", model_name)
        with self._errors(f"listing versions of {model_name}"):
            found = self._client.search_model_versions(f"name = '{model_name}'")
        return sorted(int(mv.version) for mv in found)

    def card(self, model_name: str, version: int) -> dict:
        mv = self._version(model_name, version)
        with self._errors(f"reading the card of {model_name} v{version}"), tempfile.TemporaryDirectory() as tmp:
            path = self._download(mv, CARD_FILE, tmp)
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(doc, dict):
            raise RegistryError(f"the card of {model_name} v{version} is not a JSON object")
        return {**doc, "version": int(version)}

    def card_tags(self, model_name: str, version: int) -> dict[str, str]:
        """The version's `card.*` tags as MLflow holds them now (ppmlops.registry.card_check)."""
        return {k: v for k, v in self._version(model_name, version).tags.items() if k.startswith(CARD_TAG)}

    def model_path(self, model_name: str, version: int) -> Path:
        """The weights file of a version, on local disk (downloaded under the root from a server)."""
        mv = self._version(model_name, version)
        if backend.is_embedded(self.uri) and Path(mv.source).is_dir():
            return Path(mv.source) / "artifacts" / WEIGHTS_FILE  # in the local artifact folder already
        dst = self.root / "downloads" / model_name / f"v{version}"
        dst.mkdir(parents=True, exist_ok=True)
        with self._errors(f"fetching the weights of {model_name} v{version}"):
            return Path(self._download(mv, f"artifacts/{WEIGHTS_FILE}", str(dst)))

    def model_uri(self, model_name: str, version: int) -> str:
        """What `mlflow.pyfunc.load_model` takes for this version."""
        self._version(model_name, version)
        return f"models:/{model_name}/{version}"

    def require(self, model_name: str) -> None:
        """A RegistryError naming the registered models (and the closest name) if `model_name` is
        not one: reading an unknown model must not look like reading an empty one."""
        names = self.model_names()
        if model_name in names:
            return
        close = difflib.get_close_matches(model_name, names, n=1, cutoff=0.6)
        raise RegistryError(f"no model {model_name!r} in the registry at {self.location}; registered models: "
                            f"{', '.join(names) or 'none'}" + (f"; did you mean {close[0]!r}?" if close else ""))

    def model_names(self) -> list[str]:
        """Every registered model, by name (none while the embedded store has not been created:
        reading must not create it)."""
        store = self.root / "mlflow.db"
        if self.uri.startswith(f"sqlite:///{store}") and not store.exists():
            return []
        with self._errors("listing registered models"):
            return sorted(m.name for m in _all_pages(self._client.search_registered_models))

    # -- aliases -------------------------------------------------------------------------------
    def set_alias(self, model_name: str, alias: str, version: int) -> None:
        """Point `alias` (e.g. "production") at `version`; the move is kept in the history."""
        _check_name("alias", alias)
        self._version(model_name, version)  # refuses a version that does not exist
        previous = self.alias(model_name, alias)
        with self._errors(f"moving alias {alias} of {model_name}"):
            self._client.set_registered_model_alias(model_name, alias, str(version))
            move = {"alias": alias, "version": int(version), "previous": previous,
                    "time": datetime.now(timezone.utc).isoformat()}
            # Nanosecond time first: tag keys sort in the order the moves happened.
            key = f"{MOVE_TAG}{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S%f')}.{uuid.uuid4().hex[:8]}"
            self._client.set_registered_model_tag(model_name, key, json.dumps(move, sort_keys=True))

    def alias(self, model_name: str, alias: str) -> int | None:
        _check_name("alias", alias)
        model = self._registered(model_name)
        version = model.aliases.get(alias) if model is not None else None
        return int(version) if version is not None else None

    def alias_history(self, model_name: str) -> list[dict]:
        """Every alias move of `model_name`, oldest first."""
        model = self._registered(model_name)
        if model is None:
            return []
        moves = sorted((k, v) for k, v in model.tags.items() if k.startswith(MOVE_TAG))
        try:
            return [json.loads(v) for _, v in moves]
        except ValueError as err:
            raise RegistryError(f"an alias move of {model_name} in {self.location} is not valid JSON: {err}") from None

    # -- internals -----------------------------------------------------------------------------
    def _log_model(self, model_name: str, model_dir: Path, run_id: str | None, sha: str):
        from mlflow.entities import LoggedModelStatus

        c = self._client
        exp = run_experiment(c, run_id) if run_id else backend.experiment_id(self.uri, self.root, model_name)
        logged = c.create_logged_model(exp, name=model_name, source_run_id=run_id,
                                       tags={"ppmlops.model_sha256": sha})
        c.log_model_artifacts(logged.model_id, str(model_dir))
        done = c.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
        if run_id:
            # The model as the run's output: MLflow's UI lists a run with a model output as a
            # training run, one without as an evaluation run (source_run_id alone does not link it).
            from mlflow.entities import LoggedModelOutput

            c.log_outputs(run_id, [LoggedModelOutput(logged.model_id, 0)])
        return done

    def _ensure_registered(self, model_name: str) -> None:
        from mlflow.exceptions import MlflowException

        if self._registered(model_name) is not None:
            return
        try:
            self._client.create_registered_model(model_name, tags={"ppmlops": "model"})
        except MlflowException as err:  # another deploy created it first
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise

    def _registered(self, model_name: str):
        from mlflow.exceptions import MlflowException

        _check_name("model name", model_name)
        with self._errors(f"reading model {model_name}"):
            try:
                return self._client.get_registered_model(model_name)
            except MlflowException as err:
                if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                    return None
                raise

    def _version(self, model_name: str, version: int):
        """The ModelVersion, or a RegistryError that lists the versions there are."""
        from mlflow.exceptions import MlflowException

        _check_name("model name", model_name)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise RegistryError(f"version must be a positive integer, got {version!r}")
        with self._errors(f"reading {model_name} v{version}"):
            try:
                return self._client.get_model_version(model_name, str(version))
            except MlflowException as err:
                if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
        known = self.versions(model_name)
        raise RegistryError(f"{model_name} has no version {version} in {self.location} "
                            f"(versions: {', '.join(map(str, known)) or 'none'})")

    def _download(self, mv, path: str, dst: str) -> str:
        """A file of a version's model, from its artifact location (a models:/ URI would be
        resolved through MLflow's process-wide registry URI, not this registry's)."""
        import mlflow.artifacts

        return mlflow.artifacts.download_artifacts(artifact_uri=f"{mv.source.rstrip('/')}/{path}", dst_path=dst,
                                                   tracking_uri=self.uri)

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """MLflow's and the network's errors as a RegistryError that names the registry, not its secrets."""
        from mlflow.exceptions import MlflowException

        try:
            with backend.network_errors(self.uri):
                yield
        except RegistryError:
            raise
        except MlflowException as err:
            raise RegistryError(f"{what} in {self.location}: {backend.scrub(_first_line(err.message))}") from None
        except OSError as err:
            raise RegistryError(f"{what} in {self.location}: {type(err).__name__}: {backend.scrub(str(err))}") from None


@contextlib.contextmanager
def _global_uri(uri: str):
    """MLflow's fluent calls (log_model) read its global tracking URI: it is `uri` for the block.
    MLflow mirrors its global into MLFLOW_TRACKING_URI and, leaving the block with no global set
    before, unsets that variable: every later call of the process (the deploy stage's own sync)
    would then go to the embedded store, not the server. The variable is put back as it was."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    before = os.environ.get(backend.URI_ENV)
    try:
        with _use_tracking_uri(uri):
            yield
    finally:
        if before is None:
            os.environ.pop(backend.URI_ENV, None)
        else:
            os.environ[backend.URI_ENV] = before


def run_experiment(client, run_id: str) -> str:
    return client.get_run(run_id).info.experiment_id


def card_tags(card: dict[str, Any]) -> dict[str, str]:
    """The card, one tag per top-level field (JSON for anything but a string)."""
    return {f"{CARD_TAG}{k}": v if isinstance(v, str) else json.dumps(v, sort_keys=True, allow_nan=False)
            for k, v in card.items() if len(CARD_TAG + k) <= 250}


def _save_model(tmp: Path, src: Path, encoding: dict | None, extra: list[str]) -> Path:
    """The pyfunc model folder: weights and encoding as artifacts, the model as code (no pickle)."""
    backend.quiet()
    import mlflow.pyfunc

    from ppmlops.registry import serving

    weights = tmp / WEIGHTS_FILE
    shutil.copyfile(src, weights)
    artifacts = {serving.WEIGHTS: str(weights)}
    if encoding is not None:
        enc = tmp / ENCODING_FILE
        enc.write_text(_json(encoding, what="feature encoding"), encoding="utf-8")
        artifacts[serving.ENCODING] = str(enc)
    model_dir = tmp / "model"
    # The signature and the input example come from the spec's declarations (public), never from
    # rows; given explicitly, MLflow infers nothing and so never loads the model (or torch) here.
    described = {"signature": serving.signature_for(encoding),
                 "input_example": serving.input_example_for(encoding)} if encoding is not None else {}
    mlflow.pyfunc.save_model(str(model_dir), python_model=str(Path(serving.__file__).with_name("model_code.py")),
                             artifacts=artifacts, pip_requirements=_requirements(extra), **described)
    return model_dir


def _requirements(extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    # Read from the installed metadata: logging a model must not import torch (or let MLflow infer).
    from importlib.metadata import PackageNotFoundError, version

    out = []
    names = ("ppmlops", "torch", "pandas", "numpy", "pydantic", "mlflow-skinny")
    for name in names:
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            out.append(name)
    known = {_canonical(n) for n in names}
    return out + [r for r in extra if _canonical(re.split(r"[=<>!~\[; ]", r, maxsplit=1)[0]) not in known]


def _canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _all_pages(search) -> list:
    items, token = [], None
    while True:
        page = search(max_results=1000, page_token=token)
        items.extend(page)
        token = page.token
        if not token:
            return items


def _check_name(what: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise RegistryError(f"{what} {name!r} must be letters, digits, '_', '.' or '-', not starting with '.'")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _json(doc: Any, *, what: str) -> str:
    try:
        return json.dumps(doc, indent=2, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise RegistryError(f"{what} is not JSON-serialisable: {err}") from None


def _first_line(text: str) -> str:
    return (text or "").strip().splitlines()[0][:500] if (text or "").strip() else "(no message)"
