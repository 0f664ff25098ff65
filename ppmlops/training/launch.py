"""Start or join Ray and run the DP-SGD workers with Ray Train (V2 API).

Ray: ``job.ray_address`` or ``RAY_ADDRESS`` names a cluster to join; without either, a local Ray
is started in this process on first use and kept for later runs (``shutdown_local_ray`` ends
it). A Ray the caller already initialised is used as is and never shut down here.

Storage: ``storage_path`` must be reachable by every worker node (a shared filesystem or an
object store URI on a cluster); the run's checkpoints live at ``storage_path/run_id``. Re-running
the same run id with the same storage path resumes after the last completed epoch.
"""

from __future__ import annotations

import math
import os
import socket
import threading
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from ppmlops.errors import TrainingError
from ppmlops.training.dp_worker import (
    EpochSettings,
    Tuner,
    load_checkpoint_dir,
    make_privacy_engine,
    sample_rate_for,
    train_loop_per_worker,
)
from ppmlops.training.models import MODEL_KINDS

__all__ = ["TrainJob", "TrainResult", "sample_rate_for", "train_on_ray", "shutdown_local_ray", "EpochSettings"]


@dataclass
class TrainJob:
    run_id: str
    dataset_id: str
    ledger_url: str
    delta: float
    X_train: np.ndarray  # float32 (n, d), already encoded
    y_train: np.ndarray  # int64 {0,1}
    X_test: np.ndarray  # held-out partition: rank 0 releases a noisy accuracy on it (holdout_noise)
    y_test: np.ndarray
    model_kind: str
    hidden: list[int]
    epochs: int
    batch_size: int  # expected global batch size under Poisson sampling
    learning_rate: float
    momentum: float
    max_grad_norm: float
    noise_multiplier: float
    budget_rdp: list[float]  # the run's filter budget B(alpha) over ORDERS, fixed before training
    secure_rng: bool
    seed: int
    workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    storage_path: str = ""  # Ray Train storage; "" means <PPMLOPS_HOME>/runs/ray
    ray_address: str | None = None
    # Called on rank 0 before every epoch with (epoch, history, current settings); returns the
    # epoch's EpochSettings. Must be picklable. None keeps the settings above for every epoch.
    tuner: Tuner | None = field(default=None, repr=False)
    # Noise multiplier of the per-epoch noisy holdout accuracy (ledger partition "holdout");
    # None releases nothing about the held-out rows. `split` describes the train/holdout split.
    holdout_noise: float | None = None
    split: str = ""
    max_failures: int = 2  # worker-group restarts from the last checkpoint before the run fails


@dataclass
class TrainResult:
    state_dict: dict  # final model weights (CPU tensors)
    epochs_completed: int
    steps: int  # DP-SGD steps per epoch
    sample_rate: float
    noise_multiplier: float  # of the last epoch trained (the job's if none ran)
    rdp_spent: list[float]  # this run's spent curve over ORDERS (from the filter)
    history: list[dict]
    stopped_reason: str  # "completed" or "privacy filter refused epoch N: ..."
    ledger_entries: list[int]
    path: str = ""  # the run's Ray Train directory (checkpoints)


# ---------------------------------------------------------------------------------------------
# Ray lifecycle
# ---------------------------------------------------------------------------------------------

_lock = threading.Lock()
_started_here = False


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
        try:
            ray.init(num_cpus=num_cpus, log_to_driver=True)
        except Exception as e:
            raise TrainingError(f"cannot start a local Ray runtime: {type(e).__name__}: {e}") from e
        _started_here = True


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

