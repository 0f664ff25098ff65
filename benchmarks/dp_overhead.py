"""DP-SGD step time against non-private SGD, side by side in one run, per model.

    .venv/bin/python benchmarks/dp_overhead.py [--steps 100] [--batch 256] [--repeats 7]

Rows, for each model (logistic 108-2, the Adult MLP 108-64-2, a wider MLP 108-256-256-2), one
thread, one process (a gloo world of one), inputs shaped like encoded UCI Adult:

  non-private              plain torch SGD
  hooks, torch.normal      Opacus per-row gradients (hooks), Opacus's own torch.normal noise
  hooks, CSPRNG            the same clipping, the noise ppmlops adds: AES-256-CTR keyed from the OS,
                           two independent draws per number (the floating-point mitigation,
                           ppmlops.privacy.cipher_noise), on rank 0
  ghost, CSPRNG            Opacus's ghost clipping (two backward passes, no per-row gradients)
                           with its distributed fast-clipping optimizer, the same noise
  linear, torch.normal     ppmlops's closed-form norms for linear stacks (one backward pass) and
                           ppmlops's fused noise, scaling and reduction (one flat buffer), with
                           torch.normal noise
  linear, CSPRNG           the same with the CSPRNG noise: the default for these models

The gap between a path's "torch.normal" and "CSPRNG" rows is the price of noise nobody can
replay; the gap between non-private and "linear, torch.normal" is the price of clipping.

Printed: milliseconds per step (median of the repeats, the paths taking turns in each) and the ratio to non-private, all measured in
this one run. The aim (issue 28) is at most 2x non-private on the Adult MLP for the default.
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
# At least 10 million parameters (10.9M): per-row gradients (hooks) would hold 256 copies of it,
# so only the paths that never materialise them run.
LARGE = {"10.9M MLP 108-4096-2560-2": ("mlp", [4096, 2560])}
LARGE_PATHS = ("linear, torch.normal", "linear, CSPRNG (default)")
FEATURES = 108


def _time_side_by_side(steps_by_path: dict, steps: int, repeats: int) -> dict[str, float]:
    """Median ms per step of each path; the paths take turns within every repeat, so a change in
    the machine's load hits all of them alike and the ratios stay comparable."""
    for step in steps_by_path.values():
        for _ in range(10):
            step()
    runs: dict[str, list[float]] = {label: [] for label in steps_by_path}
    for _ in range(repeats):
        for label, step in steps_by_path.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            runs[label].append((time.perf_counter() - t0) / steps)
    return {label: statistics.median(r) * 1e3 for label, r in runs.items()}


def _batch(batch: int):
    return torch.rand(batch, FEATURES), torch.randint(0, 2, (batch,))


def non_private(kind, hidden, batch):
    return plain_step(build_model(kind, FEATURES, hidden), *_batch(batch))


def plain_step(net, X, y):
    """A non-private SGD step of `net` on the batch (X, y), as a closure (benchmarks/models.py too)."""
    opt = torch.optim.SGD(net.parameters(), lr=0.1)

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(X), y).backward()
        opt.step()
    return step


PATHS = {"hooks, torch.normal": ("hooks", False), "hooks, CSPRNG": ("hooks", True),
         "ghost, CSPRNG": ("ghost", True), "linear, torch.normal": ("linear", False),
         "linear, CSPRNG (default)": ("linear", True)}


class TorchNormal:
    """What Opacus adds outside its secure mode, in the place of the run's NoiseSource."""

    def gaussian_tensor(self, count, std, dtype, device):
        return torch.normal(0.0, std, (count,), dtype=dtype, device=device)


def private(kind, hidden, batch, *, clipping: str, csprng: bool):
    return private_step(build_model(kind, FEATURES, hidden), *_batch(batch), clipping=clipping, csprng=csprng)[0]


def private_step(net, X, y, *, clipping: str = "auto", csprng: bool = True, task: str = "binary"):
    """The product's DP-SGD step (PrivateModel.step) of `net` on the batch (X, y), as a closure, and
    the clipping mode it resolved to ("auto": the product's choice for the model)."""
    model = make_private_model(net, noise_multiplier=1.0, max_grad_norm=1.0, learning_rate=0.1, momentum=0.0,
                               divisor=float(len(y)), device=X.device, clipping=clipping, task=task)
    if csprng:
        model.set_epoch(noise_multiplier=1.0, max_grad_norm=1.0, learning_rate=0.1,
                        noise_source=Randomness.secure().source("noise"))
    else:  # torch.normal (Opacus's noise outside its secure mode, not a CSPRNG), for the comparison only
        model.set_epoch(noise_multiplier=1.0, max_grad_norm=1.0, learning_rate=0.1, noise_source=TorchNormal())
    return (lambda: model.step(X, y)), model.clipping


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-large", action="store_true", help="skip the 10.9M-parameter model")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=0, world_size=1)
    print(f"DP-SGD step time, batch {args.batch}, {args.steps} steps x {args.repeats} repeats (median, paths "
          f"interleaved), 1 thread")
    print(f"{'model':<27}{'path':<28}{'ms/step':>9}{'x non-private':>15}")
    models = {name: (kind, hidden, tuple(PATHS)) for name, (kind, hidden) in MODELS.items()}
    if not args.no_large:
        models.update({name: (kind, hidden, LARGE_PATHS) for name, (kind, hidden) in LARGE.items()})
    for name, (kind, hidden, labels) in models.items():
        paths = {"non-private": non_private(kind, hidden, args.batch)}
        paths.update({label: private(kind, hidden, args.batch, clipping=PATHS[label][0], csprng=PATHS[label][1])
                      for label in labels})
        large = name in LARGE
        ms = _time_side_by_side(paths, max(3, args.steps // 20) if large else args.steps,
                                min(3, args.repeats) if large else args.repeats)
        for i, (label, value) in enumerate(ms.items()):
            print(f"{name if i == 0 else '':<27}{label:<28}{value:9.3f}{value / ms['non-private']:15.2f}")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
