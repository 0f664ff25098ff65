"""Risk scan throughput and peak memory on a generated CSV larger than the scan's memory.

    .venv/bin/python benchmarks/risk_scan.py                       # 1 GiB file in /tmp, scanned, deleted
    .venv/bin/python benchmarks/risk_scan.py --size-mb 200 --keep /tmp/scan.csv
    .venv/bin/python benchmarks/risk_scan.py --source /tmp/scan.csv  # a file written before, scanned again

Writes a customer table (identifiers, quasi-identifiers, a consent flag, numbers) of the given
size, then runs `ppmlops risk scan`'s assessment on it in a child process, so the reported peak
resident memory (ru_maxrss) is the scan's own: the imports, one chunk of rows, the value sample
and the k-anonymity counter's buffer, not the file. Prints rows per second, MB per second and
the peak memory next to the file size, and pyarrow's own parse of the same file (every column
as text, one thread, in a child process of its own) with the scan's rate as a share of it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from child import arrow_parse, print_rate_and_memory, print_reference, run_child  # noqa: E402  benchmarks/ is this script's folder

import numpy as np

HEADER = "customer_id,email,phone,ssn,zip,dob,age,sex,plan,monthly_spend,consent,churned\n"
FIRST = np.array(["olivia", "liam", "emma", "noah", "ava", "mateo", "sofia", "lucas", "mia", "priya", "omar",
                  "kenji", "amara", "jonas", "ines", "wei"])
LAST = np.array(["smith", "garcia", "muller", "rossi", "nguyen", "tanaka", "silva", "patel", "haddad", "novak"])


def generate(path: Path, size_bytes: int, seed: int = 1) -> int:
    """Write at least `size_bytes` of CSV in 200k-row blocks; returns the number of data rows."""
    rng = np.random.default_rng(seed)
    rows = 0
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(HEADER)
        while fh.tell() < size_bytes:
            n = 200_000
            first, last = rng.choice(FIRST, n), rng.choice(LAST, n)
            num = rng.integers(0, 10_000, n)
            area = rng.integers(200, 999, n)
            line4 = rng.integers(0, 10_000, n)
            ssn_a, ssn_g, ssn_s = rng.integers(1, 665, n), rng.integers(1, 100, n), rng.integers(1, 10_000, n)
            zips = rng.integers(1001, 99_951, n)
            year, month, day = rng.integers(1940, 2006, n), rng.integers(1, 13, n), rng.integers(1, 29, n)
            sex = rng.choice(np.array(["female", "male"]), n)
            plan = rng.choice(np.array(["basic", "plus", "premium"]), n)
            spend = rng.lognormal(3.5, 0.6, n)
            consent = np.where(rng.random(n) < 0.06, "no", "yes")
            churned = np.where(rng.random(n) < 0.3, "yes", "no")
            lines = [
                f"C{rows + i:09d},{first[i]}.{last[i]}{num[i]}@example.com,+1 {area[i]}-555-{line4[i]:04d},"
                f"{ssn_a[i]:03d}-{ssn_g[i]:02d}-{ssn_s[i]:04d},{zips[i]:05d},{year[i]}-{month[i]:02d}-{day[i]:02d},"
                f"{2024 - year[i]},{sex[i]},{plan[i]},{spend[i]:.2f},{consent[i]},{churned[i]}\n"
                for i in range(n)
            ]
            fh.write("".join(lines))
            rows += n
    return rows


def scan(path: Path) -> dict:
    """Runs in the child: the whole assessment, timed, with this process's peak memory."""
    import resource

    import pandas  # noqa: F401  (imported by the scan anyway; counted in the baseline, not the scan)

    from ppmlops.risk.assess import assess_file
    from ppmlops.spec import Consent

    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start, cpu = time.perf_counter(), time.process_time()
    report = assess_file(path, label="churned", consent=Consent(column="consent"), delta=1e-5)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "seconds": seconds, "cpu_seconds": cpu_seconds, "rows": report.source["rows_in"], "rows_used": report.source["rows_used"],
        "peak_rss_mb": peak_kb / 1024, "rss_after_imports_mb": base_kb / 1024,
        "score": report.score, "level": report.level, "quasi_identifiers": report.quasi_identifiers,
        "classes": report.reidentification.get("classes"),
        "direct": sorted({f["column"] for f in report.findings if f["category"] == "direct_identifier"}),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=float, default=1024)
    ap.add_argument("--keep", metavar="PATH", help="write the CSV here and keep it (default: a temporary file, deleted)")
    ap.add_argument("--source", metavar="PATH", help="scan this file, written by an earlier --keep, instead")
    ap.add_argument("--scan-only", metavar="PATH", help=argparse.SUPPRESS)
    ap.add_argument("--arrow-only", metavar="PATH", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.scan_only:
        print(json.dumps(scan(Path(args.scan_only))))
        return 0
    if args.arrow_only:
        print(json.dumps(arrow_parse(Path(args.arrow_only))))
        return 0

    keep = bool(args.keep or args.source)
    path = Path(args.source or args.keep or tempfile.mkstemp(prefix="ppmlops-scan-", suffix=".csv", dir="/tmp")[1])
    try:
        size = path.stat().st_size if args.source else 0
        if not args.source:
            t = time.perf_counter()
            rows = generate(path, int(args.size_mb * 1024 * 1024))
            size = path.stat().st_size
            print(f"generated {path}: {size / 2**20:.0f} MiB, {rows} rows in {time.perf_counter() - t:.1f}s")
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        r = run_child([__file__, "--scan-only", str(path)], env)
        if isinstance(r, int):
            return r
        print_rate_and_memory("scan", "scanning", r, size)
        print_reference("the scan", r, run_child([__file__, "--arrow-only", str(path)], env))
        print(f"result: score {r['score']:.3f} ({r['level']}), direct identifiers {r['direct']}, "
              f"k-anonymity over {r['quasi_identifiers']} ({r['classes']} classes), {r['rows_used']} consented rows")
        return 0
    finally:
        if not keep:
            path.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
