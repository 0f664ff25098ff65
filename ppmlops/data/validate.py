"""Run a Great Expectations suite on the staged snapshot(s); any failed expectation stops the run.

GX 1.x API as used here: an ephemeral data context (nothing written to disk, analytics and
progress bars off), one pandas data source with a dataframe asset and a whole-dataframe batch
definition per snapshot, the suite loaded from its JSON file, and a ValidationDefinition run
with the snapshot passed as the batch parameter. GX is imported inside `validate` because its
import takes seconds and DAG parsing must stay fast.

The snapshot is read in batches of BATCH_ROWS rows and each is validated on its own, so the
Airflow worker never holds the table (a 1M-row snapshot as pandas strings is hundreds of MB):
exact for row-wise expectations (counts add up: merge_results) and for the table's columns; the
row count is checked once on an index of the table's length. A suite with any other expectation
(an aggregate such as a column mean, or "mostly") is validated on the whole table at once.

validation.json in the output folder keeps GX's own result JSON per snapshot next to a short
summary, and data_docs/ holds GX's data docs (HTML: the suite and each snapshot's validation
result; open data_docs/index.html), built from the same ephemeral context into a local site.
Strings in results that look like e-mail addresses, phone numbers, SSNs, card numbers, IBANs
or IP addresses are masked in both, because the whole point of the sensitivity checks is that
such values must not spread into more files: the stored results are masked before the docs
are rendered from them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

from ppmlops.data.suites import mask_sensitive
from ppmlops.atomic_file import write_json
from ppmlops.errors import DataError, ValidationFailed


def load_suite_doc(suite_path: Path) -> dict[str, Any]:
    """The suite file as a dict, with a clear error naming the file when it cannot be used."""
    suite_path = Path(suite_path)
    try:
        text = suite_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{suite_path}: expectation suite not found (generate one with "
                        f"`ppmlops risk suggest <spec.yaml> --out {suite_path}`)") from None
    except OSError as err:
        raise DataError(f"{suite_path}: cannot read expectation suite: {err.strerror or err}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{suite_path}: line {err.lineno} column {err.colno}: not valid JSON: {err.msg}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str) or not doc["name"]:
        raise DataError(f"{suite_path}: an expectation suite must be a JSON object with a non-empty \"name\"")
    if not isinstance(doc.get("expectations"), list) or not doc["expectations"]:
        raise DataError(f"{suite_path}: the suite has no \"expectations\" list (an empty suite checks nothing)")
    return doc


def _build_suite(gx: Any, doc: dict[str, Any], suite_path: Path) -> Any:
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    expectations = []
    for i, e in enumerate(doc["expectations"]):
        kind = e.get("type", "?") if isinstance(e, dict) else "?"
        try:
            if not isinstance(e, dict):
                raise TypeError("each expectation must be a JSON object")
            # Built one by one because ExpectationSuite(...) logs and silently drops an invalid
            # expectation, which would make a typo in the suite pass validation.
            expectations.append(ExpectationConfiguration(**e).to_domain_obj())
        except Exception as err:  # GX raises many unrelated types here; all mean a bad entry
            raise DataError(f"{suite_path}: expectation {i} ({kind}) is not valid: {err}") from None
    return gx.ExpectationSuite(
        name=doc["name"], expectations=expectations, meta=doc.get("meta") or None, notes=doc.get("notes"),
    )


def _context(gx: Any) -> Any:
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return context


def validate(snapshot_paths: Sequence[str | Path], suite_path: Path, out_dir: Path,
             batch_rows: int | None = -1) -> dict[str, Any]:
    """Validate each snapshot against the suite; ValidationFailed names what failed.
    `batch_rows`: rows a batch holds (-1: BATCH_ROWS; None: the whole table at once)."""
    suite_path, out_dir = Path(suite_path), Path(out_dir)
    doc = load_suite_doc(suite_path)
    if not snapshot_paths:
        raise DataError("validate: no snapshot to validate")
    files = [(str(p), _open_snapshot(Path(p))) for p in snapshot_paths]
    expectations = doc["expectations"]
    rows = BATCH_ROWS if batch_rows == -1 else batch_rows
    # Batches only where a snapshot holds more than one: a table that fits in one is validated
    # whole, its row count with the rest (a second GX run for the count alone cost the demo 0.3 s).
    batched = (rows is not None and any(parquet.metadata.num_rows > rows for _, parquet in files)
               and all(isinstance(e, dict) and e.get("type") in ROW_WISE | TABLE_SHAPE | ROW_COUNT
                       and "mostly" not in (e.get("kwargs") or {}) for e in expectations))

    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx

    context = _context(gx)
    source = context.data_sources.add_pandas(name="ppmlops_snapshots")
    counting = [e for e in expectations if batched and e.get("type") in ROW_COUNT]
    suite = context.suites.add(_build_suite(gx, {**doc, "expectations": [e for e in expectations
                                                                         if e not in counting]}, suite_path))
    count_suite = (context.suites.add(_build_suite(gx, {**doc, "name": f"{doc['name']}_row_count",
                                                        "expectations": counting}, suite_path))
                   if counting else None)
    per_snapshot: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    evaluated = 0
    for i, (path, parquet) in enumerate(files):
        batch = source.add_dataframe_asset(name=f"snapshot_{i}").add_batch_definition_whole_dataframe("all_rows")
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{doc['name']}_{i}", data=batch, suite=suite))
        runs = [definition.run(batch_parameters={"dataframe": df}, result_format="SUMMARY").to_json_dict()
                for df in _frames(path, parquet, rows if batched else None)]
        if count_suite is not None:
            # The row count is the table's, not a batch's: GX counts an index of the table's length.
            import pandas as pd

            counted = gx.ValidationDefinition(name=f"{doc['name']}_{i}_row_count", data=batch, suite=count_suite)
            frame = pd.DataFrame(index=pd.RangeIndex(parquet.metadata.num_rows))
            runs.append(context.validation_definitions.add(counted).run(
                batch_parameters={"dataframe": frame}, result_format="SUMMARY").to_json_dict())
        result = merge_results(runs)
        for r in result["results"]:
            r["result"] = mask_sensitive(r.get("result") or {})
            if r.get("exception_info"):
                r["exception_info"] = mask_sensitive(r["exception_info"])
            if not r["success"]:
                failed.append(_failure(r, path))
        evaluated += result["statistics"]["evaluated_expectations"]
        per_snapshot.append({"snapshot": path, "success": result["success"],
                             "statistics": result["statistics"], "gx_result": result})

    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        "success": not failed,
        "suite": doc["name"],
        "suite_path": str(suite_path),
        "evaluated": evaluated,
        "failed": failed,
        "snapshots": [p for p, _ in files],
        "great_expectations_version": gx.__version__,
        "data_docs": build_data_docs(context, out_dir / DATA_DOCS_DIR),
    }
    report_path = out_dir / "validation.json"
    _write_json(report_path, {**summary, "results": per_snapshot})
    summary["report_path"] = str(report_path)
    if failed:
        # Counts, observed values and examples describe private rows: they stay in the report in
        # the run's private folder; the message names the expectations and columns only.
        lines = [f"suite {doc['name']} ({suite_path}): {len(failed)} of {evaluated} expectations failed; "
                 f"the counts and examples are in {report_path} (inside the run folder, not logged)"]
        lines += [f"  - {f['expectation']} on {f['column'] or 'the table'}"
                  + (f" (values that look like {f['pattern'].replace('_', ' ')})" if f.get("pattern") else "")
                  + f" in {Path(f['snapshot']).name}" for f in failed]
        raise ValidationFailed("\n".join(lines))
    return summary


DATA_DOCS_DIR = "data_docs"
_SITE = "ppmlops_run"


def build_data_docs(context: Any, target: Path) -> dict[str, Any]:
    """GX data docs of every validation the context holds, masked, as a static site in `target`.

    A failure to render is reported in the result rather than raised: the validation itself has
    been decided and recorded in validation.json by then.
    """
    target = Path(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        store = context.validation_results_store
        for key in store.list_keys():
            result = store.get(key)
            for r in result.results:
                r.result = mask_sensitive(r.result or {})
                if r.exception_info:
                    r.exception_info = mask_sensitive(r.exception_info)
            store.set(key, result)
        context.add_data_docs_site(_SITE, {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(tmp)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        })
        context.build_data_docs(site_names=[_SITE])
        if not (tmp / "index.html").exists():
            raise RuntimeError("GX built no index.html")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        return {"index": str(target / "index.html"), "pages": sorted(
            str(p.relative_to(target)) for p in target.rglob("*.html"))}
    except Exception as err:  # GX raises many types while rendering; none should undo the validation
        shutil.rmtree(tmp, ignore_errors=True)
        return {"error": f"data docs not built: {type(err).__name__}: {err}"}


def _open_snapshot(path: Path):
    import pyarrow.parquet as pq

    if not path.exists():
        raise DataError(f"{path}: snapshot to validate not found")
    try:
        return pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: cannot read snapshot: {err}") from None


def _frames(path: str, parquet: Any, rows: int | None) -> Iterator[Any]:
    """The snapshot as pandas frames of at most `rows` rows (None: one frame), each indexed by
    its rows' positions in the table, so that GX's row indices are the table's. A table with no
    rows is one empty frame (GX still checks its columns)."""
    import pyarrow as pa

    start = 0
    try:
        if rows is None:
            yield with_tensor_summaries(parquet.read())
            return
        for batch in parquet.iter_batches(batch_size=rows):
            df = with_tensor_summaries(pa.Table.from_batches([batch]))
            df.index = range(start, start + len(df))
            start += len(df)
            yield df
        if start == 0:
            yield with_tensor_summaries(parquet.schema_arrow.empty_table())
    except DataError:
        raise
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: cannot read snapshot: {err}") from None


def with_tensor_summaries(table: Any) -> Any:
    """The table as pandas, with, for each list column (a tensor feature, ppmlops.data.suites),
    its per-row number of values, min and max (null when the row holds a NaN) beside it: GX has no
    expectation on arrays, so the suite checks these."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from ppmlops.data.suites import tensor_summary_columns

    df = table.to_pandas()
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if not (pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type)
                or pa.types.is_large_list(column.type)):
            continue
        count, low, high = tensor_summary_columns(name)
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        values = pc.list_flatten(column).cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
        starts = np.concatenate([[0], np.cumsum(np.nan_to_num(lengths).astype(np.int64))[:-1]]).astype(np.int64)
        lo, hi = np.full(len(lengths), np.nan), np.full(len(lengths), np.nan)
        filled = np.nan_to_num(lengths) > 0
        if filled.any():
            # np.minimum.reduceat propagates NaN: a row holding one has a null min and max.
            lo[filled] = np.minimum.reduceat(values, starts[filled])
            hi[filled] = np.maximum.reduceat(values, starts[filled])
        df[count], df[low], df[high] = lengths, lo, hi
    return df


