"""DP-SGD on a local two-worker Ray Train runtime: accounting, noise, filter, failures.

The loop itself is tested without Ray in tests/unit/test_training_loop.py; here Ray Train's
process group, object store, checkpoints and worker restarts are the real ones. One Ray runtime
(3 CPUs: two workers plus slack) serves every test in this module.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from plans import DELTA, make_job, synthetic

from ppmlops.errors import TrainingError
from ppmlops.privacy.ledger import Ledger
from ppmlops.training import peak_memory
from ppmlops.training.launch import train_on_ray
from ppmlops.training.metrics import accuracy, majority_rate
from ppmlops.training.models import build_model, predict_proba
from ppmlops.tuning.protocol import Proposal

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_runtime():
    import sys

    import ray
    from ray import cloudpickle

    # The tuners below live in this test module, which workers cannot import.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=3, log_to_driver=True)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def arrays():
    return synthetic(n=2000, d=10, seed=3, holdout=500)


def job_for(tmp_path, arrays, run_id, **kw):
    job = make_job(f"sqlite:///{tmp_path / 'ledger.db'}", arrays, run_id=run_id, workers=2, **kw)
    return replace(job, storage_path=str(tmp_path / "ray"))


def test_unreachable_ray_address_names_it(arrays, tmp_path):
    # First in the module: it needs this process not yet connected to any Ray.
    import ray

    assert not ray.is_initialized(), "an earlier test module left Ray running (see tests/conftest.py)"
    job = replace(job_for(tmp_path, arrays, "run-unreachable", epochs=1), ray_address="127.0.0.1:1")
    with pytest.raises(TrainingError, match="127.0.0.1:1"):
        train_on_ray(job, arrays)


def test_two_workers_train_and_charge_every_epoch_ahead(ray_runtime, arrays, tmp_path, caplog):
    job = replace(job_for(tmp_path, arrays, "run-main", epochs=2, randomness="secure"),
                  progress_path=str(tmp_path / "progress.log"))
    with caplog.at_level("INFO", logger="ppmlops.progress"):
        weights, outcome = train_on_ray(job, arrays)
    assert outcome.stopped_reason == "completed" and outcome.epochs_completed == 2
    # the start-up phases, in order, before the first epoch: the driver's in its log, rank 0's in
    # the progress file the train task follows
    assert "[run run-main] Ray ready in" in caplog.text and "Ray Train starting 2 worker(s)" in caplog.text
    lines = (tmp_path / "progress.log").read_text().splitlines()
    started = [i for i, line in enumerate(lines) if "Ray Train's workers started (2)" in line]
    set_up = [i for i, line in enumerate(lines) if "rank 0 set up in" in line and "training epochs 1 to 2" in line]
    first = [i for i, line in enumerate(lines) if "epoch 1/2" in line]
    assert len(started) == len(set_up) == len(first) == 1 and started[0] < set_up[0] < first[0], lines

    model = build_model("logistic", arrays.X.shape[1])
    model.load_state_dict(weights)
    acc = accuracy(arrays.y_holdout, (predict_proba(model, arrays.X_holdout).numpy() >= 0.5).astype(np.int64))
    assert acc > majority_rate(arrays.y_holdout) + 0.05  # the noised model learned something real

    usage = Ledger(job.ledger_url).entries("synthetic", job.run_id, kind="usage")
    assert [e.id for e in usage] == outcome.usage_entries
    assert [(e.partition, e.status) for e in usage] == [("train", "completed")] * 2
    for h, e in zip(outcome.history, usage):
        assert (e.noise_multiplier, e.sample_rate, e.steps) == (
            job.plan.noise_multiplier, job.plan.sample_rate, job.plan.steps_per_epoch)
        assert sorted(r["rank"] for r in h["ranks"]) == [0, 1]
        assert {r["steps"] for r in h["ranks"]} == {job.plan.steps_per_epoch}
        assert h["usage_entry"] == e.id and h["holdout_accuracy_noisy"] is None  # fixed: nothing released
    assert 0 < outcome.history[0]["epsilon_used"] < outcome.history[1]["epsilon_used"] <= job.plan.epsilon
    t = outcome.timings  # rank 0's clock and the driver's: the parts lie inside fit()
    assert t.worker_start > 0 and t.epochs > 0 and t.checkpoints > 0
    assert t.worker_start + t.worker_imports + t.setup + t.epochs + t.checkpoints + t.worker_stop <= t.fit + 0.5
    # Each worker's peak memory (a function of its shard's rows) is kept in Ray's storage, which
    # a run puts under its private/ folder; benchmarks/dag_memory.py reads it.
    peaks = peak_memory.read(Path(job.storage_path) / job.run_id / "memory")
    assert sorted(peaks) == [0, 1] and all(100 < mib < 16_000 for mib in peaks.values())


class KeepPlan:
    """Keeps the plan's settings every epoch (the fixed tuner would spread the budget instead)."""

    name, wants_holdout_accuracy, wants_clipped_fraction = "keep", False, False

    def propose(self, epoch, history, current, budget):
        return Proposal(current, "keep")

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_filter_refusal_stops_cleanly_after_two_of_three_epochs(ray_runtime, arrays, tmp_path):
    job = job_for(tmp_path, arrays, "run-refused", epochs=2)
    longer = replace(job, plan=job.plan.model_copy(update={"epochs": 3}))
    _, outcome = train_on_ray(longer, arrays, tuner=KeepPlan())
    assert outcome.epochs_completed == 2
    assert outcome.stopped_reason.startswith("privacy filter refused epoch 3")
    usage = Ledger(job.ledger_url).entries("synthetic", job.run_id, kind="usage")
    assert [e.status for e in usage] == ["completed", "completed"]


