"""ANOM tuners: between DP-SGD epochs, propose the next epoch's noise, clip norm and learning rate.

A tuner runs on rank 0 of the Ray Train workers and sees only what is private-safe: its own
earlier choices and the statistics the worker released with their own noise and cost
(ppmlops.tuning.signals). It never decides what is spent: every proposal still passes the run's
privacy filter, which refuses an epoch that would overspend. The worker talks to tuners through
ppmlops.tuning.protocol only; ppmlops.tuning.registry builds them by name.

To keep proposals admissible, a tuner is given before each epoch what the filter has left (a
BudgetView) and never proposes a noise multiplier below the smallest one that keeps every
remaining epoch affordable at the same noise (`protocol.min_affordable_sigma`). Noise can
therefore fall below the plan's only when earlier epochs spent less than planned.

Every proposal carries an explanation (what the tuner saw, why it chose, predicted gain and
acquisition value where it has them, budget left as epsilon); the worker stores it in the epoch's
history, prints it on the progress line and saves it with the run.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from ppmlops.privacy.accountant import Segment, epsilon_from_rdp, segment_rdp
# The floor lives in the protocol: the worker asks for it too, and depends on no tuner.
from ppmlops.tuning.protocol import CLIP_SIGNAL, SIGNAL, BudgetView, EpochSettings, Proposal, affordable_floor


def _fits(budget: BudgetView | None, sigma: float) -> bool:
    """Whether every remaining epoch fits at `sigma` exactly (the floor is found to 1e-4 only)."""
    if budget is None or not budget.remaining:
        return True
    need = budget.epochs_left * segment_rdp(Segment(sigma, budget.sample_rate, budget.steps))
    return bool(np.all(need <= np.asarray(budget.remaining)))


def epsilon_left(budget: BudgetView | None) -> float:
    if budget is None or not budget.remaining:
        return math.nan
    return float(epsilon_from_rdp(np.maximum(np.asarray(budget.remaining), 0.0), budget.delta)[0])


class FlooredTuner:
    """Base of the tuners here (each implements ppmlops.tuning.protocol.Tuner): raises every
    proposal to the affordable floor and explains it; subclasses `choose`."""

    name = "base"
    wants_holdout_accuracy = True
    wants_clipped_fraction = False

    def __init__(self, *, seed: int = 0):
        self.seed = seed
        self._floor = 0.0

    def propose(self, epoch: int, history: list[dict], current: EpochSettings, budget: BudgetView) -> Proposal:
        self._floor = affordable_floor(budget)
        settings, why, extra = self.choose(epoch, history, current)
        if settings.noise_multiplier < self._floor and not _fits(budget, settings.noise_multiplier):
            settings = EpochSettings(self._floor, settings.max_grad_norm, settings.learning_rate)
            why += f"; noise raised to {self._floor:.3g}, the least the remaining budget affords"
        details = {"epsilon_left_before": epsilon_left(budget), "sigma_floor": self._floor, **extra}
        return Proposal(settings.checked(), why, {"saw": _seen(history), **details})

    def choose(self, epoch: int, history: list[dict], current: EpochSettings):
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {"name": self.name, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state.get("seed", self.seed))


class FixedTuner(FlooredTuner):
    """The baseline: the plan's calibrated settings for every epoch."""

    name = "fixed"
    wants_holdout_accuracy = False  # it would not look: spend nothing on the held-out rows

    def choose(self, epoch, history, current):
        return current, "fixed: the plan's calibrated settings", {}


class RuleTuner(FlooredTuner):
    """The paper's Algorithm 1 on the noisy holdout accuracy and the noisy clipped fraction.

    When accuracy fell by more than `tolerance` (risk of divergence), raise the noise and cut the
    clip norm; otherwise let the noise fall gradually (by `decay`, never below what the budget
    affords) and let the clip norm follow the `quantile` of the per-row gradient norms by
    geometric updates on the noisy fraction of rows left unclipped (Andrew et al. 2021):
    C <- C * exp(-eta * (unclipped - quantile)). That fraction is released jointly with the
    gradient inside the epoch's own noise (tuning.signals), so it costs no extra epsilon.
    """

    name = "rule"
    wants_clipped_fraction = True  # the worker releases it for this tuner only

    def __init__(self, *, seed: int = 0, decay: float = 0.9, raise_by: float = 1.15, clip_cut: float = 0.8,
                 tolerance: float = 0.01, quantile: float = 0.5, eta: float = 0.2):
        super().__init__(seed=seed)
        self.decay, self.raise_by, self.clip_cut, self.tolerance = decay, raise_by, clip_cut, tolerance
        self.quantile, self.eta = quantile, eta

    def _clip_following_quantile(self, history, current) -> tuple[float, str]:
        clipped = history[-1].get(CLIP_SIGNAL) if history else None
        if clipped is None:
            return current.max_grad_norm, "clip kept (no clipped fraction released yet)"
        unclipped = 1.0 - clipped
        clip = current.max_grad_norm * math.exp(-self.eta * (unclipped - self.quantile))
        return clip, (f"clip {current.max_grad_norm:.3g} -> {clip:.3g} toward the {self.quantile:g} quantile of "
                      f"gradient norms (noisy unclipped fraction {unclipped:.2f})")

    def choose(self, epoch, history, current):
        accs = [h.get(SIGNAL) for h in history if h.get(SIGNAL) is not None]
        drop = accs[-2] - accs[-1] if len(accs) >= 2 else None
        if drop is not None and drop > self.tolerance:
            return (EpochSettings(current.noise_multiplier * self.raise_by, current.max_grad_norm * self.clip_cut,
                                  current.learning_rate),
                    f"rule: noisy accuracy fell by {drop:.3f} (> {self.tolerance}): more noise, tighter clip", {})
        clip, clip_why = self._clip_following_quantile(history, current)
        trend = "no trend yet" if drop is None else f"noisy accuracy held ({-drop:+.3f})"
        return (EpochSettings(current.noise_multiplier * self.decay, clip, current.learning_rate),
                f"rule: {trend}: noise falls gradually; {clip_why}", {})


