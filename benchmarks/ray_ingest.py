"""Ingest on a two-node loopback Ray cluster with Ray Data next to local ingest, same file, same run.

    .venv/bin/python benchmarks/ray_ingest.py                    # a 200 MiB generated CSV in /tmp
    .venv/bin/python benchmarks/ray_ingest.py --size-mb 1024 --part-mb 64
    .venv/bin/python benchmarks/ray_ingest.py --source /tmp/scan.csv   # a file of benchmarks/risk_scan.py --keep

Writes the customer table of benchmarks/risk_scan.py (as benchmarks/ingest_memory.py does), ingests
it locally in a child process (one core), then starts `start_local_cluster(nodes=2,
cpus_per_node=1)` and ingests it there (ppmlops.data.ray_ingest: the parts on Ray Data, one CPU per
node), and prints rows/s and rows/s per core of both, the cluster's start-up apart, and whether the
two staged the same snapshots, hashes and quarantine file. On a machine of two cores the driver,
the cluster's own processes and the two nodes share them: the per-core rate is a lower bound.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from child import customer_file, ppmlops_env, run_child, sibling  # noqa: E402  benchmarks/ is this script's folder

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=float, default=200)
    ap.add_argument("--part-mb", type=float, default=16, help="bytes per part on the cluster (default 16 MiB)")
    ap.add_argument("--source", metavar="PATH", help="ingest this file instead of generating one")
    args = ap.parse_args()
    ingest_memory = sibling("ingest_memory")
    work = Path(tempfile.mkdtemp(prefix="ppmlops-ray-ingest-bench-", dir="/tmp"))
    try:
        path = customer_file(args.source, args.size_mb, work)
        size_mib = path.stat().st_size / 2**20
        env = ppmlops_env(work, path)
        os.environ.update({k: env[k] for k in ("PYTHONPATH", "PPMLOPS_HOME", "PPMLOPS_DATA_ROOTS")})
        local = run_child([str(HERE / "ingest_memory.py"), "--child", str(path), str(work / "local")], env)
        if isinstance(local, int):
            return local
        rate = local["rows"] / local["seconds"]
        print(f"local ingest:   {local['rows']} rows in {local['seconds']:.1f}s: {rate:,.0f} rows/s "
              f"({size_mib / local['seconds']:.0f} MiB/s) on 1 core: {rate:,.0f} rows/s per core")
        from ppmlops.data.ray_ingest import ingest_on_cluster
        from ppmlops.data.ingest import ingest as _  # noqa: F401  (imported before the timing)
        from ppmlops.spec import parse_spec
        from ppmlops.training.local_cluster import start_local_cluster

        doc = json.loads(json.dumps(ingest_memory.SPEC))
        doc["dataset"]["source"]["path"] = str(path)
        spec = parse_spec(doc)
        with start_local_cluster(nodes=2, cpus_per_node=1, object_store_bytes=300_000_000) as cluster:
            start = time.perf_counter()
            r = ingest_on_cluster(spec, work / "cluster", cluster.address, home=work / "home",
                                  part_bytes=int(args.part_mb * 2**20))
            seconds = time.perf_counter() - start
            record = json.loads((work / "cluster" / "ray_ingest.json").read_text())
        rate = r.rows_in / seconds
        print(f"Ray Data ingest: {r.rows_in} rows in {seconds:.1f}s: {rate:,.0f} rows/s ({size_mib / seconds:.0f} MiB/s) "
              f"on 2 nodes x 1 CPU: {rate / 2:,.0f} rows/s per core; {len(record['parts'])} parts on "
              f"{len(record['nodes'])} nodes ({record['how']}); cluster start-up {cluster.startup_s:.1f}s apart")
        same = (r.sha256, r.rows_train, r.rows_test, r.rows_quarantined) == (
            local["sha256"], local["train"], local["test"], local["quarantined"])
        same &= (work / "local" / "quarantine.csv").read_bytes() == Path(r.quarantine_path).read_bytes()
        print(f"same snapshots' hash, counts and quarantine file as local ingest: {same}")
        return 0 if same else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
