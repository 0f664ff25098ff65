"""A card edited in MLflow after deploy is reported by `ppmlops audit verify` (issue 30, item 4):
the audit log holds each registered version's card hash; verify reads the cards back from MLflow."""

from __future__ import annotations

import json

import pytest

from ppmlops import cli, settings
from ppmlops.audit.log import AuditLog
from ppmlops.registry import Registry, backend
from ppmlops.registry.card_check import card_sha256, registration

CARD = {"dataset_id": "demo_customers", "data_fingerprint": "hmac-sha256:0a1b2c3d:ab12", "epsilon": 0.97,
        "delta": 1e-5, "metrics": {"accuracy": 0.81}, "intended_use": "demo churn scoring"}


def record_deploy(reg: Registry, name: str, version: int) -> str:
    """What the deploy stage records: the card's hash as MLflow holds it."""
    sha = card_sha256(reg.card(name, version))
    log = AuditLog(settings.load().db_url)
    log.record(registration(name, version, sha, "production", "gate-1", "f" * 64), run_id="manual__1",
               dataset_id="demo_customers", stage="deploy")
    log.close()
    return sha


def verify(capsys) -> tuple[int, str]:
    code = cli.main(["audit", "verify"])
    return code, capsys.readouterr().out


@pytest.fixture
def deployed(registry_root, tmp_path, monkeypatch):
    monkeypatch.setenv("PPMLOPS_HOME", str(registry_root.parent))  # registry_dir is $PPMLOPS_HOME/mlflow
    reg = Registry(registry_root)
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    for _ in range(2):
        reg.register("demo_churn", model, CARD)
    record_deploy(reg, "demo_churn", 1)
    record_deploy(reg, "demo_churn", 2)
    return reg, backend.client(reg.uri)


def test_an_edited_card_tag_is_reported_and_its_repair_accepted(deployed, capsys):
    reg, client = deployed
    code, out = verify(capsys)
    assert code == 0 and "model cards intact: 2 version(s)" in out
    client.set_model_version_tag("demo_churn", "1", "card.epsilon", "0.1")
    code, out = verify(capsys)
    assert code == 1 and "card of demo_churn v1 changed in MLflow since deploy" in out
    assert "card.epsilon says '0.1' not '0.97'" in out and "v2" not in out
    client.delete_model_version_tag("demo_churn", "1", "card.epsilon")
    client.set_model_version_tag("demo_churn", "2", "card.extra", "added later")
    code, out = verify(capsys)
    assert code == 1 and "card.epsilon says '(removed)'" in out and "card of demo_churn v2" in out
    client.set_model_version_tag("demo_churn", "1", "card.epsilon", "0.97")
    client.delete_model_version_tag("demo_churn", "2", "card.extra")
    assert verify(capsys)[0] == 0


def test_an_edited_card_artifact_is_reported(deployed, capsys, tmp_path):
    reg, client = deployed
    mv = client.get_model_version("demo_churn", "2")
    card = reg.card("demo_churn", 2)
    card.pop("version")
    edited = tmp_path / "edited"
    edited.mkdir()
    (edited / "card.json").write_text(json.dumps({**card, "epsilon": 0.1}, indent=2, sort_keys=True))
    (model,) = [m for m in client.search_logged_models([reg_experiment(client, mv)])
                if m.artifact_location.rstrip("/") == mv.source.rstrip("/")]
    client.log_model_artifacts(model.model_id, str(edited))  # overwrites the version's card.json
    assert reg.card("demo_churn", 2)["epsilon"] == 0.1
    code, out = verify(capsys)
    assert code == 1 and "card of demo_churn v2 changed in MLflow since deploy: card.json has sha256" in out


def reg_experiment(client, mv) -> str:
    return client.get_experiment_by_name(backend.EXPERIMENT_PREFIX + mv.name).experiment_id


def test_the_hash_is_of_the_card_as_stored():
    assert card_sha256({**CARD, "version": 3}) == card_sha256(CARD)
    assert card_sha256({**CARD, "epsilon": 0.98}) != card_sha256(CARD)


def test_the_dashboard_shows_which_cards_changed_in_mlflow(deployed):
    """The overview's model table says, per version, whether its card is the one deploy recorded."""
    from fastapi.testclient import TestClient

    from ppmlops.dashboard import create_app
    from ppmlops.dashboard.queries import models

    reg, client = deployed
    client.set_model_version_tag("demo_churn", "1", "card.epsilon", "0.1")
    checks = {v["version"]: v["card_check"] for v in models(settings.load())["models"][0]["versions"]}
    assert checks[2]["state"] == "intact" and checks[1]["state"] == "changed"
    assert "card.epsilon says '0.1' not '0.97'" in checks[1]["why"]
    page = TestClient(create_app()).get("/").text
    assert "card of demo_churn v1 changed in MLflow since deploy" in page and "card intact" in page
