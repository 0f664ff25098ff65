"""Tuners by name: the one place that maps the names in ppmlops.tuning.protocol to classes."""

from __future__ import annotations

import math
from typing import Sequence

from ppmlops.tuning.protocol import TUNER_NAMES, PriorResult, Tuner
from ppmlops.tuning.tuners import BayesTuner, FixedTuner, RuleTuner

_CLASSES = {"fixed": FixedTuner, "rule": RuleTuner, "bayes": BayesTuner}
assert tuple(_CLASSES) == TUNER_NAMES, "the registry and protocol.TUNER_NAMES must list the same tuners"


def make_tuner(name: str, *, seed: int = 0, learning_rate: float = 0.5, max_grad_norm: float = 1.0,
               prior: Sequence[PriorResult] = ()) -> Tuner:
    """A fresh tuner; the run's starting learning rate and clip norm centre the bayes search box,
    and `prior` (earlier runs' released results, ppmlops.run.known) seeds its model."""
    if name not in _CLASSES:
        raise ValueError(f"unknown tuner {name!r}; choose one of {', '.join(TUNER_NAMES)}")
    if name == "bayes":
        points = [({"noise_factor": 1.0, "log_clip": math.log(r.max_grad_norm),
                    "log_step": math.log(r.learning_rate * r.max_grad_norm), "progress": r.progress}, r.accuracy_noisy)
                  for r in prior]
        return BayesTuner(seed=seed, base_learning_rate=learning_rate, base_clip=max_grad_norm, prior=points)
    return _CLASSES[name](seed=seed)


def wants_holdout_accuracy(name: str) -> bool:
    """Whether the plan must budget a noisy holdout accuracy after every epoch for this tuner."""
    if name not in _CLASSES:
        raise ValueError(f"unknown tuner {name!r}; choose one of {', '.join(TUNER_NAMES)}")
    return bool(_CLASSES[name].wants_holdout_accuracy)
