"""Renyi privacy filter (Feldman & Zrnic 2021, "Individual Privacy Accounting via a Renyi
Filter", arXiv 2008.11193).

When the tuner changes noise, clipping or batch size between epochs, each step's parameters
depend on earlier noisy outputs: adaptive composition. Adding the RDP curves is still valid if
the stopping rule is a filter: the budget curve B(alpha) is fixed before the first step, and a
step runs only if, at EVERY order, the spend so far plus the step's RDP stays <= B(alpha).
The (epsilon, delta) guarantee is then that of B itself.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ppmlops.errors import BudgetExceeded, PpmlopsError
from ppmlops.privacy.accountant import ORDERS, Segment, check_curve, segment_rdp


class PrivacyFilter:
    """Admits steps while spent + rdp <= budget holds at every order.

    The comparison is exact (no tolerance): a filter that admits a little over budget is not a
    filter. To make "run exactly the plan" pass, spend each segment's curve computed as
    `segment_rdp(seg)` (= seg.steps * step_rdp(sigma, q)), one segment at a time in plan
    order; plan_budget sums the plan with the same operations, so the totals are bit-identical.
    """

    def __init__(self, budget: np.ndarray, spent: np.ndarray | None = None):
        self.budget = check_curve(budget, "budget").copy()
        self.budget.setflags(write=False)
        self.spent = np.zeros_like(self.budget) if spent is None else check_curve(spent, "spent").copy()

    def admits(self, rdp: np.ndarray) -> bool:
        return bool(np.all(self.spent + check_curve(rdp) <= self.budget))

    def spend(self, rdp: np.ndarray) -> None:
        """Charge rdp, or raise BudgetExceeded (and charge nothing) if any order would overspend."""
        rdp = check_curve(rdp)
        after = self.spent + rdp
        over = ~(after <= self.budget)
        if over.any():
            # Name the order with the largest relative overshoot: the binding one.
            with np.errstate(divide="ignore", invalid="ignore"):
                excess = np.where(over, (after - self.budget) / np.maximum(self.budget, np.finfo(float).tiny), -np.inf)
            k = int(np.argmax(excess))
            raise BudgetExceeded(
                f"privacy filter refused the step: at Renyi order {ORDERS[k]:g} the spend would reach "
                f"{after[k]!r} (spent {self.spent[k]!r} + step {rdp[k]!r}) over the budget {self.budget[k]!r}"
                f" ({int(over.sum())} of {len(ORDERS)} orders over)")
        self.spent = after

    def remaining(self) -> np.ndarray:
        """budget - spent per order (never below zero)."""
        with np.errstate(invalid="ignore"):
            rem = self.budget - self.spent
        # inf - inf at orders where the budget itself is unbounded: nothing constrains them.
        rem = np.where(np.isinf(self.budget) & np.isinf(self.spent), np.inf, rem)
        return np.maximum(rem, 0.0)

    def state_dict(self) -> dict:
        """Plain JSON-serialisable state for checkpoints (orders included to detect grid changes)."""
        return {
            "orders": list(ORDERS),
            "budget": [float(x) for x in self.budget],
            "spent": [float(x) for x in self.spent],
        }

    @classmethod
    def from_state_dict(cls, d: dict) -> "PrivacyFilter":
        if not isinstance(d, dict) or "budget" not in d or "spent" not in d:
            raise PpmlopsError("privacy filter state must be a mapping with 'budget' and 'spent'")
        orders = d.get("orders")
        if orders is not None and tuple(float(a) for a in orders) != ORDERS:
            # A curve on another grid cannot be re-expressed without the steps that made it.
            raise PpmlopsError(
                f"privacy filter state was saved on a different Renyi order grid ({len(orders)} orders) "
                f"than this version uses ({len(ORDERS)}); it cannot be resumed")
        return cls(np.asarray(d["budget"], dtype=np.float64), np.asarray(d["spent"], dtype=np.float64))

    def __repr__(self) -> str:
        return f"PrivacyFilter(orders={len(ORDERS)}, exhausted_orders={int((self.spent >= self.budget).sum())})"


def plan_budget(segments: Sequence[Segment]) -> np.ndarray:
    """The budget curve B(alpha) of a planned schedule.

    Summed segment by segment exactly as PrivacyFilter.spend accumulates (spent = spent +
    segment_rdp(seg), starting from zeros), so executing the plan is admitted with exact <=
    and one further step is refused.
    """
    total = np.zeros(len(ORDERS))
    for seg in segments:
        if not isinstance(seg, Segment):
            raise PpmlopsError(f"plan_budget expects Segments, got {type(seg).__name__}: {seg!r}")
        total = total + segment_rdp(seg)
    return total
