"""DP-SGD on a local two-worker Ray Train cluster: privacy accounting, noise, filter, failures.

One Ray runtime (3 CPUs: two workers plus slack) serves every test in this module.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic_jobs import BATCH, DELTA, N_FEATURES, N_TRAIN, data, ledger_url  # noqa: F401 (fixtures)
from synthetic_jobs import make_job as _job

from ppmlops.errors import TrainingError
from ppmlops.privacy.accountant import Segment, epsilon_from_rdp
from ppmlops.privacy.filter import plan_budget
from ppmlops.privacy.ledger import Ledger
from ppmlops.training.dp_worker import EpochSettings, opacus_divisor
from ppmlops.training.launch import sample_rate_for, train_on_ray
from ppmlops.training.metrics import accuracy, majority_rate
from ppmlops.training.models import build_model, predict_proba

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_runtime():
    import sys

    import ray
    from ray import cloudpickle

    # The tuners and the noise loop below live in this test module, which workers cannot import.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=3, log_to_driver=True)
    yield
    ray.shutdown()


def test_unreachable_ray_address_names_it(data, ledger_url, tmp_path):
    # First in the module: it needs this process not yet connected to any Ray.
    import ray

    assert not ray.is_initialized(), "an earlier test module left Ray running (see tests/conftest.py)"
    q, steps = sample_rate_for(N_TRAIN, BATCH, 2)
    job = _job(data, ledger_url, tmp_path, "run-unreachable", epochs=1,
               budget=plan_budget([Segment(1.0, q, steps)]), ray_address="127.0.0.1:1")
    with pytest.raises(TrainingError, match="127.0.0.1:1"):
        train_on_ray(job)


class RaiseNoiseInEpochTwo:
    """A tuner (picklable, runs on rank 0) that raises sigma for epoch 2."""

    def __call__(self, epoch, history, current):
        return EpochSettings(1.0 if epoch == 1 else 1.25, current.max_grad_norm, current.learning_rate)


def test_two_workers_train_and_account_every_epoch(ray_runtime, data, ledger_url, tmp_path):
    q, steps = sample_rate_for(N_TRAIN, BATCH, 2)
    budget = plan_budget([Segment(1.0, q, steps), Segment(1.25, q, steps)])
    job = _job(data, ledger_url, tmp_path, "run-main", epochs=2, budget=budget, tuner=RaiseNoiseInEpochTwo())
    result = train_on_ray(job)

    assert result.stopped_reason == "completed"
    assert result.epochs_completed == 2 and len(result.history) == 2
    assert (result.sample_rate, result.steps) == (q, steps)
    assert result.noise_multiplier == 1.25

    # the noised model learned something real
    model = build_model("logistic", N_FEATURES)
    model.load_state_dict(result.state_dict)
    _, _, Xt, yt = data
    acc = accuracy(yt, (predict_proba(model, Xt).numpy() >= 0.5).astype(np.int64))
    assert acc > majority_rate(yt) + 0.05
    # without a holdout budget nothing about the held-out rows is released
    assert all(h["holdout_accuracy_noisy"] is None and h["holdout_entry"] is None for h in result.history)

    # ledger: one entry per epoch, written ahead and completed, with what Opacus used
    entries = Ledger(ledger_url).entries(dataset_id="synth", run_id="run-main")
    assert [e.id for e in entries] == result.ledger_entries
    assert [e.status for e in entries] == ["completed", "completed"]
    assert [e.noise_multiplier for e in entries] == [1.0, 1.25]
    assert [e.steps for e in entries] == [steps, steps]
    for epoch, entry in zip(result.history, entries):
        assert entry.partition == "train"
        ranks = epoch["ranks"]
        assert sorted(r["rank"] for r in ranks) == [0, 1]
        for r in ranks:
            # 1/len(data_loader) and the rate Opacus's own accountant recorded, on every rank
            assert r["sample_rate"] == r["opacus_sample_rate"] == entry.sample_rate == q
            assert r["steps"] == r["opacus_steps"] == steps
            assert r["divisor"] == opacus_divisor(N_TRAIN, q)
            # identical settings on both ranks, equal to rank 0's broadcast decision
            assert (r["noise_multiplier"], r["max_grad_norm"], r["learning_rate"]) == (
                epoch["noise_multiplier"], epoch["max_grad_norm"], epoch["learning_rate"])

    # the run's epsilon: ledger total == filter's spent curve converted once
    eps_ledger = Ledger(ledger_url).epsilon_spent("synth", run_id="run-main")
    eps_filter, _ = epsilon_from_rdp(np.asarray(result.rdp_spent), DELTA)
    assert eps_ledger == pytest.approx(eps_filter, rel=1e-12)
    assert result.history[-1]["epsilon_spent"] == pytest.approx(eps_filter, rel=1e-12)
    assert 0 < result.history[0]["epsilon_spent"] < result.history[1]["epsilon_spent"]


def test_filter_refusal_stops_cleanly_after_two_of_three_epochs(ray_runtime, data, ledger_url, tmp_path):
    q, steps = sample_rate_for(N_TRAIN, BATCH, 2)
    budget = plan_budget([Segment(1.0, q, steps)] * 2)
    result = train_on_ray(_job(data, ledger_url, tmp_path, "run-refused", epochs=3, budget=budget))

    assert result.epochs_completed == 2
    assert result.stopped_reason.startswith("privacy filter refused epoch 3")
    entries = Ledger(ledger_url).entries(dataset_id="synth", run_id="run-refused")
    assert len(entries) == 2 and all(e.status == "completed" for e in entries)
    assert result.ledger_entries == [e.id for e in entries]
    assert np.array_equal(np.asarray(result.rdp_spent), budget)  # the plan, spent exactly


def test_dataset_budget_in_the_ledger_stops_the_run_cleanly(ray_runtime, data, tmp_path):
    # The filter would allow 3 epochs, but the dataset's lifetime budget (epsilon 2.1) only
    # covers the first (epsilon 1.98 after epoch 1, 2.32 after 2): the ledger refuses epoch 2.
    url = f"sqlite:///{tmp_path / 'small.db'}"
    Ledger(url).register_dataset("synth", epsilon_budget=2.1, delta=DELTA)
    q, steps = sample_rate_for(N_TRAIN, BATCH, 2)
    result = train_on_ray(_job(data, url, tmp_path, "run-ledger", epochs=3,
                               budget=plan_budget([Segment(1.0, q, steps)] * 3)))
    assert result.epochs_completed == 1
    assert result.stopped_reason.startswith("privacy ledger refused epoch 2")
    assert [e.status for e in Ledger(url).entries(run_id="run-ledger")] == ["completed"]
    assert Ledger(url).epsilon_spent("synth") <= 2.1


class FailInEpochTwo:
    def __call__(self, epoch, history, current):
        if epoch == 2:
            raise RuntimeError("tuner exploded")
        return current


def test_worker_failure_raises_and_rerun_resumes_from_checkpoint(ray_runtime, data, ledger_url, tmp_path):
    q, steps = sample_rate_for(N_TRAIN, BATCH, 2)
    budget = plan_budget([Segment(1.0, q, steps)] * 2)
    job = _job(data, ledger_url, tmp_path, "run-resume", epochs=2, budget=budget, tuner=FailInEpochTwo(),
               max_failures=0)
    with pytest.raises(TrainingError, match="tuner exploded"):
        train_on_ray(job)
    ledger = Ledger(ledger_url)
    assert [e.status for e in ledger.entries(run_id="run-resume")] == ["completed"]

    job.tuner = None  # same run id and storage: Ray Train hands the last checkpoint back
    result = train_on_ray(job)
    assert result.stopped_reason == "completed"
    assert [h["epoch"] for h in result.history] == [1, 2]
    entries = ledger.entries(run_id="run-resume")
    assert len(entries) == 2 and result.ledger_entries == [e.id for e in entries]
    assert np.array_equal(np.asarray(result.rdp_spent), budget)


def _one_noise_step(config):
    """One DP-SGD step with every per-sample gradient zero, on each of two Ray workers."""
    import torch.distributed as dist

    from ppmlops.training.dp_worker import make_private_ddp, seed_epoch

    rank = dist.get_rank()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(200, 100, bias=False))
    X, y = torch.zeros(config["n"], 200), torch.zeros(config["n"], dtype=torch.int64)
    q, steps = config["q"], config["steps"]
    parts = make_private_ddp(net, X, y, sample_rate=q, steps=steps, noise_multiplier=config["sigma"],
                             max_grad_norm=config["clip"], learning_rate=config["lr"], momentum=0.0,
                             secure_mode=False)
    seed_epoch(parts, seed=0, run_id="noise", epoch=1, rank=rank)
    w0 = net[0].weight.detach().clone()
    xb, yb = next(iter(parts.loader))
    parts.optimizer.zero_grad()
    torch.nn.functional.cross_entropy(parts.module(xb)[:, :2], yb).backward()
    parts.optimizer.step()
    delta = (net[0].weight.detach() - w0).flatten()
    gathered = [None, None]
    dist.all_gather_object(gathered, delta)
    if rank == 0:
        return [d.numpy() for d in gathered]
    return None


def test_noise_is_added_once_on_rank_zero_with_the_opacus_divisor(ray_runtime, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    n, sigma, clip, lr = N_TRAIN, 1.3, 0.7, 0.5
    q, steps = sample_rate_for(n, BATCH, 2)
    trainer = TorchTrainer(
        _one_noise_step,
        train_loop_config=dict(n=n, q=q, steps=steps, sigma=sigma, clip=clip, lr=lr),
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name="noise", storage_path=str(tmp_path / "ray")),
    )
    d0, d1 = trainer.fit().return_value
    assert np.array_equal(d0, d1)  # both ranks applied the same (rank 0's) noise
    # 2 ranks, expected_batch_size int(n*q)/2 = 31 each, all-reduce mean: net divisor int(n*q) = 62
    assert opacus_divisor(n, q) == 62
    expected = lr * sigma * clip / opacus_divisor(n, q)
    sd = float(np.std(d0))
    # 20,000 draws: the sample std is within 3% of the truth with overwhelming probability;
    # noise on both ranks would give sqrt(2) times it, none would give 0.
    assert sd == pytest.approx(expected, rel=0.03)
    assert abs(float(np.mean(d0))) < 5 * expected / math.sqrt(d0.size)


def test_bayes_tuner_with_noisy_holdout_on_two_workers(ray_runtime, data, ledger_url, tmp_path):
    """ANOM end to end on Ray: rank 0's tuner changes the settings, every rank trains with them,
    and every released number (training steps, noisy holdout accuracy) is in the ledger."""
    from dp_accounting import dp_event
    from dp_accounting.rdp import RdpAccountant

    from ppmlops.privacy.accountant import ORDERS
    from ppmlops.tuning.tuners import BayesTuner

    q, steps = sample_rate_for(N_TRAIN, BATCH, 2)
    budget = plan_budget([Segment(1.0, q, steps)] * 4)
    job = _job(data, ledger_url, tmp_path, "run-bayes", epochs=4, budget=budget, tuner=BayesTuner(seed=1),
               holdout_noise=20.0, split="keyed hash of each row (seed 0), test fraction 0.2")
    result = train_on_ray(job)

    assert result.stopped_reason == "completed" and result.epochs_completed == 4
    for h in result.history:
        assert h["tuner"]["tuner"] == "bayes" and h["tuner"]["why"].startswith("bayes")
        assert {(r["noise_multiplier"], r["max_grad_norm"], r["learning_rate"]) for r in h["ranks"]} == {
            (h["noise_multiplier"], h["max_grad_norm"], h["learning_rate"])}
        assert 0.0 <= h["holdout_accuracy_noisy"] <= 1.0
    assert len({(h["max_grad_norm"], h["learning_rate"]) for h in result.history}) > 1
    assert "predicted_gain" in result.history[-1]["tuner"] and "acquisition" in result.history[-1]["tuner"]

    entries = Ledger(ledger_url).entries(dataset_id="synth", run_id="run-bayes")
    holdout = [e for e in entries if e.partition == "holdout"]
    assert [e.id for e in holdout] == [h["holdout_entry"] for h in result.history]
    assert all((e.noise_multiplier, e.sample_rate, e.steps, e.status) == (20.0, 1.0, 1, "completed") for e in holdout)
    assert all(e.note.endswith("split keyed hash of each row (seed 0), test fraction 0.2") for e in holdout)
    # the filter paid for exactly the training entries, and never more than the budget
    train_rdp = sum(e.rdp for e in entries if e.partition == "train")
    np.testing.assert_allclose(result.rdp_spent, train_rdp, rtol=1e-12)
    assert np.all(np.asarray(result.rdp_spent) <= np.asarray(budget) * (1 + 1e-12))

    # Google's dp-accounting, from the ledger's own segments, partitions in parallel
    by_partition: dict[str, RdpAccountant] = {}
    for e in entries:
        acc = by_partition.setdefault(e.partition, RdpAccountant(orders=list(ORDERS)))
        acc.compose(dp_event.PoissonSampledDpEvent(e.sample_rate, dp_event.GaussianDpEvent(e.noise_multiplier)), e.steps)
    expected = max(a.get_epsilon(DELTA) for a in by_partition.values())
    assert Ledger(ledger_url).epsilon_spent("synth", run_id="run-bayes") == pytest.approx(expected, rel=1e-6)


def test_rule_tuner_gets_the_clipped_fraction_inside_the_epochs_noise(ray_runtime, data, ledger_url, tmp_path):
    from ppmlops.tuning import signals
    from ppmlops.tuning.tuners import RuleTuner

    q, steps = sample_rate_for(N_TRAIN, BATCH, 2)
    budget = plan_budget([Segment(1.0, q, steps)] * 2)
    job = _job(data, ledger_url, tmp_path, "run-rule", epochs=2, budget=budget, tuner=RuleTuner(),
               holdout_noise=20.0, split="keyed hash of each row (seed 0), test fraction 0.2")
    result = train_on_ray(job)

    assert result.stopped_reason == "completed" and result.epochs_completed == 2
    entries = [e for e in Ledger(ledger_url).entries(dataset_id="synth", run_id="run-rule") if e.partition == "train"]
    for h, e in zip(result.history, entries):
        sigma, sigma_b = h["noise_multiplier"], h["count_noise"]
        assert sigma_b == pytest.approx(5 * sigma) and 0.0 <= h["clipped_fraction_noisy"] <= 1.0
        # both ranks' gradients got the larger sigma_g; the ledger charges the joint step's sigma
        assert {r["noise_multiplier"] for r in h["ranks"]} == {signals.gradient_noise(sigma, sigma_b)}
        assert all("counts" not in r for r in h["ranks"])  # exact counts never leave the worker
        assert e.noise_multiplier == sigma and "(clipped, unclipped) row counts" in e.note
    assert "quantile" in result.history[1]["tuner"]["why"] or "fell by" in result.history[1]["tuner"]["why"]
    assert result.history[1]["tuner"]["saw"]["clipped_fraction_noisy"] == result.history[0]["clipped_fraction_noisy"]
    train_rdp = sum(e.rdp for e in entries)
    np.testing.assert_allclose(result.rdp_spent, train_rdp, rtol=1e-12)


class MarkAndPauseFromEpochTwo:
    """A tuner (rank 0) that writes its process id before epoch 2 and, the first time, waits
    there to be killed; the restarted rank 0 finds the mark and goes on."""

    def __init__(self, marker: str):
        self.marker = marker

    def __call__(self, epoch, history, current):
        import os
        import time

        if epoch == 2:
            first = not os.path.exists(self.marker)
            with open(self.marker, "a") as f:
                f.write(f"{epoch} {os.getpid()}\n")
            if first:
                time.sleep(120)
        return current


def _committed_checkpoints(run_dir) -> int:
    """Checkpoints Ray Train's controller has committed for a run (its snapshot file)."""
    import json

    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    if not snapshot.exists():
        return 0
    try:
        return len(json.loads(snapshot.read_text()).get("checkpoint_results") or [])
    except ValueError:  # being rewritten
        return 0


