"""Privacy accounting: RDP accountant, Renyi privacy filter, write-ahead privacy ledger.

- accountant: RDP of the Poisson-subsampled Gaussian (DP-SGD), conversion to (epsilon, delta),
  noise calibration.
- filter: the Feldman-Zrnic Renyi filter that makes adaptive (tuned) schedules safe to account.
- ledger: per-dataset lifetime spend in SQL, composed across runs, parallel over partitions.
"""

from ppmlops.privacy.accountant import (
    ORDERS,
    PrivacyParameterError,
    Segment,
    calibrate_noise,
    epsilon,
    epsilon_from_rdp,
    rdp_curve,
    segment_rdp,
    step_rdp,
)
from ppmlops.privacy.filter import PrivacyFilter, plan_budget
from ppmlops.privacy.ledger import Ledger, LedgerEntry

__all__ = [
    "ORDERS", "PrivacyParameterError", "Segment", "calibrate_noise", "epsilon", "epsilon_from_rdp",
    "rdp_curve", "segment_rdp", "step_rdp", "PrivacyFilter", "plan_budget", "Ledger", "LedgerEntry",
]
