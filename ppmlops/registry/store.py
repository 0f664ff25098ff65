"""File-based model registry: versions with model cards, and movable aliases.

Layout under the root (settings.registry_dir; shared storage in production):

    <model_name>/v<N>/model.pt       the weights, byte for byte as trained
    <model_name>/v<N>/card.json      the model card, plus version, created_at, model_sha256
    <model_name>/aliases.json        {"aliases": {"production": 3}, "history": [...]}

A version appears whole or not at all: it is written into a temporary directory and renamed
into place. aliases.json is replaced atomically. Writers to one model take an exclusive lock
(<model_name>/.lock), so concurrent registrations get distinct versions.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from ppmlops.errors import PpmlopsError

# No leading dot: rules out ".", ".." and names that would hide among the temporary files.
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")
_VERSION_DIR = re.compile(r"^v([1-9][0-9]*)$")


class RegistryError(PpmlopsError):
    """A model, version or alias is missing or malformed in the registry."""


class Registry:
    def __init__(self, root: Path):
        self.root = Path(root)

    # -- versions ------------------------------------------------------------------------------
    def register(self, model_name: str, model_file: Path, card: dict) -> int:
        """Copy `model_file` in as the next version of `model_name` with `card`; returns N."""
        _check_name("model name", model_name)
        src = Path(model_file)
        if not src.is_file():
            raise RegistryError(f"model file {src} not found")
        if not isinstance(card, dict):
            raise RegistryError(f"model card for {model_name} must be a mapping, got {type(card).__name__}")
        if card.get("model_name") not in (None, model_name):
            raise RegistryError(f"model card names model {card['model_name']!r}, registering as {model_name!r}")
        model_dir = self.root / model_name
        model_dir.mkdir(parents=True, exist_ok=True)
        with self._locked(model_name):
            version = max(self.versions(model_name, complete_only=False), default=0) + 1
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-register-", dir=model_dir))
            try:
                sha = _copy_and_hash(src, tmp / "model.pt")
                full = dict(card)
                full.update(model_name=model_name, version=version,
                            created_at=datetime.now(timezone.utc).isoformat(), model_sha256=sha)
                _write_json(tmp / "card.json", full, what=f"model card for {model_name}")
                os.rename(tmp, model_dir / f"v{version}")
                _fsync_dir(model_dir)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        return version

    def versions(self, model_name: str, *, complete_only: bool = True) -> list[int]:
        """Registered versions of `model_name`, ascending; [] for an unknown model."""
        _check_name("model name", model_name)
        model_dir = self.root / model_name
        if not model_dir.is_dir():
            return []
        found = []
        for entry in model_dir.iterdir():
            m = _VERSION_DIR.match(entry.name)
            if m and entry.is_dir() and (not complete_only or (entry / "card.json").is_file()):
                found.append(int(m.group(1)))
        return sorted(found)

    def card(self, model_name: str, version: int) -> dict:
        path = self._version_dir(model_name, version) / "card.json"
        return _read_json(path)

    def model_path(self, model_name: str, version: int) -> Path:
        path = self._version_dir(model_name, version) / "model.pt"
        if not path.is_file():
            raise RegistryError(f"{path} is missing: version {version} of {model_name} is incomplete")
        return path

    # -- aliases -------------------------------------------------------------------------------
    def set_alias(self, model_name: str, alias: str, version: int) -> None:
        """Point `alias` (e.g. "production") at `version`; the move is kept in the history."""
        _check_name("alias", alias)
        self._version_dir(model_name, version)  # refuses a version that does not exist
        with self._locked(model_name):
            path = self._aliases_path(model_name)
            doc = _read_aliases(path) if path.exists() else {"aliases": {}, "history": []}
            previous = doc["aliases"].get(alias)
            doc["aliases"][alias] = version
            doc["history"].append({
                "alias": alias, "version": version, "previous": previous,
                "time": datetime.now(timezone.utc).isoformat(),
            })
            _write_json_atomic(path, doc, what=f"aliases of {model_name}")

    def alias(self, model_name: str, alias: str) -> int | None:
        _check_name("alias", alias)
        path = self._aliases_path(model_name)
        if not path.exists():
            return None
        return _read_aliases(path)["aliases"].get(alias)

    def alias_history(self, model_name: str) -> list[dict]:
        """Every alias move of `model_name`, oldest first."""
        path = self._aliases_path(model_name)
        return _read_aliases(path)["history"] if path.exists() else []

    # -- internals -----------------------------------------------------------------------------
    def _aliases_path(self, model_name: str) -> Path:
        _check_name("model name", model_name)
        return self.root / model_name / "aliases.json"

    def _version_dir(self, model_name: str, version: int) -> Path:
        _check_name("model name", model_name)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise RegistryError(f"version must be a positive integer, got {version!r}")
        path = self.root / model_name / f"v{version}"
        if not (path / "card.json").is_file():
            known = self.versions(model_name)
            raise RegistryError(f"{model_name} has no version {version} in {self.root} "
                                f"(versions: {', '.join(map(str, known)) or 'none'})")
        return path

    @contextlib.contextmanager
    def _locked(self, model_name: str) -> Iterator[None]:
        lock_path = self.root / model_name / ".lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def _check_name(what: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise RegistryError(f"{what} {name!r} must be letters, digits, '_', '.' or '-', not starting with '.'")


def _copy_and_hash(src: Path, dst: Path) -> str:
    digest = hashlib.sha256()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(1 << 20):
            digest.update(chunk)
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return digest.hexdigest()


def _write_json(path: Path, doc: dict, *, what: str) -> None:
    try:
        text = json.dumps(doc, indent=2, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise RegistryError(f"{what} is not JSON-serialisable: {err}") from None
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _write_json_atomic(path: Path, doc: dict, *, what: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        _write_json(Path(tmp), doc, what=what)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        raise RegistryError(f"{path} not found") from None
    except ValueError as err:
        raise RegistryError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(doc, dict):
        raise RegistryError(f"{path} must hold a JSON object")
    return doc


def _read_aliases(path: Path) -> dict:
    doc = _read_json(path)
    if not isinstance(doc.get("aliases"), dict) or not isinstance(doc.get("history"), list):
        raise RegistryError(f"{path} must hold {{\"aliases\": {{...}}, \"history\": [...]}}")
    return doc


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
