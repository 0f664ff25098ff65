"""ANOM tuners and the private-safe holdout signal."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ppmlops.privacy.accountant import ORDERS, Segment, segment_rdp
from ppmlops.privacy.randomness import Randomness
from ppmlops.privacy.releases import noisy_counts
from ppmlops.tuning import signals
from ppmlops.spec import TUNER_NAMES
from ppmlops.tuning.protocol import BudgetView, EpochSettings, Tuner, min_affordable_sigma
from ppmlops.tuning.registry import make_tuner, wants_holdout_accuracy
from ppmlops.tuning.tuners import BayesTuner, FixedTuner, RuleTuner

Q, STEPS = 0.01, 100
PLAN = EpochSettings(1.2, 1.0, 0.5)


def budget_for(sigma: float, epochs: int) -> np.ndarray:
    return epochs * segment_rdp(Segment(sigma, Q, STEPS))


def view(remaining, epochs_left) -> BudgetView:
    return BudgetView(tuple(float(x) for x in remaining), Q, STEPS, epochs_left, 1e-5)


def propose(tuner, epoch, history, current, remaining, epochs_left):
    return tuner.propose(epoch, history, current, view(remaining, epochs_left))


def test_noisy_accuracy_is_the_noisy_pair_and_a_rate():
    draws = []
    for i in range(300):
        noisy = noisy_counts(signals.accuracy_counts(500, 1000), signals.accuracy_groups(10.0),
                             Randomness.reproducible("acc", i).source("a"))
        draws.append(signals.accuracy_of(noisy.values))
    assert 0.0 <= min(draws) and max(draws) <= 1.0
    # c~ / (c~ + w~) with noise 10 on c = w = 500: std about sigma * sqrt(c^2 + w^2) / n^2
    assert np.std(draws) == pytest.approx(10.0 * np.sqrt(2 * 500**2) / 1000**2, rel=0.25)
    assert np.mean(draws) == pytest.approx(0.5, abs=0.003)


def test_every_tuner_satisfies_the_protocol_and_says_what_it_reads():
    for name in TUNER_NAMES:
        assert isinstance(make_tuner(name), Tuner)
    assert not wants_holdout_accuracy("fixed") and wants_holdout_accuracy("rule") and wants_holdout_accuracy("bayes")


def test_min_affordable_sigma_is_the_plan_when_nothing_was_spent():
    floor = min_affordable_sigma(budget_for(1.2, 5), Q, STEPS, 5)
    assert floor == pytest.approx(1.2, rel=2e-4)
    assert np.all(5 * segment_rdp(Segment(floor, Q, STEPS)) <= budget_for(1.2, 5))
    # having spent less than planned, the rest may use less noise
    assert min_affordable_sigma(budget_for(1.2, 5), Q, STEPS, 3) < 1.2
    assert math.isinf(min_affordable_sigma(np.zeros(len(ORDERS)), Q, STEPS, 1))


def test_fixed_keeps_the_plan_and_explains():
    tuner = FixedTuner()
    proposal = propose(tuner, 1, [], PLAN, budget_for(1.2, 5), 5)
    assert proposal.settings.max_grad_norm == 1.0 and proposal.settings.noise_multiplier == pytest.approx(1.2, rel=2e-4)
    assert "fixed" in proposal.why and proposal.details["epsilon_left_before"] > 0


def test_rule_raises_noise_on_a_drop_and_never_goes_below_the_affordable_floor():
    tuner = RuleTuner()
    history = [{"epoch": 1, "holdout_accuracy_noisy": 0.80}, {"epoch": 2, "holdout_accuracy_noisy": 0.70}]
    # 3 epochs left of a 5-epoch budget: the floor is lower
    up = propose(tuner, 3, history, PLAN, budget_for(1.2, 5), 3)
    assert up.settings.noise_multiplier > PLAN.noise_multiplier and up.settings.max_grad_norm < 1.0
    assert "fell by 0.100" in up.why
    history[-1]["holdout_accuracy_noisy"] = 0.81
    down = propose(tuner, 3, history, PLAN, budget_for(1.2, 5), 5)  # nothing spent: the floor is the plan
    assert down.settings.noise_multiplier == pytest.approx(1.2, rel=2e-4)
    assert "least the remaining budget affords" in down.why


def test_bayes_explores_then_predicts_and_resumes_from_its_state():
    tuner = BayesTuner(seed=3)
    history = []
    for epoch in range(1, 5):
        p = propose(tuner, epoch, history, PLAN, budget_for(1.2, 5), 6 - epoch)
        assert p.settings.noise_multiplier >= p.details["sigma_floor"]
        assert 0.1 - 1e-9 <= p.settings.max_grad_norm <= 2.0 + 1e-9
        # the step size lr x clip is searched from half to 8x the spec's (0.5 x 1.0)
        assert 0.25 - 1e-9 <= p.settings.learning_rate * p.settings.max_grad_norm <= 4.0 + 1e-9
        history.append({"epoch": epoch, "holdout_accuracy_noisy": 0.6 + 0.05 * epoch,
                        "noise_multiplier": p.settings.noise_multiplier})
    assert {"predicted_gain", "acquisition", "predicted_accuracy"} <= set(p.details)
    assert p.details["acquisition"] >= p.details["predicted_accuracy"]

    restored = make_tuner("bayes", seed=3)
    restored.load_state_dict(tuner.state_dict())
    history.append({"epoch": 5, "holdout_accuracy_noisy": 0.9})
    assert (propose(tuner, 6, history, PLAN, budget_for(1.2, 5), 1).settings
            == propose(restored, 6, history, PLAN, budget_for(1.2, 5), 1).settings)


def test_no_signal_keeps_the_settings():
    p = propose(BayesTuner(), 2, [{"epoch": 1, "holdout_accuracy_noisy": None}], PLAN, budget_for(1.2, 5), 4)
    assert "no noisy holdout accuracy" in p.why


def test_unknown_tuner_is_named():
    with pytest.raises(ValueError, match="unknown tuner 'grid'"):
        make_tuner("grid")


@pytest.mark.parametrize("clipped, grows", [(0.9, True), (0.1, False)])
def test_rule_clip_follows_the_noisy_gradient_norm_quantile(clipped, grows):
    tuner = RuleTuner(quantile=0.5, eta=0.2)
    history = [{"epoch": 1, "holdout_accuracy_noisy": 0.8, "clipped_fraction_noisy": clipped}]
    p = propose(tuner, 2, history, PLAN, budget_for(1.2, 5), 4)
    # most rows clipped: the median norm is above C, so C grows; few clipped: C shrinks
    assert p.settings.max_grad_norm == pytest.approx(math.exp(-0.2 * ((1 - clipped) - 0.5)))
    assert (p.settings.max_grad_norm > 1.0) is grows
    assert "quantile" in p.why and p.details["saw"]["clipped_fraction_noisy"] == clipped
    assert RuleTuner.wants_clipped_fraction and not BayesTuner.wants_clipped_fraction


def test_joint_release_keeps_the_step_noise_multiplier():
    """Andrew et al.: gradient noise sigma_g and count noise sigma_b jointly cost a step of sigma."""
    sigma = 1.3
    sigma_b = signals.count_noise(sigma)
    sigma_g = signals.gradient_noise(sigma, sigma_b)
    assert sigma_b == 5 * sigma and sigma_g > sigma
    assert sigma_g ** -2 + sigma_b ** -2 == pytest.approx(sigma ** -2, rel=1e-12)
    assert signals.gradient_noise(sigma, None) == sigma
    with pytest.raises(ValueError):
        signals.gradient_noise(sigma, sigma)  # the counts cannot take all of the step's noise
    note = signals.train_note(2, sigma, 1.0, sigma_b)
    assert "clipped, unclipped" in note and f"{sigma_b:.6g}" in note and f"{sigma_g:.6g}" in note


def test_noisy_clipped_fraction_is_centred_with_the_epoch_sum_noise():
    steps, sigma_b = 100, 5.0
    source = Randomness.reproducible("clip").source("c")
    draws = np.array([signals.noisy_clipped_fraction(3000, 1000, sigma_b, steps, source) for _ in range(400)])
    assert np.all((draws >= 0) & (draws <= 1))
    assert draws.mean() == pytest.approx(0.75, abs=0.01)
    # each count carries N(0, (sigma_b sqrt(steps))^2) = N(0, 50^2): about 0.0125 on the fraction
    assert 0.005 < draws.std() < 0.03


def _point(clip: float, progress: float, base: BayesTuner) -> dict:
    step = base.base_lr * base.base_clip
    return {"noise_factor": 1.1, "log_clip": math.log(clip), "log_step": math.log(step), "progress": progress}


def test_bayes_conditions_on_progress_and_starts_from_earlier_runs():
    """Earlier runs' released results say: early in a run a small clip did best, at the end a large
    one. The tuner's first proposal already uses them, and what it proposes depends on where in
    the run the epoch falls (the objective is accuracy after an epoch, given the progress)."""
    template = BayesTuner()
    prior = []
    for clip in (0.12, 0.3, 0.8, 1.9):
        early = 0.80 - 0.1 * abs(math.log(clip / 0.12))
        late = 0.80 - 0.1 * abs(math.log(clip / 1.9))
        prior += [(_point(clip, 0.25, template), early), (_point(clip, 1.0, template), late)]
    first = propose(BayesTuner(seed=1, prior=prior), 1, [], PLAN, budget_for(1.2, 4), 4)
    last = propose(BayesTuner(seed=1, prior=prior), 4, [], PLAN, budget_for(1.2, 1), 1)
    assert first.details["from_earlier_runs"] == 8 and "earlier runs" in first.why
    assert first.settings.max_grad_norm < 0.5 < 1.0 < last.settings.max_grad_norm


def test_a_warm_start_moves_where_bayes_begins_but_not_its_box():
    """Week after week the best known configuration may sit at the edge of the box. The box stays
    centred on the spec's settings (the anchor), so the proposals cannot wander off with it."""
    from ppmlops.run.records import KnownResult

    edge = [KnownResult(run_id=f"w{i}", learning_rate=20.0, max_grad_norm=0.2, progress=p, accuracy_noisy=0.8 + i / 100,
                        what="epoch") for i, p in enumerate((0.25, 0.5, 0.75, 1.0))]
    def proposals(anchor):
        tuner = make_tuner("bayes", seed=2, learning_rate=20.0, max_grad_norm=0.2, prior=edge, anchor=anchor)
        history, current, out = [], PLAN, []
        for epoch in range(1, 5):
            current = propose(tuner, epoch, history, current, budget_for(1.2, 5 - epoch), 5 - epoch).settings
            history.append({"epoch": epoch, "holdout_accuracy_noisy": 0.7, **vars(current)})
            out.append(current)
        return out

    def in_box(s: EpochSettings) -> bool:  # the box around lr 0.5, clip 1: clip 0.1-2, lr x clip 0.25-4
        step = s.learning_rate * s.max_grad_norm
        return 0.1 - 1e-9 <= s.max_grad_norm <= 2.0 + 1e-9 and 0.25 - 1e-9 <= step <= 4.0 + 1e-9

    assert all(in_box(s) for s in proposals((0.5, 1.0)))
    assert not all(in_box(s) for s in proposals(None))  # a box centred on the warm start leaves it


def test_a_search_trials_bayes_starts_at_its_draw_and_keeps_the_search_noise():
    tuner = make_tuner("bayes", seed=0, learning_rate=3.0, max_grad_norm=0.07, anchor=(0.5, 1.0), trial=True)
    trial_view = BudgetView((), Q, STEPS, 3, 1e-5)  # no filter inside a trial: its noise is the search's
    first = tuner.propose(1, [], EpochSettings(4.2, 0.07, 3.0), trial_view)
    assert (first.settings.max_grad_norm, first.settings.learning_rate) == pytest.approx((0.07, 3.0))
    assert first.settings.noise_multiplier == 4.2 and "noise_factor" not in tuner._bounds()
    seen = [{"epoch": 1, "holdout_accuracy_noisy": 0.7, **vars(first.settings)}]
    second = tuner.propose(2, seen, first.settings, BudgetView((), Q, STEPS, 2, 1e-5))
    assert second.settings == first.settings  # one observation: kept
