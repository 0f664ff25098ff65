"""Scale-out on this machine: DP-SGD throughput with 1 and 2 Ray Train workers, and what Ray adds.

    .venv/bin/python benchmarks/scaling.py            # UCI Adult (PPMLOPS_DATA), MLP [64], 3 epochs
    .venv/bin/python benchmarks/scaling.py --quick    # 1 epoch, logistic

Prints:
- samples/s with 1 and 2 workers: training rows per second of epoch time (the epoch's own
  clock on rank 0: DP-SGD steps, the noisy all-reduce, the ledger write), median of --repeat runs;
- Ray Train overhead per run: trainer wall time minus epoch time (worker group start, process
  group, checkpoints);
- local Ray start: `ray.init()` in this process (what the embedded demo pays once);
- a two-node `ray start` cluster's start-up until its job server answers;
- job submission: a no-op job's round trip, and one whose driver imports ppmlops and joins the
  cluster (what the Ray Jobs path adds before training starts).

All runs go through ppmlops.training.launch.train_on_ray with the privacy filter and ledger, epsilon 1
(secure randomness), planned as the plan stage plans (benchmarks/adult.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adult import adult_job, load  # noqa: E402  benchmarks/ is this script's folder

BATCH = 256


def train_once(arrays, *, workers: int, epochs: int, hidden: tuple[int, ...], tmp: Path, tag: str):
    from ppmlops.training.launch import train_on_ray

    job = adult_job(tmp, arrays, run_id=tag, epsilon=1.0, epochs=epochs, workers=workers, hidden=hidden)
    t0 = time.perf_counter()
    _, outcome = train_on_ray(job, arrays)
    wall = time.perf_counter() - t0
    epoch_s = sum(h["seconds"] for h in outcome.history)
    return len(arrays.y) * outcome.epochs_completed / epoch_s, wall - epoch_s


def job_round_trip(client, entrypoint: str) -> float:
    from ppmlops.training.jobs import follow

    t0 = time.perf_counter()
    job = client.submit_job(entrypoint=entrypoint)
    status = follow(client, job, echo=lambda line: None, poll_s=0.1)
    if status != "SUCCEEDED":
        raise RuntimeError(f"job {entrypoint!r} ended {status}: {client.get_job_logs(job)[-2000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    epochs, kind, hidden = (1, "logistic", ()) if args.quick else (3, "mlp", (64,))
    repeat = 1 if args.quick else args.repeat
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.pop("RAY_ADDRESS", None)

    import ray

    from ppmlops.training.launch import ensure_ray, shutdown_local_ray
    from ppmlops.training.local_cluster import start_local_cluster

    arrays, _, _ = load(None, 0)
    cores = len(os.sched_getaffinity(0))
    print(f"UCI Adult: {len(arrays.y):,} training rows x {arrays.X.shape[1]} features; {kind} {hidden or ''}, {epochs} epoch(s), "
          f"batch {BATCH}; this machine: {cores} cores, {'a GPU' if _has_gpu() else 'no GPU'}")

    t0 = time.perf_counter()
    ensure_ray(None, num_cpus=max(cores, 2))
    print(f"local Ray start (ray.init in-process): {time.perf_counter() - t0:.1f} s")
    with tempfile.TemporaryDirectory() as d:
        rates: dict[int, float] = {}
        for workers in (1, 2):
            runs = [train_once(arrays, workers=workers, epochs=epochs, hidden=hidden, tmp=Path(d),
                               tag=f"w{workers}-{i}") for i in range(repeat)]
            rates[workers] = statistics.median(r for r, _ in runs)
            print(f"{workers} worker(s): {rates[workers]:,.0f} samples/s (median of {repeat}); "
                  f"Ray Train overhead per run {statistics.median(o for _, o in runs):.1f} s")
        print(f"2-worker speed-up: {rates[2] / rates[1]:.2f}x")
    shutdown_local_ray()
    assert not ray.is_initialized()

    from ray.job_submission import JobSubmissionClient

    with start_local_cluster(nodes=2, cpus_per_node=1) as cluster:
        print(f"two-node cluster (ray start --head + 1 node) up, job server answering: {cluster.startup_s:.1f} s")
        client = JobSubmissionClient(cluster.jobs_url)
        noop = statistics.median(job_round_trip(client, "python -c pass") for _ in range(3))
        driver = statistics.median(job_round_trip(
            client, "python -c 'import ray, ppmlops.pipeline, ppmlops.training.launch; ray.init()'") for _ in range(3))
        print(f"job submission round trip: no-op job {noop:.1f} s; driver importing ppmlops and joining the "
              f"cluster {driver:.1f} s (median of 3)")
    print("Read with care: with 2 cores, 2 workers share the cores with Ray's own processes, so the "
          "speed-up here shows the cost of the DP all-reduce and coordination, not the gain of a second "
          "machine or GPU.")


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
