"""Each registered version's card, hashed into the audit log at deploy and checked against MLflow.

A card lives in MLflow (card.json beside the model, and one `card.*` tag per field, which anyone
with write access to the registry can edit). At deploy its sha256 (canonical JSON, the audit
log's) goes into the hash-chained audit log as a record of its own kind (query REGISTERED, outcome
"registered"), naming the gate decision that allowed it. `ppmlops audit verify` and the
dashboard's model page read every recorded version's card back from MLflow and name each one
whose card.json no longer has the recorded hash or whose tags no longer say what the card says.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime, timezone
from typing import Any

from ppmlops.audit.log import canonical_json

REGISTERED = "ppmlops.registry.register"  # not a policy query: the record kind of a registration
OUTCOME = "registered"
ENGINE = "ppmlops"


def card_sha256(card: dict[str, Any]) -> str:
    """The card as stored (`version` is added when it is read, so it is left out)."""
    return hashlib.sha256(canonical_json({k: v for k, v in card.items() if k != "version"}).encode("utf-8")).hexdigest()


def registration(model_name: str, version: int, sha: str, alias: str, gate_decision_id: str,
                 policy_hash: str) -> dict[str, Any]:
    """The audit record of one registration, in the shape of a policy decision (ppmlops.compliance)."""
    facts = {"model_name": model_name, "version": int(version), "card_sha256": sha, "alias": alias,
             "gate_decision_id": gate_decision_id}
    return {"id": uuid.uuid4().hex, "time": datetime.now(timezone.utc).isoformat(), "query": REGISTERED,
            "input": facts, "result": facts, "outcome": OUTCOME, "allowed": True,
            "reasons": [f"registered {model_name} v{version} (alias {alias}) with card sha256 {sha}, as gate "
                        f"decision {gate_decision_id} allowed"],
            "engine": ENGINE, "policy_hash": policy_hash, "error": None, "latency_ms": 0.0}


def recorded(records: list[dict]) -> dict[tuple[str, int], tuple[str, int]]:
    """(model, version) -> (card sha256, audit seq) from the audit log's registration records."""
    out = {}
    for r in records:
        d = r.get("decision") or {}
        if d.get("query") == REGISTERED and isinstance(d.get("result"), dict):
            res = d["result"]
            out[(str(res.get("model_name")), int(res.get("version", 0)))] = (str(res.get("card_sha256")), r["seq"])
    return out


def version_problem(registry, model_name: str, version: int, sha: str, seq: int) -> str | None:
    """Why the card of one version no longer is the one deployed, or None."""
    from ppmlops.registry.store import card_tags

    what = f"card of {model_name} v{version}"
    card = registry.card(model_name, version)
    found = card_sha256(card)
    if found != sha:
        return (f"{what} changed in MLflow since deploy: card.json has sha256 {found[:12]}..., the audit log "
                f"recorded {sha[:12]}... (seq {seq})")
    expected = card_tags({k: v for k, v in card.items() if k != "version"})
    tags = registry.card_tags(model_name, version)
    changed = sorted(k for k in set(expected) | set(tags) if expected.get(k) != tags.get(k))
    if changed:
        shown = ", ".join(f"{k} says {tags.get(k, '(removed)')!r}" + (f" not {expected[k]!r}" if k in expected else "")
                          for k in changed[:5])
        return f"{what} changed in MLflow since deploy: its tags no longer match card.json ({shown})"
    return None


def card_problems(records: list[dict], registry) -> list[str]:
    """One line per recorded version whose card changed (or cannot be read) in MLflow."""
    from ppmlops.registry.backend import RegistryError

    problems = []
    for (name, version), (sha, seq) in sorted(recorded(records).items()):
        try:
            problem = version_problem(registry, name, version, sha, seq)
        except RegistryError as err:
            problem = f"card of {name} v{version} (audit seq {seq}) could not be checked: {err}"
        if problem:
            problems.append(problem)
    return problems
