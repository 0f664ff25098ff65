"""Ingest on a Ray cluster with Ray Data: the source cut into parts, each read and checked on a node.

When a Ray cluster is configured (RAY_ADDRESS, or the `ppmlops_ray` connection's address) and
PPMLOPS_RAY_INGEST is not off, the ingest stage stages a CSV or Parquet file source here
(`ingest_on_cluster`); the result is the one ppmlops.data.ingest.ingest gives for the same file:
the same snapshot rows in the same order, the same snapshot and source SHA-256, the same
quarantine file byte for byte, the same IngestResult. The process that calls it (the Airflow
task) reads no row: it passes paths, settings and keys to the cluster and gets back counts
(private, as ingest's are: they go into the run's private ingest record) and hashes.

How (every step a Ray task; the parts on Ray Data, one row of work per part):

1. plan (one task): open the source as ingest does (the spec's columns, the header's spelling,
   the window's column, the identifier screen on the first rows), and find where its data begin
   (CSV: the byte after the header line; Parquet: the row groups and their rows);
2. CSV only, one task per range of about `part_bytes`: each range starts at the first line that
   starts at or after its nominal offset, so no line is cut; the task counts its line breaks
   (the first line of each part is the header's lines plus the breaks before it, a global line
   number) and looks for a quote (`"`) or a lone CR. A quote can open a field that spans lines,
   and a lone CR is a line break the count would miss: then the file is read as ONE part (still
   on the cluster, by one task), and the log says so. One more task hashes the whole file
   meanwhile (the source's SHA-256 is of its bytes in order);
3. the parts, on Ray Data (`from_items(...).map(...)`, one Ray Data block per part, spread over
   the nodes): each part is read (reading.Part: a byte range from its first line, or Parquet row
   groups from their first row) and checked by ingest's own per-batch code (_IngestRun._chunk:
   consent, labels, values, categories, tensors, the window's filter (rows outside the window
   never leave the task), the privacy blocks, the keyed split, the quarantine's reasons and
   HMACs); it writes its quarantine rows, its train and test rows (Parquet) and their canonical
   text to a folder of its own under the run's private folder, and returns its counts and the
   node it ran on;
4. merge (one task): the parts' quarantine rows, snapshots and canonical text, in source order,
   into the run's quarantine file and snapshots (written aside, moved in place last) and the
   snapshot's SHA-256; the parts' folder is removed. The driver checks the counts reconcile (as
   ingest does) before asking for the snapshots, and writes `ray_ingest.json` (each part's
   range, node and counts: private) next to them.

What stays on the local path (ingest.ingest in the task's process; `local_reason` says why): a
SQL source (its query is the read), an NPZ source (read whole), a spec with a test_source (two
files), and a spec with privacy.unit (the per-person bound counts each person's rows over the
whole source before any row is checked). Snapshot row groups follow the parts' chunks, not the
local read's: the rows, their order and every hash are the same.

Errors: a part that cannot be read fails the ingest with ingest's own message (a file's line,
never its contents); any other failure in a task is named by the file, the part and the error's
type only (an exception's text may quote a row). Nothing is moved into place unless every part
succeeded; the parts' folder is removed either way. Nothing is logged about rows: Ray's own logs
and object store (the tasks' arguments: spec, keys) stay in the cluster's temp folders; the parts
are written under the run's private folder, which every node must reach at the same path (as
Ray Train's checkpoints already must).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import shutil
import warnings
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from ppmlops.data import quarantine
from ppmlops.data.consent import today
from ppmlops.data.ingest import (INGEST_CHUNK_ROWS, IngestResult, _Counts, _IngestRun, _arrow_schema,
                                 SNAPSHOT_PARQUET, _canonical_part, _window, declared_columns,
                                 open_source, snapshot_columns)
from ppmlops.data.pseudonymize import load_key
from ppmlops.data.reading import FileState, Part, SourceChanged, SourceReader
from ppmlops.errors import DataError
from ppmlops.privacy.split import DEFAULT_RULE, SplitRules
from ppmlops.spec import PipelineSpec
from ppmlops.window import DataInterval

log = logging.getLogger(__name__)

PART_BYTES = 64 << 20  # a CSV part (and a Parquet part's uncompressed row groups): about this much
PARTS_DIR = ".ray_ingest"  # the parts' folder in the run's private folder, removed at the end
RECORD = "ray_ingest.json"  # each part's range, node and counts (private)
SCAN_BYTES = 4 << 20


def local_reason(spec: PipelineSpec) -> str | None:
    """Why this spec's ingest stays on the local path even with a cluster, or None."""
    ds = spec.dataset
    if ds.source.is_sql:
        return "a SQL source is read by its query"
    if ds.source.resolved_format() not in ("csv", "parquet"):
        return f"a {ds.source.resolved_format()} source is read whole"
    if ds.test_source is not None:
        return "a test_source (two files) is staged by the local path"
    if spec.privacy.unit is not None:
        return "privacy.unit: the per-person bound counts each person's rows over the whole source first"
    return None


