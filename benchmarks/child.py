"""Measuring a job in a fresh child process: its JSON result line, throughput and peak memory."""

from __future__ import annotations

import json
import subprocess
import sys


def run_child(args: list[str], env: dict[str, str]) -> dict | int:
    """Run `python ARGS`; its last stdout line is a JSON result. An exit status on failure."""
    child = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env)
    if child.returncode != 0:
        print(child.stderr, file=sys.stderr)
        return child.returncode
    return json.loads(child.stdout.strip().splitlines()[-1])


def print_rate_and_memory(what: str, doing: str, r: dict, size: int) -> None:
    """`r` holds rows, seconds, peak_rss_mb and rss_after_imports_mb; `size` is the file's bytes."""
    print(f"{what}: {r['rows']} rows in {r['seconds']:.1f}s = {r['rows'] / r['seconds']:,.0f} rows/s, "
          f"{size / 2**20 / r['seconds']:.1f} MiB/s")
    print(f"peak resident memory of the {doing} process: {r['peak_rss_mb']:.0f} MiB "
          f"({r['rss_after_imports_mb']:.0f} MiB after imports) for a {size / 2**20:.0f} MiB file")
