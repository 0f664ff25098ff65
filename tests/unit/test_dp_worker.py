"""The DP-SGD worker's building blocks, in one process (a gloo world of size 1).

The two-rank behaviour (noise added once, lockstep steps) is tested through Ray in
tests/integration/test_ray_training.py.
"""

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, TensorDataset

from ppmlops.errors import TrainingError
from ppmlops.training.dp_worker import (
    EpochSettings,
    LockstepPoissonSampler,
    derived_seed,
    make_privacy_engine,
    make_private_ddp,
    opacus_divisor,
    opacus_steps,
    per_sample_norms,
    secure_rng_available,
    seed_epoch,
    train_epoch,
)
from ppmlops.training.launch import sample_rate_for
from ppmlops.training.models import build_model


@pytest.mark.parametrize("n, batch", [(2000, 64), (2000, 100), (1000, 7), (50, 64), (12345, 256), (3, 1)])
def test_sample_rate_is_what_opacus_derives_from_a_loader(n, batch):
    q, steps = sample_rate_for(n, batch, 2)
    loader = DataLoader(TensorDataset(torch.zeros(n)), batch_size=batch)
    assert q == 1 / len(loader)  # make_private: sample_rate = 1 / len(data_loader)
    assert steps == len(loader) == math.ceil(n / batch)
    assert int(1 / q) == steps  # Opacus's samplers default to int(1 / q) batches


@pytest.mark.parametrize("args, match", [
    ((1, 64, 2), "cannot be shared"),
    ((100, 0, 2), "batch_size"),
    ((100, 10, 0), "workers"),
    ((100.5, 10, 1), "n_train"),
])
def test_sample_rate_rejects_bad_input(args, match):
    with pytest.raises(TrainingError, match=match):
        sample_rate_for(*args)


def test_lockstep_sampler_yields_every_batch_including_empty_ones():
    # q tiny against 10 rows: most batches are empty, and every one must still come out.
    s = LockstepPoissonSampler(total_size=10, sample_rate=0.01, steps=50, rank=1, world_size=2,
                               generator=torch.Generator().manual_seed(0))
    batches = list(s)
    assert len(batches) == len(s) == 50
    assert sum(len(b) == 0 for b in batches) > 30


def test_lockstep_shards_are_disjoint_cover_all_rows_and_sample_at_rate_q():
    n, world, q, steps = 1001, 3, 0.1, 400
    seen = []
    for rank in range(world):
        s = LockstepPoissonSampler(total_size=n, sample_rate=q, steps=steps, rank=rank, world_size=world,
                                   generator=torch.Generator().manual_seed(rank))
        assert s.rows.tolist() == list(range(rank, n, world))
        counts = torch.zeros(n)
        for b in s:
            assert set(b.tolist()) <= set(s.rows.tolist())
            counts[b] += 1
        seen.append(s.rows)
        # each of this rank's rows is drawn Binomial(steps, q) times; check the total
        total = counts[s.rows].sum().item()
        mean, sd = len(s.rows) * steps * q, math.sqrt(len(s.rows) * steps * q * (1 - q))
        assert abs(total - mean) < 6 * sd
    assert sorted(torch.cat(seen).tolist()) == list(range(n))


def test_secure_mode_refuses_clearly_without_torchcsprng():
    if secure_rng_available():
        assert make_privacy_engine(True).secure_mode
    else:
        with pytest.raises(TrainingError, match="torchcsprng"):
            make_privacy_engine(True)


def test_derived_seeds_differ_by_run_epoch_rank_and_role():
    base = derived_seed("noise", 0, "run-a", 1, 0)
    assert base == derived_seed("noise", 0, "run-a", 1, 0)
    others = [derived_seed("noise", 0, "run-b", 1, 0), derived_seed("noise", 0, "run-a", 2, 0),
              derived_seed("noise", 0, "run-a", 1, 1), derived_seed("sample", 0, "run-a", 1, 0)]
    assert base not in others and len(set(others)) == 4
    assert 0 <= base < 2**63


def test_epoch_settings_checked():
    assert EpochSettings(1, 2, 3).checked() == EpochSettings(1.0, 2.0, 3.0)
    for bad in [(0, 1, 1), (1, -1, 1), (1, 1, float("nan")), (True, 1, 1)]:
        with pytest.raises(TrainingError):
            EpochSettings(*bad).checked()