# Expectations GX decides row by row: over a table they are exactly the union of their results
# over its batches (counts add up; "mostly" would not: a suite using it is validated whole).
ROW_WISE = frozenset({
    "expect_column_values_to_not_match_regex", "expect_column_values_to_match_regex",
    "expect_column_values_to_not_match_regex_list", "expect_column_values_to_match_regex_list",
    "expect_column_values_to_not_be_null", "expect_column_values_to_be_null",
    "expect_column_values_to_be_in_set", "expect_column_values_to_not_be_in_set",
    "expect_column_values_to_be_between", "expect_column_value_lengths_to_be_between",
    "expect_column_values_to_be_in_type_list", "expect_column_values_to_be_of_type",
})
# Expectations on the table's columns: every batch of one Parquet file has the file's schema.
TABLE_SHAPE = frozenset({"expect_table_columns_to_match_set", "expect_table_columns_to_match_ordered_list",
                         "expect_column_to_exist", "expect_table_column_count_to_equal",
                         "expect_table_column_count_to_be_between"})
# Expectations on the row count: checked once, on an index of the table's length.
ROW_COUNT = frozenset({"expect_table_row_count_to_be_between", "expect_table_row_count_to_equal"})
# Rows a batch holds while GX checks it: the snapshot is never in memory whole (issue 28).
BATCH_ROWS = 100_000
_PARTIAL = 20  # GX's SUMMARY format keeps the first 20 unexpected values