class BayesTuner(FlooredTuner):
    """Bayesian optimisation (bayesian-optimization's UCB on a Gaussian process) of the noisy holdout
    accuracy over (noise above the affordable floor, clip norm, step size), conditioned on progress.

    Within a run the accuracy after an epoch depends on every earlier epoch, not only on the
    settings that epoch used: "accuracy of x" is not a stationary objective. So each observation
    is (settings, progress = epochs done / epochs) -> noisy accuracy after that epoch, and the next
    epoch's settings maximise the acquisition at the progress that epoch will reach. Observations
    from earlier runs of the pipeline (their released settings and noisy scores, `prior`) join
    the model from the first epoch: post-processing of releases already charged, so free.

    The acquisition is maximised over a few hundred random candidates plus the best point seen, and
    the GP's kernel is fitted once per epoch without restarts: milliseconds, where bayes_opt's own
    suggest() (10,000 candidates, ten L-BFGS-B restarts, five kernel restarts) took about 0.1 s.
    """

    name = "bayes"
    KAPPA = 2.0
    CANDIDATES = 256
    NOISE = 0.05  # the GP's nugget, in units of the (normalised) accuracy's spread: the signal is noisy

    def __init__(self, *, seed: int = 0, base_learning_rate: float = 0.5, base_clip: float = 1.0,
                 prior: list[tuple[dict, float]] | None = None, start: tuple[float, float] | None = None,
                 tune_noise: bool = True):
        super().__init__(seed=seed)
        # A search's trial starts at its drawn (learning rate, clip norm) and keeps the search's
        # noise: every trial must have the same privacy curve.
        self.start, self.tune_noise = (tuple(map(float, start)) if start else None), bool(tune_noise)
        # The box is centred on the spec's settings, never on a warm start's: a box that followed
        # each week's best known would let a pipeline's settings wander off week after week.
        self.base_lr, self.base_clip = float(base_learning_rate), float(base_clip)
        self.points: list[tuple[dict, float]] = []  # (params with progress, noisy accuracy after that epoch)
        self.prior = [(dict(p), float(t)) for p, t in (prior or [])]
        self.pending: dict | None = None
        self._epochs = 1
        gp_libraries()  # imported at the worker's set-up, not inside its first epoch

    def _bounds(self) -> dict[str, tuple[float, float]]:
        # Searched: the noise above the affordable floor (only a little: every bit more is budget
        # left unspent), the clip norm, and the step size lr x clip. Once most rows are clipped,
        # an update's size is about lr x clip, so that product (not lr alone) is what a run with
        # few steps must get right; searching it directly decouples it from the clip.
        step = self.base_lr * self.base_clip
        noise = {"noise_factor": (1.0, 1.2)} if self.tune_noise else {}
        return {**noise, "log_clip": (math.log(self.base_clip / 10), math.log(self.base_clip * 2)),
                "log_step": (math.log(step / 2), math.log(step * 8))}

    def _first(self) -> dict[str, float]:
        """The start, or else the centre of the box: the usual first design point, and no random first epoch."""
        if self.start is not None:
            lr, clip = self.start
            return {**({"noise_factor": 1.0} if self.tune_noise else {}), "log_clip": math.log(clip),
                    "log_step": math.log(lr * clip)}
        return {k: (lo + hi) / 2 for k, (lo, hi) in self._bounds().items()}

    def propose(self, epoch: int, history: list[dict], current: EpochSettings, budget: BudgetView) -> Proposal:
        self._epochs = max(1, epoch - 1 + budget.epochs_left) if budget is not None else max(1, epoch)
        return super().propose(epoch, history, current, budget)

    def _unit(self, params: dict) -> list[float]:
        """A point in the unit cube: each searched setting scaled by its box, then the progress."""
        b = self._bounds()
        return [(params[k] - lo) / (hi - lo) for k, (lo, hi) in b.items()] + [params.get("progress", 1.0)]

    def _suggest(self, progress: float) -> tuple[dict, dict[str, Any]]:
        acquisition, GaussianProcessRegressor, Matern, ConvergenceWarning = gp_libraries()
        seen = self.prior + self.points
        X = np.array([self._unit(p) for p, _ in seen])
        y = np.array([t for _, t in seen])
        # Length scales below a hundredth of the box would fit the noise, not the signal.
        gp = GaussianProcessRegressor(kernel=Matern(length_scale=np.full(X.shape[1], 0.5),
                                                    length_scale_bounds=(1e-2, 1e2), nu=2.5),
                                      alpha=self.NOISE, normalize_y=True, n_restarts_optimizer=0,
                                      random_state=self.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # a bound reached is an answer here, not news
            gp.fit(X, y)
        rng = np.random.default_rng(self.seed * 1000 + len(self.points))
        cube = np.vstack([rng.random((self.CANDIDATES, X.shape[1] - 1)), X[int(np.argmax(y)), :-1]])
        cand = np.hstack([np.clip(cube, 0, 1), np.full((len(cube), 1), progress)])
        mean, std = gp.predict(cand, return_std=True)
        ucb = acquisition.UpperConfidenceBound(kappa=self.KAPPA).base_acq(mean, std)
        best = int(np.argmax(ucb))
        params = {k: lo + (hi - lo) * float(cand[best, i]) for i, (k, (lo, hi)) in enumerate(self._bounds().items())}
        last = self.points[-1][1] if self.points else float(y.max())
        return params, {"predicted_accuracy": float(mean[best]), "predicted_gain": float(mean[best] - last),
                        "acquisition": float(ucb[best])}

    def choose(self, epoch, history, current):
        if self.pending is not None and history and history[-1].get(SIGNAL) is not None:
            self.points.append((self.pending, float(history[-1][SIGNAL])))
        self.pending = None
        if history and history[-1].get(SIGNAL) is None:
            return current, "bayes: no noisy holdout accuracy released, settings kept", {}
        progress = epoch / self._epochs  # where the run will be after this epoch
        extra: dict[str, Any] = {"observations": len(self.points), "from_earlier_runs": len(self.prior)}
        if self.start is not None and not self.points:
            params = self._first()
            why = "bayes: the trial's drawn settings first"
        elif len(self.prior) + len(self.points) >= 2:
            params, predicted = self._suggest(progress)
            extra.update(predicted)
            why = (f"bayes: UCB at progress {progress:.2f} over {len(self.points)} epochs"
                   + (f" and {len(self.prior)} earlier runs' results" if self.prior else "")
                   + f" predicts accuracy {predicted['predicted_accuracy']:.3f}")
        elif self.points and self.start is not None:
            params = {k: v for k, v in self.points[-1][0].items() if k != "progress"}
            why = "bayes: one observation, settings kept"
        else:
            params = self._first()
            why = f"bayes: exploring ({len(self.points)} observations, prior only)"
        self.pending = {**params, "progress": progress}
        floor = self._floor or current.noise_multiplier
        clip = math.exp(params["log_clip"])
        settings = EpochSettings(floor * params.get("noise_factor", 1.0), clip, math.exp(params["log_step"]) / clip)
        extra["params"] = params
        return settings, why, extra

    def state_dict(self) -> dict:
        return {**super().state_dict(), "points": [[p, t] for p, t in self.points], "pending": self.pending,
                "start": list(self.start) if self.start else None, "tune_noise": self.tune_noise,
                "prior": [[p, t] for p, t in self.prior]}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.points = [(dict(p), float(t)) for p, t in state.get("points", [])]
        self.prior = [(dict(p), float(t)) for p, t in state.get("prior", [])] or self.prior
        self.pending = state.get("pending")
        self.start = tuple(state["start"]) if state.get("start") else self.start
        self.tune_noise = bool(state.get("tune_noise", self.tune_noise))


def gp_libraries():
    """bayes_opt and scikit-learn (about half a second to import the first time)."""
    from bayes_opt import acquisition
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import Matern

    return acquisition, GaussianProcessRegressor, Matern, ConvergenceWarning


def _seen(history: list[dict]) -> dict[str, Any]:
    if not history:
        return {}
    last = history[-1]
    return {k: last.get(k) for k in ("epoch", SIGNAL, CLIP_SIGNAL, "noise_multiplier", "max_grad_norm", "learning_rate",
                                      "epsilon_used")}
