"""Poisson sampling per DP-SGD step: a CSPRNG coin per row against a Binomial size and a uniform
subset (ppmlops.privacy.randomness.NoiseSource.poisson_subset), the same law, in one run.

    .venv/bin/python benchmarks/sampling.py            # 10k, 100k, 372k (one Adult-sized worker at 1M+), 1M rows
    .venv/bin/python benchmarks/sampling.py --quick    # 10k and 372k

Prints, per table size, milliseconds a step of each way at the demo's batch (256 rows expected),
their ratio, and what an epoch's sampling costs (n / 256 steps). Both draw from the same
OS-keyed ChaCha20 stream, as the training loop does.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BATCH = 256


def per_step_ms(fn, repeats: int) -> float:
    fn()  # warm
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) * 1000 / repeats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    import numpy as np

    from ppmlops.privacy.randomness import NoiseSource

    sizes = (10_000, 372_000) if args.quick else (10_000, 100_000, 372_000, 1_000_000)
    src = NoiseSource(int.from_bytes(os.urandom(32), "big"), secure=True)
    print(f"{'rows':>9} {'coin per row ms/step':>21} {'subset ms/step':>15} {'ratio':>7} "
          f"{'epoch sampling coins s':>23} {'subset s':>9}")
    for n in sizes:
        q = BATCH / n
        reps = max(20, int(2e7 // n))
        rows = np.arange(n)
        coins = per_step_ms(lambda: rows[src.bernoulli(n, q)], reps)
        subset = per_step_ms(lambda: rows[src.poisson_subset(n, q)], max(reps, 2000))
        steps = n / BATCH
        print(f"{n:>9,} {coins:>21.3f} {subset:>15.4f} {coins / subset:>6.0f}x {coins * steps / 1000:>23.2f} "
              f"{subset * steps / 1000:>9.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
