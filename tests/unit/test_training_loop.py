"""The DP-SGD epoch loop in real torch.distributed process groups (gloo), without Ray.

The Ray path is the same loop behind ppmlops.training.ray_worker; tests/integration runs it.
"""

from __future__ import annotations

from dataclasses import replace

import math
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import free_port
from plans import make_job, synthetic
from ppmlops.errors import TrainingError
from ppmlops.privacy.ledger import Ledger
from ppmlops.privacy.randomness import Randomness
from ppmlops.training.loop import Comm, DirectoryCheckpoints, read_checkpoint, run_worker
from ppmlops.training.private_model import make_private_model
from ppmlops.training.sampling import LockstepPoissonSampler
from ppmlops.tuning import signals
from ppmlops.tuning.registry import make_tuner

CPU = torch.device("cpu")


def _train(tmp_path, job, arrays, name="ckpt", tuner=None):
    ckpt = DirectoryCheckpoints(tmp_path / name)
    os.makedirs(ckpt.root, exist_ok=True)
    run_worker(job, arrays, Comm(CPU), ckpt, CPU, tuner=tuner, echo=lambda line: None)
    return read_checkpoint(os.path.join(ckpt.root, "latest"))


# -- sampling ------------------------------------------------------------------------------------

def test_lockstep_shards_are_disjoint_cover_all_rows_and_sample_at_rate_q():
    n, world, q, steps = 1001, 3, 0.1, 300
    seen = []
    for rank in range(world):
        sampler = LockstepPoissonSampler(total_size=n, sample_rate=q, steps=steps, rank=rank, world_size=world)
        batches = list(sampler.batches(Randomness.reproducible("t").source("sample", rank)))
        assert len(batches) == steps  # every batch, empty ones included
        total = sum(len(b) for b in batches)
        rows = len(sampler.rows)
        assert abs(total - rows * steps * q) < 6 * math.sqrt(rows * steps * q * (1 - q))
        assert all(set(b.tolist()) <= set(sampler.rows.tolist()) for b in batches)
        seen.append(sampler.rows)
    assert sorted(torch.cat(seen).tolist()) == list(range(n))


def test_masks_come_from_the_run_randomness_not_torch():
    sampler = LockstepPoissonSampler(total_size=500, sample_rate=0.2, steps=5, rank=0, world_size=1)
    torch.manual_seed(0)
    a = [b.tolist() for b in sampler.batches(Randomness.secure().source("sample"))]
    torch.manual_seed(0)
    b = [b.tolist() for b in sampler.batches(Randomness.secure().source("sample"))]
    assert a != b  # secure: fresh OS entropy, whatever torch's seed
    r = Randomness.reproducible(7, "run")
    assert ([x.tolist() for x in sampler.batches(r.source("sample", 1))]
            == [x.tolist() for x in sampler.batches(r.source("sample", 1))])


# -- the noisy step ------------------------------------------------------------------------------

def test_zero_gradients_leave_csprng_noise_divided_by_the_public_divisor(gloo_world_of_one):
    # Zero inputs to a bias-free network: every per-sample gradient is 0, so one step moves the
    # weights by -lr * N(0, (sigma*C)^2) / divisor exactly, whatever the batch's true size.
    sigma, clip, lr, divisor = 1.3, 0.7, 0.5, 64.0
    net = torch.nn.Sequential(torch.nn.Linear(200, 100, bias=False))
    model = make_private_model(net, noise_multiplier=sigma, max_grad_norm=clip, learning_rate=lr, momentum=0.0,
                               divisor=divisor, device=CPU)
    model.set_epoch(noise_multiplier=sigma, max_grad_norm=clip, learning_rate=lr,
                    noise_source=Randomness.secure().source("noise"))
    w0 = net[0].weight.detach().clone()
    model.step(torch.zeros(37, 200), torch.zeros(37, dtype=torch.int64))  # a batch of 37, not 64
    delta = (net[0].weight.detach() - w0).flatten()
    expected = lr * sigma * clip / divisor
    assert delta.std().item() == pytest.approx(expected, rel=0.03)  # 20,000 draws
    assert abs(delta.mean().item()) < 5 * expected / math.sqrt(delta.numel())


def test_a_step_without_a_noise_source_is_refused(gloo_world_of_one):
    model = make_private_model(torch.nn.Linear(3, 2), noise_multiplier=1.0, max_grad_norm=1.0, learning_rate=0.1,
                               momentum=0.0, divisor=10.0, device=CPU)
    with pytest.raises(TrainingError, match="without noise"):
        model.step(torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64))


# -- replay --------------------------------------------------------------------------------------

