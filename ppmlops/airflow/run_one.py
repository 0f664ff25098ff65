"""Run one pipeline's DAG in-process with Airflow's dag.test(): what a project's DAG file does when
run as a script (`python dags/ppmlops_retrain.py demo_churn`, which `./dev demo` runs)."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import multiprocessing
import os
from pathlib import Path
from typing import Any, Mapping

from ppmlops import pipeline
from ppmlops.airflow import gc_tuning
from ppmlops.airflow.dag_factory import _load_all, build_dag
from ppmlops.stages import validate_helper
from ppmlops.spec import pipeline_of, pipelines_folder
from ppmlops.errors import PpmlopsError
from ppmlops.run.context import RunContext, RunParams
from ppmlops.spec import load_spec


def pick(argument: str, dags: Mapping[str, Any]):
    """(spec, DAG) for a spec file anywhere, or a pipeline name in pipelines_folder(); SystemExit says why not."""
    folder = pipelines_folder()
    candidate = Path(argument)
    if candidate.is_file():
        # Built from this very file, which need not be in PPMLOPS_PIPELINES.
        try:
            spec = load_spec(candidate)
        except PpmlopsError as err:
            raise SystemExit(str(err)) from None
        return spec, build_dag(spec)
    found = [(d, v) for d, v in _load_all(folder).items() if argument in (d, pipeline_of(d))]
    if not found:
        raise SystemExit(f"no pipeline named {argument!r} in {folder}, and no spec file {argument}")
    [(dag_id, (_, spec, error))] = found
    if spec is None:
        raise SystemExit(error)
    return spec, dags[dag_id]


def prepare_process() -> multiprocessing.Process | None:
    """Set this process up for a whole DAG run in it (every task, one after another); returns the
    MLflow helper process it started, if any (join it before exiting).

    The tasks run one after another in this process, on one core; two helper processes take work
    off it onto the other core, at a lower priority. Both are forked first, before torch's import
    and before any thread starts, and share what this process has loaded:
    * Great Expectations, which only the validate task uses, is imported by a helper that then
      validates there (ppmlops.stages.validate_helper); while it does, this process imports what the
      later tasks will (import_ahead), so the two cores work at once (benchmarks/e2e.py prints
      the validate stage's and the whole run's seconds; docs/benchmarks.md has the figures).
    * The embedded MLflow store, when the run will make it (a fresh PPMLOPS_HOME): its tables are
      made by a helper while ingest and validate run, rather than by the plan task
      (ppmlops.registry.backend.start_creating).
    * The garbage collector: the tasks import Great Expectations, MLflow and torch, over a million
      objects that stay to the end. At CPython's default thresholds (700, 10, 10) a full collection
      walks the whole heap each time it has grown by a quarter: a dozen walks, 5 of the demo's 30 s
      of CPU. What the DAG file loaded is frozen (modules stay loaded anyway), the young
      generation is collected every 50,000 allocations instead of 700 (short-lived cycles, a
      training loop's included, are still collected) and each older one 100 times more rarely
      (measured: 1.8 s of collections in the whole run at (50,000, 10, 10), 1.0 s at (50,000, 100, 100),
      the same peak memory, 0.88 GB).
    * torch, which the train task needs, is imported now, before the tasks' libraries: its import
      registers operators through inspect.getframeinfo, which realpath()s every module loaded so far
      once; with Great Expectations and MLflow loaded (4,000 modules) that doubled it (2.6 s, not 1.3 s).
    """
    from ppmlops import settings
    from ppmlops.registry import backend

    validate_helper.start(meanwhile=import_ahead)
    try:
        helper = backend.start_creating(backend.resolve_uri(settings.load().registry_dir))
    except (OSError, ValueError, PpmlopsError):  # settings a task will report on; nothing to start early
        helper = None
    gc.freeze()
    gc_tuning.tune()
    import torch  # noqa: F401

    return helper


def import_ahead() -> None:
    """Import what the tasks after validate import (MLflow at plan; Opacus, the tuners' libraries
    and torch._dynamo, which torch.optim imports at the first optimizer, at train), while the
    validation helper keeps the other core busy."""
    import mlflow  # noqa: F401
    import torch._dynamo  # noqa: F401

    from ppmlops.training import driver, in_process, private_model  # noqa: F401
    from ppmlops.tuning import registry, tuners  # noqa: F401

    tuners.gp_libraries()  # bayes_opt and scikit-learn, which the Bayesian tuner imports when made


def main(dags: Mapping[str, Any], argv: list[str] | None = None) -> None:
    """`dags`: the DAG file's globals, which hold its DAGs by id; exits 0 when the run succeeded."""
    parser = argparse.ArgumentParser(description="Run one retraining DAG in-process (dag.test()).")
    parser.add_argument("pipeline", help="spec name (e.g. demo_churn) or path to a spec file")
    parser.add_argument("--conf", default="{}", help="run conf as JSON, e.g. '{\"epochs\": 2}'")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--verbose", action="store_true",
                        help="also Airflow's task logs and Ray's, Great Expectations' and Opacus' own output")
    args = parser.parse_args(argv)
    # What a person reads: stage lines, one line per epoch, the summary; --verbose brings the rest.
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("  %(message)s"))
    ours = logging.getLogger("ppmlops")
    ours.addHandler(console)
    ours.setLevel(logging.INFO)
    ours.propagate = args.verbose
    logging.getLogger("ppmlops.run.summary").setLevel(logging.WARNING)  # printed once, below, with the run's state
    if args.verbose:
        os.environ["PPMLOPS_VERBOSE"] = "1"
    else:
        import warnings

        # dag.test() runs the execution API in-process through Starlette's test client, whose
        # httpx notice is about Airflow's internals, not this run.
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")

    spec, the_dag = pick(args.pipeline, dags)
    helper = prepare_process()

    try:
        run = the_dag.test(run_conf=json.loads(args.conf))
    finally:
        validate_helper.stop()
        if helper is not None:  # long done by now (seconds, against a whole run); never left behind
            helper.join(timeout=120)
            if helper.exitcode is None:
                helper.kill()
                helper.join()
    ctx = RunContext(spec=spec, run_id=run.run_id, params=RunParams.from_mapping(spec, json.loads(args.conf)))
    result = pipeline.summary(ctx)
    result["dag_run_state"] = str(run.state)
    print(json.dumps(result, indent=2, default=str) if args.json else pipeline.format_summary(result)
          + f"\n  DAG run state: {run.state}")
    # The interpreter's last collection at exit would walk every object the tasks loaded (2.5 s of
    # the demo) only to free memory the exit frees anyway: frozen, it is left alone.
    gc.freeze()
    raise SystemExit(0 if str(run.state) == "success" else 1)
