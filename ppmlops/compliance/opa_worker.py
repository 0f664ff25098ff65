"""The embedded OPA engine's worker process.

Run as `python -m ppmlops.compliance.opa_worker`; ppmlops.compliance.embedded starts one per
Python process on first use and keeps it for every later decision. The engine is OPA's own Go
code (github.com/open-policy-agent/opa/v1/rego, through the opa-golib-python-bindings c-shared
library): a native crash or a runaway evaluation kills this process, never the pipeline that
asked, and the parent starts a new one for the next decision.

Compiled policies are kept per (path, sha256 of the text): a decision on an unchanged file reuses
the compiled policy and its prepared queries; an edited file has a new hash and is compiled once,
at the first decision that sees it.

Protocol: newline-delimited UTF-8 JSON. The worker writes `ready <pid>` once the library is
loaded, then answers each request line with one response line, in order, until stdin closes.

  {"id", "op": "eval", "policy": {"path", "hash", "text"?}, "query": "data.pkg.rule", "input"}
      -> {"id", "ok": true, "defined": bool, "value": ..., "stats": {...}}
      "text" may be left out when the parent believes the worker has that hash compiled; if it
      has not (never seen, or evicted), the answer is {"ok": false, "missing_policy": true}.
  {"id", "op": "test", "modules": [{"path", "text"}], "coverage": bool}
      -> {"id", "ok": true, "results": [{"name", "passed", "message"}], "coverage": report|null}
  {"id", "op": "list_tests", "modules": [{"path", "text"}]}
      -> {"id", "ok": true, "tests": [{"package", "name", "where"}]}
Any failure -> {"id", "ok": false, "error": "<one line naming file:line where known>"}.
Every response carries "stats": {"pid", "decisions", "compiles", "compiled"}, so the parent and
the tests can see whether a request compiled a policy.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sys
import time
from collections import OrderedDict
from typing import Any

from ppmlops.compliance.coverage import merge as merge_coverage

# Test-only: a request carrying "fault" makes the worker fail after reading it, so tests exercise
# the parent's handling of a real dead, hung or babbling process. The parent copies this variable
# from its environment into each request (so it reaches a worker that is already running).
# Values: "segv" (die by SIGSEGV), "hang" (never answer), "garbage" (answer with non-JSON).
FAULT_ENV = "PPMLOPS_OPA_WORKER_FAULT"

# Compiled policies kept; a pipeline uses one, the tests a handful of edited copies.
POLICY_CACHE_SIZE = 8

_ERROR = re.compile(r"(?P<loc>[^\s:]+(?::\d+)+): (?P<code>rego_\w+|eval_\w+): (?P<msg>[^\n]*)"
                    r"(?:\n\t(?P<src>[^\n]*)\n\t *\^)?")


def format_opa_error(message: str) -> str:
    """OPA reports `N errors occurred:` then `file:row: code: message` entries, each with the
    source line and a caret; reduce that to the first entry, `file:row: message (in `src`)`."""
    found = list(_ERROR.finditer(message))
    if not found:
        return " ".join(message.split()) or "OPA engine error without a message"
    first = found[0]
    out = f"{first['loc']}: {first['msg'].strip()}"
    if first["src"] and first["src"].strip():
        out += f" (in `{first['src'].strip()}`)"
    more = len({(m["loc"], m["msg"]) for m in found}) - 1
    if more:
        out += f" (and {more} more error{'s' if more > 1 else ''} after it)"
    return out


class Worker:
    def __init__(self) -> None:
        # Imported here so the Go runtime starts before `ready`: start-up is then not charged to
        # the first evaluation's timeout.
        from opa_bindings import OpaEngine, OpaError, OpaUndefinedError

        self._new_engine = OpaEngine
        self._error = OpaError
        self._undefined = OpaUndefinedError
        self._parser = self._new_engine()  # no modules: only for rego.parse_module
        self._policies: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self.decisions = 0
        self.compiles = 0

    # -- requests --------------------------------------------------------------------------
    def handle(self, req: dict) -> dict:
        op = req.get("op")
        compiled = False
        try:
            if op == "eval":
                response, compiled = self._eval(req)
            elif op == "test":
                response = self._test(req["modules"], bool(req.get("coverage")))
            elif op == "list_tests":
                response = {"ok": True, "tests": [
                    {"package": p, "name": n, "where": w} for p, n, w in self._discover(req["modules"])]}
            else:
                response = {"ok": False, "error": f"unknown worker op {op!r}"}
        except self._error as err:
            response = {"ok": False, "error": format_opa_error(err.message)}
        except (KeyError, TypeError, ValueError) as err:
            response = {"ok": False, "error": f"malformed worker request: {type(err).__name__}: {err}"}
        response["stats"] = {"pid": os.getpid(), "decisions": self.decisions, "compiles": self.compiles,
                             "compiled": compiled}
        return response

    def _eval(self, req: dict) -> tuple[dict, bool]:
        policy = req["policy"]
        engine, compiled = self._policy(policy["path"], policy["hash"], policy.get("text"))
        if engine is None:
            return {"ok": False, "missing_policy": True,
                    "error": f"worker has no compiled policy {policy['hash'][:12]} for {policy['path']}"}, False
        self.decisions += 1
        try:
            value = engine.eval_document(req["query"][len("data."):], req["input"])
        except self._undefined:
            return {"ok": True, "defined": False, "value": None}, compiled
        return {"ok": True, "defined": True, "value": value}, compiled

    def _policy(self, path: str, digest: str, text: str | None) -> tuple[Any, bool]:
        key = (path, digest)
        if key in self._policies:
            self._policies.move_to_end(key)
            return self._policies[key], False
        if text is None:
            return None, False
        if hashlib.sha256(text.encode("utf-8")).hexdigest() != digest:
            raise ValueError(f"policy text for {path} does not have the hash {digest[:12]} it was sent with")
        engine = self._compile([{"path": path, "text": text}])
        self.compiles += 1
        self._policies[key] = engine
        while len(self._policies) > POLICY_CACHE_SIZE:
            _, old = self._policies.popitem(last=False)
            old.close()
        return engine, True

    def _compile(self, modules: list[dict]) -> Any:
        engine = self._new_engine()
        engine.print_handler = lambda message, location: None  # print() is for `opa eval`, not here
        try:
            for module in modules:
                engine.add_policy(module["path"], module["text"])  # parses; errors name file:row
            engine.eval_query("true")  # compiles every module: unsafe vars, type errors, conflicts
        except self._error:
            engine.close()
            raise
        return engine

    # -- tests -----------------------------------------------------------------------------
    def _discover(self, modules: list[dict]) -> list[tuple[str, str, str]]:
        """(package, rule, "file:line") for every test_ rule, in file order, as `opa test` finds
        them: rules named test_* that are neither functions nor partial sets or objects."""
        found = []
        for module in modules:
            ast = self._parser.eval_query("m := rego.parse_module(input.path, input.text)",
                                          {"path": module["path"], "text": module["text"]})[0]["m"]
            package = ".".join(str(term["value"]) for term in ast["package"]["path"][1:])
            names: list[str] = []
            for rule in ast.get("rules") or []:
                head = rule["head"]
                ref = head.get("ref") or []
                if head.get("args") or "key" in head or len(ref) != 1:
                    continue
                name = ref[0]["value"]
                if name.startswith("test_") and name not in names:
                    names.append(name)
            found += [(package, name, f"{module['path']}:{_rule_line(module['text'], name)}") for name in names]
        return found

    def _test(self, modules: list[dict], coverage: bool) -> dict:
        engine = self._compile(modules)
        try:
            tests = self._discover(modules)
            reports: list[dict] = []
            results = []
            for package in dict.fromkeys(p for p, _, _ in tests):
                mine = [(n, w) for p, n, w in tests if p == package]
                values = self._run_package(engine, package, mine, coverage, reports)
                for name, where in mine:
                    outcome = values[name]
                    full = f"data.{package}.{name}"
                    if isinstance(outcome, _Failed):
                        results.append({"name": full, "passed": False, "message": outcome.message})
                    elif outcome is _UNDEFINED:
                        results.append({"name": full, "passed": False,
                                         "message": f"{where}: undefined (an expression in its body was false)"})
                    elif outcome is True:
                        results.append({"name": full, "passed": True, "message": ""})
                    else:
                        results.append({"name": full, "passed": False,
                                        "message": f"{where}: value {json.dumps(outcome)}, not true"})
            return {"ok": True, "results": results, "coverage": merge_coverage(reports) if coverage else None}
        finally:
            engine.close()

    def _run_package(self, engine: Any, package: str, tests: list[tuple[str, str]], coverage: bool,
                     reports: list[dict]) -> dict[str, Any]:
        """Each test's value (or _UNDEFINED, or _Failed). One query evaluates the whole package's
        tests, so the package is prepared once; if any test raises, each is run on its own to
        say which."""
        ref = "data" + "".join(f"[{json.dumps(part)}]" for part in package.split("."))
        names = [name for name, _ in tests]
        try:
            rows = engine.eval_query(f"x := {{n: v | some n in input.names; v := {ref}[n]}}",
                                     {"names": names}, coverage=coverage)
            values = rows[0]["x"]
            return {name: values.get(name, _UNDEFINED) for name in names}
        except self._error:
            pass
        finally:
            if engine.last_coverage:
                reports.append(engine.last_coverage)
        out: dict[str, Any] = {}
        for name in names:
            try:
                out[name] = engine.eval_document(f"{package}.{name}", None, coverage=coverage)
            except self._undefined:
                out[name] = _UNDEFINED
            except self._error as err:
                out[name] = _Failed(format_opa_error(err.message))
            if engine.last_coverage:
                reports.append(engine.last_coverage)
        return out


_UNDEFINED = object()


class _Failed:
    def __init__(self, message: str):
        self.message = message


def _rule_line(text: str, name: str) -> int | str:
    # OPA's parsed module (rego.parse_module) carries no rule locations; the first line that
    # starts a rule of this name is where `opa fmt`-formatted Rego defines it.
    found = re.search(rf"^[ \t]*(?:default[ \t]+)?{re.escape(name)}\b", text, re.MULTILINE)
    return text.count("\n", 0, found.start()) + 1 if found else "?"


def _fault(kind: str, out) -> None:
    if kind == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif kind == "hang":
        while True:
            time.sleep(3600)
    elif kind == "garbage":
        out.write(b"this is not json\n")
        out.flush()


def _die_with_parent() -> None:
    # A parent that is killed outright cannot stop a worker stuck in a long evaluation; the
    # kernel can (Linux; elsewhere the worker ends at its next read of the closed stdin). Linux
    # sends it when the parent *thread* that started the worker ends: the parent then finds the
    # worker dead before its next request and starts another, so no decision is lost to it.
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main() -> int:
    _die_with_parent()
    try:
        worker = Worker()
    except ImportError as err:
        print(f"the OPA engine is not installed ({err}); install it with `./dev setup`, or "
              "`pip install --no-deps --ignore-requires-python opa-golib-python-bindings==0.4.4`",
              file=sys.stderr)
        return 3
    out = sys.stdout.buffer
    out.write(f"ready {os.getpid()}\n".encode())
    out.flush()
    for line in sys.stdin.buffer:
        try:
            req = json.loads(line.decode("utf-8"))
            if not isinstance(req, dict):
                raise ValueError("request is not a JSON object")
        except (ValueError, UnicodeDecodeError) as err:
            response: dict = {"id": None, "ok": False, "error": f"worker received a malformed request: {err}"}
        else:
            if req.get("fault"):
                _fault(req["fault"], out)
                continue
            response = {"id": req.get("id"), **worker.handle(req)}
        out.write(json.dumps(response).encode("utf-8") + b"\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
