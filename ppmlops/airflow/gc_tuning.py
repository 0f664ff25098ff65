"""The garbage collector's thresholds for a process that runs a whole DAG, every task one after
another (see ppmlops.airflow.run_one.prepare_process for why and what was measured).

A module of its own, importing nothing, so that a DAG file run as a script can set them before
its first heavy import (ppmlops.airflow imports its DAG factory lazily)."""

from __future__ import annotations

import gc

# Young generation every 50,000 allocations instead of 700; each older one 100 times more rarely.
THRESHOLDS = (50_000, 100, 100)


def tune() -> None:
    gc.set_threshold(*THRESHOLDS)
