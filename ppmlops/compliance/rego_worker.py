"""Child process that runs the embedded Rego engine (regorus) for one request.

Run as `python -m ppmlops.compliance.rego_worker`. The engine is native code: a crash in it
kills this process, not the pipeline that asked. ppmlops.compliance.engine starts one worker
per request, so every evaluation parses the policy text it was given and nothing is cached.

Protocol (all UTF-8 JSON):
  1. the worker writes the line `ready` to stdout once regorus is imported, so the parent can
     apply its evaluation timeout to evaluation alone and not to interpreter start-up;
  2. the parent writes one request object to stdin and closes it;
  3. the worker writes one response object to stdout and exits 0.

Requests:
  {"op": "eval", "policies": [{"path", "text"}], "query": "data.pkg.rule", "input": ...}
      -> {"ok": true, "defined": bool, "value": ...}
  {"op": "test", "policies": [{"path", "text"}]}
  {"op": "list_tests", "policies": [{"path", "text"}]}  (names only; the OPA path evaluates them)
      -> {"ok": true, "results": [{"name", "passed", "message"}]}
Any failure -> {"ok": false, "error": "<one line naming file:line:col where known>"}.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from typing import Any

# Test-only: makes the worker fail after reading its request, so tests exercise the parent's
# handling of a real dead or hung child. Values: "segv" (die by SIGSEGV), "hang" (never answer),
# "garbage" (answer with something that is not JSON).
FAULT_ENV = "PPMLOPS_REGO_WORKER_FAULT"

_LOCATION = re.compile(r"-->\s*(?P<file>.+?):(?P<line>\d+):(?P<col>\d+)\s*$", re.MULTILINE)
_MESSAGE = re.compile(r"^error:\s*(?P<msg>.+)$", re.MULTILINE)
_SOURCE = re.compile(r"^\s*\d+\s*\|\s?(?P<src>.*)$", re.MULTILINE)


def format_engine_error(raw: str) -> str:
    """regorus reports a multi-line, rustc-style message; reduce it to `file:line:col: msg`."""
    text = raw.split("Stack backtrace:", 1)[0].strip()
    loc = _LOCATION.search(text)
    msg = _MESSAGE.search(text)
    if not (loc and msg):
        return " ".join(text.split()) or "Rego engine error without a message"
    out = f"{loc['file']}:{loc['line']}:{loc['col']}: {msg['msg'].strip()}"
    src = _SOURCE.search(text)
    if src and src["src"].strip():
        out += f" (in `{src['src'].strip()}`)"
    return out


def _engine(regorus: Any, policies: list[dict]) -> Any:
    engine = regorus.Engine()
    for policy in policies:
        engine.add_policy(policy["path"], policy["text"])
    return engine


def _first_value(result_json: str) -> tuple[bool, Any]:
    result = json.loads(result_json)
    rows = result.get("result") or []
    if not rows:
        return False, None
    return True, rows[0]["expressions"][0]["value"]


def _eval(regorus: Any, req: dict) -> dict:
    engine = _engine(regorus, req["policies"])
    engine.set_input_json(json.dumps(req["input"]))
    defined, value = _first_value(engine.eval_query_as_json(req["query"]))
    return {"ok": True, "defined": defined, "value": value}


def _ref_path(ref: dict) -> list[str]:
    """Decode a package reference from regorus' AST (`a.b["c"]`) into ["a", "b", "c"]."""
    kind, node = next(iter(ref.items()))
    if kind == "Var":
        return [node["value"]]
    if kind == "RefDot":
        return _ref_path(node["refr"]) + [node["field"][1]]
    if kind == "RefBrack" and "String" in node["index"]:
        return _ref_path(node["refr"]) + [node["index"]["String"]["value"]]
    raise ValueError(f"unsupported reference in package path: {kind}")


def _test_rules(engine: Any) -> list[tuple[str, str, str]]:
    """(package, rule, "file:line") for every test_ rule, in file order, like `opa test` finds them."""
    found: dict[tuple[str, str], tuple[str, int]] = {}
    for module in json.loads(engine.get_ast_as_json()):
        path = module["source"]["file"]
        ast = module["ast"]
        package = ".".join(_ref_path(ast["package"]["refr"]))
        for rule in ast["rules"]:
            kind, node = next(iter(rule.items()))
            if kind == "Spec":
                head_kind, head = next(iter(node["head"].items()))
                if head_kind != "Compr":  # functions and partial sets are not tests
                    continue
            elif kind == "Default":
                head = node
            else:
                continue
            ref = head["refr"]
            if "Var" not in ref:
                continue
            name = ref["Var"]["value"]
            if name.startswith("test_"):
                found.setdefault((package, name), (path, ref["Var"]["span"]["line"]))
    return [(pkg, name, f"{path}:{line}") for (pkg, name), (path, line) in found.items()]


def _test(regorus: Any, req: dict) -> dict:
    engine = _engine(regorus, req["policies"])
    results = []
    for package, name, where in _test_rules(engine):
        full = f"data.{package}.{name}"
        try:
            defined, value = _first_value(engine.eval_query_as_json(full))
        except RuntimeError as err:
            results.append({"name": full, "passed": False, "message": format_engine_error(str(err))})
            continue
        if value is True:
            results.append({"name": full, "passed": True, "message": ""})
        elif not defined:
            results.append({"name": full, "passed": False,
                            "message": f"{where}: undefined (an expression in its body was false)"})
        else:
            results.append({"name": full, "passed": False,
                            "message": f"{where}: value {json.dumps(value)}, not true"})
    return {"ok": True, "results": results}


def _fault(kind: str) -> None:
    if kind == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif kind == "hang":
        while True:
            time.sleep(3600)
    elif kind == "garbage":
        sys.stdout.buffer.write(b"this is not json")
        sys.stdout.buffer.flush()
        sys.exit(0)


def main() -> int:
    import regorus  # imported before `ready` so start-up cost is not charged to the evaluation

    out = sys.stdout.buffer
    out.write(b"ready\n")
    out.flush()
    try:
        req = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        response: dict = {"ok": False, "error": f"worker received a malformed request: {err}"}
    else:
        if os.environ.get(FAULT_ENV):
            _fault(os.environ[FAULT_ENV])
        try:
            if req.get("op") == "eval":
                response = _eval(regorus, req)
            elif req.get("op") == "test":
                response = _test(regorus, req)
            elif req.get("op") == "list_tests":
                tests = _test_rules(_engine(regorus, req["policies"]))
                response = {"ok": True, "tests": [{"package": p, "name": n, "where": w} for p, n, w in tests]}
            else:
                response = {"ok": False, "error": f"unknown worker op {req.get('op')!r}"}
        except RuntimeError as err:  # regorus reports parse and evaluation errors this way
            response = {"ok": False, "error": format_engine_error(str(err))}
        except (KeyError, TypeError, ValueError) as err:
            response = {"ok": False, "error": f"{type(err).__name__}: {err}"}
    out.write(json.dumps(response).encode("utf-8"))
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
