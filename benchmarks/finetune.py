"""DP fine-tuning of a model pretrained on public rows against DP training from scratch, on Adult.

    .venv/bin/python benchmarks/finetune.py            # epsilon 0.1, 0.25, 0.5, 1; 3 seeds
    .venv/bin/python benchmarks/finetune.py --quick    # epsilon 0.25; 2 seeds

What dags/pipelines/demo_finetune.yaml does, cell by cell: ppmlops.examples.pretrain trains the
Adult MLP without DP on the even rows of train.csv (the "public" half); each cell then trains on
a subset of the odd rows (the private half) through the product's planner, grant and worker loop
(secure noise, 10 epochs, expected batch 256), either only the last layer from the pretrained
weights (model.init, model.trainable: ["2"]) or every layer from a fresh start, at the same
epsilon. Test accuracy is on test.csv (exact: a benchmark), against the majority class and against
the pretrained model used as it is (no private rows at all).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adult import REPO, adult_job, load  # noqa: E402
from anom_utility import _train, interval  # noqa: E402

EPOCHS = 10
HIDDEN = [64]


def private_half(data: Path, rows: int, seed: int):
    """`rows` of train.csv's odd rows (the private half, disjoint from the pretraining rows), shuffled
    by `seed`, as Arrays (80% trained on, 20% the tuner's held-out rows)."""
    import numpy as np
    import pandas as pd

    from ppmlops.data.features import encode
    from ppmlops.spec import load_spec
    from ppmlops.training.loop import Arrays

    spec = load_spec(REPO / "dags" / "pipelines" / "adult_income.yaml")
    X, y, _ = encode(pd.read_csv(data / "train.csv").iloc[1::2], spec)
    order = np.random.default_rng(seed).permutation(len(X))[:rows]
    cut = int(len(order) * 0.8)
    return Arrays(X[order[:cut]], y[order[:cut]], X[order[cut:]], y[order[cut:]])


def main() -> int:
    import torch
    import torch.distributed as dist

    from conftest import free_port
    from ppmlops.examples.pretrain import WEIGHTS, write_halves
    from ppmlops.training.metrics import evaluate
    from ppmlops.training.models import build_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows", type=int, default=4000, help="private rows per cell (a subset of the odd half)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(free_port())
    dist.init_process_group("gloo", rank=0, world_size=1)
    epsilons = (0.25,) if args.quick else (0.1, 0.25, 0.5, 1.0)
    seeds = range(2 if args.quick else 3)
    data = Path(os.environ.get("PPMLOPS_DATA", REPO.parent / "shared" / "data")) / "adult"
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ppmlops-finetune-") as tmp:
        work = Path(tmp)
        write_halves(data, work)
        weights = str(work / WEIGHTS)
        _, Xt, yt = load(None, 0)
        majority = max(float(yt.mean()), 1 - float(yt.mean()))
        public = build_model("mlp", Xt.shape[1], HIDDEN)
        public.load_state_dict(torch.load(weights, weights_only=True))
        public_acc = evaluate(public, Xt, yt)["accuracy"]
        print(f"Adult MLP {HIDDEN}, {EPOCHS} epochs, expected batch 256, secure noise, {args.rows} private rows a "
              f"cell (80% trained on), {len(seeds)} seeds; test.csv majority class {majority:.4f}; the pretrained "
              f"model as it is (public half only) {public_acc:.4f}")
        print(f"{'epsilon':>7}  {'fine-tune last layer':>22}  {'from scratch':>18}  {'gain':>7}")
        for eps in epsilons:
            acc = {"tuned": [], "scratch": []}
            for seed in seeds:
                sub = private_half(data, args.rows, seed)
                for way in acc:
                    job = adult_job(work, sub, run_id=f"{way}-{eps}-{seed}", epsilon=eps, epochs=EPOCHS, seed=seed,
                                    hidden=tuple(HIDDEN), holdout_epsilon=1.0)
                    if way == "tuned":
                        job = dataclasses.replace(job, pretrained=weights, trainable=("2",))
                    restored = _train(job, sub)
                    model = build_model("mlp", Xt.shape[1], HIDDEN)
                    model.load_state_dict(restored.weights)
                    acc[way].append(evaluate(model, Xt, yt)["accuracy"])
            t, s = acc["tuned"], acc["scratch"]
            print(f"{eps:>7g}  {statistics.mean(t):>13.4f} ± {interval(t):.4f}  {statistics.mean(s):>9.4f} ± "
                  f"{interval(s):.4f}  {statistics.mean(t) - statistics.mean(s):>+7.4f}", flush=True)
    dist.destroy_process_group()
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
