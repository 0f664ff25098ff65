"""Tuners by name: the one place that maps the names in ppmlops.tuning.protocol to classes."""

from __future__ import annotations

import math
from typing import Sequence

from ppmlops.spec import TUNER_NAMES
from ppmlops.tuning.protocol import PriorResult, Tuner
from ppmlops.tuning.tuners import BayesTuner, FixedTuner, RuleTuner

_CLASSES = {"fixed": FixedTuner, "rule": RuleTuner, "bayes": BayesTuner}
assert tuple(_CLASSES) == TUNER_NAMES, "the registry and spec.TUNER_NAMES must list the same tuners"


def make_tuner(name: str, *, seed: int = 0, learning_rate: float = 0.5, max_grad_norm: float = 1.0,
               prior: Sequence[PriorResult] = (), anchor: tuple[float, float] | None = None,
               trial: bool = False) -> Tuner:
    """A fresh tuner; `anchor` (the spec's learning rate and clip norm; by default the run's
    starting ones) centres the bayes search box, and `prior` (earlier runs' released results,
    ppmlops.run.known) seeds its model. `trial`: the tuner steers one trial of a private search,
    which starts at its drawn settings and keeps the search's noise multiplier."""
    if name not in _CLASSES:
        raise ValueError(f"unknown tuner {name!r}; choose one of {', '.join(TUNER_NAMES)}")
    if name == "bayes":
        points = [({"noise_factor": 1.0, "log_clip": math.log(r.max_grad_norm),
                    "log_step": math.log(r.learning_rate * r.max_grad_norm), "progress": r.progress}, r.accuracy_noisy)
                  for r in prior]
        base_lr, base_clip = anchor or (learning_rate, max_grad_norm)
        return BayesTuner(seed=seed, base_learning_rate=base_lr, base_clip=base_clip, prior=points,
                          start=(learning_rate, max_grad_norm) if trial else None, tune_noise=not trial)
    return _CLASSES[name](seed=seed)


def wants_holdout_accuracy(name: str) -> bool:
    """Whether the plan must budget a noisy holdout accuracy after every epoch for this tuner."""
    if name not in _CLASSES:
        raise ValueError(f"unknown tuner {name!r}; choose one of {', '.join(TUNER_NAMES)}")
    return bool(_CLASSES[name].wants_holdout_accuracy)