# ------------------------------------------------------------------------------------------ the job


@dataclass
class _Job:
    """What every task is given (through Ray's object store, in the cluster's memory and temp)."""

    spec: PipelineSpec
    run_dir: Path
    as_of: date
    interval: DataInterval | None
    home: Path
    screen: Any
    retired: frozenset[str]
    keys: tuple[bytes | None, bytes]
    chunk_rows: int
    part_bytes: int
    split_rule: str = DEFAULT_RULE
    withheld: dict[str, str] | None = None
    # From the plan: the source as opened.
    path: str = ""
    format: str = ""
    encoding: str = "utf-8"
    delimiter: str | None = None
    state: FileState | None = None

    @property
    def parts_dir(self) -> Path:
        return self.run_dir / PARTS_DIR

    def reader(self, part: Part | None = None) -> SourceReader:
        return SourceReader(self.path, self.format, self.encoding, self.delimiter, chunk_rows=self.chunk_rows,
                            part=part)

    def run(self, folder: Path, reader: SourceReader, withheld: Mapping[str, str] | None) -> _IngestRun:
        return _IngestRun(self.spec, folder, self.as_of, self.chunk_rows, self.interval, self.home, self.screen,
                          self.retired, split_rule=self.split_rule, readers=[reader], keys=self.keys,
                          withheld=withheld)


