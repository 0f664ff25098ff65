"""The parent side of the embedded OPA engine: one long-lived worker process per Python process.

The worker (ppmlops.compliance.opa_worker) is started at the first request and reused for every
later one; requests are serialised (one at a time). When it crashes, hangs past the timeout (it
is then killed) or answers garbage, the request fails with a PolicyError naming what happened,
and the next request starts a fresh worker. A worker found dead between requests is replaced
before the request is sent, so only the request that was running when it died is lost.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ppmlops.compliance.opa_worker import FAULT_ENV
from ppmlops.compliance.policy_engine import ENGINE_EMBEDDED
from ppmlops.errors import PolicyError

# Interpreter start, `import opa_bindings` and the Go runtime's start; generous because a busy
# scheduler host can be slow to fork. Each request is bounded separately by its own timeout.
WORKER_STARTUP_TIMEOUT_S = 60.0

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent.parent
GOGC_DEFAULT = "400"


@dataclass(frozen=True)
class WorkerStats:
    """What the worker reported with its last answer."""

    pid: int
    decisions: int  # decisions it has evaluated since it started
    compiles: int  # policies it has compiled since it started
    compiled: bool  # whether the last request compiled one


class _Worker:
    def __init__(self) -> None:
        env = dict(os.environ)
        # The child must import this same ppmlops, not whatever else is on its path.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p)
        # Go's collector at its default (GOGC=100) runs every few decisions and shows in the tail
        # latency; at 400 the heap stays small (tens of MB). Go reads it only at start-up.
        env.setdefault("GOGC", GOGC_DEFAULT)
        self._stderr = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ppmlops.compliance.opa_worker"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env,
            )
        except OSError as err:
            self._stderr.close()
            raise PolicyError(f"cannot start the OPA engine worker: {err}") from None
        self.owner = os.getpid()
        self.loaded: set[tuple[str, str]] = set()  # (path, hash) the worker has compiled, as far as we know
        self._buf = b""
        self._next_id = 0
        try:
            line = self._read_line(time.monotonic() + WORKER_STARTUP_TIMEOUT_S, "starting up",
                                   f"worker did not start within {WORKER_STARTUP_TIMEOUT_S:g}s")
        except PolicyError:
            self.kill()
            raise
        if not line.startswith(b"ready "):
            self.kill()
            raise PolicyError(f"OPA engine worker started with {line[:200]!r} instead of 'ready'")

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def request(self, req: dict, *, timeout_s: float, what: str) -> dict:
        """Send one request, wait at most `timeout_s` for its answer; PolicyError otherwise."""
        self._next_id += 1
        req = {**req, "id": self._next_id}
        if os.environ.get(FAULT_ENV):
            req["fault"] = os.environ[FAULT_ENV]
        try:
            self.proc.stdin.write(json.dumps(req).encode("utf-8") + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._raise_exit(what)
        line = self._read_line(time.monotonic() + timeout_s, what,
                               f"did not answer within {timeout_s:g}s {what}; stopped it "
                               "(a new engine starts at the next decision)")
        try:
            response = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            self.kill()  # the stream is out of step: nothing it says next can be trusted
            raise PolicyError(f"OPA engine worker answered {line[:200]!r}, not JSON, {what}") from None
        if not isinstance(response, dict) or response.get("id") != req["id"] or "ok" not in response:
            self.kill()
            raise PolicyError(f"OPA engine worker answered {line[:200]!r}, not a response to request "
                              f"{req['id']}, {what}")
        return response

    def _read_line(self, deadline: float, what: str, late: str) -> bytes:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise PolicyError(f"OPA engine {late}")
            readable, _, _ = select.select([fd], [], [], left)
            if not readable:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:  # EOF: the worker died
                self._raise_exit(what)
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def _raise_exit(self, what: str) -> None:
        returncode = self.proc.wait()
        if returncode < 0:
            try:
                name = f" ({signal.Signals(-returncode).name})"
            except ValueError:
                name = ""
            raise PolicyError(f"OPA engine crashed: killed by signal {-returncode}{name} while {what}; "
                              "a new engine starts at the next decision")
        self._stderr.seek(0)
        tail = self._stderr.read()[-4000:].decode("utf-8", "replace").strip().splitlines()[-3:]
        raise PolicyError(f"OPA engine worker exited with status {returncode} while {what}"
                          + (": " + " | ".join(tail) if tail else ""))

    def kill(self) -> None:
        if self.alive:
            self.proc.kill()
        self.proc.wait()
        self.close_files()

    def close(self) -> None:
        """Let the worker end by itself (EOF on its stdin), or kill it after a second."""
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=1.0)
        except (OSError, subprocess.TimeoutExpired):
            self.kill()
        self.close_files()

    def close_files(self) -> None:
        for f in (self.proc.stdin, self.proc.stdout, self._stderr):
            try:
                f.close()
            except OSError:
                pass


_lock = threading.Lock()
_worker: _Worker | None = None
_last_stats: WorkerStats | None = None


def call(req: dict, *, timeout_s: float, what: str) -> dict:
    """One request to this process's worker (started or replaced as needed); the successful
    response, or PolicyError when the worker failed or answered with an error."""
    global _worker, _last_stats
    with _lock:
        if _worker is None or not _worker.alive or _worker.owner != os.getpid():
            _replace_worker()
        worker = _worker
        try:
            response = worker.request(req, timeout_s=timeout_s, what=what)
        except PolicyError:
            if not worker.alive:
                worker.close_files()
                _worker = None
            raise
        stats = response.get("stats") or {}
        _last_stats = WorkerStats(int(stats.get("pid", worker.proc.pid)), int(stats.get("decisions", 0)),
                                  int(stats.get("compiles", 0)), bool(stats.get("compiled")))
        return response


def _replace_worker() -> None:
    global _worker
    old, _worker = _worker, None
    if old is not None and old.owner == os.getpid():
        old.kill()
    _worker = _Worker()


@dataclass(frozen=True)
class EmbeddedEngine:
    """ppmlops.compliance.policy_engine.PolicyEngine on OPA's Go engine in the worker process."""

    timeout_s: float
    name: ClassVar[str] = ENGINE_EMBEDDED

    def evaluate(self, path: Path, text: str, digest: str, query: str, input_doc: Any) -> tuple[bool, Any]:
        """(defined, value) of `query` over the policy `text` (sha256 `digest`) read from `path`.

        The policy text travels only when the worker has not compiled this (path, hash) yet.
        """
        timeout_s = self.timeout_s
        key = (str(path), digest)
        what = f"evaluating {query} over {path}"
        policy = {"path": key[0], "hash": digest}
        with _lock:
            if _worker is None or _worker.owner != os.getpid() or key not in _worker.loaded:
                policy["text"] = text
        req = {"op": "eval", "policy": policy, "query": query, "input": input_doc}
        response = call(req, timeout_s=timeout_s, what=what)
        if response.get("missing_policy") and "text" not in policy:
            # A new worker, or it evicted this policy: send the text this time.
            policy["text"] = text
            response = call(req, timeout_s=timeout_s, what=what)
        if not response["ok"]:
            raise PolicyError(str(response.get("error") or "OPA engine failed without a message"))
        with _lock:
            if _worker is not None:
                _worker.loaded.add(key)
        return bool(response["defined"]), response.get("value")


def run(req: dict, *, timeout_s: float, what: str) -> dict:
    """A non-decision request (test, list_tests): its response, or PolicyError."""
    response = call(req, timeout_s=timeout_s, what=what)
    if not response["ok"]:
        raise PolicyError(str(response.get("error") or "OPA engine failed without a message"))
    return response


def worker_stats() -> WorkerStats | None:
    """The worker's counters as of its last answer in this process (None before the first)."""
    return _last_stats


def _forget_after_fork() -> None:
    # A forked child must not talk over its parent's pipes: it starts its own worker on first use.
    global _worker, _lock, _last_stats
    _worker, _last_stats, _lock = None, None, threading.Lock()


def _shutdown() -> None:
    if _worker is not None and _worker.owner == os.getpid():
        _worker.close()


os.register_at_fork(after_in_child=_forget_after_fork)
atexit.register(_shutdown)
