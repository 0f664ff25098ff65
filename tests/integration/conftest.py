"""Fixtures of the Ray integration tests (tests/integration is on sys.path for its modules)."""

from __future__ import annotations

import pytest
from synthetic_jobs import make_data, make_ledger


@pytest.fixture(scope="module")
def data():
    return make_data()


@pytest.fixture
def ledger_url(tmp_path):
    return make_ledger(tmp_path)