@pytest.fixture(scope="module")
def gloo_world_of_one(tmp_path_factory):
    store = tmp_path_factory.mktemp("gloo") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _private(net, X, y, q, steps, sigma=1.0, clip=1.0, lr=0.1, momentum=0.0):
    return make_private_ddp(net, X, y, sample_rate=q, steps=steps, noise_multiplier=sigma, max_grad_norm=clip,
                            learning_rate=lr, momentum=momentum, secure_mode=False)


def test_opacus_sees_the_planned_sample_rate_and_divisor(gloo_world_of_one):
    n, batch = 2000, 64
    q, steps = sample_rate_for(n, batch, 1)
    X, y = torch.randn(n, 5), torch.randint(0, 2, (n,))
    parts = _private(build_model("logistic", 5), X, y, q, steps)
    assert 1 / len(parts.loader) == q and len(parts.loader) == steps
    assert parts.optimizer.expected_batch_size * dist.get_world_size() == opacus_divisor(n, q) == 62  # not 64
    assert type(parts.optimizer).__name__ == "DistributedDPOptimizer"


def test_mismatched_sample_rate_is_refused(gloo_world_of_one):
    X, y = torch.randn(100, 3), torch.randint(0, 2, (100,))
    with pytest.raises(TrainingError, match="sample rate mismatch"):
        _private(build_model("logistic", 3), X, y, 0.03, 32)  # 1/32 != 0.03


def test_every_planned_step_runs_even_when_batches_are_empty(gloo_world_of_one):
    n = steps = 200  # q = 1/200: one row a batch on average, about 37% of batches empty
    q = 1 / steps
    X, y = torch.randn(n, 3), torch.randint(0, 2, (n,))
    net = build_model("mlp", 3, (4,))
    parts = _private(net, X, y, q, steps)
    seed_epoch(parts, seed=0, run_id="t", epoch=1, rank=0)
    empty = sum(len(b) == 0 for b in parts.sampler)
    assert empty > 20
    seed_epoch(parts, seed=0, run_id="t", epoch=1, rank=0)  # replay the same batches
    before = [p.detach().clone() for p in net.parameters()]
    assert train_epoch(parts, torch.device("cpu")) == steps
    assert opacus_steps(parts.engine) == steps
    assert parts.engine.accountant.history == [(1.0, q, steps)]
    for b, p in zip(before, net.parameters()):
        assert torch.isfinite(p).all() and not torch.equal(b, p)  # noise moved every parameter


def test_a_zero_divisor_is_refused_before_training():
    # 49 * (1/49) == 0.9999999999999999 in floats: Opacus would divide every update by int() == 0
    with pytest.raises(TrainingError, match="int\\(n \\* q\\) = 0"):
        sample_rate_for(49, 1, 1)


def test_zero_gradients_leave_pure_noise_of_the_opacus_scale(gloo_world_of_one):
    # Zero inputs to a bias-free network: every per-sample gradient is 0, so one step moves
    # the weights by -lr * N(0, (sigma*C)^2) / int(n*q) exactly.
    n, batch, sigma, clip, lr = 1000, 64, 1.3, 0.7, 0.5
    q, steps = sample_rate_for(n, batch, 1)
    net = torch.nn.Sequential(torch.nn.Linear(200, 100, bias=False))
    X, y = torch.zeros(n, 200), torch.randint(0, 2, (n,))
    parts = _private(net, X, y, q, steps, sigma=sigma, clip=clip, lr=lr)
    seed_epoch(parts, seed=0, run_id="t", epoch=1, rank=0)
    w0 = net[0].weight.detach().clone()
    xb, yb = next(iter(parts.loader))
    parts.optimizer.zero_grad()
    torch.nn.functional.cross_entropy(parts.module(xb)[:, :2], yb).backward()
    parts.optimizer.step()
    delta = (net[0].weight.detach() - w0).flatten()
    expected = lr * sigma * clip / opacus_divisor(n, q)
    # 20,000 draws: the sample std is within ~1.5% of the truth with overwhelming probability
    assert delta.std().item() == pytest.approx(expected, rel=0.03)
    assert abs(delta.mean().item()) < 5 * expected / math.sqrt(delta.numel())


