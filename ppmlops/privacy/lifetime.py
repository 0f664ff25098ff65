"""A dataset's lifetime budget as a privacy filter that stays valid when runs are chosen adaptively.

Runs on a dataset are chosen after seeing earlier results (what the ledger says is left, a noisy
risk score, the tuner's history), so the dataset-level stopping rule must be a privacy filter
too. The ledger uses the Renyi filter at ONE order fixed when the dataset is registered
(Feldman & Zrnic 2021, arXiv 2008.11193, with a constant budget; Lecuyer 2021, arXiv 2103.01379,
Section 3): a charge is admitted only if, in every partition it touches, the RDP composed so far
at that order plus the charge stays within

    b = epsilon_L - log(1 - 1/alpha) + (log(delta_L) + log(alpha)) / (alpha - 1),

the RDP budget that the conversion of Balle et al. 2020 (Prop. 12, the one dp-accounting and
the accountant use) turns into exactly (epsilon_L, delta_L). Whatever the order of runs and
whatever each run's curve, everything the ledger admits is (alpha, b)-RDP, hence (epsilon_L,
delta_L)-DP. Choosing the order from the entries after the fact (taking the best order of the
composed curve, as a plain accountant does) is not valid under adaptivity, and a filter over
several orders at once would need delta split across them (Lecuyer 2021); one order fixed in
advance costs nothing when it is near the best order of the runs the dataset will see, which is
what `choose_order` aims for.

The spend reported for a dataset is therefore the conversion at that order: an honest figure for
an adaptive sequence, and never less than the best-order conversion of the same entries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from ppmlops.errors import PpmlopsError
from ppmlops.privacy.blocks import BlockCalendar, calendar_of
from ppmlops.privacy.accountant import (
    ORDERS, Segment, calibrate_noise, check_delta, least_noise, segment_rdp, step_rdp,
)

# Integer orders a dataset may be registered at (the curves are stored on ORDERS).
CANDIDATE_ORDERS: tuple[float, ...] = tuple(a for a in ORDERS if a.is_integer() and 2 <= a <= 256)
# Without a size hint: a fraction of the order that is optimal for a Gaussian (zCDP) lifetime
# spend. Subsampled-Gaussian curves grow faster than linearly in the order, which moves their
# best order below the Gaussian one; 0.75 was the most robust factor over a grid of budgets,
# dataset sizes and epoch counts (benchmarks/accountant.py prints the comparison).
HEURISTIC_FACTOR = 0.75


class LifetimeError(PpmlopsError):
    """A lifetime budget or accounting order is not usable."""


def rdp_budget(epsilon: float, delta: float, order: float) -> float:
    """The RDP at `order` that converts to exactly (epsilon, delta)."""
    a = float(order)
    if a <= 1:
        raise LifetimeError(f"accounting order must be > 1, got {order!r}")
    return float(epsilon) - math.log1p(-1 / a) + (math.log(check_delta(delta)) + math.log(a)) / (a - 1)


def epsilon_at(rdp_value: float, delta: float, order: float) -> float:
    """(epsilon at delta) of an RDP value at one order: the inverse of rdp_budget, never below 0."""
    a = float(order)
    return max(0.0, float(rdp_value) + math.log1p(-1 / a) - (math.log(delta) + math.log(a)) / (a - 1))


def _nearest(order: float) -> float:
    return min(CANDIDATE_ORDERS, key=lambda a: abs(a - order))


def heuristic_order(epsilon: float, delta: float) -> float:
    rho = ((math.sqrt(math.log(1 / delta) + epsilon) - math.sqrt(math.log(1 / delta))) ** 2)
    return _nearest(max(2.0, HEURISTIC_FACTOR * (1 + math.sqrt(math.log(1 / delta) / rho))))


def typical_run_curve(run_epsilon: float, delta: float, rows: int, batch_size: int, epochs: int) -> np.ndarray:
    """The RDP curve of one run at the spec's run epsilon on `rows` rows (a public size hint)."""
    steps = max(1, math.ceil(rows / batch_size))
    q = 1.0 / steps
    sigma = calibrate_noise(run_epsilon, delta, q, steps * epochs)
    return segment_rdp(Segment(sigma, q, steps * epochs))


def choose_order(epsilon: float, delta: float, run_curve: np.ndarray | None = None) -> float:
    """The order to fix for a dataset: the one that fits the most runs like `run_curve`
    (public: from the spec and a declared size), else the heuristic."""
    if run_curve is None:
        return heuristic_order(epsilon, delta)
    best, best_fit = None, -1.0
    for a in CANDIDATE_ORDERS:
        b = rdp_budget(epsilon, delta, a)
        c = float(run_curve[ORDERS.index(a)])
        fit = b / c if b > 0 and c > 0 and math.isfinite(c) else -1.0
        if fit > best_fit:
            best, best_fit = a, fit
    return best if best is not None and best_fit > 0 else heuristic_order(epsilon, delta)


