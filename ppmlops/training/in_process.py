"""One worker, no cluster: the same DP-SGD loop in the calling process, without starting Ray.

On the embedded runtime a one-worker run spent most of its time waiting for Ray (starting the
local runtime, Ray Train's controller and a worker process: about 100 s of a 263 s demo under
load, against 0.64 s of epochs). Ray Train V2's local mode (`ScalingConfig(num_workers=0)`) runs
the train function in this process, but keeps its checkpoints in memory only, so an Airflow retry
after a killed task could not resume. This module runs ppmlops.training.loop.run_worker (or the
private search's loop) the way a Ray worker does, with:

* a gloo process group of one (the loop's collectives are then local calls);
* checkpoints in the run's private Ray Train storage folder (`storage_path/run_id`), each epoch a
  new `checkpoint_NNNNNN` folder renamed into place whole, the two newest kept: a retried task
  resumes from the newest one that reads whole, as RayCheckpoints does after a crash;
* one torch thread while it trains (two threads were ten times slower under load here), the
  umask 077 and the quiet loggers of a Ray worker (ray_worker._keep_counts_private), all
  restored afterwards: this is the caller's process, an Airflow task;
* no Ray at all: nothing here imports it (tests/unit/test_in_process.py checks in a fresh
  process), as a one-worker demo would otherwise pay Ray's import for a logger's level.

Chosen by ppmlops.training.driver when the spec asks for one worker and no Ray cluster is
configured (`ray.in_process`, default auto); a multi-worker or cluster run goes through Ray Train.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import time
from typing import Any, Iterator

from ppmlops.errors import TrainingError
from ppmlops.run.records import TrainTimings
from ppmlops.training.worker_job import TrainOutcome, WorkerJob
from ppmlops.training.loop import Arrays, Comm, Restored
from ppmlops.training.progress import append

KEEP = 2
_NAME = re.compile(r"checkpoint_(\d{6})$")


class StorageCheckpoints:
    """Checkpoints as numbered folders under `root` (Ray Train's layout, so either path can resume
    the other's run); each one copied next to its final name and renamed into place."""

    def __init__(self, root: str | os.PathLike):
        self.root = os.fspath(root)

    def _numbers(self) -> list[int]:
        if not os.path.isdir(self.root):
            return []
        return sorted(int(m.group(1)) for m in map(_NAME.match, os.listdir(self.root)) if m)

    def restore(self) -> Restored | None:
        """The checkpoint with the most epochs among those that read whole (a folder a crash
        cut short is skipped: the previous one stands), read as a Ray worker reads them."""
        from ppmlops.training.ray_worker import _on_storage

        return max(_on_storage(self.root), key=lambda r: r.state.epoch, default=None)

    def save(self, metrics: dict, directory: str | None) -> None:
        if directory is None:
            return
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        numbers = self._numbers()
        final = os.path.join(self.root, f"checkpoint_{(numbers[-1] + 1 if numbers else 0):06d}")
        incoming = os.path.join(self.root, f".incoming-{os.getpid()}")
        shutil.rmtree(incoming, ignore_errors=True)
        shutil.copytree(directory, incoming)
        os.replace(incoming, final)
        for n in self._numbers()[:-KEEP]:
            shutil.rmtree(os.path.join(self.root, f"checkpoint_{n:06d}"), ignore_errors=True)


@contextlib.contextmanager
def _worker_process(search: bool) -> Iterator[None]:
    """This process as a Ray worker would be for the run, put back as it was afterwards."""
    import torch

    from ppmlops.training.ray_worker import _keep_counts_private

    threads, mask = torch.get_num_threads(), os.umask(0o077)
    levels = {n: logging.getLogger(n).level for n in ("", "ray", "ray.train", "opacus", "torch")}
    torch.set_num_threads(1)
    try:
        _keep_counts_private(search, ray_train=False)
        yield
    finally:
        torch.set_num_threads(threads)
        os.umask(mask)
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


@contextlib.contextmanager
def _group_of_one() -> Iterator[None]:
    """A gloo process group of one on a free loopback port, unless the caller runs one already."""
    import socket

    import torch.distributed as dist

    if dist.is_initialized():
        if dist.get_world_size() != 1:
            raise TrainingError("in-process training needs a process group of one; this process is in a "
                                f"group of {dist.get_world_size()}")
        yield
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def train_in_process(job: WorkerJob, arrays: Arrays | None = None, tuner: Any = None) -> tuple[dict, TrainOutcome]:
    """Run the job's epochs here; the same contract as ppmlops.training.launch.train_on_ray (without
    arrays, the rows are read from job.snapshot: this process is the one worker)."""
    import torch

    from ppmlops.training.launch import _check
    from ppmlops.training.loop import run_worker, say
    from ppmlops.tuning.registry import make_tuner

    if job.workers != 1:
        raise TrainingError(f"run {job.run_id!r}: in-process training has one worker, the job asks for {job.workers}")
    if job.plan.search is None and tuner is None:
        tuner = make_tuner(job.tuner, seed=job.seed, learning_rate=job.learning_rate, max_grad_norm=job.max_grad_norm,
                           prior=job.warm_start, anchor=job.tuning_anchor)
    device = torch.device("cuda") if job.use_gpu else torch.device("cpu")
    if job.use_gpu and not torch.cuda.is_available():
        raise TrainingError(f"run {job.run_id!r} asks for a GPU (ray.use_gpu) and this process sees none")
    root = os.path.join(job.storage_path, job.run_id) if job.storage_path else ""
    if not root:
        raise TrainingError(f"run {job.run_id!r}: in-process training needs storage_path for its checkpoints")
    checkpoints = StorageCheckpoints(root)

    def echo(line: str) -> None:
        # The driver follows the progress file and logs each line once; printing it here too
        # (as a Ray worker prints to its own log) would show it twice in this same process.
        if job.progress_path:
            append(job.progress_path, line)
        else:
            say(line)

    started = time.perf_counter()
    if arrays is None and job.snapshot is not None:
        from ppmlops.training.shards import shard

        arrays = shard(job.snapshot, 0, 1, job.canaries)
    _check(job, arrays)
    with _worker_process(job.plan.search is not None), _group_of_one():
        if job.plan.search is not None:
            from ppmlops.training.search_loop import run_search_worker

            times = run_search_worker(job, arrays, Comm(device), checkpoints, device, echo=echo)
        else:
            times = run_worker(job, arrays, Comm(device), checkpoints, device, tuner=tuner, echo=echo)
    fit = time.perf_counter() - started
    restored = checkpoints.restore()
    if restored is None:
        raise TrainingError(f"training run {job.run_id!r} finished without a checkpoint under {root}")
    state = restored.state
    timings = TrainTimings(fit=fit, setup=times.setup, epochs=times.epochs, checkpoints=times.checkpoints)
    chosen = (state.search or {}).get("best")  # never the search's K or its other trials
    return restored.weights, TrainOutcome(state.epoch, state.stopped_reason, state.history, state.usage_entries,
                                          root, timings, chosen)