def _guarded(what: str, fn: Callable[..., Any]) -> Callable[..., dict[str, Any]]:
    """`fn` for a Ray task: its value, or its error as text that quotes no row (a DataError is
    ingest's own, naming a line at most; any other error by its type only)."""

    def task(*args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return {"value": fn(*args, **kwargs)}
        except DataError as err:
            return {"error": str(err), "changed": isinstance(err, SourceChanged)}
        except Exception as err:  # noqa: BLE001 - re-raised by the driver, named without its text
            return {"error": f"{what()}: {type(err).__name__} on the Ray cluster", "changed": False}

    return task


def _value(reply: dict[str, Any]) -> Any:
    if "error" in reply:
        raise (SourceChanged if reply.get("changed") else DataError)(reply["error"])
    return reply["value"]


# ------------------------------------------------------------------------------------------ tasks


def _plan(job: _Job, partition: DataInterval | None) -> dict[str, Any]:
    """Open the source as ingest does, on the cluster: the checks that need no rows but its
    header, the identifier screen, and where its data begin."""
    reader = open_source(job.spec.dataset.source, job.chunk_rows, partition)
    scratch = job.parts_dir / "plan"
    run = job.run(scratch, reader, None)
    run.q.abort()
    shutil.rmtree(scratch, ignore_errors=True)
    return source_layout(reader) | {"header": run.readers[0].header, "renamed": run.renamed,
                                    "withheld": dict(run.q.withheld)}


def source_layout(reader: SourceReader) -> dict[str, Any]:
    """How a source opened by `reader` is read in parts: its path, format, encoding, delimiter,
    header, file state and size, and where its data begin (CSV: the byte after the header and
    the header's lines; Parquet: each row group's rows and uncompressed bytes)."""
    out: dict[str, Any] = {"path": str(reader.path), "format": reader.format, "encoding": reader.encoding,
                           "delimiter": reader.delimiter, "header": reader.header, "state": reader._before,
                           "size": reader._before.size}
    if reader.format == "csv":
        out["data_start"], out["header_lines"] = reader.data_start()
    else:
        meta = reader._parquet_file().metadata
        out["groups"] = [(meta.row_group(g).num_rows, meta.row_group(g).total_byte_size)
                         for g in range(meta.num_row_groups)]
    return out


def _line_start(fh, offset: int, floor: int, size: int) -> int:
    """The first offset >= `offset` where a line starts (after `floor`, where the data begin)."""
    if offset <= floor:
        return floor
    if offset >= size:
        return size
    fh.seek(offset - 1)
    at = offset - 1
    while True:
        data = fh.read(1 << 16)
        if not data:
            return size
        i = data.find(b"\n")
        if i >= 0:
            return at + i + 1
        at += len(data)


def _count_range(path: str, floor: int, size: int, nominal: tuple[int, int]) -> dict[str, Any]:
    """One CSV range: its bounds at line starts, its line breaks, and whether it holds a quote
    or a lone CR (either forbids reading the file in parts)."""
    with open(path, "rb") as fh:
        start = _line_start(fh, nominal[0], floor, size)
        end = _line_start(fh, nominal[1], floor, size)
        fh.seek(start)
        left, breaks, quote, cr, crlf, last = end - start, 0, False, 0, 0, b""
        while left > 0:
            data = fh.read(min(SCAN_BYTES, left))
            if not data:
                break
            left -= len(data)
            breaks += data.count(b"\n")
            quote = quote or b'"' in data
            cr += data.count(b"\r")
            crlf += data.count(b"\r\n") + (last == b"\r" and data[:1] == b"\n")
            last = data[-1:]
    return {"start": start, "end": end, "breaks": breaks, "whole": quote or cr != crlf}


def _hash_file(path: str, state: FileState) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    change = state.change_to(FileState.of(Path(path)))
    if change is not None:
        raise SourceChanged(f"{path}: the file changed while it was being read ({change}): nothing was "
                            "staged; re-run when the file is complete")
    return digest.hexdigest()


class _Sink:
    """A file that takes what ingest feeds its training hash: the canonical text, in row order."""

    def __init__(self, path: Path):
        self._fh = open(path, "wb")

    def update(self, data: bytes) -> None:
        self._fh.write(data)

    def close(self) -> None:
        self._fh.close()


def _ingest_part(job: _Job, index: int, part: Part) -> dict[str, Any]:
    """Ingest one part with ingest's own per-batch code; its files go to its own folder."""
    import ray

    folder = job.parts_dir / f"{index:05d}"
    shutil.rmtree(folder, ignore_errors=True)  # a retried task starts over
    reader = job.reader(part)
    run = job.run(folder, reader, job.withheld)
    run.test_text.close()
    try:
        run.train_hash = _Sink(folder / "train.canon")
        run.test_text = open(folder / "test.canon", "wb")
        for batch in reader.batches(run._read_columns(0)):
            run._chunk(0, reader, batch)
            del batch
        run.train_hash.close()
        run.test_text.close()
        run.q.commit()
        for snapshot in (run.train, run.test):
            snapshot.commit() if snapshot.rows else snapshot.abort()
    except BaseException:
        if isinstance(run.train_hash, _Sink):  # else the hash object its opening replaced
            run.train_hash.close()
        run.test_text.close()
        run.q.abort()
        run.train.abort()
        run.test.abort()
        raise
    return {"index": index, "folder": str(folder), "node": ray.get_runtime_context().get_node_id(),
            "quarantine_columns": run.q.columns, "rows_in": reader.rows_in, "rows_train": run.train.rows,
            "rows_test": run.test.rows, "rows_quarantined": run.q.rows, "accepted": run.counts[0].accepted,
            "quarantined": run.counts[0].quarantined, "reasons": dict(run.reasons),
            "refusals": dict(run.refusals), "outside": run.outside, "outside_blocks": run.outside_blocks,
            "cells_withheld": {c: dict(k) for c, k in run.q.cells_withheld.items()}}


def _part_row(row: dict[str, Any], job: _Job) -> dict[str, Any]:
    """Ray Data's map: one part in, its reply (as JSON text: counts by reason vary by part) out."""
    index = int(row["index"])
    part = Part(int(row["start"]), int(row["end"]), int(row["first_line"]), job.state)
    where = lambda: f"{job.path}: part {index} ({'rows' if job.format == 'parquet' else 'bytes'} {part.start}-{part.end})"  # noqa: E731
    reply = _guarded(where, _ingest_part)(job, index, part)
    return {"index": index, "reply": json.dumps(reply)}


def _merge(job: _Job, parts: list[dict[str, Any]], snapshots: bool) -> str:
    """The parts' quarantine rows, and with `snapshots` their snapshots, in order, into the run's
    files (moved in place last); the snapshot's SHA-256."""
    import pyarrow.parquet as pq

    tmp = f".{os.getpid()}.ray.tmp"
    q_path = job.run_dir / quarantine.FILE_NAME
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(parts[0]["quarantine_columns"])
    head = buf.getvalue().encode("utf-8")
    written: list[tuple[Path, Path]] = [(q_path.with_name(q_path.name + tmp), q_path)]
    digest = hashlib.sha256()
    try:
        with open(written[0][0], "wb") as out:
            out.write(head)
            for p in parts:
                with open(Path(p["folder"]) / quarantine.FILE_NAME, "rb") as fh:
                    if fh.read(len(head)) != head:
                        raise DataError(f"{job.path}: part {p['index']}: its quarantine columns differ from the "
                                        "first part's (internal error)")
                    shutil.copyfileobj(fh, out, 1 << 22)
        if snapshots:
            columns = snapshot_columns(job.spec)
            schema = _arrow_schema(job.spec)
            for name in ("train", "test"):
                final = job.run_dir / f"snapshot_{name}.parquet"
                written.append((final.with_name(final.name + tmp), final))
                with pq.ParquetWriter(written[-1][0], schema, **SNAPSHOT_PARQUET) as writer:
                    for p in parts:
                        path = Path(p["folder"]) / f"snapshot_{name}.parquet"
                        if p[f"rows_{name}"]:
                            pf = pq.ParquetFile(path)
                            for g in range(pf.num_row_groups):
                                writer.write_table(pf.read_row_group(g))
                digest.update(_canonical_part(name, columns).encode("utf-8"))
                for p in parts:
                    with open(Path(p["folder"]) / f"{name}.canon", "rb") as fh:
                        for block in iter(lambda: fh.read(1 << 22), b""):
                            digest.update(block)
        for staged, final in written:
            os.replace(staged, final)
    except BaseException:
        for staged, _ in written:
            Path(staged).unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(job.parts_dir, ignore_errors=True)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------ planning


def cut_ranges(floor: int, size: int, part_bytes: int) -> list[tuple[int, int]]:
    """Nominal byte ranges of about `part_bytes` over the data [floor, size); `_count_range`
    moves each bound to the next line start."""
    part_bytes = max(1, part_bytes)
    bounds = list(range(floor, size, part_bytes)) + [size]
    if len(bounds) == 1:
        bounds = [floor, size]
    return list(zip(bounds[:-1], bounds[1:]))


def first_lines(ranges: Sequence[dict[str, Any]], header_lines: int) -> list[Part]:
    """Each counted range as a Part whose first line is global: the header's lines plus the line
    breaks of every range before it, plus one. Empty ranges (a line longer than a part) go."""
    parts, line = [], header_lines + 1
    for r in ranges:
        if r["end"] > r["start"]:
            parts.append(Part(r["start"], r["end"], line))
        line += r["breaks"]
    return parts


def group_row_groups(groups: Sequence[tuple[int, int]], part_bytes: int) -> list[Part]:
    """Consecutive Parquet row groups of about `part_bytes` (uncompressed) per part, each with its
    first row's number."""
    parts, start, row, first, size = [], 0, 0, 1, 0
    for g, (rows, nbytes) in enumerate(groups):
        size += nbytes
        row += rows
        if size >= part_bytes or g == len(groups) - 1:
            parts.append(Part(start, g + 1, first))
            start, first, size = g + 1, row + 1, 0
    return parts


def _csv_parts(job: _Job, plan: dict[str, Any], remote: Callable) -> tuple[list[Part], str]:
    ranges = cut_ranges(plan["data_start"], plan["size"], job.part_bytes)
    counted = [_value(r) for r in remote(_count_range, [(job.path, plan["data_start"], plan["size"], nominal)
                                                         for nominal in ranges])]
    whole = Part(plan["data_start"], plan["size"], plan["header_lines"] + 1, job.state)
    if any(c["whole"] for c in counted):
        return [whole], ("one part: the file holds a quote (a quoted field may span lines) or a lone CR line "
                         "break, so it cannot be cut at line breaks")
    parts = [Part(p.start, p.end, p.first_line, job.state) for p in first_lines(counted, plan["header_lines"])]
    return parts or [whole], f"{len(parts or [whole])} part(s) cut at line breaks"


def hash_and_cut(cluster: "_Cluster", job: Any, plan: dict[str, Any]) -> tuple[Any, list[Part], str]:
    """Start hashing the whole source on the cluster (a Ray object reference to the reply), and
    cut it into parts (CSV: ranges counted on the cluster; Parquet: whole row groups); how."""
    hashed = cluster.ray.remote(_guarded(lambda: f"{job.path}: hashing", _hash_file)).options(
        num_cpus=1, max_retries=1).remote(job.path, job.state)
    if job.format == "csv":
        parts, how = _csv_parts(job, plan, lambda fn, args: cluster.many(
            _guarded(lambda: f"{job.path}: counting lines", fn), args))
    else:
        parts = [Part(p.start, p.end, p.first_line, job.state) for p in group_row_groups(plan["groups"], job.part_bytes)]
        how = f"{len(parts)} part(s) of whole row groups"
    return hashed, parts, how


# ------------------------------------------------------------------------------------------ driver


@dataclass
class _ReadSummary:
    """What IngestResult says of a source read in parts (a SourceReader's fields)."""

    path: Path
    format: str
    encoding: str
    delimiter: str | None
    header: list[str]
    rows_in: int
    sha256: str
    labels: Path | None = None


@dataclass
class _Merged:
    """The parts' counts, summed, in the shape _IngestRun.result and _reconcile read."""

    spec: PipelineSpec
    ds: Any
    readers: list[_ReadSummary]
    columns: list[str]
    train: Any
    test: Any
    q: Any
    quarantine_path: Path
    as_of: date
    window: Any
    selected: DataInterval | None
    retired: list[str]
    renamed: dict[str, str]
    retention: int
    fraction: float
    split: SplitRules
    digest: str = ""
    reasons: Counter = field(default_factory=Counter)
    refusals: Counter = field(default_factory=Counter)
    counts: list[_Counts] = field(default_factory=lambda: [_Counts()])
    outside: int = 0
    outside_blocks: int = 0
    unattributed: int = 0
    bound: None = None

    def _unreleased(self) -> int:
        return 0

    def _sha256(self) -> str:
        return self.digest


@dataclass
class _Staged:
    path: Path
    rows: int = 0


@dataclass
class _Quarantine:
    rows: int = 0
    withheld: dict[str, str] = field(default_factory=dict)
    cells_withheld: dict[str, Counter] = field(default_factory=dict)


def _merge_counts(merged: _Merged, replies: list[dict[str, Any]]) -> None:
    for r in replies:
        merged.readers[0].rows_in += r["rows_in"]
        merged.train.rows += r["rows_train"]
        merged.test.rows += r["rows_test"]
        merged.q.rows += r["rows_quarantined"]
        merged.counts[0].accepted += r["accepted"]
        merged.counts[0].quarantined += r["quarantined"]
        merged.reasons.update(r["reasons"])
        merged.refusals.update(r["refusals"])
        merged.outside += r["outside"]
        merged.outside_blocks += r["outside_blocks"]
        for column, kinds in r["cells_withheld"].items():
            merged.q.cells_withheld.setdefault(column, Counter()).update(kinds)


class _Cluster:
    """This process joined to the cluster for one ingest (left again if it joined here)."""

    def __init__(self, address: str):
        import ray

        self.ray, self.joined = ray, False
        if not ray.is_initialized():
            try:  # worker output stays in the cluster's logs: the task log is public
                ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
            except Exception as err:
                raise DataError(f"cannot connect to the Ray cluster at {address!r} to ingest: "
                                f"{type(err).__name__}: {err}") from err
            self.joined = True

    def one(self, fn: Callable, *args: Any) -> Any:
        return self.ray.get(self.ray.remote(fn).options(num_cpus=1, max_retries=1).remote(*args))

    def many(self, fn: Callable, arglists: Iterable[tuple]) -> list[Any]:
        task = self.ray.remote(fn).options(num_cpus=1, max_retries=1, scheduling_strategy="SPREAD")
        return self.ray.get([task.remote(*a) for a in arglists])

    def close(self) -> None:
        if self.joined:
            self.ray.shutdown()


def _part_options() -> dict[str, Any]:
    # Ray Data retries a task for ever by default; a part's own errors are replies, not raised, so
    # only a lost worker retries, and a part that keeps killing its worker fails the ingest.
    return {"max_retries": 2}


def parts_on_ray_data(job: Any, parts: list[Part], fn: Callable[..., dict[str, Any]] | None = None,
                      extra: Sequence[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """`fn(row, job)` (default: ingest the part) for each part, by a Ray Data map task (one Ray
    Data block per part, spread over the nodes); the replies in source order."""
    import ray.data

    context = ray.data.DataContext.get_current()
    saved = context.enable_progress_bars
    context.enable_progress_bars = False  # a bar counts rows of parts: quiet, though no private row
    try:
        items = [{"index": i, "start": p.start, "end": p.end, "first_line": p.first_line} | (extra[i] if extra else {})
                 for i, p in enumerate(parts)]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        with warnings.catch_warnings():  # Ray 2.60 names no other way to bound a map task's retries
            warnings.filterwarnings("ignore", message=".*ray_remote_args_fn. is deprecated")
            mapped = ds.map(fn or _part_row, fn_kwargs={"job": job}, num_cpus=1, ray_remote_args_fn=_part_options)
        rows = mapped.take_all()
    finally:
        context.enable_progress_bars = saved
    return [json.loads(r["reply"]) for r in sorted(rows, key=lambda r: r["index"])]


def ingest_on_cluster(spec: PipelineSpec, run_dir: Path, address: str, as_of: date | None = None,
                      chunk_rows: int = INGEST_CHUNK_ROWS, earlier: Iterable[Path] = (),
                      interval: DataInterval | None = None, home: Path | None = None,
                      screen: quarantine.IdentifierScreen | None = None, retired: Iterable[str] = (),
                      split_rule: str = DEFAULT_RULE, part_bytes: int = PART_BYTES) -> IngestResult:
    """ingest.ingest's result for a CSV or Parquet file source, computed on the Ray cluster at
    `address` (see the module docstring); `local_reason(spec)` must be None."""
    why = local_reason(spec)
    if why is not None:
        raise ValueError(f"ingest_on_cluster: {why}")
    if home is None:
        from ppmlops import settings

        home = settings.load().home
    run_dir, home = Path(run_dir), Path(home)
    run_dir.mkdir(parents=True, exist_ok=True)
    ds = spec.dataset
    window, selected = _window(spec, interval)
    if window is not None and not window.whole_table and interval is None:
        interval = DataInterval.until_now()  # fixed once here: every task judges the same window
        window, selected = _window(spec, interval)
    as_of = as_of or (selected.as_of if selected is not None else today())
    # The keys, read here as ingest reads them: a run that cannot pseudonymize stages nothing.
    keys = (load_key(ds.pseudonym_key_env) if ds.pseudonymize else None,
            quarantine.hmac_key(ds.id, ds.pseudonym_key_env, home))
    job = _Job(spec, run_dir, as_of, interval, home, screen or quarantine.WithholdUndeclared(),
               frozenset(retired), keys, chunk_rows, part_bytes, split_rule)
    partition = selected if window is not None and window.partition else None
    cluster = _Cluster(address)
    try:
        plan = _value(cluster.one(_guarded(lambda: f"{ds.source.resolved_path(partition)}: planning the read",
                                           _plan), job, partition))
        job.path, job.format, job.encoding = plan["path"], plan["format"], plan["encoding"]
        job.delimiter, job.state, job.withheld = plan["delimiter"], plan["state"], plan["withheld"]
        _log_screen(spec, plan["header"], job.screen)
        hashed, parts, how = hash_and_cut(cluster, job, plan)
        # Public: how the file is read, never how many parts (a measure of its size).
        log.info("ingest: %s is read on the Ray cluster with Ray Data, %s", job.path,
                 how if how.startswith("one part") else "in parts cut at line breaks or row groups")
        replies = [_value(r) for r in parts_on_ray_data(job, parts)]
        merging = _guarded(lambda: f"{job.path}: merging the parts", _merge)
        source_sha = _value(cluster.ray.get(hashed))
        merged = _merged(spec, job, plan, run_dir, selected, window, source_sha)
        _merge_counts(merged, replies)
        _write_record(run_dir, how, parts, replies)
        if merged.readers[0].rows_in == 0:
            raise DataError(f"{job.path}: " + ("has a header but no data rows" if job.format == "csv"
                                               else "has columns but no data rows"))
        try:
            _IngestRun._reconcile(merged)  # type: ignore[arg-type]
        except DataError:
            _value(cluster.one(merging, job, replies, False))  # the quarantine is kept, as ingest keeps it
            raise
        merged.digest = _value(cluster.one(merging, job, replies, True))
    finally:
        cluster.close()
        shutil.rmtree(job.parts_dir, ignore_errors=True)
    return _IngestRun.result(merged, quarantine.expire(earlier, merged.retention))  # type: ignore[arg-type]


def _merged(spec: PipelineSpec, job: _Job, plan: dict[str, Any], run_dir: Path, selected, window,
            source_sha: str) -> _Merged:
    reader = _ReadSummary(Path(job.path), job.format, job.encoding, job.delimiter, plan["header"], 0, source_sha)
    return _Merged(spec, spec.dataset, [reader], snapshot_columns(spec),
                   _Staged(run_dir / "snapshot_train.parquet"), _Staged(run_dir / "snapshot_test.parquet"),
                   _Quarantine(withheld=dict(plan["withheld"])), run_dir / quarantine.FILE_NAME, job.as_of, window,
                   selected, sorted(job.retired), dict(plan["renamed"]), quarantine.retention_days(),
                   spec.training.test_fraction,
                   SplitRules(job.split_rule, spec.training.seed, spec.training.test_fraction))


def _log_screen(spec: PipelineSpec, header: list[str], screen: quarantine.IdentifierScreen) -> None:
    """The public lines ingest logs about undeclared columns (names only; judged by name)."""
    declared = set(declared_columns(spec))
    undeclared = [c for c in header if c not in declared]
    if not undeclared:
        return
    log.info("ingest: %d undeclared column(s) screened by name and values (%s); the private ingest "
             "record says which were left out of the quarantine file", len(undeclared), ", ".join(undeclared))
    for column in undeclared:
        by_name = screen.column(column, [])
        if by_name is not None:
            log.warning("ingest: column %s (not declared in the spec) is left out of the quarantine file: %s",
                        column, by_name)


def _write_record(run_dir: Path, how: str, parts: list[Part], replies: list[dict[str, Any]]) -> None:
    """Each part's range, node and counts: private, beside the snapshots."""
    record = {"how": how, "nodes": sorted({r["node"] for r in replies}), "parts": [
        {"start": p.start, "end": p.end, "first_line": p.first_line, "node": r["node"], "rows_in": r["rows_in"],
         "rows_train": r["rows_train"], "rows_test": r["rows_test"], "rows_quarantined": r["rows_quarantined"]}
        for p, r in zip(parts, replies)]}
    (run_dir / RECORD).write_text(json.dumps(record, indent=1) + "\n")
