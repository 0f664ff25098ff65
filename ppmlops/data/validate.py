"""Run a Great Expectations suite on the staged snapshot(s); any failed expectation stops the run.

GX 1.x API as used here: an ephemeral data context (nothing written to disk, analytics and
progress bars off), one pandas data source with a dataframe asset and a whole-dataframe batch
definition per snapshot, the suite loaded from its JSON file, and a ValidationDefinition run
with the snapshot passed as the batch parameter. GX is imported inside `validate` because its
import takes seconds and DAG parsing must stay fast.

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
from typing import Any, Sequence

from ppmlops.data.suites import mask_sensitive
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


def validate(snapshot_paths: Sequence[str | Path], suite_path: Path, out_dir: Path) -> dict[str, Any]:
    suite_path, out_dir = Path(suite_path), Path(out_dir)
    doc = load_suite_doc(suite_path)
    if not snapshot_paths:
        raise DataError("validate: no snapshot to validate")
    frames = [(str(p), _read_snapshot(Path(p))) for p in snapshot_paths]

    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx

    context = _context(gx)
    suite = context.suites.add(_build_suite(gx, doc, suite_path))
    source = context.data_sources.add_pandas(name="ppmlops_snapshots")
    per_snapshot: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    evaluated = 0
    for i, (path, df) in enumerate(frames):
        batch = source.add_dataframe_asset(name=f"snapshot_{i}").add_batch_definition_whole_dataframe("all_rows")
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{doc['name']}_{i}", data=batch, suite=suite))
        result = definition.run(batch_parameters={"dataframe": df}, result_format="SUMMARY").to_json_dict()
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
        "snapshots": [p for p, _ in frames],
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


def _read_snapshot(path: Path):
    import pandas as pd

    if not path.exists():
        raise DataError(f"{path}: snapshot to validate not found")
    try:
        return pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: cannot read snapshot: {err}") from None


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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2, default=str)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
