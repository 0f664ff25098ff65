"""The policy's inputs and the model card as typed documents (ppmlops.compliance.documents):
their committed JSON schemas are current, every field policies.rego reads is in a schema, the
examples people write policy against are valid documents, and a document serializes exactly as
the dict it was built from."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from ppmlops.compliance.documents import DeployManifest, ModelCard, TrainPolicyInput
from ppmlops.compliance.examples import DEPLOY_INPUT, MODEL_CARD, TRAIN_INPUT

REPO = Path(__file__).resolve().parents[2]


def _generator():
    spec = importlib.util.spec_from_file_location("write_schemas", REPO / "docs" / "write_schemas.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_schemas_are_the_models():
    generated = _generator().schemas()
    committed = {p.name: p.read_text(encoding="utf-8") for p in (REPO / "docs" / "schemas").glob("*.json")}
    assert set(committed) == set(generated), "run: python docs/write_schemas.py"
    for name, text in generated.items():
        assert committed[name] == text, f"docs/schemas/{name} is stale: run python docs/write_schemas.py"


@pytest.mark.parametrize("model, example", [(TrainPolicyInput, TRAIN_INPUT), (DeployManifest, DEPLOY_INPUT),
                                            (ModelCard, MODEL_CARD)])
def test_examples_are_valid_documents_that_serialize_as_they_were_written(model, example):
    doc = model.of(copy.deepcopy(example)).document()
    assert json.dumps(doc, sort_keys=True) == json.dumps(example, sort_keys=True)


def test_left_out_keys_stay_out_and_numbers_keep_their_type():
    pre_check = {k: v for k, v in TRAIN_INPUT.items()} | {"classes": {
        **TRAIN_INPUT["classes"], "train": {"positive": 1e12, "negative": 1e12, "smallest": 1e12}}}
    doc = TrainPolicyInput.of(pre_check).document()
    assert "blocks" not in doc and "learnability" not in doc and "task" not in doc["classes"]
    assert json.dumps(doc) == json.dumps(pre_check)  # 1e12 stays a float, 4700 an int
    multiclass = copy.deepcopy(DEPLOY_INPUT)
    multiclass["metrics"] |= {"task": "multiclass", "macro_f1": 0.5}
    assert DeployManifest.of(multiclass).document()["metrics"] == multiclass["metrics"]


def test_a_document_with_a_wrong_or_unknown_field_is_refused():
    bad = copy.deepcopy(DEPLOY_INPUT)
    bad["privacy"]["epsilon_spent"] = bad["privacy"].pop("epsilon_used")
    with pytest.raises(ValidationError, match="epsilon_spent"):
        DeployManifest.of(bad)
    card = copy.deepcopy(MODEL_CARD)
    del card["intended_use"]
    with pytest.raises(ValidationError, match="intended_use"):
        ModelCard.of(card)


def _has(schema: dict, path: list[str], defs: dict) -> bool:
    if "$ref" in schema:
        schema = defs[schema["$ref"].rsplit("/", 1)[-1]]
    if not path:
        return True
    branches = schema.get("anyOf") or schema.get("oneOf")
    if branches:
        return any(_has(b, path, defs) for b in branches)
    props = schema.get("properties")
    if props is None:
        # An open mapping (learnability, the card's model section): its keys are its builder's.
        return schema.get("type") == "object" and schema.get("additionalProperties", True) is not False
    return path[0] in props and _has(props[path[0]], path[1:], defs)


def test_every_input_field_the_policy_reads_is_in_a_documents_schema():
    """policies.rego reading a field that no input has would be a rule that never fires."""
    text = (REPO / "policies.rego").read_text(encoding="utf-8")
    paths = sorted({m.group(1) for m in re.finditer(r"\binput((?:\.[a-z_][a-z0-9_]*)+)", text)})
    assert len(paths) > 30
    schemas = [m.model_json_schema() for m in (TrainPolicyInput, DeployManifest)]
    missing = [p for p in paths if not any(_has(s, p.strip(".").split("."), s.get("$defs", {})) for s in schemas)]
    assert missing == []
