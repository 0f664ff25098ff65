"""Policy decisions (CMFM, the compliance monitoring and filtering module).

`evaluate("data.ppmlops.deploy", manifest)` asks the Rego policy and returns a Decision. Two
engines answer the same queries over the same policy text:

* embedded (default): regorus in a child process (ppmlops.compliance.rego_worker). The policy
  file is read at every evaluation, so an edit takes effect at the next decision, and a native
  crash or a runaway evaluation kills the child, never the caller.
* OPA server (settings.opa_url set): the policy text is pushed with PUT /v1/policies/ppmlops
  and the decision read from the Data API (POST /v1/data/ppmlops/<rule>), via
  opa-python-client.

Evaluation fails closed: when no well-formed decision comes back, for whatever reason, the
Decision says "deny" and carries the error as its reason. `evaluate` does not raise for that.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import select
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ppmlops import settings
from ppmlops.errors import PolicyError

ENGINE_EMBEDDED = "embedded-regorus"
ENGINE_OPA = "opa-http"
OUTCOMES = ("allow", "deny", "needs_approval")

# Where the policy module lives on an OPA server (PUT /v1/policies/<id>).
OPA_POLICY_ID = "ppmlops"

# Interpreter start and `import regorus`; generous because a busy scheduler host can be slow
# to fork. The evaluation itself is bounded by settings.opa_timeout_s.
WORKER_STARTUP_TIMEOUT_S = 60.0

_QUERY = re.compile(r"^data(\.[A-Za-z_][A-Za-z0-9_]*)+$")
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent.parent


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


def evaluate(query: str, input: dict, *, policy_path: Path | None = None) -> Decision:
    """Ask the policy `query` (e.g. "data.ppmlops.train") about `input`. Never raises for a
    failed evaluation: the Decision is then a deny whose reason is the error."""
    started = time.perf_counter()
    engine = ENGINE_OPA if os.environ.get("PPMLOPS_OPA_URL") else ENGINE_EMBEDDED
    policy_hash = ""
    value: Any = None
    input_doc: Any = None
    try:
        try:
            cfg = settings.load()
        except ValueError as err:
            raise PolicyError(f"ppmlops settings are invalid: {err}") from None
        path = Path(policy_path) if policy_path is not None else cfg.policy_path
        if not isinstance(query, str) or not _QUERY.match(query):
            raise PolicyError(f"query {query!r} is not a rule reference like data.ppmlops.deploy")
        input_doc = _json_copy(input)
        text, policy_hash = read_policy(path)
        if cfg.opa_url:
            defined, value = _evaluate_opa(cfg.opa_url, cfg.opa_timeout_s, path, text, policy_hash, query, input_doc)
        else:
            defined, value = _evaluate_embedded(cfg.opa_timeout_s, path, text, query, input_doc)
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
    """The policy text and the sha256 of its bytes, read now (no caching: edits apply at once)."""
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


# ---------------------------------------------------------------------------------------------
# embedded engine: one child process per request
# ---------------------------------------------------------------------------------------------
def _evaluate_embedded(timeout_s: float, path: Path, text: str, query: str, input_doc: Any) -> tuple[bool, Any]:
    response = run_worker(
        {"op": "eval", "policies": [{"path": str(path), "text": text}], "query": query, "input": input_doc},
        timeout_s=timeout_s,
        what=f"{query} over {path}",
    )
    return bool(response.get("defined")), response.get("value")


def run_worker(request: dict, *, timeout_s: float, what: str) -> dict:
    """Send `request` to a fresh rego_worker and return its successful response.

    Raises PolicyError when the worker errs, dies, hangs past `timeout_s` of evaluation, or
    answers with something that is not a response.
    """
    env = dict(os.environ)
    env["RUST_BACKTRACE"] = "0"  # regorus appends a native backtrace to every error otherwise
    # The child must import this same ppmlops, not whatever else is on its path.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ppmlops.compliance.rego_worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )
    except OSError as err:
        raise PolicyError(f"cannot start the Rego engine worker: {err}") from None
    try:
        early = _await_ready(proc, WORKER_STARTUP_TIMEOUT_S, what)
        try:
            out, err = proc.communicate(json.dumps(request).encode("utf-8"), timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise PolicyError(f"Rego engine did not answer within {timeout_s:g}s evaluating {what}; stopped it") from None
        except BrokenPipeError:
            out, err = b"", b""
            proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    out = early + out
    _check_exit(proc.returncode, err, what)
    try:
        response = json.loads(out.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise PolicyError(f"Rego engine worker answered {out[:200]!r}, not JSON, evaluating {what}") from None
    if not isinstance(response, dict) or "ok" not in response:
        raise PolicyError(f"Rego engine worker answered {_short(response)}, not a response, evaluating {what}")
    if not response["ok"]:
        raise PolicyError(str(response.get("error") or "Rego engine failed without a message"))
    return response


def _await_ready(proc: subprocess.Popen, timeout_s: float, what: str) -> bytes:
    """Wait for the worker's `ready` line; returns any bytes that came after it."""
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout_s
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise PolicyError(f"Rego engine worker did not start within {timeout_s:g}s ({what})")
        readable, _, _ = select.select([fd], [], [], left)
        if not readable:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:  # EOF: the worker died before it was ready
            err = proc.stderr.read() if proc.stderr else b""
            _check_exit(proc.wait(), err, what)
            raise PolicyError(f"Rego engine worker exited before it was ready ({what})")
        buf += chunk
    line, rest = buf.split(b"\n", 1)
    if line.strip() != b"ready":
        raise PolicyError(f"Rego engine worker started with {line[:200]!r} instead of 'ready' ({what})")
    return rest


