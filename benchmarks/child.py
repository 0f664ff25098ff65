"""Measuring a job in a fresh child process: its JSON result line, throughput and peak memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def run_child(args: list[str], env: dict[str, str]) -> dict | int:
    """Run `python ARGS`; its last stdout line is a JSON result. An exit status on failure."""
    child = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env)
    if child.returncode != 0:
        print(child.stderr, file=sys.stderr)
        return child.returncode
    return json.loads(child.stdout.strip().splitlines()[-1])


def print_rate_and_memory(what: str, doing: str, r: dict, size: int) -> None:
    """`r` holds rows, seconds, cpu_seconds, peak_rss_mb and rss_after_imports_mb; `size` is the
    file's bytes. The CPU time (of all the process's threads) is the per-core figure: on a
    machine shared with other work the wall time also holds the time the process waited."""
    print(f"{what}: {r['rows']} rows in {r['seconds']:.1f}s = {r['rows'] / r['seconds']:,.0f} rows/s, "
          f"{size / 2**20 / r['seconds']:.1f} MiB/s; {r['cpu_seconds']:.1f} CPU-seconds = "
          f"{r['rows'] / r['cpu_seconds']:,.0f} rows per CPU-second")
    print(f"peak resident memory of the {doing} process: {r['peak_rss_mb']:.0f} MiB "
          f"({r['rss_after_imports_mb']:.0f} MiB after imports) for a {size / 2**20:.0f} MiB file")


def arrow_parse(path: Path) -> dict:
    """Runs in a child: pyarrow's own streaming CSV parse of the file (every column as text, one
    thread, as ppmlops' reader runs it), the reference the ingest and the scan are measured
    against. Only the parse: no hash of the bytes, no checks."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    with open(path, newline="", encoding="utf-8") as fh:
        names = fh.readline().rstrip("\r\n").split(",")
    start, cpu = time.perf_counter(), time.process_time()
    reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(use_threads=False),
                            convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names}))
    rows = sum(batch.num_rows for batch in reader)
    return {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu, "rows": rows}


def print_reference(what: str, r: dict, arrow: dict | int) -> None:
    """Our rate next to pyarrow's parse of the same file, in the same run."""
    if isinstance(arrow, int):
        return
    ours, theirs = r["rows"] / r["seconds"], arrow["rows"] / arrow["seconds"]
    ours_cpu, theirs_cpu = r["rows"] / r["cpu_seconds"], arrow["rows"] / arrow["cpu_seconds"]
    print(f"pyarrow.csv.open_csv alone (all columns as text, one thread): {arrow['rows']} rows in "
          f"{arrow['seconds']:.1f}s = {theirs:,.0f} rows/s, {theirs_cpu:,.0f} rows per CPU-second; "
          f"{what} runs at {ours / theirs:.2f}x that ({ours_cpu / theirs_cpu:.2f}x per CPU-second)")


def sibling(name: str):
    """Another script of benchmarks/ as a module (the folder is not a package)."""
    import importlib.util

    loader = importlib.util.spec_from_file_location(f"{name}_bench", Path(__file__).resolve().parent / f"{name}.py")
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return module


def customer_file(source: str | None, size_mb: float, work: Path) -> Path:
    """The customer CSV to measure: `source` when given (one `risk_scan.py --keep` wrote), else
    one of `size_mb` generated into `work` by benchmarks/risk_scan.py."""
    if source:
        return Path(source).resolve()
    path = work / "customers.csv"
    start = time.perf_counter()
    rows = sibling("risk_scan").generate(path, int(size_mb * 1024 * 1024))
    print(f"generated {path}: {path.stat().st_size / 2**20:.0f} MiB, {rows} rows in {time.perf_counter() - start:.1f}s")
    return path


def ppmlops_env(work: Path, path: Path) -> dict[str, str]:
    """The environment a child (or this process) runs ppmlops in: this checkout's package, a
    PPMLOPS_HOME of its own under `work`, and `work` and the file's folder as data roots."""
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "PPMLOPS_HOME": str(work / "home"),
            "PPMLOPS_DATA_ROOTS": os.pathsep.join([str(work), str(path.parent)])}
