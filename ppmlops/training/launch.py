"""Start or join Ray and run the DP-SGD workers with Ray Train (V2 API).

Ray: ``job.ray_address`` or ``RAY_ADDRESS`` names a cluster to join; without either, a local Ray
is started in this process on first use and kept for later runs (``shutdown_local_ray`` ends
it). A Ray the caller already initialised is used as is and never shut down here.

Storage: ``storage_path`` must be reachable by every worker node (a shared filesystem or an
object store URI on a cluster); the run's checkpoints live at ``storage_path/run_id``. Re-running
the same run id with the same storage path resumes after the last completed epoch. The train
stage passes the run's `private/ray` (ppmlops.run.store): what Ray keeps there may count a private
search's trials.

Ray's own files: the local runtime's session folder (its logs, sockets, spilled objects) is
under `ray_temp_dir()`, inside a folder only this user can enter, not the world-readable
/tmp/ray, and Ray's processes start with umask 077. A cluster's nodes keep theirs where their operator started them.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import socket
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ppmlops.errors import TrainingError
from ppmlops.run.logs import verbose
from ppmlops.run.records import TrainTimings
from ppmlops.training.worker_job import CLIPPING_MODES, TrainOutcome, WorkerJob
from ppmlops.training.loop import Arrays, read_checkpoint
from ppmlops.training.models import MODEL_KINDS

__all__ = ["train_on_ray", "shutdown_local_ray", "ensure_ray", "ray_temp_dir", "private_temp_root"]


# ---------------------------------------------------------------------------------------------
# Ray lifecycle
# ---------------------------------------------------------------------------------------------

_lock = threading.Lock()
_started_here = False
# Ray Train settings for the local runtime only (a variable already set wins). Its controller polls
# the workers every 2 s by default, and each start, report pick-up and finish waits for a poll:
# on one machine a poll is a local call, so poll often. Its Prometheus metrics have no reader here.
LOCAL_RAY_TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1", "RAY_TRAIN_METRICS_ENABLED": "0"}
# Ray prestarts one idle Python worker per CPU. Ray Train's controller and workers carry their own
# runtime environment (its environment variables), so they never use those idle workers: on two
# cores the prestarted ones only take CPU from the processes that do start.
LOCAL_RAY_SYSTEM_CONFIG = {"prestart_worker_first_driver": False, "enable_worker_prestart": False}


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the cluster at `address` (or RAY_ADDRESS), or start a local Ray if none is running."""
    global _started_here
    import ray

    with _lock:
        if ray.is_initialized():
            return
        address = address or os.environ.get("RAY_ADDRESS") or None
        if address:
            _check_reachable(address)
            try:
                ray.init(address=address, log_to_driver=True)
            except Exception as e:
                raise TrainingError(f"cannot connect to the Ray cluster at {address!r}: {type(e).__name__}: {e}") from e
            return
        for name, value in LOCAL_RAY_TRAIN_ENV.items():
            os.environ.setdefault(name, value)  # Ray Train reads them when fit() starts its controller
        _private_temp_root()
        temp_dir = ray_temp_dir()
        # Ray's processes (GCS, raylet, and the workers the raylet starts) inherit this umask: their
        # files are the user's only. umask is per process, and _lock keeps other starts out.
        umask = os.umask(0o077)
        try:
            # Worker output stays in Ray's logs; the per-epoch lines come through the run's progress file.
            # No Ray dashboard: nothing reads it on the embedded runtime, and it is one more process
            # to start on a small machine (a cluster, joined above, keeps its own).
            ray.init(num_cpus=num_cpus, log_to_driver=verbose(), logging_level=logging.WARNING,
                     include_dashboard=False, _system_config=LOCAL_RAY_SYSTEM_CONFIG, _temp_dir=str(temp_dir))
        except Exception as e:
            raise TrainingError(f"cannot start a local Ray runtime: {type(e).__name__}: {e}") from e
        finally:
            os.umask(umask)
        _started_here = True


def ray_temp_dir() -> Path:
    """The local Ray runtime's root folder (Ray's `_temp_dir`: session folders, logs, sockets).

    Ray's default, /tmp/ray, is readable by every user of the machine, and its logs may say what a
    run did. Ray makes its temp folder and the folders in it mode 0777 whatever the umask, so the
    folder it gets sits inside one that only this user can enter (`private_temp_root`, made mode
    0700 by `_private_temp_root` before Ray starts). Under the system temp folder, not PPMLOPS_HOME:
    Ray's Unix socket paths inside it must stay under 108 bytes."""
    return private_temp_root() / "ray"


def private_temp_root() -> Path:
    return Path(tempfile.gettempdir()) / f"ppmlops-ray-{os.getuid()}"


