"""Policy decisions (CMFM, the compliance monitoring and filtering module).

`evaluate("data.ppmlops.deploy", manifest)` asks the Rego policy and returns a Decision. Two
engines answer the same queries over the same policy text, both OPA's:

* embedded (default): OPA's Go engine in a long-lived worker process of this Python process
  (ppmlops.compliance.embedded and .opa_worker). The policy file is read and hashed at every
  decision; the worker compiles a policy once per content hash, so an edit takes effect at the
  next decision and an unchanged file is not recompiled. A native crash or a runaway
  evaluation kills the worker, never the caller; the next decision starts a new one.
* OPA server (settings.opa_url set): the policy text is pushed with PUT /v1/policies/ppmlops
  and the decision read from the Data API (POST /v1/data/ppmlops/<rule>), via
  opa-python-client, all within settings.opa_timeout_s (ppmlops.compliance.opa_http).

Evaluation fails closed: when no well-formed decision comes back, for whatever reason, the
Decision says "deny" and carries the error as its reason. `evaluate` does not raise for that.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ppmlops import settings
from ppmlops.compliance.policy_engine import ENGINE_EMBEDDED, ENGINE_OPA, PolicyEngine
from ppmlops.errors import PolicyError

OUTCOMES = ("allow", "deny", "needs_approval")

_QUERY = re.compile(r"^data(\.[A-Za-z_][A-Za-z0-9_]*)+$")


@dataclass
class Decision:
    id: str
    time: str
    query: str
    input: Any
    result: Any
    outcome: str
    allowed: bool
    reasons: list[str]
    engine: str
    policy_hash: str
    error: str | None = None
    latency_ms: float = field(default=0.0)

    def to_dict(self) -> dict:
        return asdict(self)


def engine_name(cfg: settings.Settings) -> str:
    return ENGINE_OPA if cfg.opa_url else ENGINE_EMBEDDED


def policy_engine(cfg: settings.Settings) -> PolicyEngine:
    """The engine `cfg` names: the OPA server at cfg.opa_url when set, else the embedded one; both
    within cfg.opa_timeout_s."""
    if cfg.opa_url:
        from ppmlops.compliance.opa_http import OpaHttpEngine

        return OpaHttpEngine(cfg.opa_url, cfg.opa_timeout_s)
    from ppmlops.compliance.embedded import EmbeddedEngine

    return EmbeddedEngine(cfg.opa_timeout_s)


def evaluate(query: str, input: dict, *, policy_path: Path | None = None,
             cfg: settings.Settings | None = None) -> Decision:
    """Ask the policy `query` (e.g. "data.ppmlops.train") about `input`, on the engine `cfg` names
    (read from the environment when not given). Never raises for a failed evaluation: the
    Decision is then a deny whose reason is the error."""
    started = time.perf_counter()
    engine = ENGINE_EMBEDDED
    policy_hash = ""
    value: Any = None
    input_doc: Any = None
    try:
        if cfg is None:
            try:
                cfg = settings.load()
            except ValueError as err:
                raise PolicyError(f"ppmlops settings are invalid: {err}") from None
        engine = engine_name(cfg)
        path = Path(policy_path) if policy_path is not None else cfg.policy_path
        if not isinstance(query, str) or not _QUERY.match(query):
            raise PolicyError(f"query {query!r} is not a rule reference like data.ppmlops.deploy")
        input_doc = _json_copy(input)
        text, policy_hash = read_policy(path)
        defined, value = policy_engine(cfg).evaluate(path, text, policy_hash, query, input_doc)
        if not defined:
            raise PolicyError(f"{query} is undefined for this input in {path}: the policy gave no decision")
        outcome, reasons = normalise(query, value)
    except Exception as err:  # noqa: BLE001
        # PolicyError is the expected failure; anything else is a bug here or in a library, and
        # it must still come out as a recorded deny rather than as no decision at all.
        message = str(err) if isinstance(err, PolicyError) else f"policy evaluation failed: {type(err).__name__}: {err}"
        kept = input if input_doc is None else input_doc
        return _decision(query, kept, value, "deny", [message], engine, policy_hash, message, started)
    return _decision(query, input_doc, value, outcome, reasons, engine, policy_hash, None, started)


def _decision(query, input, result, outcome, reasons, engine, policy_hash, error, started) -> Decision:
    return Decision(
        id=uuid.uuid4().hex,
        time=datetime.now(timezone.utc).isoformat(),
        query=query,
        input=input,
        result=result,
        outcome=outcome,
        allowed=outcome == "allow",
        reasons=list(reasons),
        engine=engine,
        policy_hash=policy_hash,
        error=error,
        latency_ms=round((time.perf_counter() - started) * 1000.0, 3),
    )


def _json_copy(doc: Any) -> Any:
    # A private copy: the caller may mutate its dict later, and the Decision must keep what was
    # actually evaluated. NaN and infinities are not JSON and would compare false everywhere.
    try:
        return json.loads(json.dumps(doc, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise PolicyError(f"policy input is not a JSON document: {err}") from None


def read_policy(path: Path) -> tuple[str, str]:
    """The policy text and the sha256 of its bytes, read now: an edit applies at the next
    decision (the engines compile per hash, so an unchanged file costs a read and a hash)."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise PolicyError(f"policy file {path} not found") from None
    except OSError as err:
        raise PolicyError(f"policy file {path} cannot be read: {err.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PolicyError(f"policy file {path} is not UTF-8 text (byte {err.start})") from None
    return text, hashlib.sha256(raw).hexdigest()


# ---------------------------------------------------------------------------------------------
# result normalisation
# ---------------------------------------------------------------------------------------------
def normalise(query: str, value: Any) -> tuple[str, list[str]]:
    """(outcome, reasons) from a rule's value; PolicyError when the value is not a decision.

    Accepted shapes: true/false; {"allow": bool, "reasons"}; {"outcome", "reasons"};
    {"epsilon", "delta", "reasons"} (a budget: allow while it leaves something to spend).
    """
    if isinstance(value, bool):
        return ("allow", []) if value else ("deny", [f"{query} is false"])
    if not isinstance(value, dict):
        raise PolicyError(f"{query} returned {_short(value)}, not a decision object")
    reasons = value.get("reasons", [])
    if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
        raise PolicyError(f"{query} returned reasons that are not a list of strings: {_short(reasons)}")
    if "allow" in value:
        if not isinstance(value["allow"], bool):
            raise PolicyError(f"{query}.allow is {_short(value['allow'])}, not true or false")
        outcome = "allow" if value["allow"] else "deny"
    elif "outcome" in value:
        outcome = value["outcome"]
        if outcome not in OUTCOMES:
            raise PolicyError(f"{query}.outcome is {_short(outcome)}, not one of {', '.join(OUTCOMES)}")
    elif "epsilon" in value and "delta" in value:
        eps, delta = value["epsilon"], value["delta"]
        for name, v in (("epsilon", eps), ("delta", delta)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise PolicyError(f"{query}.{name} is {_short(v)}, not a finite number >= 0")
        if delta >= 1:
            raise PolicyError(f"{query}.delta is {delta}, not below 1")
        outcome = "allow" if eps > 0 else "deny"
    else:
        raise PolicyError(f"{query} returned an object without allow, outcome or epsilon/delta: {_short(value)}")
    if outcome != "allow" and not reasons:
        reasons = [f"{query} gave outcome {outcome} without a reason"]
    return outcome, list(reasons)


def _short(value: Any, limit: int = 200) -> str:
    text = json.dumps(value, default=repr)
    return text if len(text) <= limit else text[:limit] + "..."
