"""Build a Great Expectations (1.x) suite from a pipeline spec.

The suite pins the staged snapshot to what the spec declares:
  - the table's columns are exactly the features plus the label, so an identifier column can
    never reach training even if someone edits ingestion;
  - no nulls; numeric features are numbers within their declared range; categorical features
    and the label take only declared values;
  - sensitivity checks: no value in any string column (categorical features, label) looks like
    an e-mail address, a phone number, a US SSN or a payment card number. The category checks
    already imply this for the generated suite; these stay meaningful when someone widens a
    category list or edits the suite by hand, and they name the kind of leak when they fail.

Generated suites are committed under expectations/ and may be edited there; regenerate with
    python -m ppmlops.data.suites dags/pipelines/<spec>.yaml [expectations/<dataset id>.json]
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from ppmlops.spec import NumericFeature, PipelineSpec

# Most specific first: sensitive_kind() reports the first match.
# Search patterns (GX's pandas engine applies them with str.contains, i.e. anywhere in a value);
# written for Python's re, which is what the pandas engine uses.
SENSITIVE_PATTERNS: dict[str, str] = {
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
    "ssn": r"\b\d{3}[- ]\d{2}[- ]\d{4}\b",
    "credit_card": r"\b(?:\d[ -]?){12,18}\d\b",
    "phone": r"(?:\+\d{1,3}[\s.-]?)?\(?\d{2,4}\)?[\s.-]\d{3,4}[\s.-]?\d{3,4}",
}

_SENSITIVE = [(kind, re.compile(rx)) for kind, rx in SENSITIVE_PATTERNS.items()]

NUMERIC_TYPES = ["float64", "float32", "int64", "int32"]


def sensitive_kind(text: str) -> str | None:
    """The first sensitive pattern found anywhere in `text`, or None."""
    for kind, rx in _SENSITIVE:
        if rx.search(text):
            return kind
    return None


def mask_value(text: str) -> str:
    """Show the shape of a value without the value: j***@e***.com, ***-**-**89, J*** S***."""
    text = str(text)
    local, at, domain = text.partition("@")
    if at and "." in domain:
        host, _, tld = domain.rpartition(".")
        return f"{local[:1]}***@{host[:1]}***.{tld}"
    digits = sum(c.isdigit() for c in text)
    out, seen, word_start = [], 0, True
    for c in text:
        if c.isdigit():
            seen += 1
            out.append(c if seen > digits - 2 and digits > 4 else "*")
        elif c.isalpha():
            out.append(c if word_start else "*")
        else:
            out.append(c)
        word_start = not c.isalnum()
    return re.sub(r"\*{3,}", "***", "".join(out))


def mask_sensitive(doc: Any) -> Any:
    """A copy of a JSON-like value with every string that matches a sensitive pattern masked."""
    if isinstance(doc, str):
        return mask_value(doc) if sensitive_kind(doc) else doc
    if isinstance(doc, dict):
        return {k: mask_sensitive(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [mask_sensitive(v) for v in doc]
    return doc


def _expectation(kind: str, check: str, **kwargs: Any) -> dict[str, Any]:
    return {"type": kind, "kwargs": kwargs, "meta": {"check": check}}


def suite_from_spec(spec: PipelineSpec) -> dict[str, Any]:
    ds = spec.dataset
    columns = [f.name for f in ds.features] + [ds.label.column]
    exps: list[dict[str, Any]] = [
        _expectation("expect_table_columns_to_match_set", "schema", column_set=columns, exact_match=True),
        _expectation("expect_table_row_count_to_be_between", "schema", min_value=1),
    ]
    string_columns: list[str] = []
    for f in ds.features:
        exps.append(_expectation("expect_column_values_to_not_be_null", "completeness", column=f.name))
        if isinstance(f, NumericFeature):
            exps.append(_expectation("expect_column_values_to_be_in_type_list", "type",
                                     column=f.name, type_list=NUMERIC_TYPES))
            exps.append(_expectation("expect_column_values_to_be_between", "range",
                                     column=f.name, min_value=f.range[0], max_value=f.range[1]))
        else:
            exps.append(_expectation("expect_column_values_to_be_in_set", "categories",
                                     column=f.name, value_set=list(f.categories)))
            string_columns.append(f.name)
    exps.append(_expectation("expect_column_values_to_not_be_null", "completeness", column=ds.label.column))
    exps.append(_expectation("expect_column_values_to_be_in_set", "label",
                             column=ds.label.column, value_set=list(ds.label.values)))
    string_columns.append(ds.label.column)
    for col in string_columns:
        for kind, regex in SENSITIVE_PATTERNS.items():
            e = _expectation("expect_column_values_to_not_match_regex", "sensitivity", column=col, regex=regex)
            e["meta"]["pattern"] = kind
            exps.append(e)
    return {
        "name": ds.id,
        "expectations": exps,
        "suite_parameters": {},
        "meta": {
            "generated_by": "ppmlops.data.suites.suite_from_spec",
            "pipeline": spec.name,
            "dataset_id": ds.id,
        },
        "notes": (
            f"Staged snapshot of dataset {ds.id}: exactly the declared features and label, "
            "declared ranges and categories, and no direct identifiers in string columns."
        ),
    }


def write_suite(spec: PipelineSpec, path: Path | str) -> Path:
    """Write the suite JSON for `spec` to `path` (atomically, parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(suite_from_spec(spec), fh, indent=2)
            fh.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a suite is a shared, committed config file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def main(argv: list[str] | None = None) -> int:
    from ppmlops import settings
    from ppmlops.errors import PpmlopsError
    from ppmlops.spec import load_spec

    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2:
        print("usage: python -m ppmlops.data.suites SPEC.yaml [OUT.json]", file=sys.stderr)
        return 2
    try:
        spec = load_spec(args[0])
    except PpmlopsError as err:
        print(err, file=sys.stderr)
        return 1
    out = Path(args[1]) if len(args) == 2 else spec.suite_path(settings.REPO_ROOT)
    print(f"wrote {write_suite(spec, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