def _private_temp_root() -> Path:
    """private_temp_root(), made mode 0700. One there that is not this user's, or a link, is
    refused: anyone may create names in /tmp."""
    path = private_temp_root()
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise TrainingError(f"cannot start a local Ray runtime: {path} is not a folder owned by this user "
                            "(remove it, or set TMPDIR to a folder of your own)")
    if stat.S_IMODE(st.st_mode) != 0o700:
        path.chmod(0o700)
    return path


@contextlib.contextmanager
def local_ray_turn(lock_path: Path, echo: Callable[[str], None]) -> Iterator[None]:
    """Hold the machine's local Ray runtime for one run at a time.

    Two processes each starting a local Ray on one machine is unsupported and fails in odd ways
    (shared session folders, the same ports), so concurrent runs and backfills on the embedded
    runtime take turns; on a cluster (RAY_ADDRESS) nothing waits here.
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            echo(f"waiting for the local Ray runtime: another run is training on this machine ({lock_path})")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on an address nothing listens at: ray.init itself retries for minutes."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[1] if "://" in address else address
    host, _, port = hostport.rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise TrainingError(f"Ray address {address!r} is not of the form host:port or ray://host:port")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise TrainingError(f"cannot reach the Ray cluster at {address!r}: {e}") from None


def shutdown_local_ray() -> None:
    """Stop the local Ray that this module started; a Ray started by anyone else is left alone."""
    global _started_here
    import ray

    with _lock:
        if _started_here and ray.is_initialized():
            ray.shutdown()
        _started_here = False


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------

def _check(job: WorkerJob, arrays: Arrays | None) -> None:
    def fail(msg: str) -> None:
        raise TrainingError(f"run {job.run_id!r}: {msg}")

    if arrays is None:
        if job.snapshot is None:
            fail("neither rows nor a snapshot to read them from were given")
        _check_job(job, fail)
        return
    _check_arrays(job, arrays, fail)
    _check_job(job, fail)


def _check_arrays(job: WorkerJob, arrays: Arrays, fail) -> None:
    for name in ("X", "X_holdout"):
        a = getattr(arrays, name)
        if not isinstance(a, np.ndarray) or a.ndim != 2:
            fail(f"{name} must be a 2-d numpy array, got {type(a).__name__} {getattr(a, 'shape', '')}")
        if not np.issubdtype(a.dtype, np.floating) or not np.all(np.isfinite(a)):
            fail(f"{name} must hold finite floats (dtype {a.dtype})")
    for name, X in (("y", arrays.X), ("y_holdout", arrays.X_holdout)):
        a = getattr(arrays, name)
        if not isinstance(a, np.ndarray) or a.shape != (len(X),):
            fail(f"{name} must be a 1-d array with one label per row ({len(X)}), got shape {getattr(a, 'shape', None)}")
        if a.size and job.task == "regression" and not (np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1):
            fail(f"{name} must hold the label scaled to [0, 1] by its declared range")
        if a.size and job.task != "regression" and not np.isin(a, np.arange(job.n_outputs)).all():
            fail(f"{name} must hold labels 0 and 1 only" if job.task == "binary" else
                 f"{name} must hold class indices 0 to {job.n_outputs - 1} only")
    if arrays.X_holdout.shape[1] != arrays.X.shape[1]:
        fail(f"the held-out rows have {arrays.X_holdout.shape[1]} columns but the training rows {arrays.X.shape[1]}")
    if len(arrays.X) < job.workers and not arrays.sharded:
        fail(f"{len(arrays.X)} training rows cannot be shared among {job.workers} workers: each needs at least one")


def _check_job(job: WorkerJob, fail) -> None:
    if job.factory is None and job.model_kind not in MODEL_KINDS:
        fail(f"model_kind must be one of {list(MODEL_KINDS)} (or a model.factory), got {job.model_kind!r}")
    if not 0 <= job.momentum < 1:
        fail(f"momentum must be in [0, 1), got {job.momentum!r}")
    if job.clipping not in CLIPPING_MODES:
        fail(f"clipping must be one of {list(CLIPPING_MODES)}, got {job.clipping!r}")
    if job.cpus_per_worker <= 0:
        fail(f"cpus_per_worker must be > 0, got {job.cpus_per_worker!r}")
    if job.plan.search is not None and not job.storage_path:
        # K lives in a file in the run's storage: without one a restarted worker would draw it again.
        fail("a private search needs storage_path (the run's private Ray Train storage)")


# ---------------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------------

_progress = logging.getLogger("ppmlops.progress")


def _phase(job: WorkerJob, what: str) -> None:
    """A start-up phase of the run, in the task's log (public: settings and timings only)."""
    _progress.info(f"[run {job.run_id}] {what}")


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _worker_error_text(err: BaseException) -> str:
    failures = getattr(err, "worker_failures", None)
    if not failures:
        return f"{type(err).__name__}: {err}"
    by_text: dict[str, list[int]] = {}
    for rank, exc in sorted(failures.items()):
        cause = exc
        # Ray wraps the user's exception; the innermost one says what went wrong.
        while getattr(cause, "cause", None) is not None and cause.cause is not cause:
            cause = cause.cause
        by_text.setdefault(f"{type(cause).__name__}: {cause}", []).append(rank)
    return "; ".join(f"rank{'s' if len(r) > 1 else ''} {','.join(map(str, r))}: {text}" for text, r in by_text.items())