class FailInEpochTwo(KeepPlan):
    def propose(self, epoch, history, current, budget):
        if epoch == 2:
            raise RuntimeError("tuner exploded")
        return Proposal(current, "keep")


def test_worker_failure_raises_and_rerun_resumes_from_checkpoint(ray_runtime, arrays, tmp_path):
    job = replace(job_for(tmp_path, arrays, "run-resume", epochs=2), max_failures=0)
    with pytest.raises(TrainingError, match="tuner exploded"):
        train_on_ray(job, arrays, tuner=FailInEpochTwo())
    ledger = Ledger(job.ledger_url)
    assert [e.status for e in ledger.entries("synthetic", job.run_id, kind="usage")] == ["completed"]
    _, outcome = train_on_ray(job, arrays)  # same run id and storage: Ray Train hands the checkpoint back
    assert outcome.stopped_reason == "completed" and [h["epoch"] for h in outcome.history] == [1, 2]
    assert len(ledger.entries("synthetic", job.run_id, kind="usage")) == 2


def _one_noise_step(config):
    """One DP-SGD step with every per-sample gradient zero, on each of two Ray workers."""
    import torch.distributed as dist

    from ppmlops.privacy.randomness import Randomness
    from ppmlops.training.private_model import make_private_model

    rank = dist.get_rank()
    net = torch.nn.Sequential(torch.nn.Linear(200, 100, bias=False))
    model = make_private_model(net, noise_multiplier=config["sigma"], max_grad_norm=config["clip"],
                               learning_rate=config["lr"], momentum=0.0, divisor=config["divisor"],
                               device=torch.device("cpu"))
    model.set_epoch(noise_multiplier=config["sigma"], max_grad_norm=config["clip"], learning_rate=config["lr"],
                    noise_source=Randomness.secure().source("noise") if rank == 0 else None)
    w0 = net[0].weight.detach().clone()
    model.step(torch.zeros(13 + rank, 200), torch.zeros(13 + rank, dtype=torch.int64))
    delta = (net[0].weight.detach() - w0).flatten()
    gathered = [None, None]
    dist.all_gather_object(gathered, delta)
    return [d.numpy() for d in gathered] if rank == 0 else None


def test_noise_is_added_once_on_rank_zero_with_the_public_divisor(ray_runtime, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    sigma, clip, lr, divisor = 1.3, 0.7, 0.5, 62.0
    trainer = TorchTrainer(
        _one_noise_step, train_loop_config=dict(sigma=sigma, clip=clip, lr=lr, divisor=divisor),
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name="noise", storage_path=str(tmp_path / "ray")))
    d0, d1 = trainer.fit().return_value
    assert np.array_equal(d0, d1)  # both ranks applied the same (rank 0's) noise
    expected = lr * sigma * clip / divisor  # whatever the ranks' batches held (13 and 14 rows)
    # 20,000 draws: within 3% of the truth; noise on both ranks would give sqrt(2) times it.
    assert float(np.std(d0)) == pytest.approx(expected, rel=0.03)
    assert abs(float(np.mean(d0))) < 5 * expected / math.sqrt(d0.size)


