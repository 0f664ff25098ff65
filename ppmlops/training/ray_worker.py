"""The Ray Train entry point: Ray's process group and checkpoint storage around the epoch loop."""

from __future__ import annotations

import glob
import logging
import os
import time
from dataclasses import asdict

from ppmlops.training import peak_memory
from ppmlops.training.loop import Arrays, Comm, Restored, read_checkpoint, run_worker, say
from ppmlops.training.progress import append


class RayCheckpoints:
    """Ray Train V2's checkpoints: the newest one on (re)start, one reported per epoch.

    `report` uploads a checkpoint before it returns, but Ray's controller registers it after: a
    driver killed in between comes back with the previous one as "latest" while the epoch's
    ledger rows, completed once `report` returned, say it ran. So a restart also looks at the run's
    checkpoint folders on storage and resumes from the newest that reads whole.
    """

    def __init__(self, run_storage: str = ""):
        self.run_storage = run_storage  # storage_path/run_id when that is a local (or shared) folder

    def restore(self) -> Restored | None:
        import ray.train

        found = []
        ckpt = ray.train.get_checkpoint()
        if ckpt is not None:
            with ckpt.as_directory() as d:
                found.append(read_checkpoint(d))
        found += _on_storage(self.run_storage)
        return max(found, key=lambda r: r.state.epoch, default=None)

    def save(self, metrics: dict, directory: str | None) -> None:
        import ray.train
        from ray.train import Checkpoint

        if directory is None:
            ray.train.report(metrics)
        else:
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(directory))


def _on_storage(run_storage: str) -> list[Restored]:
    """Every checkpoint folder of the run on a filesystem path that reads whole (a folder cut
    short by a crash during its upload does not)."""
    if not run_storage or not os.path.isdir(run_storage):
        return []
    out = []
    for d in sorted(glob.glob(os.path.join(run_storage, "checkpoint_*"))):
        try:
            out.append(read_checkpoint(d))
        except Exception:  # noqa: BLE001 - incomplete or unreadable: not a checkpoint to resume from
            continue
    return out


def _keep_counts_private(search: bool, ray_train: bool = True) -> None:
    """What this worker process writes is its owner's only (Ray's checkpoint uploads, the search's
    files; on a cluster, whatever umask the node's Ray was started with), and no log line counts
    a private search's trials.

    Ray Train logs every report with its index ("Reporting training result N", under a logger named
    by its source file, so `ray.train`'s level misses it); its lines reach Ray's worker logs, and
    the driver's output with log_to_driver (the task log on a cluster, the terminal with --verbose).
    A search reports once however many trials ran, but a library may log at INFO each model it
    builds or wraps (Opacus does for its own ghost clipping), i.e. per trial: in a search worker
    nothing below WARNING is logged at all.

    `ray_train=False`: a process that reports nothing to Ray Train (ppmlops.training.in_process)
    leaves Ray Train's logger alone, since naming it imports Ray (half a second) for nothing."""
    os.umask(0o077)
    if ray_train:
        try:
            from ray.train.v2._internal.execution import context as train_context

            logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
        except ImportError:  # another Ray layout: the report count still says nothing of K (one report)
            pass
    if search:
        for name in ("", "ray", "ray.train", "opacus", "torch"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _resolve(value):
    import ray

    return ray.get(value) if isinstance(value, ray.ObjectRef) else value


def train_loop_per_worker(config: dict) -> dict | None:
    """Ray Train entry point; `config` is built by ppmlops.training.launch.train_on_ray.
    Rank 0 returns its WorkerTimes as a dict (Ray Train hands rank 0's return value to the driver)."""
    entered_at = time.time()
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from ppmlops.tuning.registry import make_tuner

    job = config["job"]
    _keep_counts_private(job.plan.search is not None)
    device = ray.train.torch.get_device() if job.use_gpu else torch.device("cpu")
    rank = ray.train.get_context().get_world_rank()

    def echo(line: str) -> None:
        say(line)  # Ray's worker log
        if job.progress_path:
            append(job.progress_path, line)  # the driver follows this file

    if rank == 0:
        echo(f"[run {job.run_id}] Ray Train's workers started ({ray.train.get_context().get_world_size()}); "
             "each reads its shard of the snapshot")
    if job.snapshot is not None:  # this rank's rows, read here: the driver holds none
        world = ray.train.get_context().get_world_size()
        from ppmlops.training.shards import shard

        arrays = shard(job.snapshot, rank, world, job.canaries)
    else:
        arrays = Arrays(*(_resolve(config[k]) for k in ("X", "y", "X_holdout", "y_holdout")))
    tuner = None
    if rank == 0:
        tuner = config.get("tuner") or make_tuner(job.tuner, seed=job.seed, learning_rate=job.learning_rate,
                                                  max_grad_norm=job.max_grad_norm, prior=job.warm_start,
                                                  anchor=job.tuning_anchor)
    checkpoints = RayCheckpoints(os.path.join(job.storage_path, job.run_id) if job.storage_path else "")
    if job.plan.search is not None:
        from ppmlops.training.search_loop import run_search_worker

        times = run_search_worker(job, arrays, Comm(device), checkpoints, device, echo=echo)
    else:
        times = run_worker(job, arrays, Comm(device), checkpoints, device, tuner=tuner,
                           node=ray.get_runtime_context().get_node_id(), echo=echo)
    if job.storage_path and "://" not in job.storage_path:  # a local path: private/ray, as a shard's memory tells its rows
        peak_memory.record(os.path.join(job.storage_path, job.run_id, "memory"), rank)
    return {**asdict(times), "entered_at": entered_at, "process_at": _process_start()} if rank == 0 else None


def _process_start() -> float | None:
    """When this worker process started (time.time() scale): Ray may hand the actor a fresh one."""
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:  # noqa: BLE001 - only a figure for the benchmark
        return None
