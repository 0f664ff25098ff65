"""`ppmlops registry migrate --from PATH`: the file registry of earlier releases, into MLflow.

The old layout (read only here, never written):

    <model>/v<N>/model.pt      the weights
    <model>/v<N>/card.json     the card, with version, created_at and model_sha256
    <model>/aliases.json       {"aliases": {"production": 3}, "history": [...]}

Idempotent: each migrated version carries the tag `ppmlops.migrated_from` (`<model>/v<N>`), and
the registered model counts the alias moves already copied; a second run copies only what is
new. MLflow numbers versions itself, so old numbers are mapped (shown in the report) and alias
history entries keep their time and say which old version they named.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ppmlops.registry.store import MOVE_TAG, Registry, RegistryError, _check_name

_VERSION_DIR = re.compile(r"^v([1-9][0-9]*)$")
MIGRATED_FROM = "ppmlops.migrated_from"
MIGRATED_MOVES = "ppmlops.migrated_alias_moves"


@dataclass
class ModelMigration:
    model_name: str
    versions: dict[int, int] = field(default_factory=dict)  # old -> MLflow version, this run
    already: dict[int, int] = field(default_factory=dict)  # old -> MLflow version, earlier runs
    aliases: dict[str, int] = field(default_factory=dict)  # set to (MLflow versions)
    moves_copied: int = 0


def migrate(source: Path, registry: Registry) -> list[ModelMigration]:
    source = Path(source)
    if not source.is_dir():
        raise RegistryError(f"no file registry at {source}: not a directory")
    return [_model(child, registry) for child in sorted(source.iterdir())
            if child.is_dir() and _is_model_dir(child)]


def _is_model_dir(path: Path) -> bool:
    return any(_VERSION_DIR.match(p.name) for p in path.iterdir()) or (path / "aliases.json").is_file()


def _model(folder: Path, registry: Registry) -> ModelMigration:
    name = folder.name
    _check_name("model name", name)
    out = ModelMigration(name)
    mapping = _migrated_versions(registry, name)
    out.already = dict(mapping)
    for old in sorted(int(m.group(1)) for p in folder.iterdir() if (m := _VERSION_DIR.match(p.name))):
        if old in mapping:
            continue
        mapping[old] = out.versions[old] = _version(registry, folder / f"v{old}", name, old)
    aliases_file = folder / "aliases.json"
    if aliases_file.is_file():
        doc = _read_json(aliases_file)
        if not isinstance(doc.get("aliases"), dict) or not isinstance(doc.get("history"), list):
            raise RegistryError(f"{aliases_file} must hold {{\"aliases\": {{...}}, \"history\": [...]}}")
        out.moves_copied = _copy_history(registry, name, doc["history"], mapping)
        for alias, old in doc["aliases"].items():
            if old not in mapping:
                raise RegistryError(f"{aliases_file}: alias {alias} names version {old}, which {folder} lacks")
            _check_name("alias", alias)
            registry._client.set_registered_model_alias(name, alias, str(mapping[old]))
            out.aliases[alias] = mapping[old]
    return out


def _migrated_versions(registry: Registry, name: str) -> dict[int, int]:
    with registry._errors(f"reading versions of {name}"):
        found = registry._client.search_model_versions(f"name = '{name}'")
    out = {}
    for mv in found:
        origin = (mv.tags or {}).get(MIGRATED_FROM, "")
        if origin.startswith(f"{name}/v"):
            out[int(origin.rsplit("/v", 1)[1])] = int(mv.version)
    return out


def _version(registry: Registry, folder: Path, name: str, old: int) -> int:
    card = _read_json(folder / "card.json")
    weights = folder / "model.pt"
    if not weights.is_file():
        raise RegistryError(f"{weights} is missing: version {old} of {name} is incomplete")
    want = card.get("model_sha256")
    if want and hashlib.sha256(weights.read_bytes()).hexdigest() != want:
        raise RegistryError(f"{weights} does not match the model_sha256 of its card: refusing to migrate it")
    card = {k: v for k, v in card.items() if k != "version"} | {"migrated_from_version": old}
    version = registry.register(name, weights, card)
    registry._client.set_model_version_tag(name, str(version), MIGRATED_FROM, f"{name}/v{old}")
    return version


def _copy_history(registry: Registry, name: str, history: list, mapping: dict[int, int]) -> int:
    model = registry._registered(name)
    done = int((model.tags or {}).get(MIGRATED_MOVES, "0")) if model is not None else 0
    c = registry._client
    for i, move in enumerate(history[done:], start=done):
        entry = {"alias": move.get("alias"), "version": mapping.get(move.get("version")),
                 "previous": mapping.get(move.get("previous")), "time": move.get("time"),
                 "file_registry_version": move.get("version")}
        stamp = re.sub(r"[^0-9T]", "", str(move.get("time", "")))[:21] or "0"
        c.set_registered_model_tag(name, f"{MOVE_TAG}{stamp}.m{i:06d}", json.dumps(entry, sort_keys=True))
        c.set_registered_model_tag(name, MIGRATED_MOVES, str(i + 1))
    return len(history) - done


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RegistryError(f"{path} not found") from None
    except ValueError as err:
        raise RegistryError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(doc, dict):
        raise RegistryError(f"{path} must hold a JSON object")
    return doc