def train_on_ray(job: WorkerJob, arrays: Arrays | None = None, tuner: Any = None) -> tuple[dict, TrainOutcome]:
    """Run the job's DP-SGD epochs on Ray; return the final weights and what the workers recorded.

    `tuner`, an object implementing ppmlops.tuning.protocol.Tuner, replaces the one the job names
    (it is pickled to rank 0); by default rank 0 builds job.tuner from the registry.

    Raises TrainingError when Ray cannot be reached or a worker fails; usage rows written before a
    failure stay in the ledger (the run's grant is charged whatever happens once it is used).
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ppmlops.training.ray_worker import train_loop_per_worker

    _check(job, arrays)
    t0 = time.perf_counter()
    cpus = max(_usable_cpus(), math.ceil(job.workers * job.cpus_per_worker))
    address = job.ray_address or os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        # The start-up phases go to the task log: a Ray start or a worker group start on a loaded
        # machine can take minutes, and a silent log cannot tell a slow start from a hung one.
        _phase(job, f"joining the Ray cluster at {address}" if address else f"starting the local Ray runtime ({cpus} CPUs)")
    ensure_ray(job.ray_address, num_cpus=cpus)
    ray_start = time.perf_counter() - t0
    _phase(job, f"Ray ready in {ray_start:.1f} s; Ray Train starting {job.workers} worker(s)")
    config: dict[str, Any] = {"job": job, "tuner": tuner}
    for name in ("X", "y", "X_holdout", "y_holdout") if arrays is not None else ():
        dtype = np.float32 if name.startswith("X") else np.int64
        config[name] = ray.put(np.ascontiguousarray(getattr(arrays, name), dtype=dtype))  # one copy, shared
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=job.workers, use_gpu=job.use_gpu,
                                     resources_per_worker={"CPU": job.cpus_per_worker}),
        run_config=RunConfig(
            name=job.run_id, storage_path=job.storage_path,
            # A lost worker restarts the group from the last epoch checkpoint; the privacy session
            # resumes from the ledger (ppmlops.training.loop), so a retry never charges an epoch twice.
            failure_config=FailureConfig(max_failures=job.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            # Ray Train's INFO lines (worker groups, checkpoints, snapshots) stay out of the console
            # and the driver's output; the workers quiet the per-report line (ray_worker).
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    fit_at, t0 = time.time(), time.perf_counter()
    try:
        result = trainer.fit()
    except Exception as e:
        raise TrainingError(f"training run {job.run_id!r} failed on Ray: {_worker_error_text(e)}") from e
    fit, done_at = time.perf_counter() - t0, time.time()
    if result.checkpoint is None:
        raise TrainingError(f"training run {job.run_id!r} finished without a checkpoint under {result.path}")
    with result.checkpoint.as_directory() as d:
        restored = read_checkpoint(d)
    state = restored.state
    timings = _timings(result.return_value, ray_start=ray_start, fit=fit, fit_at=fit_at, done_at=done_at)
    chosen = (state.search or {}).get("best")  # never the search's K or its other trials
    return restored.weights, TrainOutcome(state.epoch, state.stopped_reason, state.history, state.usage_entries,
                                          str(result.path), timings, chosen)


def _timings(worker: dict | None, *, ray_start: float, fit: float, fit_at: float, done_at: float) -> TrainTimings:
    """The driver's clock and rank 0's (time.time() on both: one machine, or NTP-synchronised nodes)."""
    if not worker:  # e.g. rank 0 of an attempt that was retried returned nothing
        return TrainTimings(ray_start=ray_start, fit=fit)
    boot = worker["entered_at"] - worker["process_at"] if worker.get("process_at") else 0.0
    return TrainTimings(
        ray_start=ray_start, fit=fit, worker_start=max(0.0, worker["entered_at"] - fit_at),
        worker_boot=max(0.0, min(boot, worker["entered_at"] - fit_at)),
        worker_imports=max(0.0, worker["started_at"] - worker["entered_at"]), setup=worker["setup"],
        epochs=worker["epochs"], checkpoints=worker["checkpoints"],
        worker_stop=max(0.0, done_at - worker["finished_at"]))
