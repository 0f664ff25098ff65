"""What registering a model in MLflow adds to the deploy stage, on this machine.

    .venv/bin/python benchmarks/registry.py [--repeats 5]

The deploy stage's MLflow work, timed in a fresh process per repeat, as an Airflow task runs it
(the DAG file never imports mlflow, so the task pays the import): import mlflow and ppmlops's
registry, open the embedded SQLite store (already migrated, as after the first run), register
the trained weights as a pyfunc model version with a full-size card (artifacts and tags), move
the alias, and log the deploy to the run's MLflow run. Then the same in one warm process (the
second and later registrations of a process, which is what the demo's in-process dag.test()
and a long-lived worker pay). The first registration into a new store also runs MLflow's schema
migrations: reported on its own, once.

The weights are a real state dict (an MLP [64] on 100 features, as ppmlops saves it). Loopback
and local disk only; stops by itself.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import mlflow  # noqa: F401
from ppmlops.registry import Registry, backend
t1 = time.perf_counter()
root, weights, card = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
reg = Registry(root)
reg.versions("bench")
t2 = time.perf_counter()
client = backend.client(reg.uri)
run = client.create_run(backend.experiment_id(reg.uri, reg.root, "bench"))
t3 = time.perf_counter()
version = reg.register("bench", weights, card, encoding={"features": [], "label": {}}, run_id=run.info.run_id)
t4 = time.perf_counter()
reg.set_alias("bench", "production", version)
t5 = time.perf_counter()
client.set_tag(run.info.run_id, "ppmlops.model", f"bench v{version}")
client.set_terminated(run.info.run_id, "FINISHED")
t6 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "open": t2 - t1, "run": t3 - t2, "register": t4 - t3, "alias": t5 - t4,
                  "log": t6 - t5, "total": t6 - t0, "mlflow_work": t6 - t1}))
"""


def weights_file(folder: Path) -> Path:
    import torch

    from ppmlops.training.models import build_model

    net = build_model("mlp", 100, [64])
    path = folder / "model.pt"
    torch.save({"state_dict": net.state_dict(), "kind": "mlp", "hidden": [64],
                "features": [f"f{i}" for i in range(100)]}, path)
    return path


def card() -> dict:
    # The shape of a real card (ppmlops.stages.card): ~40 fields, per-epoch settings, nested parts.
    return {"dataset_id": "bench", "pipeline": "bench", "run_id": "bench-run", "epsilon": 0.97, "delta": 1e-5,
            "epoch_settings": [{"epoch": e, "noise_multiplier": 1.1, "max_grad_norm": 1.0, "learning_rate": 0.1}
                               for e in range(1, 21)],
            "metrics": {"accuracy": 0.81, "auc": 0.88, "majority_baseline": 0.75, "rows": 1000},
            "privacy_audit": {"canaries": 100, "epsilon_lower_bound": 0.1},
            **{f"field_{i}": i * 0.5 for i in range(30)}, "intended_use": "benchmark"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ppmlops-bench-registry-") as tmp:
        tmp = Path(tmp)
        weights = weights_file(tmp)
        doc = json.dumps(card())
        root = tmp / "mlflow"
        first = _child(root, weights, doc)  # creates and migrates the store
        print(f"first registration into a new store (schema migrations included): {first['total']:.2f} s")
        cold = [_child(root, weights, doc) for _ in range(args.repeats)]
        print(f"fresh process, migrated store, {args.repeats} repeats (median, min-max):")
        for key in ("import", "open", "run", "register", "alias", "log", "mlflow_work", "total"):
            values = [c[key] for c in cold]
            print(f"  {key:12s} {statistics.median(values):6.3f} s  ({min(values):.3f}-{max(values):.3f})")
        warm = _warm(root, weights, card(), args.repeats)
        print(f"warm process, register + alias, median of {args.repeats}: {statistics.median(warm):.3f} s "
              f"({min(warm):.3f}-{max(warm):.3f})")
        total = statistics.median(c["total"] for c in cold)
        print(f"deploy-stage delta: {total:.2f} s cold ({'under' if total < 2 else 'over'} the 2 s aim), "
              f"{statistics.median(warm):.2f} s warm")


def _child(root: Path, weights: Path, doc: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(root), str(weights), doc], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _warm(root: Path, weights: Path, doc: dict, repeats: int) -> list[float]:
    from ppmlops.registry import Registry

    reg = Registry(root)
    reg.set_alias("bench", "production", reg.register("bench", weights, doc))  # this process's first
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        reg.set_alias("bench", "production", reg.register("bench", weights, doc))
        times.append(time.perf_counter() - t)
    return times


if __name__ == "__main__":
    main()
