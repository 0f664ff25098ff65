"""ppmlops.registry.Registry: versions, cards, aliases and their history."""

from __future__ import annotations

import hashlib
import json
import multiprocessing

import pytest

from ppmlops.registry import Registry, RegistryError

CARD = {"dataset_id": "demo_customers", "data_sha256": "ab12", "epsilon": 0.97, "delta": 1e-5,
        "accountant": "rdp", "metrics": {"accuracy": 0.81}, "intended_use": "demo churn scoring"}


@pytest.fixture()
def model_file(tmp_path):
    path = tmp_path / "trained.pt"
    path.write_bytes(b"weights-v1" * 1000)
    return path


def test_register_copies_model_and_writes_card(tmp_path, model_file):
    reg = Registry(tmp_path / "registry")
    assert reg.register("churn", model_file, CARD) == 1
    stored = reg.model_path("churn", 1)
    assert stored == tmp_path / "registry" / "churn" / "v1" / "model.pt"
    assert stored.read_bytes() == model_file.read_bytes()
    card = reg.card("churn", 1)
    assert card["version"] == 1 and card["model_name"] == "churn"
    assert card["model_sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert card["created_at"].endswith("+00:00")
    assert {k: card[k] for k in CARD} == CARD
    assert json.loads((tmp_path / "registry" / "churn" / "v1" / "card.json").read_text()) == card
    # nothing temporary left behind
    assert sorted(p.name for p in (tmp_path / "registry" / "churn").iterdir() if p.name != ".lock") == ["v1"]


def test_versions_increase(tmp_path, model_file):
    reg = Registry(tmp_path)
    assert reg.versions("churn") == []
    for expected in (1, 2, 3):
        model_file.write_bytes(f"weights-{expected}".encode())
        assert reg.register("churn", model_file, CARD) == expected
    assert reg.versions("churn") == [1, 2, 3]
    assert reg.model_path("churn", 2).read_bytes() == b"weights-2"
    assert reg.versions("other") == []


def test_alias_moves_and_keeps_history(tmp_path, model_file):
    reg = Registry(tmp_path)
    reg.register("churn", model_file, CARD)
    reg.register("churn", model_file, CARD)
    assert reg.alias("churn", "production") is None
    reg.set_alias("churn", "production", 1)
    assert reg.alias("churn", "production") == 1
    reg.set_alias("churn", "production", 2)
    reg.set_alias("churn", "staging", 1)
    assert reg.alias("churn", "production") == 2
    assert reg.alias("churn", "staging") == 1
    history = reg.alias_history("churn")
    assert [(h["alias"], h["version"], h["previous"]) for h in history] == [
        ("production", 1, None), ("production", 2, 1), ("staging", 1, None)]
    on_disk = json.loads((tmp_path / "churn" / "aliases.json").read_text())
    assert on_disk["aliases"] == {"production": 2, "staging": 1}


def test_alias_to_missing_version_is_refused(tmp_path, model_file):
    reg = Registry(tmp_path)
    reg.register("churn", model_file, CARD)
    with pytest.raises(RegistryError, match="churn has no version 7 .*versions: 1"):
        reg.set_alias("churn", "production", 7)
    assert reg.alias("churn", "production") is None


def test_missing_things_are_named(tmp_path, model_file):
    reg = Registry(tmp_path)
    with pytest.raises(RegistryError, match="model file .*nope.pt not found"):
        reg.register("churn", tmp_path / "nope.pt", CARD)
    with pytest.raises(RegistryError, match="churn has no version 1"):
        reg.card("churn", 1)
    with pytest.raises(RegistryError, match="churn has no version 1"):
        reg.model_path("churn", 1)


@pytest.mark.parametrize("name", ["../escape", ".hidden", "a/b", "", "x" * 201])
def test_unsafe_names_are_refused(tmp_path, model_file, name):
    with pytest.raises(RegistryError, match="must be letters"):
        Registry(tmp_path).register(name, model_file, CARD)


def test_card_naming_another_model_is_refused(tmp_path, model_file):
    with pytest.raises(RegistryError, match="names model 'other'"):
        Registry(tmp_path).register("churn", model_file, {**CARD, "model_name": "other"})


def test_unserialisable_card_leaves_no_version(tmp_path, model_file):
    reg = Registry(tmp_path)
    with pytest.raises(RegistryError, match="not JSON-serialisable"):
        reg.register("churn", model_file, {**CARD, "epsilon": float("nan")})
    assert reg.versions("churn") == []
    assert reg.register("churn", model_file, CARD) == 1


def test_corrupt_aliases_file_is_named(tmp_path, model_file):
    reg = Registry(tmp_path)
    reg.register("churn", model_file, CARD)
    (tmp_path / "churn" / "aliases.json").write_text("{not json")
    with pytest.raises(RegistryError, match="aliases.json is not valid JSON"):
        reg.alias("churn", "production")


def _register_many(root: str, model_file: str, count: int) -> None:
    reg = Registry(root)
    for _ in range(count):
        reg.register("churn", model_file, CARD)


def test_concurrent_registrations_get_distinct_versions(tmp_path, model_file):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_register_many, args=(str(tmp_path), str(model_file), 5)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    reg = Registry(tmp_path)
    assert reg.versions("churn") == list(range(1, 16))
    assert sorted(reg.card("churn", v)["version"] for v in reg.versions("churn")) == list(range(1, 16))
