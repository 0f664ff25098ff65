"""Speed of the RDP accountant, the filter and the ledger on this machine.

    .venv/bin/python benchmarks/accountant.py [--segments 1000] [--repeat 5]

Figures (median of --repeat runs, except "cold", which is one pass after clearing the cache):
- compose N distinct segments (every (sigma, q) new: the per-step curves must be computed),
- the same N segments again (per-step curves cached by (sigma, q)),
- calibrate_noise at epsilon 0.1 and 1 for UCI Adult sizes (q = 256/32561, 10 epochs),
- plan_budget + PrivacyFilter.spend over the N segments,
- ledger charge+complete of 100 entries on an SQLite file, and the spent total over them,
- for scale, dp_accounting's RdpAccountant on 50 distinct segments when it is installed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ppmlops.privacy import accountant  # noqa: E402
from ppmlops.privacy.accountant import Segment, calibrate_noise, epsilon, epsilon_from_rdp, rdp_curve  # noqa: E402
from ppmlops.privacy.filter import PrivacyFilter, plan_budget  # noqa: E402
from ppmlops.privacy.ledger import Charge, Ledger  # noqa: E402

Q_ADULT = 256 / 32561
STEPS_ADULT = int(10 / Q_ADULT)
DELTA = 1e-5


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def distinct_segments(n: int, seed: int) -> list[Segment]:
    rng = np.random.default_rng(seed)
    return [Segment(float(rng.uniform(0.6, 3.0)), float(rng.uniform(0.002, 0.02)), int(rng.integers(50, 200)))
            for _ in range(n)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--segments", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    n, repeat = args.segments, args.repeat
    segments = distinct_segments(n, seed=1)

    accountant._step_rdp_cached.cache_clear()
    rdp_curve(distinct_segments(1, seed=99))  # one-off table set-up, not part of the figure
    t = time.perf_counter()
    curve = rdp_curve(segments)
    cold = time.perf_counter() - t
    warm = timed(lambda: rdp_curve(segments), repeat)
    eps, order = epsilon_from_rdp(curve, DELTA)
    print(f"orders on the grid:                         {len(accountant.ORDERS)}")
    print(f"compose {n} distinct segments, cold cache:  {cold * 1e3:9.1f} ms  ({cold / n * 1e3:.2f} ms per new (sigma, q))")
    print(f"compose {n} distinct segments, warm cache:  {warm * 1e3:9.2f} ms  (epsilon {eps:.3f} at order {order:g})")
    convert = timed(lambda: epsilon_from_rdp(curve, DELTA), repeat * 20)
    print(f"RDP -> epsilon conversion:                  {convert * 1e6:9.1f} us")

    for target in (0.1, 1.0):
        t_cal = timed(lambda: calibrate_noise(target, DELTA, Q_ADULT, STEPS_ADULT), repeat)
        sigma = calibrate_noise(target, DELTA, Q_ADULT, STEPS_ADULT)
        achieved = epsilon([Segment(sigma, Q_ADULT, STEPS_ADULT)], DELTA)
        print(f"calibrate eps {target:<4g} (q={Q_ADULT:.5f}, {STEPS_ADULT} steps): {t_cal * 1e3:9.1f} ms  "
              f"sigma {sigma:.5f}, achieved epsilon {achieved:.6f}")

    def filter_run() -> None:
        filt = PrivacyFilter(plan_budget(segments))
        for seg in segments:
            filt.spend(accountant.segment_rdp(seg))
    print(f"plan + filter {n} segments (warm):           {timed(filter_run, repeat) * 1e3:9.2f} ms")

    with tempfile.TemporaryDirectory() as tmp:
        led = Ledger(f"sqlite:///{Path(tmp) / 'ledger.db'}")
        led.register_dataset("bench", epsilon_budget=100.0, delta=DELTA)
        t = time.perf_counter()
        for i, seg in enumerate(segments[:100]):
            [entry] = led.charge(dataset_id="bench", run_id=f"run-{i}", charges=[Charge("train", seg)],
                                 kind="release", key="bench", randomness="secure")
            led.complete(entry)
        per_entry = (time.perf_counter() - t) / 100
        total = timed(lambda: led.spent("bench"), repeat)
        print(f"ledger charge+complete (SQLite, WAL):       {per_entry * 1e3:9.2f} ms per entry "
              f"(the lifetime filter's check over all earlier entries included)")
        print(f"ledger spent over 100 entries:              {total * 1e3:9.2f} ms")
        led.close()

    try:
        import dp_accounting
        from dp_accounting.rdp import rdp_privacy_accountant
    except ImportError:
        print("dp_accounting not installed: reference timing skipped")
        return 0
    few = segments[:50]
    t = time.perf_counter()
    acc = rdp_privacy_accountant.RdpAccountant(orders=accountant.ORDERS)
    acc.compose(dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(s.sample_rate, dp_accounting.GaussianDpEvent(s.noise_multiplier)),
            s.steps) for s in few]))
    ref = acc.get_epsilon(DELTA)
    t_ref = time.perf_counter() - t
    accountant._step_rdp_cached.cache_clear()
    t = time.perf_counter()
    mine = epsilon(few, DELTA)
    t_mine = time.perf_counter() - t
    print(f"50 distinct segments, cold: dp_accounting {t_ref * 1e3:.0f} ms, ppmlops {t_mine * 1e3:.0f} ms; "
          f"epsilon {ref:.9f} vs {mine:.9f} (rel diff {abs(mine - ref) / ref:.1e})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
