"""The canary audit (Steinke, Nasr & Jagielski 2023): its statistics, and, through the real DP-SGD
loop at the demo's shape, that it catches a run whose noise is set for 4x its claimed epsilon (or
missing) while passing correct ones."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
from scipy import stats

from plans import make_job, synthetic
from ppmlops.audit.canary import GUESS_FRACTIONS, audit, epsilon_lower_bound, make_canaries, p_value, step_scores
from ppmlops.privacy.accountant import calibrate_noise, epsilon as epsilon_of, Segment
from ppmlops.privacy.randomness import Randomness
from ppmlops.run.records import Canaries
from ppmlops.training.canary_scores import read_scores, without_canary_columns
from ppmlops.training.loop import Arrays, Comm, DirectoryCheckpoints, read_checkpoint, run_worker
from ppmlops.training.models import build_model
from ppmlops.training.private_model import CsprngNoise

DELTA = 1e-5


def test_the_p_value_is_the_binomial_tail_plus_the_delta_term():
    m, r, v, eps = 200, 40, 30, 1.0
    q = math.exp(eps) / (1 + math.exp(eps))
    assert p_value(m, r, v, eps, 0.0) == pytest.approx(stats.binom.sf(v - 1, r, q), rel=1e-12)
    alpha = max(sum(stats.binom.pmf(v - j, r, q) for j in range(1, i + 1)) / i for i in range(1, v + 1))
    assert p_value(m, r, v, eps, DELTA) == pytest.approx(stats.binom.sf(v - 1, r, q) + alpha * DELTA * 2 * m)


def test_the_bound_grows_with_correct_guesses_and_is_zero_at_chance():
    bounds = [epsilon_lower_bound(256, 50, v, DELTA, 0.05) for v in (25, 35, 45, 50)]
    assert bounds[0] == 0.0 and bounds == sorted(bounds) and bounds[-1] > 2.0
    # at the bound itself the test just rejects
    eps = bounds[2]
    assert p_value(256, 50, 45, eps, DELTA) < 0.05 <= p_value(256, 50, 45, eps * 1.01 + 1e-6, DELTA)


def test_null_audits_rarely_claim_anything():
    rng = np.random.default_rng(1)
    claimed = sum(audit(rng.normal(size=256), rng.random(256) < 0.5, delta=DELTA).epsilon_lower_bound > 0
                  for _ in range(200))
    assert claimed <= 200 * 0.05 + 5  # at most the 5% the confidence level allows, plus slack for 200 draws


def test_randomized_response_of_known_epsilon_is_not_over_claimed():
    """Scores from an eps-DP mechanism (randomized response on each coin): the bound may not exceed eps
    more than 5% of the time."""
    rng, eps = np.random.default_rng(2), 1.5
    over = 0
    for _ in range(200):
        coins = rng.random(512) < 0.5
        truthful = rng.random(512) < math.exp(eps) / (1 + math.exp(eps))
        scores = np.where(truthful == coins, 1.0, -1.0) + 1e-6 * rng.normal(size=512)
        over += audit(scores, coins, delta=DELTA).epsilon_lower_bound > eps
    assert over <= 200 * 0.05 + 5
    assert len(GUESS_FRACTIONS) >= 2  # the Bonferroni split is part of what keeps this true


def test_step_scores_are_the_subsampled_gaussians_likelihood_ratio():
    q, sigma, x = 0.1, 1.5, np.array([-2.0, 0.0, 0.5, 1.0, 3.0])
    density = lambda mean: stats.norm.pdf(x, mean, sigma)  # noqa: E731
    expected = np.log(((1 - q) * density(0.0) + q * density(1.0)) / density(0.0))
    np.testing.assert_allclose(step_scores(x, q, sigma), expected, rtol=1e-12, atol=1e-15)
    assert np.all(np.diff(step_scores(x, q, sigma)) > 0)  # monotone: the top scores are the likely members


# The demo's shape: about 4500 rows at batch 256 is q = 1/18, 18 steps per epoch, 4 epochs; an mlp
# with 32 hidden units carries 16384 canaries (the default) in 512 extra columns.
ROWS, BATCH, EPOCHS, HIDDEN, CANARIES, FEATURES = 1800, 100, 4, 32, 16384, 20


def _audited_run(tmp_path, monkeypatch, *, seed: int, noise_scale: float | None = 1.0):
    """Train through the real worker loop with gradient canaries; return (job, final weights, the
    audit, the data). `noise_scale` multiplies the noise actually added (the accounting is not
    told: the bug the audit must catch); None removes it."""
    if noise_scale != 1.0:
        original = CsprngNoise.add_noise

        def add_other_noise(self):
            claimed = self.noise_multiplier
            self.noise_multiplier = 0.0 if noise_scale is None else claimed * noise_scale
            try:
                original(self)
            finally:
                self.noise_multiplier = claimed  # what the scores (and the ledger) take as the noise
        monkeypatch.setattr(CsprngNoise, "add_noise", add_other_noise)
    base = synthetic(n=ROWS, d=FEATURES, seed=seed)
    made = make_canaries(CANARIES, FEATURES, HIDDEN, Randomness.reproducible(seed, "coins").source("canaries"))
    arrays = Arrays(base.X, base.y, base.X_holdout, base.y_holdout, canary_columns=made.columns)  # as shards.shard
    job = make_job(f"sqlite:///{tmp_path / 'l.db'}", arrays, epochs=EPOCHS, batch=BATCH, run_epsilon=1.0, seed=seed)
    assert (job.plan.steps_per_epoch, job.plan.sample_rate) == (18, pytest.approx(1 / 18))
    job = type(job)(**{**job.__dict__, "model_kind": "mlp", "hidden": (HIDDEN,), "init_path": str(tmp_path / "init.pt"),
                       "canaries": Canaries(n_features=FEATURES, units=HIDDEN, included=made.included.tolist()),
                       "canary_scores_path": str(tmp_path / "scores.npy")})
    (tmp_path / "ckpt").mkdir()
    run_worker(job, arrays, Comm(torch.device("cpu")), DirectoryCheckpoints(tmp_path / "ckpt"), torch.device("cpu"),
               echo=lambda line: None)
    latest = read_checkpoint(str(tmp_path / "ckpt" / "latest"))
    scores = read_scores(tmp_path / "scores.npy")
    np.testing.assert_array_equal(scores, latest.state.canary_scores)  # the file is the checkpoint's
    return job, latest.weights, audit(scores, made.included, delta=DELTA), base


def _true_noise_scale(job, factor: float) -> float:
    """The noise (relative to the plan's) at which the project's accountant gives `factor` times
    the claimed epsilon for the run's steps."""
    plan = job.plan
    steps = plan.steps_per_epoch * plan.epochs
    assert epsilon_of([Segment(plan.noise_multiplier, plan.sample_rate, steps)], DELTA) == pytest.approx(
        plan.epsilon, rel=1e-3)
    return calibrate_noise(factor * plan.epsilon, DELTA, plan.sample_rate, steps) / plan.noise_multiplier


def test_a_run_whose_noise_gives_four_times_its_claimed_epsilon_is_caught(tmp_path, monkeypatch, gloo_world_of_one):
    probe = make_job(f"sqlite:///{tmp_path / 'probe.db'}", synthetic(n=ROWS, d=FEATURES), epochs=EPOCHS, batch=BATCH,
                     run_epsilon=1.0, dataset="probe")
    scale = _true_noise_scale(probe, 4.0)
    assert 0.3 < scale < 0.6  # sigma about 0.99 where the plan has 2.24
    job, _, out, _ = _audited_run(tmp_path, monkeypatch, seed=11, noise_scale=scale)
    assert out.canaries == CANARIES
    assert out.epsilon_lower_bound > job.plan.epsilon  # the deploy policy denies this model


def test_a_run_without_its_noise_is_caught(tmp_path, monkeypatch, gloo_world_of_one):
    job, _, out, _ = _audited_run(tmp_path, monkeypatch, seed=3, noise_scale=None)
    assert out.epsilon_lower_bound > 3 * job.plan.epsilon


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_correct_run_passes_and_the_cut_model_predicts_the_same(tmp_path, monkeypatch, gloo_world_of_one, seed):
    job, final, out, base = _audited_run(tmp_path, monkeypatch, seed=seed)
    assert out.epsilon_lower_bound <= job.plan.epsilon  # no false deny (the theorem: at most beta of the time)
    columns = CANARIES // HIDDEN
    full = build_model("mlp", FEATURES + columns, [HIDDEN])
    full.load_state_dict(final)
    cut = build_model("mlp", FEATURES, [HIDDEN])
    cut.load_state_dict(without_canary_columns(final, FEATURES))
    X = torch.as_tensor(base.X_holdout)
    padded = torch.cat([X, torch.zeros(len(X), columns)], dim=1)
    torch.testing.assert_close(cut(X), full(padded))


@pytest.mark.parametrize("clipping", ["linear", "ghost", "hooks"])
def test_canaries_join_the_clipped_sum_on_every_clipping_path(gloo_world_of_one, clipping):
    """No noise, q = 1, every coin heads: each canary coordinate moves by exactly lr C / divisor
    (a gradient of norm C, never clipped), the real weights exactly as without canaries, and each
    step's score rises for every canary."""
    from ppmlops.audit.canary import CanarySet
    from ppmlops.training.canary_scores import GradientCanaries
    from ppmlops.training.private_model import make_private_model

    clip, lr, divisor, units = 0.5, 0.1, 4.0, 8
    canaries = CanarySet(5, units, np.ones(20, dtype=bool))  # 3 columns, the last one partly used
    X = torch.cat([torch.randn(6, 5) * 10, torch.zeros(6, canaries.columns)], dim=1)  # rows clipped hard
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    moved = []
    for with_canaries in (False, True):
        torch.manual_seed(0)
        net = build_model("mlp", canaries.width, [units])
        before = {k: v.detach().clone() for k, v in net.state_dict().items()}
        model = make_private_model(net, noise_multiplier=0.0, max_grad_norm=clip, learning_rate=lr, momentum=0.0,
                                   divisor=divisor, device=torch.device("cpu"), clipping=clipping)
        if with_canaries:
            model.attach_canaries(GradientCanaries(canaries, net[0].weight, 1.0))
        model.set_epoch(noise_multiplier=0.0, max_grad_norm=clip, learning_rate=lr,
                        noise_source=Randomness.reproducible("inject", clipping).source("noise"))
        model.step(X, y)
        moved.append({k: before[k] - v.detach() for k, v in net.state_dict().items()})
    rows, cols = canaries.coordinates
    expected = torch.zeros_like(moved[0]["0.weight"])
    expected[rows, cols] = lr * clip / divisor
    torch.testing.assert_close(moved[1]["0.weight"] - moved[0]["0.weight"], expected)
    for name in moved[0]:
        if name != "0.weight":
            torch.testing.assert_close(moved[1][name], moved[0][name])
    assert np.all(model.canaries.scores > 0)


def _training_seconds(tmp_path, with_canaries: bool) -> float:
    """The worker loop's time at the test's set-up, with or without the canaries."""
    import time

    base = synthetic(n=ROWS, d=FEATURES)
    made = make_canaries(CANARIES if with_canaries else 0, FEATURES, HIDDEN, Randomness.secure().source("canaries"))
    arrays = Arrays(base.X, base.y, base.X_holdout, base.y_holdout, canary_columns=made.columns)  # as shards.shard
    job = make_job(f"sqlite:///{tmp_path / 'l.db'}", arrays, epochs=EPOCHS, batch=BATCH, run_epsilon=1.0)
    job = type(job)(**{**job.__dict__, "model_kind": "mlp", "hidden": (HIDDEN,),
                       "canaries": Canaries(n_features=FEATURES, units=HIDDEN, included=made.included.tolist()),
                       "canary_scores_path": str(tmp_path / "scores.npy")})
    (tmp_path / "ckpt").mkdir()
    t0 = time.perf_counter()
    run_worker(job, arrays, Comm(torch.device("cpu")), DirectoryCheckpoints(tmp_path / "ckpt"), torch.device("cpu"),
               echo=lambda line: None)
    return time.perf_counter() - t0


def main(seeds: int) -> None:
    """The figures in ppmlops.audit.canary's docstring: the lower bound at the test's set-up for
    noise giving 1x, 4x and 8x the claimed epsilon and none, over `seeds` seeds, and what the
    canaries add to training time: PYTHONPATH=tests .venv/bin/python tests/unit/test_canary_audit.py 10"""
    import tempfile
    import time
    from pathlib import Path

    from conftest import free_port

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(free_port())
    dist.init_process_group("gloo", rank=0, world_size=1)
    probe = make_job(f"sqlite:///{tempfile.mkdtemp()}/probe.db", synthetic(n=ROWS, d=FEATURES), epochs=EPOCHS,
                     batch=BATCH, run_epsilon=1.0)
    for label, factor in (("1x", 1.0), ("4x", 4.0), ("8x", 8.0), ("no noise", None)):
        scale = None if factor is None else 1.0 if factor == 1 else _true_noise_scale(probe, factor)
        bounds = []
        for seed in range(seeds):
            patch = pytest.MonkeyPatch()
            bounds.append(_audited_run(Path(tempfile.mkdtemp()), patch, seed=100 + seed,
                                       noise_scale=scale)[2].epsilon_lower_bound)
            patch.undo()
        print(f"{label}: claim {probe.plan.epsilon:.3f}, lower bounds {min(bounds):.2f}-{max(bounds):.2f} "
              f"({sum(b > probe.plan.epsilon for b in bounds)}/{seeds} above the claim)", flush=True)
    seconds = {False: [], True: []}
    for with_canaries in (False, True) * 3:
        seconds[with_canaries].append(_training_seconds(Path(tempfile.mkdtemp()), with_canaries))
    print(f"training with {CANARIES} canaries: {min(seconds[True]):.2f} s, without: {min(seconds[False]):.2f} s "
          f"(best of 3)")
    dist.destroy_process_group()


if __name__ == "__main__":
    import sys

    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)


def test_the_audits_result_is_the_evaluate_records_field_for_field():
    """ppmlops.audit sits below the run's records (docs/architecture.md's layer table), so it returns
    its own AuditBound and the evaluate stage records it as a CanaryAudit: the two must not drift."""
    from dataclasses import asdict, fields

    from ppmlops.audit.canary import AuditBound
    from ppmlops.run.records import CanaryAudit

    assert [f.name for f in fields(AuditBound)] == list(CanaryAudit.model_fields)
    bound = audit(np.arange(100.0), np.arange(100) >= 50, delta=1e-5)
    assert CanaryAudit.model_validate(bound, from_attributes=True).model_dump() == asdict(bound)
