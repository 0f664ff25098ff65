"""Wall time of each stage of the demo run, and of the whole, on this machine.

    .venv/bin/python benchmarks/e2e.py [--pipeline demo_churn] [--repeat 1]

Each repeat is a fresh process running `dags/ppmlops_retrain.py` (Airflow dag.test() on SQLite,
local Ray started in-process, embedded Rego) against a fresh PPMLOPS_HOME, so the total includes
Python and Airflow imports and Ray start-up. The Airflow metadata DB is migrated once beforehand
(reported separately: it is a one-time set-up step).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAGES = ("ingest", "validate", "assess", "plan", "train", "evaluate", "gate", "deploy")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pipeline", default="demo_churn")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ppmlops-bench-"))
    env = dict(os.environ, AIRFLOW_HOME=str(work / "airflow"), AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "dags"),
               AIRFLOW__CORE__LOAD_EXAMPLES="False", RAY_USAGE_STATS_ENABLED="0", GX_ANALYTICS_ENABLED="False")
    env.pop("PPMLOPS_PIPELINES", None)
    airflow = Path(sys.executable).parent / "airflow"
    t0 = time.perf_counter()
    subprocess.run([str(airflow), "db", "migrate"], env=env, check=True, capture_output=True)
    print(f"airflow db migrate (one-time set-up): {time.perf_counter() - t0:.1f} s")
    print(f"machine: {os.cpu_count()} cores; pipeline {args.pipeline}")

    rows = []
    for i in range(args.repeat):
        run_env = dict(env, PPMLOPS_HOME=str(work / f"home{i}"))
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(REPO / "dags" / "ppmlops_retrain.py"), args.pipeline, "--json"],
                              env=run_env, capture_output=True, text=True)
        total = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
            print(f"run {i} failed (exit {proc.returncode})")
            return 1
        # Airflow's task logs share stdout; the summary is the last top-level JSON object.
        out = "\n" + proc.stdout
        summary = json.loads(out[out.rindex("\n{\n") + 1:])
        rows.append((total, summary))

    print(f"\n{'stage':<12}" + "".join(f"{'run ' + str(i):>10}" for i in range(len(rows))))
    for stage in STAGES:
        print(f"{stage:<12}" + "".join(f"{s['stage_seconds'].get(stage, float('nan')):>9.2f}s" for _, s in rows))
    staged = [sum(s["stage_seconds"].values()) for _, s in rows]
    print(f"{'stages sum':<12}" + "".join(f"{x:>9.2f}s" for x in staged))
    print(f"{'whole run':<12}" + "".join(f"{t:>9.2f}s" for t, _ in rows))
    print("(whole run = process start to exit: imports, Ray start-up, Airflow bookkeeping and all stages)")
    last = rows[-1][1]
    print(f"\nrows in {last['rows_in']}, quarantined {last['rows_quarantined']}, epsilon spent "
          f"{last['epsilon_spent']:.4f}, accuracy {last['accuracy']:.4f}, decision {last['decision']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
