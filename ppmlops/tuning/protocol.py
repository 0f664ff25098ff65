"""What the DP-SGD worker and an ANOM tuner exchange, and nothing else.

The worker depends on this module only (not on any tuner), and tuners depend on it and on the
privacy package, so training and tuning never import each other. Torch-free.

Before each epoch rank 0 gives the tuner the epoch number, the history of earlier epochs (only
DP-released values: the settings it chose, noisy holdout accuracy, noisy clipped fraction,
epsilon used) and a BudgetView of what the run's privacy filter has left; the tuner answers
with a Proposal: the epoch's settings and an explanation in words. The filter still decides:
a proposal that does not fit is refused and the run stops cleanly.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ppmlops.errors import TrainingError
from ppmlops.privacy.accountant import Segment, segment_rdp

# The released signals' names in an epoch's history, as the worker writes and a tuner reads them.
SIGNAL = "holdout_accuracy_noisy"
CLIP_SIGNAL = "clipped_fraction_noisy"


@dataclass(frozen=True)
class EpochSettings:
    """What rank 0 broadcasts before an epoch: every rank trains with exactly these."""

    noise_multiplier: float
    max_grad_norm: float
    learning_rate: float

    def checked(self) -> "EpochSettings":
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise TrainingError(f"epoch setting {name} must be a finite number > 0, got {value!r}")
        return EpochSettings(float(self.noise_multiplier), float(self.max_grad_norm), float(self.learning_rate))


@dataclass(frozen=True)
class BudgetView:
    """What the run's training filter has left, per Renyi order, and the shape of an epoch."""

    remaining: tuple[float, ...]
    sample_rate: float
    steps: int
    epochs_left: int
    delta: float


@dataclass
class Proposal:
    settings: EpochSettings
    why: str
    details: dict[str, Any] = field(default_factory=dict)


class PriorResult(Protocol):
    """A result an earlier run released (ppmlops.run.known.KnownResult): a tuner may start from it."""

    learning_rate: float
    max_grad_norm: float
    progress: float  # epochs done / epochs when the accuracy was released
    accuracy_noisy: float


@runtime_checkable
class Tuner(Protocol):
    name: str
    # Whether the worker must release the noisy holdout accuracy (charged to the holdout
    # partition) and the noisy clipped fraction (inside the step's own noise) for this tuner.
    wants_holdout_accuracy: bool
    wants_clipped_fraction: bool

    def propose(self, epoch: int, history: list[dict[str, Any]], current: EpochSettings,
                budget: BudgetView) -> Proposal: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# What a BudgetView affords, asked by the worker (is any epoch left?) and by every tuner (the
# floor of its proposals): here, so that the worker needs no tuner.
def min_affordable_sigma(remaining: np.ndarray, sample_rate: float, steps: int, epochs_left: int) -> float:
    """Smallest noise multiplier whose `epochs_left` epochs fit in `remaining` at every order."""
    def fits(sigma: float) -> bool:
        return bool(np.all(epochs_left * segment_rdp(Segment(sigma, sample_rate, steps)) <= remaining))

    lo, hi = 0.05, 1.0
    while not fits(hi):
        lo, hi = hi, hi * 2
        if hi > 1e4:
            return math.inf  # nothing is affordable: the filter will stop the run
    # Each probe computes a new RDP curve (about 0.5 ms): stop at 1e-4 relative, which is far
    # below what the noise's effect on accuracy can resolve.
    while hi - lo > 1e-4 * hi:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi  # always the admissible side


def affordable_floor(budget: BudgetView | None) -> float:
    if budget is None or not budget.remaining:
        return 0.0
    return _floor_of(budget)


@functools.lru_cache(maxsize=8)
def _floor_of(budget: BudgetView) -> float:
    # The worker asks before the tuner does, for the same view: one bisection per epoch.
    return min_affordable_sigma(np.asarray(budget.remaining), budget.sample_rate, budget.steps, budget.epochs_left)