def _check_exit(returncode: int | None, stderr: bytes, what: str) -> None:
    if returncode is None or returncode == 0:
        return
    if returncode < 0:
        try:
            name = f" ({signal.Signals(-returncode).name})"
        except ValueError:
            name = ""
        raise PolicyError(f"Rego engine crashed: killed by signal {-returncode}{name} while evaluating {what}")
    tail = stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
    raise PolicyError(f"Rego engine worker exited with status {returncode} evaluating {what}: " + " | ".join(tail))


# ---------------------------------------------------------------------------------------------
# OPA server over HTTP
# ---------------------------------------------------------------------------------------------
def _evaluate_opa(url: str, timeout_s: float, path: Path, text: str, digest: str, query: str,
                  input_doc: Any) -> tuple[bool, Any]:
    import requests
    from opa_client import OpaClient
    from opa_client.errors import RegoParseError

    client = OpaClient(**_opa_address(url), timeout=timeout_s)
    rule_path = query[len("data."):]
    try:
        try:
            # rego_compat=False: the client would otherwise rewrite a rejected policy and push
            # text whose hash is not the one recorded for this decision.
            client.update_policy_from_string(text, OPA_POLICY_ID, rego_compat=False)
        except RegoParseError as err:
            raise PolicyError(_opa_compile_error(path, err)) from None
        body = client.query_rule(input_data=input_doc, package_path=rule_path)
        # Another writer may have replaced the module between our PUT and the query; then the
        # decision came from a policy whose hash we do not know.
        raw = client.get_policy(OPA_POLICY_ID).get("result", {}).get("raw", "")
    except PolicyError:
        raise
    except requests.Timeout:
        raise PolicyError(f"OPA server at {url} did not answer within {timeout_s:g}s") from None
    except requests.ConnectionError as err:
        raise PolicyError(f"OPA server at {url} is unreachable: {_root_cause(err)}") from None
    except requests.HTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        detail = err.response.text[:300] if err.response is not None else ""
        raise PolicyError(f"OPA server at {url} answered HTTP {status} for {query}: {detail}") from None
    except Exception as err:  # noqa: BLE001
        # opa-python-client raises its own exception types (and JSON decode errors on non-JSON
        # error pages); whatever it is, there is no decision, and that must read as a deny.
        raise PolicyError(f"OPA server at {url} failed for {query}: {type(err).__name__}: {_opa_message(err)}") from None
    finally:
        client.close_connection()
    if hashlib.sha256(raw.encode("utf-8")).hexdigest() != digest:
        raise PolicyError(f"the policy module {OPA_POLICY_ID!r} on OPA server {url} changed while {query} was "
                          f"evaluated; the decision cannot be tied to {path}")
    if not isinstance(body, dict):
        raise PolicyError(f"OPA server at {url} answered {_short(body)} for {query}, not a Data API response")
    return "result" in body, body.get("result")


def _opa_address(url: str) -> dict:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PolicyError(f"PPMLOPS_OPA_URL {url!r} is not an http(s)://host[:port] URL")
    if parts.path not in ("", "/") or parts.query:
        raise PolicyError(f"PPMLOPS_OPA_URL {url!r} has a path; give the server root, e.g. http://opa:8181")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise PolicyError(f"PPMLOPS_OPA_URL {url!r} has an invalid port") from None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return {"host": host, "port": port, "ssl": parts.scheme == "https"}


def _opa_compile_error(path: Path, err: Exception) -> str:
    """OPA's compile errors name its module id; name the local file instead."""
    found = []
    for e in getattr(err, "errors", None) or []:
        if not isinstance(e, dict):
            continue
        loc = e.get("location") or {}
        where = f"{path}:{loc.get('row', '?')}:{loc.get('col', '?')}" if loc else str(path)
        found.append(f"{where}: {e.get('message', 'error')}")
    return "; ".join(found) or f"{path}: OPA rejected the policy: {_opa_message(err)}"


def _opa_message(err: Exception) -> str:
    return str(getattr(err, "message", None) or err)


_ERRNO = re.compile(r"\[Errno -?\d+\][^'\")]*")


def _root_cause(err: BaseException) -> str:
    # requests nests the socket error several layers deep inside a long repr; the errno text
    # ("[Errno 111] Connection refused") is what tells an operator what happened.
    text = str(err)
    found = _ERRNO.search(text)
    return found.group(0).strip() if found else text[:200]
