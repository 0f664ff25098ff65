"""Wall time of the demo run end to end, stage by stage, and of the train stage inside Ray Train.

    .venv/bin/python benchmarks/e2e.py [--pipeline demo_churn] [--repeat 1] [--conf '{}'] [--checkout DIR ...]

Each repeat is what `./dev demo` runs, in a fresh process: `dags/ppmlops_retrain.py` (Airflow
dag.test() on SQLite, a local Ray started in-process, the embedded OPA engine) against a fresh
PPMLOPS_HOME, so the whole includes Python and Airflow imports and Ray's start-up. The Airflow
metadata DB is migrated once beforehand (a one-time set-up step, reported separately).

Printed per run: each stage's seconds (from the run's records), the train stage split into Ray
start, worker start (controller, placement group, worker processes and the torch process group;
"worker boot" is the part from rank 0's process start), imports in the worker, setup, epochs,
checkpoints and worker stop (from rank 0's and the driver's clocks), and the time outside the
stages (imports, DAG parsing, Airflow's bookkeeping, process exit). The aim (issue 17) is a whole
run under 30 s on 2 cores.

`--checkout DIR` (repeatable) runs the DAG of another checkout of ppmlops (e.g. `git worktree add
/tmp/before main`) with this environment, its package first on the path; with several, the
checkouts take turns in every repeat, so a before/after comparison sees the same machine load.
A checkout older than the TrainTimings record shows "-" for the train stage's parts.
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
# stage -> the record (file stem under the run folder) whose `seconds` it wrote
STAGES = {"ingest": "staged", "validate": "validated", "assess": "risk", "plan": "plan", "train": "train",
          "evaluate": "evaluate", "gate": "gate", "deploy": "deploy"}
TRAIN_PARTS = {"ray_start": "Ray start", "worker_start": "worker start", "worker_boot": "  of it: worker boot",
               "worker_imports": "worker imports", "setup": "setup", "epochs": "epochs",
               "checkpoints": "checkpoints", "worker_stop": "worker stop"}


def _environment(work: Path, repo: Path) -> dict[str, str]:
    env = dict(os.environ, AIRFLOW_HOME=str(work / "airflow"), AIRFLOW__CORE__DAGS_FOLDER=str(repo / "dags"),
               AIRFLOW__CORE__LOAD_EXAMPLES="False", RAY_USAGE_STATS_ENABLED="0", GX_ANALYTICS_ENABLED="False",
               AIRFLOW__LOGGING__LOGGING_LEVEL="WARNING", PYTHONUNBUFFERED="1")
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{work / 'airflow' / 'airflow.db'}?timeout=30"
    env.pop("PPMLOPS_PIPELINES", None)
    if repo != REPO:  # another checkout's package ahead of the one installed (editable) in the venv
        env["PYTHONPATH"] = os.pathsep.join([str(repo), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def _one_run(env: dict[str, str], repo: Path, pipeline: str, conf: str) -> tuple[float, dict, dict]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(repo / "dags" / "ppmlops_retrain.py"), pipeline, "--json", "--conf",
                           conf], env=env, capture_output=True, text=True)
    total = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stdout.write(proc.stdout[-3000:] + "\n" + proc.stderr[-3000:] + "\n")
        raise SystemExit(f"the run failed (exit {proc.returncode})")
    out = "\n" + proc.stdout  # the task log lines share stdout; the summary is the last top-level object
    summary = json.loads(out[out.rindex("\n{\n") + 1:])
    train = json.loads((Path(summary["run_dir"]) / "train.json").read_text())
    return total, summary, train.get("timings") or {}


def _table(rows: list[tuple[float, dict, dict]], names: list[str]) -> None:
    def line(label: str, values) -> None:
        print(f"{label:<24}" + "".join(f"{v:>15.2f}s" if v == v else f"{'-':>16}" for v in values))

    print(f"\n{'':<24}" + "".join(f"{name[-15:]:>16}" for name in names))
    nan = float("nan")
    for stage, stem in STAGES.items():
        line(stage, [s["stage_seconds"].get(stem, nan) for _, s, _ in rows])
        if stage == "train":
            for key, label in TRAIN_PARTS.items():
                line(f"  {label}", [t.get(key, nan) for _, _, t in rows])
            line("  other (driver)", [s["stage_seconds"].get("train", nan) - t.get("fit", 0.0) - t.get("ray_start", 0.0)
                                      for _, s, t in rows])
    staged = [sum(s["stage_seconds"].get(stem, 0.0) for stem in STAGES.values()) for _, s, _ in rows]
    line("stages", staged)
    line("outside the stages", [total - st for (total, _, _), st in zip(rows, staged)])
    line("whole run", [total for total, _, _ in rows])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipeline", default="demo_churn")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--conf", default="{}", help="run conf as JSON, as for dags/ppmlops_retrain.py")
    ap.add_argument("--checkout", action="append", default=[], help="another checkout's DAG and package to run")
    args = ap.parse_args()

    checkouts = [Path(c).resolve() for c in args.checkout] or [REPO]
    work = Path(tempfile.mkdtemp(prefix="ppmlops-bench-"))
    (work / "airflow").mkdir()
    t0 = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], env=_environment(work, REPO),
                   check=True, capture_output=True)
    print(f"airflow db migrate (one-time set-up, not counted): {time.perf_counter() - t0:.1f} s")
    print(f"machine: {len(os.sched_getaffinity(0))} usable cores, load {os.getloadavg()[0]:.1f}; "
          f"pipeline {args.pipeline}")
    rows, names = [], []
    for i in range(args.repeat):
        for j, repo in enumerate(checkouts):
            env = dict(_environment(work, repo), PPMLOPS_HOME=str(work / f"home{i}-{j}"))
            rows.append(_one_run(env, repo, args.pipeline, args.conf))
            names.append(f"{repo.name} #{i}" if len(checkouts) > 1 else f"run {i}")
    _table(rows, names)
    print(f"load after: {os.getloadavg()[0]:.1f}")
    last = rows[-1][1]
    print(f"\nlast run: {last.get('epochs')} epochs, epsilon used {last.get('epsilon_used', float('nan')):.4f} of "
          f"{last.get('epsilon', float('nan')):.4f}, noisy accuracy {last.get('accuracy', float('nan')):.4f}, "
          f"decision {last.get('decision')}; aim: whole run under 30 s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