def merge_results(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """GX's result JSON of one table from its runs over the table's batches (and the row-count
    run): per expectation, success in every batch, counts summed, percentages recomputed from the
    sums, the first unexpected values kept up to GX's 20, the first exception kept."""
    if len(runs) == 1:
        return runs[0]
    merged: dict[str, dict[str, Any]] = {}
    for run in runs:
        for r in run["results"]:
            key = r["expectation_config"].get("id") or json.dumps(r["expectation_config"], sort_keys=True, default=str)
            if key not in merged:
                merged[key] = json.loads(json.dumps(r, default=str))
                continue
            m = merged[key]
            raised = (r.get("exception_info") or {}).get("raised_exception")
            if raised and not (m.get("exception_info") or {}).get("raised_exception"):
                m["exception_info"] = r["exception_info"]
            m["success"] = bool(m["success"] and r["success"])
            m["result"] = _sum_result(m.get("result") or {}, r.get("result") or {})
    results = list(merged.values())
    ok = sum(1 for r in results if r["success"])
    stats = {"evaluated_expectations": len(results), "successful_expectations": ok,
             "unsuccessful_expectations": len(results) - ok,
             "success_percent": 100.0 * ok / len(results) if results else None}
    return {**runs[0], "success": ok == len(results), "results": results, "statistics": stats}


def _sum_result(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    if "element_count" not in a or "element_count" not in b:
        return a  # a table-shape result: every batch observes the same
    out = dict(a)
    for k in ("element_count", "unexpected_count", "missing_count"):
        if k in a or k in b:
            out[k] = (a.get(k) or 0) + (b.get(k) or 0)
    for k in ("partial_unexpected_list", "partial_unexpected_index_list"):
        if k in a or k in b:
            out[k] = ((a.get(k) or []) + (b.get(k) or []))[:_PARTIAL]
    if "partial_unexpected_counts" in out:
        counts: dict[str, list] = {}
        for v in out.get("partial_unexpected_list") or []:
            counts.setdefault(json.dumps(v, sort_keys=True, default=str), [v, 0])[1] += 1
        out["partial_unexpected_counts"] = [{"value": v, "count": c}
                                            for v, c in sorted(counts.values(), key=lambda x: -x[1])]
    n, bad, missing = out["element_count"], out.get("unexpected_count", 0), out.get("missing_count", 0)
    present = n - missing

    def pct(x: int, of: int) -> float | None:
        return 100.0 * x / of if of else None

    for k, v in (("missing_percent", pct(missing, n)), ("unexpected_percent_total", pct(bad, n)),
                 ("unexpected_percent_nonmissing", pct(bad, present)), ("unexpected_percent", pct(bad, present))):
        if k in out:
            out[k] = v
    return out


def _failure(r: dict[str, Any], snapshot: str) -> dict[str, Any]:
    config = r.get("expectation_config") or {}
    kwargs = config.get("kwargs") or {}
    meta = config.get("meta") or {}
    res = r.get("result") or {}
    exc = r.get("exception_info") or {}
    details = {k: res[k] for k in ("unexpected_count", "unexpected_percent", "partial_unexpected_list",
                                   "observed_value", "details") if k in res}
    if exc.get("raised_exception"):
        details["exception"] = exc.get("exception_message")
    return {
        "expectation": config.get("type"),
        "column": kwargs.get("column"),
        "snapshot": snapshot,
        "check": meta.get("check"),
        "pattern": meta.get("pattern"),
        "summary": _describe(config.get("type"), meta, details),
        "details": details,
    }


def _describe(kind: str | None, meta: dict[str, Any], details: dict[str, Any]) -> str:
    if "exception" in details:
        return f"could not be evaluated: {details['exception']}"
    if "unexpected_count" in details:
        what = f"{details['unexpected_count']} value(s)"
        if meta.get("pattern"):
            what += f" look like {meta['pattern'].replace('_', ' ')}"
        # The values themselves stay in validation.json (the run folder): a message reaches task
        # logs, and a failing sensitivity check means these values are someone's e-mail or SSN.
        return what + (" (examples in validation.json)" if details.get("partial_unexpected_list") else "")
    mismatch = (details.get("details") or {}).get("mismatched")
    if mismatch:
        return f"columns differ from the suite: {mismatch}"
    return f"observed {details.get('observed_value')!r}"


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    write_json(path, doc, newline=False)
