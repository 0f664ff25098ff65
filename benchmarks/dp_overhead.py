"""DP-SGD step time against non-private SGD, side by side in one run, per model.

    .venv/bin/python benchmarks/dp_overhead.py [--steps 200] [--batch 256]

Rows, for each model (logistic 108-2, the Adult MLP 108-64-2, a wider MLP 108-256-256-2), one
thread, one process (a gloo world of one), inputs shaped like encoded UCI Adult:

  non-private          plain torch SGD
  opacus noise         Opacus per-sample clipping (hooks), Opacus's own torch.normal noise
  ppmlops (CSPRNG)     the same clipping, the noise ppmlops adds: ChaCha20 keyed from the OS, four
                       draws per number (Opacus's floating-point mitigation), on rank 0

Printed: milliseconds per step (median of 5 repeats) and the ratio to non-private.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ppmlops.privacy.randomness import Randomness  # noqa: E402
from ppmlops.training.models import build_model  # noqa: E402
from ppmlops.training.private_model import make_private_model  # noqa: E402

MODELS = {"logistic 108-2": ("logistic", []), "Adult MLP 108-64-2": ("mlp", [64]),
          "wide MLP 108-256-256-2": ("mlp", [256, 256])}
FEATURES = 108


def _time(step, steps: int, repeats: int = 5) -> float:
    for _ in range(10):
        step()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        runs.append((time.perf_counter() - t0) / steps)
    return statistics.median(runs) * 1e3


def _batch(batch: int):
    return torch.rand(batch, FEATURES), torch.randint(0, 2, (batch,))


def non_private(kind, hidden, batch):
    net = build_model(kind, FEATURES, hidden)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    X, y = _batch(batch)

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(X), y).backward()
        opt.step()
    return step


def private(kind, hidden, batch, *, csprng: bool):
    net = build_model(kind, FEATURES, hidden)
    model = make_private_model(net, noise_multiplier=1.0, max_grad_norm=1.0, learning_rate=0.1, momentum=0.0,
                               divisor=float(batch), device=torch.device("cpu"))
    if csprng:
        model.set_epoch(noise_multiplier=1.0, max_grad_norm=1.0, learning_rate=0.1,
                        noise_source=Randomness.secure().source("noise"))
    else:  # Opacus's own noise path, for the comparison only
        from opacus.optimizers import DistributedDPOptimizer

        model.optimizer.add_noise = lambda: DistributedDPOptimizer.add_noise(model.optimizer)
    X, y = _batch(batch)
    return lambda: model.step(X, y)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=0, world_size=1)
    print(f"DP-SGD step time, batch {args.batch}, {args.steps} steps x 5 repeats (median), 1 thread")
    print(f"{'model':<24}{'path':<22}{'ms/step':>9}{'x non-private':>15}")
    for name, (kind, hidden) in MODELS.items():
        base = _time(non_private(kind, hidden, args.batch), args.steps)
        print(f"{name:<24}{'non-private':<22}{base:9.3f}{1.0:15.2f}")
        for label, csprng in (("opacus noise", False), ("ppmlops (CSPRNG)", True)):
            ms = _time(private(kind, hidden, args.batch, csprng=csprng), args.steps)
            print(f"{'':<24}{label:<22}{ms:9.3f}{ms / base:15.2f}")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
