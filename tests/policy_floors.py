"""The office's utility floors in policies.rego, and the lowered copy the e2e tests run with
(see tests/e2e/conftest.py for why)."""

from __future__ import annotations

UTILITY_FLOORS = 'utility := {"min_margin": 0, "min_holdout_rows": 100, "min_class_rows": 1}'
LOWERED_FLOORS = 'utility := {"min_margin": -1, "min_holdout_rows": 0, "min_class_rows": 0}'


def lowered_policy(text: str) -> str:
    assert UTILITY_FLOORS in text, "the e2e tests' edit of the utility floors no longer matches policies.rego"
    return text.replace(UTILITY_FLOORS, LOWERED_FLOORS)