@pytest.mark.parametrize("randomness, same", [("secure", False), ("reproducible", True)])
def test_replaying_a_run_gives_the_same_weights_only_in_reproducible_mode(tmp_path, gloo_world_of_one,
                                                                          randomness, same):
    """The replay attack: same data, spec, seed and run id. An adversary who can re-run training
    and match the released weights learns membership exactly; secure randomness defeats it."""
    arrays = synthetic()
    weights = []
    for i in (1, 2):
        job = make_job(f"sqlite:///{tmp_path / f'l{i}.db'}", arrays, randomness=randomness)
        weights.append(_train(tmp_path, job, arrays, name=f"c{i}").weights)
    equal = all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert equal is same


def test_a_physical_batch_limit_trains_the_same_model(tmp_path, gloo_world_of_one):
    """training.max_physical_batch reaches the worker loop, and virtual steps of 16 rows give the
    weights of whole batches (reproducible noise, same seed and run id)."""
    arrays = synthetic()
    weights = []
    for i, limit in enumerate((None, 16)):
        job = make_job(f"sqlite:///{tmp_path / f'p{i}.db'}", arrays, randomness="reproducible")
        job = replace(job, physical_batch=limit)
        weights.append(_train(tmp_path, job, arrays, name=f"p{i}").weights)
    for k in weights[0]:
        torch.testing.assert_close(weights[1][k], weights[0][k], rtol=1e-4, atol=1e-5)


# -- what the loop charges -----------------------------------------------------------------------

def test_each_epoch_is_charged_ahead_with_the_plan_settings_and_completed(tmp_path, gloo_world_of_one):
    arrays = synthetic()
    url = f"sqlite:///{tmp_path / 'l.db'}"
    job = make_job(url, arrays, epochs=3)
    restored = _train(tmp_path, job, arrays)
    usage = Ledger(url).entries("synthetic", job.run_id, kind="usage")
    assert [(e.partition, e.key, e.status) for e in usage] == [
        ("train", f"train/epoch-{i}", "completed") for i in (1, 2, 3)]
    for e in usage:
        assert (e.noise_multiplier, e.sample_rate, e.steps) == (
            job.plan.noise_multiplier, job.plan.sample_rate, job.plan.steps_per_epoch)
    assert restored.state.epoch == 3 and restored.state.stopped_reason == "completed"


def test_the_run_filter_refuses_an_epoch_beyond_the_grant(tmp_path, gloo_world_of_one):
    arrays = synthetic()
    job = make_job(f"sqlite:///{tmp_path / 'l.db'}", arrays, epochs=2)
    longer = type(job)(**{**job.__dict__, "plan": job.plan.model_copy(update={"epochs": 3})})
    restored = _train(tmp_path, longer, arrays)
    assert restored.state.epoch == 2
    assert restored.state.stopped_reason.startswith("privacy filter refused epoch 3")


class CrashAtEpoch2(DirectoryCheckpoints):
    """Checkpoints that fail to save epoch 2: the node died after the epoch ran."""

    def save(self, metrics, directory):
        if metrics.get("epoch") == 2:
            raise RuntimeError("the node died")
        super().save(metrics, directory)


def crash_at_epoch_2(tmp_path):
    ckpt = DirectoryCheckpoints(tmp_path / "ckpt")
    os.makedirs(ckpt.root)
    return ckpt, CrashAtEpoch2(ckpt.root)


def test_a_crash_before_the_checkpoint_is_resumed_without_a_second_charge(tmp_path, gloo_world_of_one):
    arrays = synthetic()
    url = f"sqlite:///{tmp_path / 'l.db'}"
    job = make_job(url, arrays, epochs=2)
    ckpt, crashing = crash_at_epoch_2(tmp_path)
    with pytest.raises(RuntimeError, match="node died"):
        run_worker(job, arrays, Comm(CPU), crashing, CPU, echo=lambda line: None)
    ledger = Ledger(url)
    assert [e.status for e in ledger.entries("synthetic", job.run_id, kind="usage")] == ["completed", "reserved"]
    run_worker(job, arrays, Comm(CPU), ckpt, CPU, echo=lambda line: None)
    usage = ledger.entries("synthetic", job.run_id, kind="usage")
    assert [(e.key, e.status) for e in usage] == [("train/epoch-1", "completed"), ("train/epoch-2", "completed")]
    assert read_checkpoint(os.path.join(ckpt.root, "latest")).state.epoch == 2


class WantsOtherNoise:
    """A resumed attempt's tuner: bayes, but asking for half again the noise it would propose, so
    the epoch the crashed attempt reserved is proposed a noise the reservation does not have."""

    def __init__(self, inner):
        self.inner, self.name, self.wanted = inner, inner.name, []
        self.wants_holdout_accuracy = inner.wants_holdout_accuracy
        self.wants_clipped_fraction = inner.wants_clipped_fraction

    def propose(self, epoch, history, current, budget):
        proposal = self.inner.propose(epoch, history, current, budget)
        settings = replace(proposal.settings, noise_multiplier=1.5 * proposal.settings.noise_multiplier)
        self.wanted.append(settings.noise_multiplier)
        return replace(proposal, settings=settings)

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