def _check_job(job: TrainJob) -> tuple[float, int]:
    from ppmlops.privacy.accountant import ORDERS, check_curve, check_delta, check_noise_multiplier

    def fail(msg: str) -> None:
        raise TrainingError(f"run {job.run_id!r}: {msg}")

    for name in ("X_train", "X_test"):
        a = getattr(job, name)
        if not isinstance(a, np.ndarray) or a.ndim != 2:
            fail(f"{name} must be a 2-d numpy array, got {type(a).__name__} {getattr(a, 'shape', '')}")
        if not np.issubdtype(a.dtype, np.floating) or not np.all(np.isfinite(a)):
            fail(f"{name} must hold finite floats (dtype {a.dtype})")
    for name, X in (("y_train", job.X_train), ("y_test", job.X_test)):
        a = getattr(job, name)
        if not isinstance(a, np.ndarray) or a.shape != (len(X),):
            fail(f"{name} must be a 1-d array with one label per row of {name.replace('y', 'X')} ({len(X)}), "
                 f"got shape {getattr(a, 'shape', None)}")
        if a.size and not np.isin(a, (0, 1)).all():
            fail(f"{name} must hold labels 0 and 1 only")
    if job.X_test.shape[1] != job.X_train.shape[1]:
        fail(f"X_test has {job.X_test.shape[1]} columns but X_train has {job.X_train.shape[1]}")
    if job.model_kind not in MODEL_KINDS:
        fail(f"model_kind must be one of {list(MODEL_KINDS)}, got {job.model_kind!r}")
    if job.model_kind == "mlp" and (not job.hidden or any(int(h) != h or h < 1 for h in job.hidden)):
        fail(f"an mlp needs hidden layer widths that are positive integers, got {job.hidden!r}")
    if isinstance(job.epochs, bool) or int(job.epochs) != job.epochs or job.epochs < 1:
        fail(f"epochs must be a positive integer, got {job.epochs!r}")
    if not 0 <= job.momentum < 1:
        fail(f"momentum must be in [0, 1), got {job.momentum!r}")
    if job.cpus_per_worker <= 0:
        fail(f"cpus_per_worker must be > 0, got {job.cpus_per_worker!r}")
    try:
        EpochSettings(job.noise_multiplier, job.max_grad_norm, job.learning_rate).checked()
        check_noise_multiplier(job.noise_multiplier)
        check_delta(job.delta)
        check_curve(job.budget_rdp, "budget_rdp")
    except (TrainingError, ValueError) as e:
        fail(str(e))
    if len(job.budget_rdp) != len(ORDERS):
        fail(f"budget_rdp needs one value per order ({len(ORDERS)})")
    return sample_rate_for(len(job.X_train), job.batch_size, job.workers)


# ---------------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------------

def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _storage_path(job: TrainJob) -> str:
    if job.storage_path:
        return job.storage_path
    from ppmlops import settings

    path = settings.load().runs_dir / "ray"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


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


def train_on_ray(job: TrainJob) -> TrainResult:
    """Run DP-SGD for `job` on Ray and return the final model and the run's privacy spend.

    Raises TrainingError when Ray cannot be reached or a worker fails; ledger entries written
    before a failure stay in the ledger (reserved entries count as spent).
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    q, steps = _check_job(job)
    local = not (job.ray_address or os.environ.get("RAY_ADDRESS") or ray.is_initialized())
    if local and job.secure_rng:
        make_privacy_engine(True)  # workers share this environment: fail before starting them
    ensure_ray(job.ray_address, num_cpus=max(_usable_cpus(), math.ceil(job.workers * job.cpus_per_worker)))

    arrays = {
        "X_train": np.ascontiguousarray(job.X_train, dtype=np.float32),
        "y_train": np.ascontiguousarray(job.y_train, dtype=np.int64),
        "X_test": np.ascontiguousarray(job.X_test, dtype=np.float32),
        "y_test": np.ascontiguousarray(job.y_test, dtype=np.int64),
    }
    skip = {"X_train", "y_train", "X_test", "y_test", "tuner"}
    job_dict = {f.name: getattr(job, f.name) for f in fields(job) if f.name not in skip}
    job_dict.update(
        hidden=[int(h) for h in job.hidden], budget_rdp=[float(b) for b in job.budget_rdp],
        sample_rate=q, steps_per_epoch=steps,
    )
    config: dict[str, Any] = {"job": job_dict, "tuner": job.tuner}
    config.update({k: ray.put(v) for k, v in arrays.items()})  # one copy in the object store

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=job.workers, use_gpu=job.use_gpu,
                                     resources_per_worker={"CPU": job.cpus_per_worker}),
        run_config=RunConfig(
            name=job.run_id, storage_path=_storage_path(job),
            # A lost worker restarts the group from the last epoch checkpoint (filter, ledger entry
            # ids, tuner state included); an epoch reserved but not checkpointed is charged again
            # on restart (_charge_unrecorded_entries), so a retry can over-count, never under-count.
            failure_config=FailureConfig(max_failures=job.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    try:
        result = trainer.fit()
    except Exception as e:
        raise TrainingError(f"training run {job.run_id!r} failed on Ray: {_worker_error_text(e)}") from e
    if result.checkpoint is None:
        raise TrainingError(f"training run {job.run_id!r} finished without a checkpoint under {result.path}")
    with result.checkpoint.as_directory() as d:
        weights, state = load_checkpoint_dir(d)
    history = state["history"]
    return TrainResult(
        state_dict=weights,
        epochs_completed=int(state["epoch"]),
        steps=int(state["steps_per_epoch"]),
        sample_rate=float(state["sample_rate"]),
        noise_multiplier=float(history[-1]["noise_multiplier"]) if history else float(job.noise_multiplier),
        rdp_spent=[float(v) for v in state["rdp_spent"]],
        history=history,
        stopped_reason=state["stopped_reason"],
        ledger_entries=[int(e) for e in state["ledger_entries"]],
        path=str(result.path),
    )
