"""A throwaway multi-node Ray cluster on this machine: `ray start --head` plus nodes joining it.

For the cluster tests and the scaling benchmark, and for trying RAY_ADDRESS or
PPMLOPS_RAY_JOBS_URL without Docker. Every node runs `ray start --block` in its own process
group on 127.0.0.1 with free ports; `stop()` (or leaving the `with` block) ends them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ppmlops.errors import TrainingError


def _kill_session(sid: int) -> None:
    """SIGKILL every process of session `sid` (a node started with start_new_session)."""
    victims = {sid}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[3]) == sid:  # after the state: ppid, pgrp, session
            victims.add(int(stat.parent.name))
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalCluster:
    address: str = ""  # the GCS, for RAY_ADDRESS
    jobs_url: str = ""  # the dashboard's job server, for PPMLOPS_RAY_JOBS_URL
    node_ids: set[str] = field(default_factory=set)
    temp_dir: Path = Path()
    startup_s: float = 0.0  # until every node is up and the job server answers
    _procs: list[subprocess.Popen] = field(default_factory=list, repr=False)

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self, grace_s: float = 5.0) -> None:
        # `ray start --block` drains its node on SIGTERM, one process type after another with a
        # second's grace each: some 32 s a node. This cluster's state is thrown away, so each
        # node gets `grace_s`, then every process of its session (raylet, GCS, dashboard, and
        # workers that made process groups of their own) is killed.
        running = [proc for proc in self._procs if proc.poll() is None]
        for proc in running:
            os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in running:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in running:
            _kill_session(proc.pid)
            proc.wait()
        self._procs.clear()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def log_tail(self, chars: int = 2000) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-chars:]}"
                         for p in sorted(self.temp_dir.glob("node-*.log")))


def _use_token_auth(ray_cli: str, env: dict[str, str]) -> None:
    """Token auth for the nodes and for this process, with the token in ~/.ray/auth_token.

    As a local `ray.init()` does in Ray 2.60. Made explicit because `ray start` turns token auth
    on whenever that file exists, and a driver whose mode is unset then cannot connect.
    """
    made = subprocess.run([ray_cli, "get-auth-token", "--generate"], capture_output=True, text=True, env=env)
    if made.returncode != 0:
        raise TrainingError(f"cannot set up a Ray auth token for the local cluster: {made.stderr.strip()[-500:]}")
    env["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_MODE"] = "token"  # this process connects to the cluster too
    try:  # Ray reads the mode into a cached config: refresh it as ray.init() itself does
        from ray._private.authentication.authentication_token_setup import _enable_token_auth

        _enable_token_auth()
    except ImportError:
        pass


def start_local_cluster(nodes: int = 2, cpus_per_node: int = 1, timeout_s: float = 120.0,
                        object_store_bytes: int = 150_000_000) -> LocalCluster:
    """Start a head and `nodes - 1` more nodes; return once all are alive and jobs can be submitted."""
    import ray
    from ray.job_submission import JobSubmissionClient

    if ray.is_initialized():
        raise TrainingError("start_local_cluster connects this process to the new cluster to check it: "
                            "call ray.shutdown() first")
    t0 = time.perf_counter()
    # Ray's Unix socket paths live under the temp dir and must stay under 108 bytes.
    cluster = LocalCluster(temp_dir=Path(tempfile.mkdtemp(prefix="rc", dir="/tmp")))
    gcs, dashboard = free_port(), free_port()
    cluster.address, cluster.jobs_url = f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dashboard}"
    # Jobs run `python` from the node's PATH: this interpreter's, as in an activated venv or an image.
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("RAY_ADDRESS", None)
    ray_cli = str(Path(sys.executable).parent / "ray")
    _use_token_auth(ray_cli, env)
    common = ["--node-ip-address=127.0.0.1", f"--num-cpus={cpus_per_node}", "--num-gpus=0",
              f"--object-store-memory={object_store_bytes}", "--block"]

    def start(name: str, args: list[str]) -> None:
        out = (cluster.temp_dir / f"node-{name}.log").open("w")
        # Each node's dashboard agent needs a port of its own: the default one is shared.
        argv = [ray_cli, "start", *args, *common, f"--dashboard-agent-listen-port={free_port()}"]
        cluster._procs.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                               start_new_session=True))

    def wait(what: str, check) -> object:
        deadline = t0 + timeout_s
        while time.perf_counter() < deadline:
            try:
                value = check()
                if value:
                    return value
            except Exception:
                pass
            if any(p.poll() is not None for p in cluster._procs):
                break
            time.sleep(0.25)
        raise TrainingError(f"the local Ray cluster did not come up ({what}):\n{cluster.log_tail()}")

    try:
        start("head", ["--head", f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                       f"--ray-client-server-port={free_port()}", f"--temp-dir={cluster.temp_dir}"])
        wait("GCS port open", lambda: socket.create_connection(("127.0.0.1", gcs), 1).close() or True)
        for i in range(1, nodes):
            start(f"worker{i}", [f"--address={cluster.address}"])
        ray.init(address=cluster.address, log_to_driver=False)
        try:
            alive = wait(f"{nodes} nodes alive", lambda: (lambda up: up if len(up) == nodes else None)(
                [n["NodeID"] for n in ray.nodes() if n["Alive"]]))
        finally:
            ray.shutdown()  # disconnects this process only
        cluster.node_ids = set(alive)
        wait("job server answering", lambda: JobSubmissionClient(cluster.jobs_url).list_jobs() is not None)
    except BaseException:
        cluster.stop()
        raise
    cluster.startup_s = time.perf_counter() - t0
    return cluster