def test_a_resumed_adaptive_run_keeps_the_noise_its_crashed_attempt_reserved(tmp_path, gloo_world_of_one):
    """The tuner proposes again after a crash, but the reserved row's noise is what the epoch
    trains with: the row is adopted, never charged a second time beside a new one."""
    arrays = synthetic()
    url = f"sqlite:///{tmp_path / 'l.db'}"
    job = make_job(url, arrays, epochs=2, tuner="bayes")
    ckpt, crashing = crash_at_epoch_2(tmp_path)
    with pytest.raises(RuntimeError, match="node died"):
        run_worker(job, arrays, Comm(CPU), crashing, CPU, tuner=make_tuner("bayes", seed=0),
                   echo=lambda line: None)
    ledger = Ledger(url)
    [reserved] = [e for e in ledger.entries("synthetic", job.run_id, kind="usage") if e.status == "reserved"
                  and e.partition == "train"]
    lines = []
    resumed = WantsOtherNoise(make_tuner("bayes", seed=1))
    run_worker(job, arrays, Comm(CPU), ckpt, CPU, tuner=resumed, echo=lines.append)
    # The resumed tuner wanted another noise for the reserved epoch: only keeping the reservation
    # makes the epoch train with the reserved one.
    assert resumed.wanted and resumed.wanted[0] != pytest.approx(reserved.noise_multiplier)
    train = [e for e in ledger.entries("synthetic", job.run_id, kind="usage") if e.partition == "train"]
    assert [(e.key, e.status) for e in train] == [("train/epoch-1", "completed"), ("train/epoch-2", "completed")]
    assert train[1].id == reserved.id and train[1].noise_multiplier == reserved.noise_multiplier
    state = read_checkpoint(os.path.join(ckpt.root, "latest")).state
    assert state.epoch == 2 and state.history[-1]["noise_multiplier"] == reserved.noise_multiplier
    assert "as reserved by the attempt that stopped" in state.history[-1]["tuner"]["why"]
    assert any("resumed from the checkpoint of epoch 1" in line for line in lines)


def test_the_clipped_fraction_is_paid_for_by_more_gradient_noise(tmp_path, gloo_world_of_one):
    arrays = synthetic()
    job = make_job(f"sqlite:///{tmp_path / 'l.db'}", arrays, epochs=2, tuner="rule")
    history = _train(tmp_path, job, arrays, tuner=make_tuner("rule")).state.history
    for h in history:
        sigma, sigma_b = h["noise_multiplier"], h["count_noise"]
        assert sigma_b == signals.count_noise(sigma)
        assert h["gradient_noise"] == pytest.approx(signals.gradient_noise(sigma, sigma_b), rel=1e-12)
        assert h["gradient_noise"] > sigma
        assert 0 <= h["clipped_fraction_noisy"] <= 1
    assert history[1]["tuner"]["tuner"] == "rule"


def test_fixed_tuner_releases_nothing_about_the_held_out_rows(tmp_path, gloo_world_of_one):
    arrays = synthetic()
    url = f"sqlite:///{tmp_path / 'l.db'}"
    job = make_job(url, arrays, tuner="fixed")
    history = _train(tmp_path, job, arrays, tuner=make_tuner("fixed")).state.history
    assert all(h["holdout_accuracy_noisy"] is None for h in history)
    assert not [e for e in Ledger(url).entries("synthetic", job.run_id, kind="usage") if e.partition == "holdout"]


# -- two ranks -----------------------------------------------------------------------------------

def _rank(rank: int, world: int, port: int, job, arrays, root: str, out) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        run_worker(job, arrays, Comm(CPU), DirectoryCheckpoints(root), CPU, node=f"n{rank}", echo=lambda line: None)
        out.put((rank, "ok"))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        out.put((rank, f"{type(e).__name__}: {e}"))
    finally:
        dist.destroy_process_group()


def test_two_ranks_step_in_lockstep_and_the_charge_is_the_plans_rate(tmp_path):
    """Each record is sampled on one rank at rate q: the charge must be q, not q / world."""
    arrays = synthetic(n=800)
    url = f"sqlite:///{tmp_path / 'l.db'}"
    job = make_job(url, arrays, epochs=2, workers=2)
    os.makedirs(tmp_path / "ckpt")
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank, args=(r, 2, port, job, arrays, str(tmp_path / "ckpt"), out)) for r in (0, 1)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert results == {0: "ok", 1: "ok"}
    usage = Ledger(url).entries("synthetic", job.run_id, kind="usage")
    assert [e.sample_rate for e in usage if e.partition == "train"] == [job.plan.sample_rate] * 2
    history = read_checkpoint(str(tmp_path / "ckpt" / "latest")).state.history
    for h in history:
        assert [(r["rank"], r["steps"]) for r in h["ranks"]] == [(0, job.plan.steps_per_epoch),
                                                                 (1, job.plan.steps_per_epoch)]
