"""Epoch time and memory as the table grows: 10k, 100k and 1M rows, one worker in process.

    .venv/bin/python benchmarks/epoch_scale.py            # 10k, 100k, 1M rows
    .venv/bin/python benchmarks/epoch_scale.py --quick    # 10k, 100k

Each size trains one planned DP-SGD epoch of the Adult MLP shape (108 encoded features, hidden 64,
batch 256, secure randomness) through ppmlops.training.in_process, in a fresh process per run so
its peak memory (ru_maxrss) is its own, twice: with the product's sampler (a Binomial size and a
uniform subset, O(batch) a step) and with the coin-per-row sampler it replaced (O(rows) a step),
the two taking turns at each size. Printed per size: the epoch's seconds each way, their ratio,
growth against the 10k run, and each process's peak memory. The rows are random encoded arrays:
this measures the loop, not the data stages (benchmarks/ingest_memory.py, risk_scan.py do).
The aim (issue 28): epoch time at 1M within 12x of 100k.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FEATURES, HIDDEN, BATCH = 108, (64,), 256


def one(rows: int, sampler: str) -> dict:
    """Run in the child: one epoch, returns its seconds and peak memory."""
    import dataclasses
    import resource

    import numpy as np

    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "tests"))
    from plans import make_job
    from ppmlops.training.in_process import train_in_process
    from ppmlops.training.loop import Arrays

    if sampler == "coin per row":  # the sampler before issue 28, for the comparison
        from ppmlops.training import sampling

        def batches(self, source):
            for _ in range(self.steps):
                import torch

                yield self.rows[torch.from_numpy(source.bernoulli(len(self.rows), self.sample_rate))]
        sampling.LockstepPoissonSampler.batches = batches
    rng = np.random.default_rng(0)
    X = rng.random((rows, FEATURES), dtype=np.float32)
    y = (X[:, 0] + 0.1 * rng.standard_normal(rows) > 0.5).astype(np.int64)
    holdout = max(1000, rows // 5)
    arrays = Arrays(X, y, X[:holdout].copy(), y[:holdout].copy())
    with tempfile.TemporaryDirectory(prefix="ppmlops-scale-") as tmp:
        job = make_job(f"sqlite:///{tmp}/l.db", arrays, epochs=1, batch=BATCH, randomness="secure",
                       run_epsilon=1.0, lifetime=100.0)
        job = dataclasses.replace(job, model_kind="mlp", hidden=HIDDEN, storage_path=f"{tmp}/ray")
        _, outcome = train_in_process(job, arrays)
    return {"epoch_s": outcome.timings.epochs, "steps": job.plan.steps_per_epoch,
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", nargs=2, metavar=("ROWS", "SAMPLER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(one(int(args.child[0]), args.child[1])))
        return 0
    sizes = (10_000, 100_000) if args.quick else (10_000, 100_000, 1_000_000)
    ways = ("subset (product)", "coin per row")
    print(f"one DP-SGD epoch in process, MLP {FEATURES}-{HIDDEN[0]}-2, batch {BATCH}, secure randomness, 1 thread")
    print(f"{'rows':>10} {'way':<18}{'steps':>7}{'epoch s':>10}{'x 10k':>8}{'peak MiB':>10}{'coin/subset':>13}")
    first: dict[str, float] = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for n in sizes:
        got = {}
        for way in ways:
            out = subprocess.run([sys.executable, __file__, "--child", str(n), way], capture_output=True, text=True,
                                 env=env, check=True)
            got[way] = json.loads(out.stdout.strip().splitlines()[-1])
            first.setdefault(way, got[way]["epoch_s"])
        for i, way in enumerate(ways):
            r = got[way]
            ratio = f"{got['coin per row']['epoch_s'] / got['subset (product)']['epoch_s']:.2f}x" if i == 0 else ""
            print(f"{n if i == 0 else '':>10} {way:<18}{r['steps']:>7}{r['epoch_s']:>10.2f}"
                  f"{r['epoch_s'] / first[way]:>8.1f}{r['peak_mib']:>10.0f}{ratio:>13}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
