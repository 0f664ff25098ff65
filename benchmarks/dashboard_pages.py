"""How long each dashboard page takes to render on this machine, as a reader waits for it.

    .venv/bin/python benchmarks/dashboard_pages.py [--requests 30] [--runs 1]

Builds a ppmlops home with tests/dashboard_data.py (two finished runs, a refused one: ledger
with grants trimmed and released, real policy decisions, registry versions), --runs times over
(more runs: a longer ledger and audit log), then requests each page --requests times through the
app in-process (Starlette's test client: no network, no Airflow login in front), after one
warm-up request per page, as a compliance officer and as a viewer. Prints the median and p90
per page and the ratio of the slowest page's median to the fastest's, measured in this run.
Every reply is checked (status 200, non-empty) before its time counts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from fastapi import Request  # at module level: FastAPI resolves the dependency's annotation here

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def _home(runs: int):
    os.environ["PPMLOPS_HOME"] = tempfile.mkdtemp(prefix="ppmlops-dash-bench-")
    os.environ.pop("PPMLOPS_DB_URL", None)
    import dashboard_data
    from ppmlops import settings

    s = settings.load()
    built = dashboard_data.build(s)
    for i in range(1, runs):  # more finished runs on the same dataset: ledger, audit log, run folders
        _more(s, i)
    return built


def _more(s, i: int) -> None:
    import dashboard_data
    from ppmlops.audit import AuditLog
    from ppmlops.privacy.ledger import Ledger

    dashboard_data._finished_run(s, Ledger(s.db_url), AuditLog(s.db_url), f"scheduled__2026-06-{i:02d}T00:00:00+00:00",
                                 accuracy=0.7, share=(0.0, 0.1))


def _as(reader):
    def as_reader(request: Request) -> None:  # what the plugin's login dependency leaves behind
        request.state.ppmlops_reader = reader

    return as_reader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--runs", type=int, default=1, help="finished runs in the ledger and audit log (1-8)")
    args = parser.parse_args()
    from fastapi import Depends
    from fastapi.testclient import TestClient

    from ppmlops.dashboard import create_app
    from ppmlops.dashboard.access import Reader

    built = _home(min(max(args.runs, 1), 8))
    pages = {"overview": "/", "dataset": "/datasets/demo_customers", "decision": "/decisions/2",
             "run (denied)": f"/runs/demo_churn/{quote(built.denied_run, safe='')}",
             "run (refused)": f"/runs/demo_churn/{quote(built.refused_run, safe='')}",
             "api/decisions": "/api/decisions"}
    print(f"{'page':<16}{'reader':<10}{'median ms':>10}{'p90 ms':>9}")
    medians = {}
    for who in (Reader("officer", True), Reader("viewer", False)):
        client = TestClient(create_app(dependencies=[Depends(_as(who))]))
        for name, path in pages.items():
            assert client.get(path).status_code == 200, path  # warm-up, and a check
            times = []
            for _ in range(args.requests):
                t0 = time.perf_counter()
                reply = client.get(path)
                times.append((time.perf_counter() - t0) * 1000)
                assert reply.status_code == 200 and reply.content, path
            times.sort()
            med = statistics.median(times)
            medians[(name, who.name)] = med
            print(f"{name:<16}{who.name:<10}{med:>10.1f}{times[int(0.9 * (len(times) - 1))]:>9.1f}")
    slow, fast = max(medians.values()), min(medians.values())
    print(f"slowest / fastest median: {slow / fast:.1f}x ({slow:.1f} ms / {fast:.1f} ms)")


if __name__ == "__main__":
    main()
