"""End-to-end tests run the pipelines' mechanics on small tables; the office's utility floors
are lowered for them in a copy of the policy.

A DP model trained on the e2e table (4,000 rows, epsilon 1) beats always guessing the majority
class in most runs, but ties it in about one run of five, and the shipped policy then rightly
denies the deploy (beats_baseline). A test whose subject is a run, an approval or the ledger
would fail by chance. The floors themselves are tested where the outcome is fixed:
tests/unit/test_gate_baseline.py, tests/policies/test_policies.rego. Tests that bring their own
policy (test_gates.py, test_scheduler.py) lower the same floors in it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
from policy_floors import lowered_policy  # noqa: E402 - tests/ is on the path (tests/conftest.py)


@pytest.fixture(autouse=True, scope="module")
def _e2e_policy(tmp_path_factory):
    path = tmp_path_factory.mktemp("e2e-policy") / "policies.rego"
    path.write_text(lowered_policy((REPO / "policies.rego").read_text()))
    before = os.environ.get("PPMLOPS_POLICY")
    os.environ["PPMLOPS_POLICY"] = str(path)
    yield path
    if before is None:
        os.environ.pop("PPMLOPS_POLICY", None)
    else:
        os.environ["PPMLOPS_POLICY"] = before
