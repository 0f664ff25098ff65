"""An OPA server over its REST API (opa-python-client), under one deadline per conversation.

A decision is three requests: PUT /v1/policies/ppmlops (the policy text), POST
/v1/data/ppmlops/<rule> (the Data API query) and GET /v1/policies/ppmlops (to tie the answer
to the text that was pushed). settings.opa_timeout_s bounds all three together:

* the client never retries (a retried PUT to a server that accepts and never answers once cost
  three timeouts plus back-off);
* every request's connect and read timeouts are what is left of the deadline;
* a watchdog shuts down the conversation's sockets when the deadline passes, so a server that
  trickles bytes slower than the read timeout cannot stretch it either.

Every failure is a PolicyError with a complete message naming the server and what to do.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar
from urllib.parse import urlsplit

import requests
from opa_client import OpaClient
from opa_client.errors import RegoParseError
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from ppmlops.compliance.policy_engine import ENGINE_OPA
from ppmlops.errors import PolicyError

# Where the policy module lives on an OPA server (PUT /v1/policies/<id>).
OPA_POLICY_ID = "ppmlops"

DECISION_SCOPE = "one limit for the whole decision: pushing the policy, the query and reading the policy back"

# ---------------------------------------------------------------------------------------------
# sockets under a deadline
# ---------------------------------------------------------------------------------------------
_current = threading.local()  # the conversation whose requests run on this thread


def _watch(sock: socket.socket | None) -> None:
    conversation = getattr(_current, "conversation", None)
    if conversation is not None and sock is not None:
        conversation.watch(sock)


class _WatchedHTTPConnection(HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _watch(self.sock)


class _WatchedHTTPSConnection(HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _watch(self.sock)


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _DeadlineAdapter(HTTPAdapter):
    """No retries; each request gets the time left (at most the per-request limit)."""

    def __init__(self, conversation: "OpaServer"):
        self._conversation = conversation
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}

    def send(self, request, **kwargs):
        left = self._conversation.request_timeout()
        if left <= 0:
            raise requests.Timeout("the deadline passed before the request was sent")
        kwargs["timeout"] = (left, left)
        return super().send(request, **kwargs)


class _Client(OpaClient):
    def __init__(self, conversation: "OpaServer", **address):
        self._conversation = conversation  # before super().__init__, which builds the session
        super().__init__(**address, retries=0, timeout=conversation.deadline_s)

    def _init_session(self) -> requests.Session:
        session = super()._init_session()
        adapter = _DeadlineAdapter(self._conversation)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session


# ---------------------------------------------------------------------------------------------
# one conversation
# ---------------------------------------------------------------------------------------------
class OpaServer:
    """`with OpaServer(url, deadline_s=...) as opa:` then push_policy / query / policy_raw."""

    def __init__(self, url: str, *, deadline_s: float, request_timeout_s: float | None = None,
                 scope: str = DECISION_SCOPE):
        self.url = url
        self.address = opa_address(url)
        self.deadline_s = deadline_s
        self.request_timeout_s = min(request_timeout_s or deadline_s, deadline_s)
        self.scope = scope
        self.step = "connecting"
        self._sockets: list[socket.socket] = []
        self._sockets_lock = threading.Lock()
        self._expired = False

    def __enter__(self) -> "OpaServer":
        self._end = time.monotonic() + self.deadline_s
        self._timer = threading.Timer(self.deadline_s, self._expire)
        self._timer.daemon = True
        self._timer.start()
        _current.conversation = self
        self.client = _Client(self, **self.address)
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
        _current.conversation = None
        self.client.close_connection()

    # -- deadline --------------------------------------------------------------------------
    def request_timeout(self) -> float:
        return min(self.request_timeout_s, self._end - time.monotonic())

    def watch(self, sock: socket.socket) -> None:
        with self._sockets_lock:
            self._sockets.append(sock)
            late = self._expired
        if late:
            _shut(sock)

    def _expire(self) -> None:
        with self._sockets_lock:
            self._expired = True
            sockets = list(self._sockets)
        for sock in sockets:  # a blocked recv returns at once; the request fails and is reported
            _shut(sock)

    def _timed_out(self) -> bool:
        return self._expired or time.monotonic() >= self._end

    # -- requests --------------------------------------------------------------------------
    def push_policy(self, module_id: str, text: str, local_path: Path) -> None:
        def put():
            try:
                # rego_compat=False: the client would otherwise rewrite a rejected policy and
                # push text whose hash is not the one recorded for the decision.
                self.client.update_policy_from_string(text, module_id, rego_compat=False)
            except RegoParseError as err:
                raise PolicyError(opa_compile_error(local_path, err)) from None

        self._call(f"pushing the policy (PUT /v1/policies/{module_id})", put)

    def query(self, rule_path: str, input_doc: Any) -> Any:
        return self._call(f"querying POST /v1/data/{rule_path.replace('.', '/')}",
                          lambda: self.client.query_rule(input_data=input_doc, package_path=rule_path))

    def policy_raw(self, module_id: str) -> str:
        body = self._call(f"reading the policy back (GET /v1/policies/{module_id})",
                          lambda: self.client.get_policy(module_id))
        result = body.get("result") if isinstance(body, dict) else None
        return result.get("raw", "") if isinstance(result, dict) else ""

    def delete_policy(self, module_id: str) -> None:
        self._call(f"removing a test module (DELETE /v1/policies/{module_id})", lambda: self.client.delete_policy(module_id))

    def _call(self, step: str, fn: Callable[[], Any]) -> Any:
        self.step = step
        try:
            result = fn()
        except PolicyError:
            raise
        except Exception as err:  # noqa: BLE001  every failure is a deny with its reason
            raise PolicyError(self._describe(err)) from None
        if self._expired:
            # The watchdog cut the connection: what came back may be a truncated response that
            # http.client accepted (headers cut short read as complete). Nothing here counts.
            raise PolicyError(self._describe(TimeoutError()))
        return result

    def _describe(self, err: Exception) -> str:
        if self._timed_out():
            return (f"OPA server at {self.url} did not answer within {self.deadline_s:g}s ({self.scope}; "
                    f"it was {self.step}). Check that the server is up and reachable from here, or raise "
                    f"PPMLOPS_OPA_TIMEOUT_S.")
        if isinstance(err, requests.Timeout):
            return (f"OPA server at {self.url} did not answer within {self.request_timeout_s:g}s while "
                    f"{self.step}. Check that the server is up and reachable from here, or raise "
                    f"PPMLOPS_OPA_TIMEOUT_S.")
        if isinstance(err, requests.ConnectionError):
            return (f"OPA server at {self.url} is unreachable ({root_cause(err)}) while {self.step}. "
                    f"Check PPMLOPS_OPA_URL and that the server is running.")
        if isinstance(err, requests.HTTPError) and err.response is not None:
            return (f"OPA server at {self.url} answered HTTP {err.response.status_code} while {self.step}: "
                    f"{server_message(err.response.text)}")
        if isinstance(err, ValueError):  # a JSON error page that is not JSON
            return f"OPA server at {self.url} answered something that is not JSON while {self.step}."
        message = getattr(err, "message", None) or str(err)
        code = getattr(err, "expression", None)
        return (f"OPA server at {self.url} failed while {self.step}: "
                f"{clip(f'{code}: {message}' if code else f'{type(err).__name__}: {message}')}")


@dataclass(frozen=True)
class OpaHttpEngine:
    """ppmlops.compliance.policy_engine.PolicyEngine on the OPA server at `url`."""

    url: str
    timeout_s: float
    name: ClassVar[str] = ENGINE_OPA

    def evaluate(self, path: Path, text: str, digest: str, query: str, input_doc: Any) -> tuple[bool, Any]:
        """(defined, value) of `query`, from the OPA server, within timeout_s in all."""
        url, timeout_s = self.url, self.timeout_s
        with OpaServer(url, deadline_s=timeout_s) as opa:
            opa.push_policy(OPA_POLICY_ID, text, path)
            body = opa.query(query[len("data."):], input_doc)
            # Another writer may have replaced the module between our PUT and the query; then the
            # decision came from a policy whose hash we do not know.
            raw = opa.policy_raw(OPA_POLICY_ID)
        if hashlib.sha256(raw.encode("utf-8")).hexdigest() != digest:
            raise PolicyError(f"the policy module {OPA_POLICY_ID!r} on OPA server {url} changed while {query} was "
                              f"evaluated; the decision cannot be tied to {path}")
        if not isinstance(body, dict):
            raise PolicyError(f"OPA server at {url} answered {clip(json.dumps(body, default=repr))} for {query}, "
                              "not a Data API response")
        return "result" in body, body.get("result")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def opa_address(url: str) -> dict:
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


def opa_compile_error(path: Path, err: Exception) -> str:
    """OPA's compile errors name its module id; name the local file instead."""
    found = []
    for e in getattr(err, "errors", None) or []:
        if not isinstance(e, dict):
            continue
        loc = e.get("location") or {}
        where = ":".join([str(path)] + [str(loc[k]) for k in ("row", "col") if loc.get(k)])
        found.append(f"{where}: {e.get('message', 'error')}")
    return "; ".join(found) or f"{path}: OPA rejected the policy: {clip(getattr(err, 'message', None) or str(err))}"


def server_message(body: str) -> str:
    """OPA's error body {"code", "message"}, or the start of whatever else came back."""
    try:
        doc = json.loads(body)
    except ValueError:
        return clip(" ".join(body.split())) or "(empty body)"
    if isinstance(doc, dict) and doc.get("message"):
        return clip(f"{doc.get('code', 'error')}: {doc['message']}")
    return clip(json.dumps(doc))


def clip(text: str, limit: int = 300) -> str:
    """At most about `limit` characters, cut at a word boundary, never inside a word."""
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(None, 1)[0] if " " in text[:limit] else text[:limit]
    return cut.rstrip(",;:") + " [...]"


_ERRNO = re.compile(r"\[Errno -?\d+\][^'\")]*")


def root_cause(err: BaseException) -> str:
    # requests nests the socket error several layers deep inside a long repr; the errno text
    # ("[Errno 111] Connection refused") is what tells an operator what happened.
    text = str(err)
    found = _ERRNO.search(text)
    return found.group(0).strip() if found else clip(text, 200)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