@dataclass(frozen=True)
class LifetimeBudget:
    """A registered dataset's budget: fixed at registration, changed only by an audited command."""

    dataset_id: str
    epsilon: float
    delta: float
    order: float
    # How the rows are divided into blocks (each (block, partition) has this budget): fixed at
    # registration like the budget. Default: one block, "all".
    calendar: BlockCalendar = field(default_factory=BlockCalendar)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise LifetimeError(f"lifetime epsilon must be a finite number > 0, got {self.epsilon!r}")
        check_delta(self.delta)
        if float(self.order) not in ORDERS:
            raise LifetimeError(f"accounting order {self.order!r} is not on the accountant's order grid")
        if self.rdp <= 0:
            raise LifetimeError(
                f"epsilon {self.epsilon:g} at delta {self.delta:g} leaves no RDP budget at order {self.order:g}; "
                "choose a larger order or a larger epsilon")

    @property
    def index(self) -> int:
        return ORDERS.index(float(self.order))

    @property
    def rdp(self) -> float:
        return rdp_budget(self.epsilon, self.delta, self.order)

    def share_used(self, curves: Mapping[str, np.ndarray]) -> float:
        """The worst partition's RDP at the order as a share of the lifetime RDP budget.

        This, not an epsilon, is how much of a lifetime budget is gone: the conversion to epsilon
        is not additive (its log(1/delta) / (alpha - 1) term is paid once, by the first charge),
        so "epsilon spent" would read 1.6 of 3 after the first of ten equal runs.
        """
        worst = max((float(c[self.index]) for c in curves.values()), default=0.0)
        return worst / self.rdp

    def spent_epsilon(self, curves: Mapping[str, np.ndarray]) -> float:
        """The worst partition's RDP at the order, converted at the dataset's delta. For
        information: under adaptive runs only the lifetime (epsilon, delta) is a guarantee."""
        worst = max((float(c[self.index]) for c in curves.values()), default=0.0)
        return epsilon_at(worst, self.delta, self.order) if worst > 0 else 0.0

    def remaining_rdp(self, curves: Mapping[str, np.ndarray], partition: str) -> float:
        spent = float(curves[partition][self.index]) if partition in curves else 0.0
        return max(0.0, self.rdp - spent)

    def min_noise(self, curves: Mapping[str, np.ndarray], partition: str, sample_rate: float, steps: int) -> float:
        """The smallest noise multiplier whose `steps` subsampled-Gaussian steps fit what the
        partition has left at the order (inf when nothing fits)."""
        room = self.remaining_rdp(curves, partition)
        if room <= 0:
            return math.inf

        return least_noise(lambda sigma: steps * float(step_rdp(sigma, sample_rate)[self.index]) <= room)

    def refusal(self, curves: Mapping[str, np.ndarray], charges: Mapping[str, np.ndarray],
                block: str | None = None) -> str | None:
        """Why the charges do not fit (None when they do): exact comparison, no tolerance.
        `curves` are one block's (named in the reason when given)."""
        for partition in sorted(charges):
            before = float(curves[partition][self.index]) if partition in curves else 0.0
            after = before + float(charges[partition][self.index])
            if not after <= self.rdp:
                eps_after = epsilon_at(after, self.delta, self.order) if math.isfinite(after) else math.inf
                where = f"block {block!r}, partition {partition!r}" if block is not None else f"partition {partition!r}"
                return (f"dataset {self.dataset_id!r} would reach epsilon {eps_after:.6g} in {where} "
                        f"(RDP {after:.6g} at order {self.order:g}, over its lifetime budget {self.rdp:.6g}, "
                        f"which is epsilon {self.epsilon:g} at delta {self.delta:g})")
        return None


def spec_run_curve(spec) -> np.ndarray | None:
    """The curve the ledger fixes a dataset's accounting order from (ppmlops.stages.assess.register):
    a run like the spec's on its declared rows (public), when the spec declares them and names no order."""
    p = spec.privacy
    if spec.dataset.expected_rows and p.accounting_order is None:
        return typical_run_curve(p.run_epsilon, p.delta, spec.dataset.expected_rows, spec.training.batch_size,
                                 spec.training.epochs)
    return None


def expected_budget(spec) -> LifetimeBudget:
    """The budget the dataset's first run will register, before anything is charged: for what is
    asked about a dataset no run has touched yet (the assess pre-check, a backfill's cost)."""
    p = spec.privacy
    order = (float(p.accounting_order) if p.accounting_order is not None
             else choose_order(p.epsilon, p.delta, spec_run_curve(spec)))
    return LifetimeBudget(spec.dataset.id, p.epsilon, p.delta, order, calendar=calendar_of(p))
