"""A private hyperparameter search run: its plan, its ledger entries and its worker loop (in a real
gloo process group of one, without Ray)."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest
import torch

from plans import DELTA, make_job, synthetic
from ppmlops.privacy.accountant import ORDERS, Segment, epsilon_from_rdp, segment_rdp
from ppmlops.privacy.ledger import COMPLETED, HOLDOUT, SEARCH, TRAIN, Ledger
from ppmlops.privacy.randomness import Randomness
from ppmlops.privacy.search import TrialCount, search_rdp
from ppmlops.training.loop import Comm, DirectoryCheckpoints, read_checkpoint
from ppmlops.training.search_loop import SearchProgress, run_search_worker

CPU = torch.device("cpu")
TRIALS = TrialCount(4.0, 1.0)


def _job(tmp_path, **kw):
    kw.setdefault("run_id", "search-1")
    kw.setdefault("epochs", 2)
    job = make_job(f"sqlite:///{tmp_path / 'ledger.db'}", synthetic(), search=TRIALS, **kw)
    return replace(job, storage_path=str(tmp_path / "ray"))  # where K and the progress are kept


def test_the_plan_calibrates_the_whole_search_to_the_runs_epsilon(tmp_path):
    import dp_accounting
    from dp_accounting import dp_event
    from dp_accounting.rdp import rdp_privacy_accountant

    job = _job(tmp_path, run_epsilon=1.0)
    plan = job.plan
    assert plan.search is not None and plan.holdout_sigma is None and plan.search.score_sigma > 0
    assert plan.epsilon_by_partition[TRAIN] == pytest.approx(1.0, rel=2e-3) and plan.epsilon_by_partition[TRAIN] <= 1.0
    # Google's accountant, from the plan's own settings, finds the same search epsilon
    acc = rdp_privacy_accountant.RdpAccountant(orders=list(ORDERS))
    trial = dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(
        plan.sample_rate, dp_accounting.GaussianDpEvent(plan.noise_multiplier)), plan.steps_per_epoch * plan.epochs)
    acc.compose(dp_event.RepeatAndSelectDpEvent(trial, TRIALS.mean, TRIALS.eta))
    assert acc.get_epsilon(DELTA) == pytest.approx(plan.epsilon_by_partition[TRAIN], rel=1e-6)
    # the same epsilon for a plain run of one trial would allow far less noise
    plain = make_job(f"sqlite:///{tmp_path / 'plain.db'}", synthetic(), epochs=2, run_epsilon=1.0)
    assert plan.noise_multiplier > 1.2 * plain.plan.noise_multiplier


def test_a_search_grant_is_counted_whole_when_the_run_ends(tmp_path):
    job = _job(tmp_path)
    ledger = Ledger(job.ledger_url)
    ledger.close_grant(dataset_id="synthetic", run_id=job.run_id)
    grants = ledger.entries("synthetic", job.run_id, kind="grant")
    searches = [e for e in grants if e.mechanism == SEARCH]
    assert {e.partition for e in searches} == {TRAIN, HOLDOUT} and {e.status for e in searches} == {COMPLETED}
    assert all(e.trials == TRIALS for e in searches)
    plan = job.plan
    trial = segment_rdp(Segment(plan.noise_multiplier, plan.sample_rate, plan.steps_per_epoch * plan.epochs))
    np.testing.assert_array_equal(ledger.charged_curves("synthetic")[TRAIN], search_rdp(trial, TRIALS))
    # the evaluation's piece was never used: released; the search's held-out piece still counts
    evaluation = [e for e in grants if e.partition == HOLDOUT and e.mechanism == "gaussian"]
    assert [e.status for e in evaluation] == ["released"]


def _k(job) -> int:
    return TRIALS.draw(float(Randomness.reproducible(job.seed, job.run_id).source("search-count").uniform(1)[0]))


class _Counting(DirectoryCheckpoints):
    def __init__(self, root, crash_after: int | None = None):
        super().__init__(root)
        self.saves, self.crash_after = 0, crash_after

    def save(self, metrics, directory):
        super().save(metrics, directory)
        self.saves += 1
        if self.saves == self.crash_after:
            raise RuntimeError("the worker died")


def test_a_search_keeps_the_best_trial_and_says_nothing_of_the_others(tmp_path, gloo_world_of_one):
    job = _job(tmp_path, seed=0)
    job = type(job)(**{**job.__dict__, "init_path": str(tmp_path / "init.pt")})
    lines: list[str] = []
    ckpt = _Counting(tmp_path / "ckpt")
    run_search_worker(job, synthetic(), Comm(CPU), ckpt, CPU, echo=lines.append)
    k = _k(job)
    assert ckpt.saves == 1  # one report however many trials ran (tests/unit/test_search_secrecy.py)
    restored = read_checkpoint(os.path.join(ckpt.root, "latest"))
    state = SearchProgress(job.search_state_path).load()[0].search
    assert state["trials"] == state["done"] == k and restored.state.epoch == job.plan.epochs
    assert restored.state.search == {"best": state["best"]}
    best = state["best"]
    lo, hi = job.plan.search.learning_rate
    assert lo <= best["learning_rate"] <= hi
    lo, hi = job.plan.search.max_grad_norm
    assert lo <= best["max_grad_norm"] <= hi and best["noise_multiplier"] == job.plan.noise_multiplier
    assert 0.5 < best["holdout_accuracy_noisy"] <= 1.0  # the synthetic task is easy
    saved = torch.load(job.init_path)
    assert saved.keys() == restored.init.keys() and all(torch.equal(saved[n], restored.init[n]) for n in saved)
    # the task log gets a line at the start and one at the end, however many trials ran
    assert len(lines) == 2 and "chosen learning rate" in lines[1]


def test_a_search_whose_trials_bayes_steers_releases_the_chosen_trials_epochs_at_one_scores_cost(
        tmp_path, gloo_world_of_one):
    from ppmlops.run.records import SearchResult
    from ppmlops.training.search_loop import _release_sigma

    job = _job(tmp_path, seed=0, epochs=3, search_tuner="bayes")
    lines: list[str] = []
    ckpt = _Counting(tmp_path / "ckpt")
    run_search_worker(job, synthetic(), Comm(CPU), ckpt, CPU, echo=lines.append)
    assert ckpt.saves == 1
    best = read_checkpoint(os.path.join(ckpt.root, "latest")).state.search["best"]
    schedule = SearchResult(**best).schedule  # what the driver reads back
    assert [e.epoch for e in schedule] == [1, 2, 3] and best["noise_multiplier"] == job.plan.noise_multiplier
    last = schedule[-1]
    assert (best["learning_rate"], best["max_grad_norm"], best["holdout_accuracy_noisy"]) == (
        last.learning_rate, last.max_grad_norm, last.holdout_accuracy_noisy)
    assert len({(e.learning_rate, e.max_grad_norm) for e in schedule}) > 1  # the tuner moved within the trial
    # three releases at sigma x sqrt(3) have exactly the curve the plan charged for one score
    plan = job.plan
    np.testing.assert_allclose(3 * segment_rdp(Segment(_release_sigma(plan), 1.0, 1)),
                               segment_rdp(Segment(plan.search.score_sigma, 1.0, 1)), rtol=1e-12)
    fixed = _job(tmp_path / "fixed", seed=0, epochs=3)
    assert _release_sigma(fixed.plan) == fixed.plan.search.score_sigma
    assert fixed.plan.epsilon == plan.epsilon  # steering the trials costs nothing more
    assert len(lines) == 2 and "steered by bayes" in lines[0]


def test_the_spec_refuses_an_empty_search_range():
    from ppmlops.spec import Search

    with pytest.raises(ValueError, match="search range"):
        Search(learning_rate=(1.0, 0.1))
    assert epsilon_from_rdp(np.zeros(len(ORDERS)), DELTA)[0] == 0.0
