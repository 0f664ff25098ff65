"""Where ingest's time goes, per row, under each split rule, in one run.

    .venv/bin/python benchmarks/ingest_phases.py                      # a 200 MB generated file
    .venv/bin/python benchmarks/ingest_phases.py --source /tmp/c1g.csv  # a file of benchmarks/risk_scan.py --keep

Ingests the customer table of benchmarks/risk_scan.py (the spec of benchmarks/ingest_memory.py)
twice in this process, under the legacy split rule (keyed BLAKE2b) and the default one
(SipHash-2-4; ppmlops/privacy/split.py), with the CPU time of each phase of ingest summed over
the run: the phase's methods are wrapped, so nested phases are also counted inside their callers
(the split hash inside "split verdicts", the Parquet parse inside "parse a block"). Prints
microseconds of CPU per source row for each phase and rule, and the split verdicts' cost under
each rule with their ratio (under SipHash, a parsed block's lines are hashed in place by the C
extension, ppmlops/privacy/_splithash.c: no joined fields are made for them). Both runs must stage the same rows (the partitions differ).
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from child import customer_file, ppmlops_env, sibling  # noqa: E402  benchmarks/ is this script's folder

# (object path, method, label): the phases, in the order they are printed.
PHASES = [
    ("reading._Source", "fill", "read the file and its SHA-256"),
    ("reading._BlockParser", "parse", "parse a block (checks and pyarrow)"),
    ("reading._BlockParser", "_table", "  of it: pyarrow's parse"),
    ("ingest._RowChecker", "accepted", "column-wise checks"),
    ("ingest._IngestRun", "_refused", "refused rows to quarantine (HMACs)"),
    ("ingest._IngestRun", "_stage_rows", "stage the accepted rows"),
    ("ingest._IngestRun", "_are_test", "  of it: split verdicts"),
    ("reading._Block", "joined", "    of it: fields joined for the hash"),
    ("split.SplitRules", "hashes", "    of it: the split hash of joined fields"),
    ("split.SplitRules", "line_hashes", "    of it: the split hash of a block's lines (C)"),
    ("ingest", "_canonical_columns", "  of it: canonical hash's text"),
    ("ingest._Snapshot", "write", "  of it: Parquet"),
]


def _wrap(modules: dict, spent: collections.Counter) -> None:
    for where, method, label in PHASES:
        owner = modules[where.split(".")[0]]
        for attr in where.split(".")[1:]:
            owner = getattr(owner, attr)
        fn = getattr(owner, method)

        def timed(*args, __fn=fn, __label=label, **kwargs):
            start = time.process_time()
            try:
                return __fn(*args, **kwargs)
            finally:
                spent[__label] += time.process_time() - start

        setattr(owner, method, functools.wraps(fn)(timed))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=float, default=200)
    ap.add_argument("--source", metavar="PATH", help="ingest this file instead of generating one")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ppmlops-ingest-phases-", dir="/tmp"))
    try:
        path = customer_file(args.source, args.size_mb, work)
        os.environ.update(ppmlops_env(work, path))
        sys.path.insert(0, str(HERE.parent))
        from ppmlops.data import ingest, reading
        from ppmlops.privacy import split
        from ppmlops.spec import parse_spec

        doc = json.loads(json.dumps(sibling("ingest_memory").SPEC))
        doc["dataset"]["source"]["path"] = str(path)
        spec = parse_spec(doc)
        spent: collections.Counter = collections.Counter()
        _wrap({"ingest": ingest, "reading": reading, "split": split}, spent)
        table, staged = {}, set()
        for rule in (split.LEGACY_RULE, split.DEFAULT_RULE):
            spent.clear()
            start = time.process_time()
            r = ingest.ingest(spec, work / f"run_{rule}", split_rule=rule)
            total = time.process_time() - start
            staged.add((r.rows_train + r.rows_test, r.rows_quarantined))
            table[rule] = {"whole ingest": total / r.rows_in * 1e6} | {
                label: spent[label] / r.rows_in * 1e6 for _, _, label in PHASES}
            print(f"split rule {rule}: {r.rows_in} rows in {total:.1f} CPU-seconds = {r.rows_in / total:,.0f} rows per "
                  f"CPU-second")
        if len(staged) != 1:
            raise SystemExit(f"the two runs staged different rows: {staged}")
        legacy, default = table[split.LEGACY_RULE], table[split.DEFAULT_RULE]
        print(f"\n{'us of CPU per source row':<42}{split.LEGACY_RULE:>10}{split.DEFAULT_RULE:>10}")
        for label in legacy:
            print(f"{label:<42}{legacy[label]:>10.3f}{default[label]:>10.3f}")
        verdicts = PHASES[6][2]
        print(f"\nthe split verdicts: {legacy[verdicts]:.3f} us a row under {split.LEGACY_RULE}, {default[verdicts]:.3f} "
              f"under {split.DEFAULT_RULE}: {legacy[verdicts] / default[verdicts]:.1f}x")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
