"""The office's utility floors in policies.rego, and the lowered copy the e2e tests run with.

End-to-end tests run the pipelines' mechanics on small tables. A DP model trained on the e2e table
(4,000 rows, epsilon 1) beats always guessing the majority class in most runs but ties it in about
one run of five, and the shipped policy then rightly denies the deploy (beats_baseline), and the
learnability floors refuse its few steps at plan: a test whose subject is a run, an approval, a
cluster or the ledger would fail by chance. So every module under tests/e2e and tests/integration
runs with the floors lowered in a copy of the policy (tests/conftest.py,
_e2e_policy_floors_lowered); tests that bring their own policy (test_gates.py, test_scheduler.py)
lower the same floors in it, and so do the unit tests that plan the e2e table to test something
else (the learnability floors refuse its few steps). The floors themselves are tested where the outcome is fixed:
tests/unit/test_gate_baseline.py and tests/policies/test_policies.rego.
"""

from __future__ import annotations

UTILITY_FLOORS = ('utility := {"min_margin": 0, "min_holdout_rows": 100, "min_class_rows": 1, '
                  '"min_signal_to_noise": 2.4, "min_update_reach": 60}')
LOWERED_FLOORS = ('utility := {"min_margin": -1, "min_holdout_rows": 0, "min_class_rows": 0, '
                  '"min_signal_to_noise": 0, "min_update_reach": 0}')


def lowered_policy_file(folder) -> "Path":
    """The shipped policy with the floors lowered, written to `folder`: for PPMLOPS_POLICY."""
    from pathlib import Path

    path = Path(folder) / "policies.rego"
    path.write_text(lowered_policy((Path(__file__).resolve().parents[1] / "policies.rego").read_text()))
    return path


def lowered_policy(text: str) -> str:
    assert UTILITY_FLOORS in text, "the e2e tests' edit of the utility floors no longer matches policies.rego"
    return text.replace(UTILITY_FLOORS, LOWERED_FLOORS)
