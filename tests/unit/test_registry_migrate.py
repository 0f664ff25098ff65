"""`ppmlops registry migrate --from PATH`: an old file registry into MLflow, once, and again idempotently."""

from __future__ import annotations

import hashlib
import json

import pytest

from ppmlops import cli
from ppmlops.registry import Registry, RegistryError
from ppmlops.registry.migrate import migrate


def _old_version(root, model, version, weights: bytes, **card):
    folder = root / model / f"v{version}"
    folder.mkdir(parents=True)
    (folder / "model.pt").write_bytes(weights)
    (folder / "card.json").write_text(json.dumps({
        "model_name": model, "version": version, "created_at": f"2026-01-0{version}T00:00:00+00:00",
        "model_sha256": hashlib.sha256(weights).hexdigest(), **card}))


def _old_aliases(root, model, aliases, history):
    (root / model / "aliases.json").write_text(json.dumps({"aliases": aliases, "history": history}))


HISTORY = [{"alias": "production", "version": 1, "previous": None, "time": "2026-01-01T10:00:00+00:00"},
           {"alias": "production", "version": 2, "previous": 1, "time": "2026-01-02T10:00:00+00:00"}]


@pytest.fixture()
def old(tmp_path):
    root = tmp_path / "registry"
    _old_version(root, "churn", 1, b"one", epsilon=0.8)
    _old_version(root, "churn", 2, b"two", epsilon=0.9)
    _old_aliases(root, "churn", {"production": 2}, HISTORY)
    return root


def test_migration_copies_versions_cards_aliases_and_history(old, registry_root):
    reg = Registry(registry_root)
    [done] = migrate(old, reg)
    assert done.versions == {1: 1, 2: 2} and done.aliases == {"production": 2} and done.moves_copied == 2
    assert reg.model_path("churn", 2).read_bytes() == b"two"
    card = reg.card("churn", 1)
    assert card["epsilon"] == 0.8 and card["created_at"] == "2026-01-01T00:00:00+00:00"
    assert card["migrated_from_version"] == 1
    assert reg.alias("churn", "production") == 2
    assert [(h["version"], h["previous"], h["time"]) for h in reg.alias_history("churn")] == [
        (1, None, "2026-01-01T10:00:00+00:00"), (2, 1, "2026-01-02T10:00:00+00:00")]


def test_a_second_migration_copies_only_what_is_new(old, registry_root):
    reg = Registry(registry_root)
    migrate(old, reg)
    [again] = migrate(old, reg)
    assert again.versions == {} and again.already == {1: 1, 2: 2} and again.moves_copied == 0
    assert reg.versions("churn") == [1, 2] and len(reg.alias_history("churn")) == 2
    _old_version(old, "churn", 3, b"three", epsilon=1.0)
    _old_aliases(old, "churn", {"production": 3}, HISTORY + [
        {"alias": "production", "version": 3, "previous": 2, "time": "2026-01-03T10:00:00+00:00"}])
    [third] = migrate(old, reg)
    assert third.versions == {3: 3} and third.moves_copied == 1
    assert reg.alias("churn", "production") == 3 and len(reg.alias_history("churn")) == 3


def test_versions_already_in_mlflow_are_renumbered_not_overwritten(old, registry_root, tmp_path):
    reg = Registry(registry_root)
    new = tmp_path / "new.pt"
    new.write_bytes(b"deployed after the switch")
    assert reg.register("churn", new, {"epsilon": 1.1}) == 1
    [done] = migrate(old, reg)
    assert done.versions == {1: 2, 2: 3} and reg.alias("churn", "production") == 3
    assert reg.model_path("churn", 1).read_bytes() == b"deployed after the switch"


def test_a_tampered_model_file_is_refused_by_name(old, registry_root):
    (old / "churn" / "v2" / "model.pt").write_bytes(b"not what the card says")
    with pytest.raises(RegistryError, match="v2/model.pt does not match the model_sha256"):
        migrate(old, Registry(registry_root))


def test_the_cli_migrates_into_the_settings_registry(old, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path / "home"))
    assert cli.main(["registry", "migrate", "--from", str(old)]) == 0
    out = capsys.readouterr().out
    assert "churn: 2 version(s) copied (v1 -> v1, v2 -> v2)" in out and "mlflow.db" in out
    assert cli.main(["registry", "show", "churn", "--version", "2", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["versions"] == [1, 2] and shown["production"] == 2 and shown["card"]["epsilon"] == 0.9
    assert cli.main(["registry", "migrate", "--from", str(tmp_path / "nowhere")]) == 2
    assert "no file registry at" in capsys.readouterr().err