def test_resume_charges_entries_the_checkpoint_missed(tmp_path):
    # A crash after reserve+spend but before the checkpoint: the ledger knows the epoch, the
    # checkpointed filter does not. Resuming must charge it, and only train-partition entries.
    from ppmlops.privacy.accountant import Segment, segment_rdp
    from ppmlops.privacy.filter import PrivacyFilter, plan_budget
    from ppmlops.privacy.ledger import Ledger
    from ppmlops.training.dp_worker import _charge_unrecorded_entries

    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    ledger.register_dataset("d", epsilon_budget=50, delta=1e-5)
    seg = Segment(1.0, 1 / 32, 32)
    first = ledger.reserve(dataset_id="d", run_id="r", segment=seg)
    ledger.complete(first)
    crashed = ledger.reserve(dataset_id="d", run_id="r", segment=seg)  # never completed
    ledger.reserve(dataset_id="d", run_id="r", segment=Segment(5.0, 1.0, 1), partition="validation")
    ledger.reserve(dataset_id="d", run_id="other", segment=seg)

    filt = PrivacyFilter(plan_budget([seg] * 3))
    filt.spend(segment_rdp(seg))  # the checkpoint's state: epoch 1 only
    recorded = [first]
    _charge_unrecorded_entries(ledger, filt, "d", "r", recorded)
    assert recorded == [first, crashed]
    assert np.array_equal(filt.spent, plan_budget([seg] * 2))
    assert filt.admits(segment_rdp(seg)) and not filt.admits(2 * segment_rdp(seg))


@pytest.mark.parametrize("address, match", [("127.0.0.1:1", "cannot reach"), ("ray://127.0.0.1:1", "cannot reach"),
                                            ("no-port-here", "host:port")])
def test_unreachable_or_malformed_ray_address(address, match):
    from ppmlops.training.launch import _check_reachable

    with pytest.raises(TrainingError, match=match) as err:
        _check_reachable(address, timeout_s=2)
    assert address in str(err.value)


def test_secure_rng_job_fails_before_starting_a_local_ray(tmp_path, monkeypatch):
    import ray

    from ppmlops.privacy.accountant import ORDERS
    from ppmlops.training import dp_worker
    from ppmlops.training.launch import TrainJob, train_on_ray

    monkeypatch.setattr(dp_worker, "secure_rng_available", lambda: False)  # as on this machine
    assert not ray.is_initialized(), "an earlier test module left Ray running (see tests/conftest.py)"
    X = np.zeros((10, 2), np.float32)
    y = np.zeros(10, np.int64)
    job = TrainJob(run_id="r", dataset_id="d", ledger_url=f"sqlite:///{tmp_path / 'l.db'}", delta=1e-5,
                   X_train=X, y_train=y, X_test=X, y_test=y, model_kind="logistic", hidden=[], epochs=1,
                   batch_size=5, learning_rate=0.1, momentum=0.0, max_grad_norm=1.0, noise_multiplier=1.0,
                   budget_rdp=[1.0] * len(ORDERS), secure_rng=True, seed=0)
    with pytest.raises(TrainingError, match="torchcsprng"):
        train_on_ray(job)
    assert not ray.is_initialized()


def test_clipping_counts_match_the_rows_per_sample_gradient_norms(gloo_world_of_one):
    n = steps = 50
    X, y = torch.randn(n, 4) * 3, torch.randint(0, 2, (n,))
    net = build_model("logistic", 4)
    parts = _private(net, X, y, 1 / steps, steps, clip=0.5)
    # per-row norms from Opacus's grad samples equal each row's own gradient, computed alone
    # (the loss is the batch mean, as in _step; Opacus undoes the mean in its grad samples)
    xb, yb = X[:6], y[:6]
    parts.optimizer.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(parts.module(xb), yb).backward()
    got = per_sample_norms(parts.optimizer)
    for i in range(6):
        single = build_model("logistic", 4)
        single.load_state_dict({k.removeprefix("_module."): v for k, v in net.state_dict().items()})
        torch.nn.functional.cross_entropy(single(xb[i:i + 1]), yb[i:i + 1], reduction="sum").backward()
        want = torch.sqrt(sum((p.grad ** 2).sum() for p in single.parameters()))
        assert got[i].item() == pytest.approx(want.item(), rel=1e-5)
    parts.optimizer.zero_grad(set_to_none=True)

    seed_epoch(parts, seed=0, run_id="t", epoch=1, rank=0)
    counts = [0, 0]
    assert train_epoch(parts, torch.device("cpu"), counts) == steps
    sampled = sum(len(b) for b in (seed_epoch(parts, seed=0, run_id="t", epoch=1, rank=0) or parts.sampler))
    assert sum(counts) == sampled  # every sampled row counted once, clipped or not
    assert counts[0] > 0  # with clip 0.5 on inputs of scale 3, some rows are clipped