def test_bayes_tuner_with_noisy_holdout_on_two_workers(ray_runtime, arrays, tmp_path):
    """ANOM on Ray: rank 0's tuner changes the settings, every rank trains with them, and every
    released number is a usage row under the run's grant."""
    job = job_for(tmp_path, arrays, "run-bayes", epochs=4, tuner="bayes")
    _, outcome = train_on_ray(job, arrays)
    assert outcome.stopped_reason == "completed" and outcome.epochs_completed == 4
    for h in outcome.history:
        assert h["tuner"]["tuner"] == "bayes" and h["tuner"]["why"].startswith("bayes")
        assert 0.0 <= h["holdout_accuracy_noisy"] <= 1.0
    assert len({(h["max_grad_norm"], h["learning_rate"]) for h in outcome.history}) > 1
    usage = Ledger(job.ledger_url).entries("synthetic", job.run_id, kind="usage")
    holdout = [e for e in usage if e.partition == "holdout"]
    assert [e.id for e in holdout] == [h["holdout_entry"] for h in outcome.history]
    assert all((e.noise_multiplier, e.sample_rate, e.steps) == (job.plan.holdout_sigma, 1.0, 1) for e in holdout)
    assert max(h["epsilon_used"] for h in outcome.history) <= job.plan.epsilon_by_partition["train"]


class MarkAndPauseFromEpochTwo(KeepPlan):
    """A tuner (rank 0) that writes its process id before epoch 2 and, the first time, waits
    there to be killed; the restarted rank 0 finds the mark and goes on."""

    def __init__(self, marker: str):
        self.marker = marker

    def propose(self, epoch, history, current, budget):
        import os
        import time

        if epoch == 2:
            first = not os.path.exists(self.marker)
            with open(self.marker, "a") as f:
                f.write(f"{epoch} {os.getpid()}\n")
            if first:
                time.sleep(120)
        return Proposal(current, "keep")


def _committed_checkpoints(run_dir) -> int:
    import json

    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    if not snapshot.exists():
        return 0
    try:
        return len(json.loads(snapshot.read_text()).get("checkpoint_results") or [])
    except ValueError:  # being rewritten
        return 0


def test_killed_worker_restarts_from_the_checkpoint_and_the_ledger_stays_exact(ray_runtime, arrays, tmp_path):
    import os
    import signal
    import threading
    import time

    job = replace(job_for(tmp_path, arrays, "run-kill", epochs=3), max_failures=2)
    marker = tmp_path / "rank0.pids"
    killed: list[int] = []

    def kill_rank0_once():
        # Kill rank 0 while it decides epoch 2, once the controller has committed epoch 1's
        # checkpoint: a kill before that would (correctly) restart from scratch.
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            if marker.exists() and marker.read_text().strip() and _committed_checkpoints(
                    Path(job.storage_path) / job.run_id) >= 1:
                pid = int(marker.read_text().split()[1])
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.1)

    killer = threading.Thread(target=kill_rank0_once, daemon=True)
    killer.start()
    _, outcome = train_on_ray(job, arrays, tuner=MarkAndPauseFromEpochTwo(str(marker)))
    killer.join(timeout=5)

    assert killed, "the worker was never killed"
    pids = [int(line.split()[1]) for line in marker.read_text().splitlines()]
    assert len(pids) == 2 and pids[0] == killed[0] and pids[1] != pids[0], pids
    assert outcome.stopped_reason == "completed" and [h["epoch"] for h in outcome.history] == [1, 2, 3]
    usage = Ledger(job.ledger_url).entries("synthetic", job.run_id, kind="usage")
    # epoch 2 was decided but never reserved before the kill: exactly one row per epoch
    assert [(e.key, e.status) for e in usage] == [(f"train/epoch-{i}", "completed") for i in (1, 2, 3)]
    assert [h["usage_entry"] for h in outcome.history] == [e.id for e in usage]
