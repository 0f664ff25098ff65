"""Ingest throughput and peak memory on a generated CSV much larger than what ingest may hold.

    .venv/bin/python benchmarks/ingest_memory.py                     # 1 GiB file in /tmp, ingested, deleted
    .venv/bin/python benchmarks/ingest_memory.py --size-mb 200
    .venv/bin/python benchmarks/ingest_memory.py --source /tmp/scan.csv  # a file of benchmarks/risk_scan.py --keep

Writes the customer table of benchmarks/risk_scan.py (identifiers, quasi-identifiers, a consent
flag, numbers) of the given size, then runs the ingest stage on it in a child process, so the
reported peak resident memory (ru_maxrss) is ingest's own: imports, one chunk of rows, the
Parquet writers' buffers, not the file. Prints rows per second, MiB per second, the peak memory
next to the file size, what was staged (the snapshots and the quarantine file), and pyarrow's
own parse of the same file (every column as text, one thread, in a child process of its own)
with the ingest's rate as a share of it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from child import arrow_parse, customer_file, ppmlops_env, print_rate_and_memory, print_reference, run_child  # noqa: E402  benchmarks/ is this script's folder

SPEC = {
    "name": "ingest_memory",
    "dataset": {
        "id": "ingest_memory",
        "source": {"path": "PLACEHOLDER"},
        "label": {"column": "churned", "positive": "yes", "values": ["yes", "no"]},
        "consent": {"column": "consent"},
        "identifiers": ["customer_id", "email", "phone", "ssn", "zip", "dob"],
        "features": [
            {"name": "age", "type": "numeric", "range": [0, 120]},
            {"name": "sex", "type": "categorical", "categories": ["female", "male"]},
            {"name": "plan", "type": "categorical", "categories": ["basic", "plus", "premium"]},
            {"name": "monthly_spend", "type": "numeric", "range": [0, 10000], "log": True},
        ],
    },
    "privacy": {"epsilon": 1.0, "delta": 1e-6, "run_epsilon": 1.0},
    "deploy": {"model_name": "ingest_memory"},
}


def ingest_child(path: Path, run_dir: Path) -> dict:
    """Runs in the child: the ingest stage, timed, with this process's peak memory."""
    import resource

    from ppmlops.data.ingest import ingest
    from ppmlops.spec import parse_spec

    doc = json.loads(json.dumps(SPEC))
    doc["dataset"]["source"]["path"] = str(path)
    spec = parse_spec(doc)
    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start, cpu = time.perf_counter(), time.process_time()
    r = ingest(spec, run_dir)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "rows": r.rows_in, "train": r.rows_train, "test": r.rows_test,
            "quarantined": r.rows_quarantined, "reasons": r.quarantine_reasons, "sha256": r.sha256,
            "peak_rss_mb": peak_kb / 1024, "rss_after_imports_mb": base_kb / 1024,
            "snapshot_mb": (Path(r.snapshot_train).stat().st_size + Path(r.snapshot_test).stat().st_size) / 2**20,
            "quarantine_mb": Path(r.quarantine_path).stat().st_size / 2**20}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=float, default=1024)
    ap.add_argument("--source", metavar="PATH", help="ingest this file (one benchmarks/risk_scan.py --keep wrote) "
                                                     "instead of generating one")
    ap.add_argument("--child", nargs=2, metavar=("CSV", "RUN_DIR"), help=argparse.SUPPRESS)
    ap.add_argument("--arrow-only", metavar="PATH", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(ingest_child(Path(args.child[0]), Path(args.child[1]))))
        return 0
    if args.arrow_only:
        print(json.dumps(arrow_parse(Path(args.arrow_only))))
        return 0

    work = Path(tempfile.mkdtemp(prefix="ppmlops-ingest-bench-", dir="/tmp"))
    try:
        path = customer_file(args.source, args.size_mb, work)
        size = path.stat().st_size
        env = ppmlops_env(work, path)
        r = run_child([__file__, "--child", str(path), str(work / "run")], env)
        if isinstance(r, int):
            return r
        print_rate_and_memory("ingest", "ingesting", r, size)
        print_reference("ingest", r, run_child([__file__, "--arrow-only", str(path)], env))
        print(f"staged: train {r['train']}, test {r['test']} ({r['snapshot_mb']:.0f} MiB of Parquet); "
              f"quarantined {r['quarantined']} {r['reasons']} ({r['quarantine_mb']:.1f} MiB)")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
