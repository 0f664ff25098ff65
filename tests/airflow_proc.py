"""An Airflow started by a test as people start it (`./dev ui`, `airflow api-server`): a handle
on its process, its REST API and its CLI, and the waits and stop every such test needs."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from ppmlops import settings as settings_mod
from ppmlops.spec import parse_spec
from ppmlops.run.context import RunContext, RunParams

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class Airflow:
    process: subprocess.Popen
    url: str
    env: dict[str, str]
    root: Path
    client: httpx.Client | None = None

    def api(self, method: str, path: str, **kw) -> httpx.Response:
        return self.client.request(method, path, **kw)

    def ok(self, method: str, path: str, **kw) -> dict:
        reply = self.api(method, path, **kw)
        assert reply.status_code < 300, f"{method} {path}: {reply.status_code} {reply.text[:500]}"
        return reply.json() if reply.content else {}

    def cli(self, *args: str) -> str:
        done = subprocess.run([str(REPO / ".venv" / "bin" / "airflow"), *args], env=self.env, text=True,
                              capture_output=True, timeout=180)
        assert done.returncode == 0, f"airflow {' '.join(args)}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
        return done.stdout

    def runs(self, dag_id: str) -> list[dict]:
        return self.ok("GET", f"/api/v2/dags/{dag_id}/dagRuns", params={"limit": 100})["dag_runs"]

    def tasks(self, dag_id: str, run_id: str) -> dict[str, dict]:
        tis = self.ok("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
        return {ti["task_id"]: ti for ti in tis}

    @property
    def settings(self) -> settings_mod.Settings:
        return dataclasses.replace(settings_mod.load(), home=Path(self.env["PPMLOPS_HOME"]),
                                   db_url=self.env["PPMLOPS_DB_URL"])

    def context(self, doc: dict, run_id: str) -> RunContext:
        spec = parse_spec(copy.deepcopy(doc), f"{doc['name']}.yaml")
        return RunContext(spec=spec, run_id=run_id, params=RunParams.defaults(spec), settings=self.settings)

    def log(self) -> str:
        return (self.root / "airflow-ui.log").read_text(errors="replace")[-6000:]


def wait_for(what: str, check, timeout_s: float, airflow: Airflow | None = None, every_s: float = 1.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if airflow is not None and airflow.process.poll() is not None:
            pytest.fail(f"./dev ui exited while waiting for {what}:\n{airflow.log()}")
        time.sleep(every_s)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}" + (f":\n{airflow.log()}" if airflow else ""))




def stop(process: subprocess.Popen, grace_s: float = 90) -> None:
    """Ctrl-C for the whole process group, then SIGKILL: nothing of this Airflow outlives the test."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
