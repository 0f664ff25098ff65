"""Each training process's peak resident memory, kept with the run's private Ray files.

Why private. A worker's peak memory grows with the rows of its shard, so it is a function of the
private row count: it is written under the run's `private/ray` storage (never in a public record
or log) and read by benchmarks/dag_memory.py, which shows that the table's rows live in the
workers and not in the DAG process.
"""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path


def peak_rss_mib() -> float:
    """This process's peak resident set size so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def record(folder: str | Path, rank: int) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "pid": os.getpid(),
                                                         "peak_rss_mib": round(peak_rss_mib(), 1)}))


def read(folder: str | Path) -> dict[int, float]:
    """Peak MiB by rank, of the ranks that recorded one (a retried attempt's ranks overwrite theirs)."""
    out = {}
    for path in sorted(Path(folder).glob("rank*.json")):
        item = json.loads(path.read_text())
        out[int(item["rank"])] = float(item["peak_rss_mib"])
    return out
