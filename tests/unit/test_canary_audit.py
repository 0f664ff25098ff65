"""The canary audit (Steinke, Nasr & Jagielski 2023): its statistics, and that it catches a run
whose noise is missing while passing a correct one."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
from scipy import stats

from plans import make_job, synthetic
from ppmlops.audit.canary import GUESS_FRACTIONS, audit, epsilon_lower_bound, make_canaries, p_value
from ppmlops.privacy.randomness import Randomness
from ppmlops.training.canary_scores import white_box_scores, without_canary_columns
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


def _audited_run(tmp_path, monkeypatch, *, noise: bool):
    if not noise:  # the bug the audit must catch: noise never added, the accounting unchanged
        def add_no_noise(self):
            for p in self.params:
                p.grad = p.summed_grad.view_as(p)
        monkeypatch.setattr(CsprngNoise, "add_noise", add_no_noise)
    base = synthetic(n=2000, d=20)
    canaries = make_canaries(256, 20, Randomness.secure().source("canaries"))
    members, labels = canaries.members
    arrays = Arrays(np.vstack([canaries.pad(base.X), members]), np.concatenate([base.y, labels]),
                    canaries.pad(base.X_holdout), base.y_holdout)
    job = make_job(f"sqlite:///{tmp_path / 'l.db'}", arrays, epochs=4, batch=256, run_epsilon=1.0,
                   randomness="secure")
    job = type(job)(**{**job.__dict__, "model_kind": "mlp", "hidden": (32,), "init_path": str(tmp_path / "init.pt")})
    (tmp_path / "ckpt").mkdir()
    run_worker(job, arrays, Comm(torch.device("cpu")), DirectoryCheckpoints(tmp_path / "ckpt"), torch.device("cpu"),
               echo=lambda line: None)
    final = read_checkpoint(str(tmp_path / "ckpt" / "latest")).weights
    scores = white_box_scores("mlp", [32], torch.load(tmp_path / "init.pt"), final, canaries)
    return job, final, audit(scores, canaries.included, delta=DELTA), base


def test_a_run_without_its_noise_is_caught(tmp_path, monkeypatch, gloo_world_of_one):
    job, _, out, _ = _audited_run(tmp_path, monkeypatch, noise=False)
    assert out.epsilon_lower_bound > job.plan.epsilon  # the deploy policy denies this model


def test_a_correct_run_passes_and_the_cut_model_predicts_the_same(tmp_path, monkeypatch, gloo_world_of_one):
    job, final, out, base = _audited_run(tmp_path, monkeypatch, noise=True)
    assert out.epsilon_lower_bound <= job.plan.epsilon
    full = build_model("mlp", 20 + 256, [32])
    full.load_state_dict(final)
    cut = build_model("mlp", 20, [32])
    cut.load_state_dict(without_canary_columns(final, 20))
    X = torch.as_tensor(base.X_holdout)
    padded = torch.cat([X, torch.zeros(len(X), 256)], dim=1)
    torch.testing.assert_close(cut(X), full(padded))
