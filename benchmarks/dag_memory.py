"""Peak memory of the DAG process and of each training worker as the table grows: 10k, 100k, 1M rows.

    .venv/bin/python benchmarks/dag_memory.py            # 10k, 100k, 1M rows
    .venv/bin/python benchmarks/dag_memory.py --quick    # 10k, 100k
    .venv/bin/python benchmarks/dag_memory.py --rows 1000000

Each size runs the retraining DAG end to end (dags/ppmlops_retrain.py, Airflow's dag.test() as
`./dev demo` does) in a fresh process on the demo spec's synthetic customer table (written by
the demo's generator before the runs, so generating it is not counted), whole table (no data
window), one epoch (four below 50k rows, which the policy's learnability floor asks for), twice:

  Ray worker     ray.in_process: false: one Ray Train worker reads its shard of the Parquet
                 snapshot; the DAG process passes paths and noisy counts (issue 28, item 2)
  in process     the default for one worker and no cluster: the DAG process is the worker

Printed per size and way: the DAG process's own peak resident memory (ru_maxrss of that process,
not of its children: Ray's processes are children of it; this script stays small, since Linux
carries ru_maxrss across fork and exec), each worker's (recorded by the worker
under the run's private/ray), the largest peak of the DAG process's children that have ended
(ru_maxrss of RUSAGE_CHILDREN: the helpers a whole run in one process forks, Great Expectations'
validation helper and the MLflow store's maker, the OPA engine, and in the Ray way Ray's own
processes), and the table's size on disk. The aim (issue 28): the DAG process
under 1 GB at 1M rows when the rows live in the workers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e import REPO, _environment  # noqa: E402  benchmarks/ is this script's folder

sys.path.insert(0, str(REPO))
from ppmlops.training import peak_memory  # noqa: E402

WAYS = {"Ray worker": False, "in process": True}
# Runs the DAG file as its own __main__ in this process and leaves the process's peak memory in
# the file named by PEAK_FILE, whatever the run's exit.
RUNNER = """
import json, os, resource, runpy, sys
code, sys.argv = 0, sys.argv[1:]  # the DAG file sees its own argv
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as exit:
    code = exit.code or 0
finally:
    with open(os.environ["PEAK_FILE"], "w") as fh:
        json.dump({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   "child_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}, fh)
sys.exit(code)
"""


def _spec(rows: int, table: Path, in_process: bool) -> dict:
    spec = yaml.safe_load((REPO / "dags" / "pipelines" / "demo.yaml").read_text())
    spec["name"] = f"dag_memory_{rows}_{'in' if in_process else 'ray'}"
    data = spec["dataset"]
    # the dataset keeps its id (its expectation suite is expectations/demo_customers.json); each run has a home and ledger of its own
    data["source"] = {"path": str(table)}  # generated beforehand: generating is not the DAG's work
    data["window"] = {"whole_table": True}
    data["expected_rows"] = int(rows * 0.7)  # a public hint: less refusals and the held-out part
    spec["privacy"].pop("blocks", None)
    spec["privacy"]["delta"] = 1e-7  # below 1/rows at every size (the GDPR policy asks for it)
    # One epoch, except where so few steps would be refused at plan as unable to learn (the policy's
    # learnability floor): a 10k-row table needs four.
    spec["training"]["epochs"] = 4 if rows < 50_000 else 1
    spec["ray"] = {"workers": 1, "use_gpu": False, "in_process": in_process}
    return spec


def _generate(path: Path, rows: int) -> Path:
    """The demo's generator, in a child process: Linux keeps a process's peak memory (ru_maxrss)
    across fork and exec, so a table generated in this process would count as the DAG's peak."""
    subprocess.run([sys.executable, "-c", "import sys; from ppmlops.data.synthetic import write_demo; "
                    "write_demo(sys.argv[1], int(sys.argv[2]), 7)", str(path), str(rows)], check=True, cwd=REPO)
    return path


def one(work: Path, rows: int, table: Path, in_process: bool) -> dict:
    spec = _spec(rows, table, in_process)
    folder = work / "pipelines" / spec["name"]  # a folder of its own, where the DAG file finds it
    folder.mkdir(parents=True)
    (folder / f"{spec['name']}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    peak_file = work / f"{spec['name']}.peak.json"
    env = dict(_environment(work, REPO), PPMLOPS_HOME=str(work / spec["name"]), PEAK_FILE=str(peak_file),
               PPMLOPS_PIPELINES=str(folder), PPMLOPS_DATA=str(work))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(REPO / "dags" / "ppmlops_retrain.py"), spec["name"],
                           "--json"], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    out = "\n" + proc.stdout
    # A gate that denies (one epoch of a small table may not beat guessing) exits non-zero after
    # every stage ran: memory was still measured. Anything that stopped before the end is a failure.
    summary = json.loads(out[out.rindex("\n{\n") + 1:]) if "\n{\n" in out else {}
    if "gate" not in summary.get("stage_seconds", {}):
        sys.stdout.write(proc.stdout[-3000:] + "\n" + proc.stderr[-3000:] + "\n")
        (work / "failed.log").write_text(proc.stdout + proc.stderr)
        raise SystemExit(f"the {rows:,}-row run failed (exit {proc.returncode}); its output: {work / 'failed.log'}")
    workers: dict[int, float] = {}
    for folder in (Path(summary["run_dir"]) / "private" / "ray").glob("**/memory"):
        workers.update(peak_memory.read(folder))
    peaks = json.loads(peak_file.read_text())
    return {"dag": peaks["peak_rss_mib"], "child": peaks["child_peak_rss_mib"], "workers": workers,
            "seconds": seconds, "decision": summary.get("decision")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10k and 100k rows only")
    ap.add_argument("--rows", type=int, action="append", help="these sizes instead (repeatable)")
    args = ap.parse_args()
    sizes = args.rows or ((10_000, 100_000) if args.quick else (10_000, 100_000, 1_000_000))
    work = Path(tempfile.mkdtemp(prefix="ppmlops-dag-memory-"))
    (work / "airflow").mkdir()
    subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], env=_environment(work, REPO),
                   check=True, capture_output=True)
    print(f"machine: {len(os.sched_getaffinity(0))} usable cores, load {os.getloadavg()[0]:.1f}")
    print(f"{'rows':>10}  {'CSV MiB':>8}  {'way':<12}{'DAG process MiB':>16}{'worker MiB':>12}{'largest child':>14}"
          f"{'run s':>8}  decision")
    dag_at_largest = {}
    for rows in sizes:
        table = _generate(work / f"customers_{rows}.csv", rows)
        for way, in_process in WAYS.items():
            r = one(work, rows, table, in_process)
            workers = ", ".join(f"{mib:.0f}" for _, mib in sorted(r["workers"].items())) or "-"
            size = table.stat().st_size / 2**20
            print(f"{rows:>10,}  {size:8.1f}  {way:<12}{r['dag']:16.0f}{workers:>12}{r['child']:14.0f}"
                  f"{r['seconds']:8.1f}  {r['decision']}")
            dag_at_largest[way] = r["dag"]
    shutil.rmtree(work, ignore_errors=True)
    print(f"aim: DAG process under 1 GB (1024 MiB) at {sizes[-1]:,} rows with the rows in a Ray worker: "
          f"{dag_at_largest['Ray worker']:.0f} MiB ({'met' if dag_at_largest['Ray worker'] < 1024 else 'MISSED'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
