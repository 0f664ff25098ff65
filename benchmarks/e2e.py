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
stages (imports, DAG parsing, Airflow's bookkeeping, process exit). The aim (issue 28) is a whole
run under 20 s on a quiet machine with 2 cores, and 3x faster than issue 28's start (adb3d51).

`--checkout DIR` (repeatable) runs the DAG of another checkout of ppmlops (e.g. `git worktree add
/tmp/before main`) with this environment, its package first on the path, and this checkout's
too (last, unless named): the checkouts take turns in every repeat, so a before/after comparison
sees the same machine load, and each repeat prints every other checkout's whole run divided by
this one's (the speed-up). A checkout older than the TrainTimings record shows "-" for the train
stage's parts. One older than the Airflow provider (ppmlops.airflow.provider_info, which this
environment's installed entry point names) runs with a stand-in that declares the provider's
name only, as that checkout's own install declared nothing; its DAG file runs as a script as usual.
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
    # The checkout's package ahead of the one installed (editable) in the venv, which may be
    # another worktree's: this checkout's own too.
    env["PYTHONPATH"] = os.pathsep.join([str(repo), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


# For a checkout without ppmlops.airflow.provider_info: Airflow's provider discovery imports the
# module the venv's entry point names (apache_airflow_provider) and fails without it. The stand-in
# declares the name only (no hooks, connection types or plugin, as that checkout had none); then
# the DAG file runs as `python FILE ARGS` would run it.
_PROVIDER_STAND_IN = """
import os, runpy, sys, types
m = types.ModuleType("ppmlops.airflow.provider_info")
m.get_provider_info = lambda: {"package-name": "ppmlops", "name": "ppmlops", "versions": ["0.0.0"],
                               "description": "an older ppmlops checkout (benchmarks/e2e.py stand-in)"}
sys.modules[m.__name__] = m
sys.argv = sys.argv[1:]
sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _command(repo: Path) -> list[str]:
    dag_file = str(repo / "dags" / "ppmlops_retrain.py")
    if (repo / "ppmlops" / "airflow" / "provider_info.py").exists():
        return [sys.executable, dag_file]
    return [sys.executable, "-c", _PROVIDER_STAND_IN, dag_file]


def _one_run(env: dict[str, str], repo: Path, pipeline: str, conf: str) -> tuple[float, dict, dict]:
    t0 = time.perf_counter()
    # In the checkout, as `./dev demo` runs: Ray puts the driver's working directory first on its
    # workers' path, so from elsewhere they would import another checkout's ppmlops.
    proc = subprocess.run([*_command(repo), pipeline, "--json", "--conf", conf], env=env, cwd=repo,
                          capture_output=True, text=True)
    total = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stdout.write(proc.stdout[-3000:] + "\n" + proc.stderr[-3000:] + "\n")
        log = Path(env["PPMLOPS_HOME"]) / "run-output.txt"
        log.write_text(proc.stdout + "\n" + proc.stderr)
        raise SystemExit(f"the run failed (exit {proc.returncode}); its whole output: {log}")
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

    checkouts = [Path(c).resolve() for c in args.checkout]
    if REPO not in checkouts:
        checkouts.append(REPO)
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
    here = checkouts.index(REPO)
    for i in range(args.repeat):
        per = rows[i * len(checkouts):(i + 1) * len(checkouts)]
        for j, repo in enumerate(checkouts):
            if j != here:
                print(f"repeat {i}: whole run {repo.name} / {REPO.name} = {per[j][0]:.1f} s / {per[here][0]:.1f} s "
                      f"= {per[j][0] / per[here][0]:.2f}x")
    last = rows[-1][1]
    print(f"\nlast run: {last.get('epochs')} epochs, epsilon used {last.get('epsilon_used', float('nan')):.4f} of "
          f"{last.get('epsilon', float('nan')):.4f}, noisy accuracy {last.get('accuracy', float('nan')):.4f}, "
          f"decision {last.get('decision')}; aim: whole run under 20 s, 3x faster than adb3d51")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