def test_killed_worker_restarts_from_the_checkpoint_and_the_ledger_stays_exact(ray_runtime, data, ledger_url,
                                                                               tmp_path):
    import os
    import signal
    import threading
    import time

    q, steps = sample_rate_for(N_TRAIN, BATCH, 2)
    budget = plan_budget([Segment(1.0, q, steps)] * 3)
    marker = tmp_path / "rank0.pids"
    job = _job(data, ledger_url, tmp_path, "run-kill", epochs=3, budget=budget,
               tuner=MarkAndPauseFromEpochTwo(str(marker)), max_failures=2)
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
    result = train_on_ray(job)
    killer.join(timeout=5)

    assert killed, "the worker was never killed"
    pids = [int(line.split()[1]) for line in marker.read_text().splitlines()]
    assert len(pids) == 2 and pids[0] == killed[0] and pids[1] != pids[0], pids
    assert result.stopped_reason == "completed" and [h["epoch"] for h in result.history] == [1, 2, 3]
    entries = Ledger(ledger_url).entries(dataset_id="synth", run_id="run-kill")
    # epoch 2 was decided but never reserved before the kill: exactly one entry per epoch
    assert [e.status for e in entries] == ["completed"] * 3
    assert [h["ledger_entry"] for h in result.history] == [e.id for e in entries]
    np.testing.assert_allclose(result.rdp_spent, sum(e.rdp for e in entries), rtol=1e-12)
    reported, _ = epsilon_from_rdp(np.asarray(result.rdp_spent), DELTA)
    assert reported == pytest.approx(Ledger(ledger_url).epsilon_spent("synth", run_id="run-kill"), rel=1e-9)
