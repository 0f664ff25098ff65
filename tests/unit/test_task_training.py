"""Issue 29 item 3: DP-SGD for each label.task in a real gloo process group (the loop every rank
runs): cross-entropy over k classes, squared error for a regression label scaled to [0, 1], and
the tuner's held-out signal following the task at the same cost as the binary one."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest
import torch

from plans import make_job
from ppmlops.privacy.ledger import Ledger
from ppmlops.privacy.randomness import Randomness
from ppmlops.training.factory import build_net
from ppmlops.training.loop import Arrays, Comm, DirectoryCheckpoints, read_checkpoint, run_worker
from ppmlops.training.tasks import predict, scores
from ppmlops.tuning import signals

CPU = torch.device("cpu")


def _train(tmp_path, job, arrays):
    ckpt = DirectoryCheckpoints(tmp_path / "ckpt")
    os.makedirs(ckpt.root, exist_ok=True)
    run_worker(job, arrays, Comm(CPU), ckpt, CPU, echo=lambda line: None)
    return read_checkpoint(os.path.join(ckpt.root, "latest"))


def three_classes(n=3000, holdout=600, d=6, seed=0) -> Arrays:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=2.0, size=(3, d))
    y = rng.integers(0, 3, n + holdout)
    X = (centres[y] + rng.normal(size=(n + holdout, d))).astype(np.float32)
    return Arrays(X[:n], y[:n].astype(np.int64), X[n:], y[n:].astype(np.int64))


def scaled_target(n=3000, holdout=600, d=6, seed=0) -> Arrays:
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, size=(n + holdout, d)).astype(np.float32)
    y = np.clip(0.5 + 0.2 * X[:, 0] - 0.15 * X[:, 1] + 0.03 * rng.normal(size=n + holdout), 0, 1).astype(np.float32)
    return Arrays(X[:n], y[:n], X[n:], y[n:])


def _job(tmp_path, arrays, task, n_outputs):
    job = make_job(f"sqlite:///{tmp_path / 'l.db'}", arrays, epochs=3, batch=128, tuner="bayes", run_epsilon=8.0,
                   learning_rate=0.5)
    return replace(job, model_kind="logistic", hidden=(), task=task, n_outputs=n_outputs)


def test_multiclass_trains_k_logits_with_cross_entropy(gloo_world_of_one, tmp_path):
    arrays = three_classes()
    job = _job(tmp_path, arrays, "multiclass", 3)
    restored = _train(tmp_path, job, arrays)
    net = build_net("logistic", (), None, arrays.X.shape[1], 3)
    net.load_state_dict(restored.weights)
    assert net[0].weight.shape == (3, arrays.X.shape[1])
    predicted = predict(net, arrays.X_holdout, "multiclass")
    exact = float(np.mean(predicted == arrays.y_holdout))
    assert exact > 0.8  # separable clusters; a one-class model would score about 1/3
    # the tuner's signal: a noisy accuracy each epoch, charged as one Gaussian on the held-out rows
    noisy = [h["holdout_accuracy_noisy"] for h in restored.state.history]
    assert len(noisy) == 3 and abs(noisy[-1] - exact) < 0.15
    holdout = [e for e in Ledger(job.ledger_url).entries("synthetic", job.run_id, kind="usage")
               if e.key.startswith("holdout/")]
    assert len(holdout) == 3 and all(e.segment.noise_multiplier == job.plan.holdout_sigma for e in holdout)


def test_regression_trains_one_output_on_the_scaled_label(gloo_world_of_one, tmp_path):
    arrays = scaled_target()
    job = _job(tmp_path, arrays, "regression", 1)
    restored = _train(tmp_path, job, arrays)
    net = build_net("logistic", (), None, arrays.X.shape[1], 1)
    net.load_state_dict(restored.weights)
    predicted = predict(net, arrays.X_holdout, "regression")
    assert predicted.min() >= 0 and predicted.max() <= 1  # clipped to the declared range
    mae = float(np.mean(np.abs(predicted - arrays.y_holdout)))
    baseline = float(np.mean(np.abs(arrays.y_holdout.mean() - arrays.y_holdout)))
    assert mae < 0.7 * baseline
    noisy = restored.state.history[-1]["holdout_accuracy_noisy"]  # a noisy 1 - MAE on the [0, 1] scale
    assert abs(noisy - (1 - mae)) < 0.1


def test_the_regression_signal_has_the_binary_signals_sensitivity():
    # One row adds (s, 1 - s) with s in [0, 1]: L2 norm <= 1, so Segment(sigma, 1, 1) prices it.
    s = np.linspace(0, 1, 101)
    assert np.all(np.hypot(s, 1 - s) <= 1 + 1e-12)
    # the row's score is clipped: a prediction outside the range cannot enlarge it
    assert scores("regression", np.array([3.0, -2.0]), np.array([0.0, 1.0])).tolist() == [0.0, 0.0]
    sums = signals.score_sums([1.7, -0.3, 0.25])  # clipped before summing
    assert sums[signals.OUTCOME] == {"correct": 1.25, "wrong": 1.75}
    # noise on both sums, from the run's CSPRNG: the signal is about right and not exact
    rng_scores = np.full(1000, 0.8)
    got = [signals.noisy_signal("regression", rng_scores, 5.0, Randomness.secure().source("h")) for _ in range(20)]
    assert abs(np.mean(got) - 0.8) < 0.01 and len(set(got)) == 20
