"""Loopback HTTP servers for the OPA-server path of ppmlops.compliance, for tests and benchmarks.

No OPA binary can be installed here, so `FakeOpa` speaks the parts of OPA's REST API ppmlops uses
and evaluates with OPA's own Go engine (the library ppmlops's embedded engine runs,
opa-golib-python-bindings): the decisions are OPA's; what is simulated is only the HTTP server
around them. `SilentServer` accepts connections and never answers, like a wedged OPA.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from opa_bindings import OpaEngine, OpaError, OpaUndefinedError

_ERROR = re.compile(r"(?P<file>[^\s:]+):(?P<row>\d+): (?P<code>rego_\w+): (?P<msg>[^\n]*)")


class FakeOpa:
    """PUT/GET/DELETE /v1/policies/<id>, POST /v1/data/<path>, evaluated by OPA's engine.

    mode: "normal"; "undefined" (every query answers {}); "error" (every query answers 500);
    "swap" (GET /v1/policies returns a different module than was PUT).

    As in OPA's server, a PUT compiles all modules (a rejected one answers 400 with OPA's error
    shape and changes nothing) and a PUT of the text already stored under that id is accepted
    without recompiling; queries evaluate the compiled modules. HTTP/1.0 (a connection per
    request), one request at a time.
    """

    def __init__(self, mode: str = "normal"):
        self.mode = mode
        self.policies: dict[str, str] = {}
        self.requests: list[tuple[str, str]] = []
        self.compiles = 0
        self._engine: OpaEngine | None = None
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
                if opa.policies.get(policy_id) == text:
                    self._reply(200, {})
                    return
                try:
                    opa._set({**opa.policies, policy_id: text})
                except OpaError as err:
                    self._reply(400, _compile_error(err.message))
                    return
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
                if self.path == "/health":  # OPA's health API: 200 and {} once the server is up
                    self._reply(500 if opa.mode == "error" else 200, {})
                    return
                policy_id = self.path.removeprefix("/v1/policies/")
                if policy_id not in opa.policies:
                    self._reply(404, {"code": "resource_not_found", "message": f"storage_not_found_error: policy id {policy_id!r}"})
                    return
                raw = opa.policies[policy_id] + ("\n# replaced by someone else\n" if opa.mode == "swap" else "")
                self._reply(200, {"result": {"id": policy_id, "raw": raw}})

            def do_POST(self):
                opa.requests.append(("POST", self.path))
                body = json.loads(self._body() or b"{}")
                if opa.mode == "undefined" or opa._engine is None:
                    self._reply(200, {})
                    return
                if opa.mode == "error":
                    self._reply(500, {"code": "internal_error", "message": "storage failure"})
                    return
                path = self.path.removeprefix("/v1/data/").strip("/").replace("/", ".")
                try:
                    value = opa._engine.eval_document(path, body.get("input"))
                except OpaUndefinedError:
                    self._reply(200, {})
                    return
                except OpaError as err:
                    self._reply(500, {"code": "internal_error", "message": err.message})
                    return
                self._reply(200, {"result": value})

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def _set(self, policies: dict[str, str]) -> None:
        engine = OpaEngine()
        engine.print_handler = lambda message, location: None
        try:
            for policy_id, text in policies.items():
                engine.add_policy(policy_id, text)
            engine.eval_query("true")  # compiles every module, as OPA's PUT does
        except OpaError:
            engine.close()
            raise
        old, self._engine, self.policies = self._engine, engine, policies
        self.compiles += 1
        if old is not None:
            old.close()

    def __enter__(self) -> "FakeOpa":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
        if self._engine is not None:
            self._engine.close()


def _compile_error(message: str) -> dict:
    """OPA's 400 body for a module that does not parse or compile."""
    errors = [{"code": m["code"], "message": m["msg"].strip(),
               "location": {"file": m["file"], "row": int(m["row"])}} for m in _ERROR.finditer(message)]
    return {"code": "invalid_parameter", "message": "error(s) occurred while compiling module(s)",
            "errors": errors or [{"code": "rego_compile_error", "message": message}]}


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never answers, until the block ends.

    trickle=True: starts an HTTP response and then sends one header byte every 0.2 s, forever,
    so that no single read waits long enough to time out.
    """

    def __init__(self, *, trickle: bool = False):
        self.trickle = trickle
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            self._held.append(conn)  # held open, never read, never answered
            if self.trickle:
                threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        try:
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            while not self._stop.wait(0.2):
                conn.sendall(b"a")
        except OSError:  # the client gave up and closed
            pass

    def __enter__(self) -> "SilentServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        for conn in self._held:
            conn.close()
        self._sock.close()
