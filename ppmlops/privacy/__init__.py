"""Privacy accounting: what every release costs, and the ledger that makes it add up for life.

- accountant: RDP of the Poisson-subsampled Gaussian (DP-SGD), conversion to (epsilon, delta),
  noise calibration.
- filter: the Feldman-Zrnic Renyi filter that makes a run's adaptive (tuned) schedule valid.
- lifetime: the dataset-level filter (one Renyi order fixed at registration) across runs.
- ledger: per-dataset charges in SQL (releases, run grants, usage), composed for life.
- session: one run's grant, filters and releases (what training and evaluation call).
- randomness: CSPRNG sources (secure by default) and the reproducible mode for tests.
- releases: noisy counts (exact discrete Gaussian) and what each release costs.
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
from ppmlops.privacy.ledger import Charge, Ledger, LedgerEntry

__all__ = [
    "ORDERS", "PrivacyParameterError", "Segment", "calibrate_noise", "epsilon", "epsilon_from_rdp",
    "rdp_curve", "segment_rdp", "step_rdp", "PrivacyFilter", "plan_budget", "Charge", "Ledger", "LedgerEntry",
]
