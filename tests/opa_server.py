"""A loopback HTTP server speaking the parts of OPA's REST API ppmlops uses, for tests.

No OPA binary can be installed here, so the server evaluates with regorus; what is under test is
ppmlops's HTTP client side: pushing modules, Data API queries, errors and fail-closed handling.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import regorus


class FakeOpa:
    """The parts of OPA's REST API ppmlops uses: PUT/GET/DELETE /v1/policies/<id>, POST /v1/data/<path>.

    mode: "normal"; "undefined" (every query answers {}); "error" (every query answers 500);
    "swap" (GET /v1/policies returns a different module than was PUT).

    Modules are compiled at PUT (a rejected one answers 400 with OPA's error shape) and every
    query evaluates a clone, as OPA does not recompile per query; the benchmark relies on that.
    One request at a time on the server thread: a regorus Engine may only be used and dropped on
    the thread that made it. HTTP/1.0 (a connection per request) so a client holding a keep-alive
    connection can never stall the next one.
    """

    def __init__(self, mode: str = "normal"):
        self.mode = mode
        self.policies: dict[str, str] = {}
        self.requests: list[tuple[str, str]] = []
        self._compiled: regorus.Engine | None = None
        opa = self

        class Handler(BaseHTTPRequestHandler):
            # Headers and body go out in two writes; without this, Nagle's algorithm and the
            # client's delayed ACK add ~40 ms to every response, which no real server pays.
            disable_nagle_algorithm = True

            def log_message(self, *args):  # keep pytest output clean
                pass

            def _reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def do_PUT(self):
                opa.requests.append(("PUT", self.path))
                policy_id = self.path.removeprefix("/v1/policies/")
                text = self._body().decode()
                try:
                    regorus.Engine().add_policy(policy_id, text)
                except RuntimeError as err:
                    m = re.search(r"-->\s*\S+?:(\d+):(\d+)", str(err))
                    msg = re.search(r"error:\s*(.+)", str(err))
                    self._reply(400, {"code": "invalid_parameter", "message": "error(s) occurred while compiling module(s)",
                                      "errors": [{"code": "rego_parse_error", "message": msg.group(1) if msg else str(err),
                                                  "location": {"file": policy_id, "row": int(m.group(1)), "col": int(m.group(2))}}]})
                    return
                opa._set({**opa.policies, policy_id: text})
                self._reply(200, {})

            def do_DELETE(self):
                opa.requests.append(("DELETE", self.path))
                policy_id = self.path.removeprefix("/v1/policies/")
                if policy_id not in opa.policies:
                    self._reply(404, {"code": "resource_not_found", "message": f"policy id {policy_id!r}"})
                    return
                opa._set({k: v for k, v in opa.policies.items() if k != policy_id})
                self._reply(200, {})

            def do_GET(self):
                opa.requests.append(("GET", self.path))
                policy_id = self.path.removeprefix("/v1/policies/")
                if policy_id not in opa.policies:
                    self._reply(404, {"code": "resource_not_found", "message": f"storage_not_found_error: policy id {policy_id!r}"})
                    return
                raw = opa.policies[policy_id] + ("\n# replaced by someone else\n" if opa.mode == "swap" else "")
                self._reply(200, {"result": {"id": policy_id, "raw": raw}})

            def do_POST(self):
                opa.requests.append(("POST", self.path))
                body = json.loads(self._body() or b"{}")
                if opa.mode == "undefined":
                    self._reply(200, {})
                    return
                if opa.mode == "error":
                    self._reply(500, {"code": "internal_error", "message": "storage failure"})
                    return
                engine = opa._compiled.clone() if opa._compiled is not None else regorus.Engine()
                engine.set_input_json(json.dumps(body.get("input")))
                query = "data." + self.path.removeprefix("/v1/data/").strip("/").replace("/", ".")
                result = json.loads(engine.eval_query_as_json(query)).get("result")
                self._reply(200, {"result": result[0]["expressions"][0]["value"]} if result else {})

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _set(self, policies: dict[str, str]) -> None:
        engine = regorus.Engine()
        for pid, text in policies.items():
            engine.add_policy(pid, text)
        self.policies, self._compiled = policies, engine

    def _serve(self) -> None:
        try:
            self.server.serve_forever(poll_interval=0.05)
        finally:
            self._compiled = None  # dropped on the thread that made it, as regorus requires

    def __enter__(self) -> "FakeOpa":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
