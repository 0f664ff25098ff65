"""The PRAM risk scan of a source file on a Ray cluster with Ray Data: the same ScanData as scan.py.

`scan_on_cluster` takes scan_sources' arguments and, for one CSV or Parquet file (what the assess
stage scans: the spec's source, re-read to check it is what ingest staged), reads it in parts on
the cluster (cut as ppmlops.data.ray_ingest cuts them: CSV at line starts with global line
numbers, one part if it holds a quote or a lone CR; Parquet by row groups):

1. per part, on Ray Data: its records, malformed lines (count and the first MAX_LINES_LISTED line
   numbers), consent refusals by rule, and usable rows (well-formed, not refused);
2. per part again, given the number of usable rows before it: the part's bottom-k sample with
   the scan's own _Sample, its generator advanced past the keys the parts before it draw
   (numpy's PCG64 draws one 64-bit step per uniform double, so the keys are those the one
   sequential scan gives each row), and the source's SHA-256 by one task meanwhile;
3. the parts' samples merged: the `sample_rows` smallest keys, in source order, which is what
   the sequential bottom-k keeps. Counts are summed; the malformed lines listed are the first
   in the file.

So the report is the local scan's, value for value (tests/integration/test_ray_ingest.py). What
stays local (scan_sources, in this process): several sources, a SQL reader, NPZ, equivalence
classes (qi_columns) and a malformed-line quarantine. The merged sample (what PRAM's detectors
read) comes back to the calling process, as the local scan holds it there; it goes into the
run's private risk report only.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np

from ppmlops.data.consent import ConsentRules
from ppmlops.data.ray_ingest import (PART_BYTES, _Cluster, _guarded, _value, hash_and_cut, parts_on_ray_data,
                                     source_layout)
from ppmlops.data.reading import Part, SourceReader, detect_encoding
from ppmlops.errors import DataError
from ppmlops.risk.scan import MAX_LINES_LISTED, FileScan, ScanData, SourceInput, _Sample, scan_sources


def cluster_reason(sources: Sequence[Any], qi_columns: Sequence[str] | None, quarantine: Any) -> str | None:
    """Why this scan stays in the calling process, or None."""
    if len(sources) != 1:
        return "several sources"
    src = sources[0]
    if hasattr(src, "batches"):
        return "a SQL source is read by its query"
    if src.format not in ("csv", "parquet"):
        return f"a {src.format} source is read whole"
    if qi_columns or quarantine is not None:
        return "equivalence classes and a scan quarantine are counted in one pass"
    return None


def _plan(src: SourceInput, chunk_rows: int) -> dict[str, Any]:
    encoding = detect_encoding(src.path) if src.format == "csv" and src.encoding == "auto" else src.encoding
    return source_layout(SourceReader(src.path, src.format, encoding, src.delimiter, chunk_rows))


def _reader(job: Any, row: dict[str, Any]) -> tuple[SourceReader, ConsentRules | None]:
    part = Part(int(row["start"]), int(row["end"]), int(row["first_line"]), job.state)
    reader = SourceReader(job.path, job.format, job.encoding, job.delimiter, job.chunk_rows, part=part)
    rules = ConsentRules(job.consent, reader.header, job.as_of, reader.path) if job.consent is not None else None
    return reader, rules


def _usable(batch, rules: ConsentRules | None, refusals: Counter | None = None) -> np.ndarray:
    """The batch's rows that pass consent (scan_sources' rule), counting refusals by rule."""
    if rules is None:
        return np.arange(batch.num_rows)
    refusal, found = rules.refusals(batch.column, batch.num_rows)
    if refusals is not None:
        for code, n in zip(*np.unique(refusal[refusal >= 0], return_counts=True)):
            refusals[found[code][0]] += int(n)
    return np.flatnonzero(refusal < 0)


def _count_part(job: Any, row: dict[str, Any]) -> dict[str, Any]:
    reader, rules = _reader(job, row)
    refusals: Counter = Counter()
    malformed, lines, used = 0, [], 0
    for batch in reader.batches(rules.columns() if rules is not None else []):
        for line, _, _ in batch.ragged:
            malformed += 1
            if len(lines) < MAX_LINES_LISTED:
                lines.append(line)
        used += len(_usable(batch, rules, refusals))
    return {"rows_in": reader.rows_in, "malformed": malformed, "lines": lines, "refusals": dict(refusals),
            "used": used}


def _sample_part(job: Any, row: dict[str, Any]) -> dict[str, Any]:
    reader, rules = _reader(job, row)
    sample = _Sample(job.sample_rows, job.seed)
    sample.rng.bit_generator.advance(int(row["before"]))  # the keys the parts before this one draw
    for batch in reader.batches(rules.columns() if rules is not None else []):
        used = _usable(batch, rules)
        sample.offer(0, len(used), lambda at, batch=batch, used=used: batch.records(used[at].tolist()))
    return {"keys": sample.keys.tolist(), "rows": [rec for _, rec in sample.rows]}


def _map(fn):
    def row_fn(row: dict[str, Any], job: Any) -> dict[str, Any]:
        where = lambda: f"{job.path}: part {int(row['index'])}"  # noqa: E731
        return {"index": int(row["index"]), "reply": json.dumps(_guarded(where, fn)(job, dict(row)))}

    return row_fn


def scan_on_cluster(sources: Sequence[SourceInput], *, address: str, consent=None, as_of=None,
                    sample_rows: int = 10_000, seed: int = 0, qi_columns: Sequence[str] | None = None,
                    k: int = 5, quarantine=None, chunk_rows: int = 50_000, part_bytes: int = PART_BYTES) -> ScanData:
    """scan_sources' ScanData, read in parts on the Ray cluster at `address` where
    cluster_reason is None, else scan_sources itself."""
    if cluster_reason(sources, qi_columns, quarantine) is not None:
        return scan_sources(sources, consent=consent, as_of=as_of, sample_rows=sample_rows, seed=seed,
                            qi_columns=qi_columns, k=k, quarantine=quarantine, chunk_rows=chunk_rows)
    if consent is not None and as_of is None:
        raise ValueError("consent rules need the run date (as_of)")
    cluster = _Cluster(address)
    try:
        src = sources[0]
        plan = _value(cluster.one(_guarded(lambda: f"{src.path}: planning the scan", _plan), src, chunk_rows))
        job = SimpleNamespace(**{k: plan[k] for k in ("path", "format", "encoding", "delimiter", "state")},
                              part_bytes=part_bytes, chunk_rows=chunk_rows, consent=consent, as_of=as_of,
                              sample_rows=sample_rows, seed=seed)
        hashed, parts, _ = hash_and_cut(cluster, job, plan)
        counts = [_value(r) for r in parts_on_ray_data(job, parts, _map(_count_part))]
        before = np.concatenate([[0], np.cumsum([c["used"] for c in counts])[:-1]]).astype(int).tolist()
        samples = [_value(r) for r in parts_on_ray_data(job, parts, _map(_sample_part),
                                                        extra=[{"before": b} for b in before])]
        sha256 = _value(cluster.ray.get(hashed))
    finally:
        cluster.close()
    return _merged(plan, sha256, counts, samples, sample_rows)


def _merged(plan: dict[str, Any], sha256: str, counts: list[dict], samples: list[dict], sample_rows: int) -> ScanData:
    info = FileScan(plan["path"], plan["format"], plan["encoding"] if plan["format"] == "csv" else None,
                    plan["delimiter"], plan["header"], sha256=sha256, bytes=plan["size"])
    refusals: Counter = Counter()
    for c in counts:
        info.rows_in += c["rows_in"]
        info.rows_malformed += c["malformed"]
        info.malformed_lines.extend(c["lines"][:MAX_LINES_LISTED - len(info.malformed_lines)])
        refusals.update(c["refusals"])
    info.rows_refused = sum(refusals.values())
    info.refusals = dict(sorted(refusals.items()))
    if info.rows_in == 0:
        raise DataError(f"{info.path}: has a header but no data rows")
    candidates = [(key, part, j) for part, s in enumerate(samples) for j, key in enumerate(s["keys"])]
    chosen = sorted(sorted(candidates)[:max(0, sample_rows)], key=lambda c: (c[1], c[2]))
    values: dict[str, list[str]] = {c: [] for c in info.header}
    for _, part, j in chosen:
        for c, v in zip(info.header, samples[part]["rows"][j]):
            values[c].append(v)
    info.path = Path(info.path)
    return ScanData(list(info.header), [info], sum(c["used"] for c in counts), values, len(chosen), None)
