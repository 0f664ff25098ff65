"""Build a Great Expectations (1.x) suite from a pipeline spec.

The suite pins the staged snapshot to what the spec declares:
  - the table's columns are exactly the features plus the label, so an identifier column can
    never reach training even if someone edits ingestion;
  - no nulls; numeric features are numbers within their declared range; categorical features
    and the label take only declared values;
  - sensitivity checks: no value in any string column (categorical features, label) looks like
    an e-mail address, a phone number, a US SSN, a payment card number, an IBAN or an IP
    address. The category checks already imply this for the generated suite; these stay
    meaningful when someone widens a category list or edits the suite by hand, and they name
    the kind of leak when they fail. The regular expressions are deliberately wider than the
    risk scan's detectors (no checksums): in a training column even an invalid card number is
    worth a look;
  - pseudonym columns (dataset.pseudonymize) hold only HMAC-SHA256 hex digests (or nothing), so
    a raw identifier can never pass as a pseudonym;
  - a tensor feature (one array per row) is not null, and GX sees three numbers per row beside it
    (ppmlops.data.validate adds them to each batch it checks, computed from the array):
    `<name>#values` (how many values: exactly prod(shape)), `<name>#min` and `<name>#max` (not
    null, i.e. no NaN, and within what the declared dtype holds; values outside the declared
    range are allowed, because encoding clips them). A range check on #min/#max may be added by
    hand where the data must lie inside the declared range.

Suites are generated from a risk scan by `ppmlops risk suggest SPEC --out expectations/<id>.json`
(ppmlops.risk.suggest, which adds the scan's findings to the suite's meta), committed under
expectations/ and edited there by people; `python -m ppmlops.data.suites SPEC [OUT]` writes the
spec-only suite without a scan.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from ppmlops.data.pseudonymize import pseudonym_column
from ppmlops.atomic_file import write_json
from ppmlops.spec import NumericFeature, PipelineSpec, TensorFeature, dtype_limits

# Most specific first: sensitive_kind() reports the first match.
# Search patterns (GX's pandas engine applies them with str.contains, i.e. anywhere in a value);
# written for Python's re, which is what the pandas engine uses.
SENSITIVE_PATTERNS: dict[str, str] = {
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
    "iban": r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b",
    "ssn": r"\b\d{3}[- ]\d{2}[- ]\d{4}\b",
    "credit_card": r"\b(?:\d[ -]?){12,18}\d\b",
    "phone": r"(?:\+\d{1,3}[\s.-]?)?\(?\d{2,4}\)?[\s.-]\d{3,4}[\s.-]?\d{3,4}",
    "ipv4": r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d.])",
    "ipv6": r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![\w:])|"
            r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){1,6}:(?:[0-9A-Fa-f]{1,4}:?){1,6}(?![\w:])",
}
PSEUDONYM_PATTERN = r"^(?:[0-9a-f]{64})?$"

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
    pseudonyms = [pseudonym_column(c) for c in ds.pseudonymize]
    columns = [f.name for f in ds.features] + [ds.label.column] + pseudonyms
    columns += [c for f in ds.features if isinstance(f, TensorFeature) for c in tensor_summary_columns(f.name)]
    exps: list[dict[str, Any]] = [
        _expectation("expect_table_columns_to_match_set", "schema", column_set=columns, exact_match=True),
        _expectation("expect_table_row_count_to_be_between", "schema", min_value=1),
    ]
    string_columns: list[str] = []
    for f in ds.features:
        exps.append(_expectation("expect_column_values_to_not_be_null", "completeness", column=f.name))
        if isinstance(f, TensorFeature):
            exps.extend(tensor_expectations(f))
        elif isinstance(f, NumericFeature):
            exps.append(_expectation("expect_column_values_to_be_in_type_list", "type",
                                     column=f.name, type_list=NUMERIC_TYPES))
            exps.append(_expectation("expect_column_values_to_be_between", "range",
                                     column=f.name, min_value=f.range[0], max_value=f.range[1]))
        else:
            exps.append(_expectation("expect_column_values_to_be_in_set", "categories",
                                     column=f.name, value_set=list(f.categories)))
            string_columns.append(f.name)
    exps.append(_expectation("expect_column_values_to_not_be_null", "completeness", column=ds.label.column))
    if ds.label.task == "regression":  # staged as its text, like every label: a number in the range
        exps.append(_expectation("expect_column_values_to_match_regex", "label", column=ds.label.column,
                                 regex=r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$"))
    else:
        exps.append(_expectation("expect_column_values_to_be_in_set", "label",
                                 column=ds.label.column, value_set=list(ds.label.allowed)))
    string_columns.append(ds.label.column)
    for col in string_columns:
        exps.extend(sensitivity_expectations(col))
    for col in pseudonyms:
        exps.append(_expectation("expect_column_values_to_not_be_null", "completeness", column=col))
        e = _expectation("expect_column_values_to_match_regex", "pseudonym", column=col, regex=PSEUDONYM_PATTERN)
        e["meta"]["pattern"] = "hmac_sha256_hex"
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
            f"Staged snapshot of dataset {ds.id}: exactly the declared features and label"
            + (" (and pseudonym columns)" if pseudonyms else "")
            + ", declared ranges and categories, and no direct identifiers in string columns."
        ),
    }


TENSOR_SUMMARIES = ("values", "min", "max")


def tensor_summary_columns(name: str) -> list[str]:
    """The per-row numbers GX sees for a tensor column (ppmlops.data.validate computes them)."""
    return [f"{name}#{s}" for s in TENSOR_SUMMARIES]


def tensor_expectations(f: TensorFeature) -> list[dict[str, Any]]:
    """A tensor column's checks on its per-row summaries: the declared number of values, no NaN
    (a NaN makes the row's min and max null), and values the declared dtype holds."""
    count, low, high = tensor_summary_columns(f.name)
    limits = dtype_limits(f.dtype) or ((-3.4028234663852886e38, 3.4028234663852886e38) if f.dtype == "float32"
                                       else (-1.7976931348623157e308, 1.7976931348623157e308))
    out = [_expectation("expect_column_values_to_be_between", "shape", column=count,
                        min_value=f.size, max_value=f.size)]
    for col in (low, high):
        out.append(_expectation("expect_column_values_to_not_be_null", "completeness", column=col))
        out.append(_expectation("expect_column_values_to_be_between", "type", column=col,
                                min_value=limits[0], max_value=limits[1]))
    return out


def sensitivity_expectations(column: str) -> list[dict[str, Any]]:
    """One not-match-regex expectation per sensitive pattern, for a column that must stay clean."""
    out = []
    for kind, regex in SENSITIVE_PATTERNS.items():
        e = _expectation("expect_column_values_to_not_match_regex", "sensitivity", column=column, regex=regex)
        e["meta"]["pattern"] = kind
        out.append(e)
    return out


def write_suite(spec: PipelineSpec, path: Path | str) -> Path:
    """Write the suite JSON for `spec` to `path` (atomically, parents created)."""
    return write_suite_doc(suite_from_spec(spec), path)


def write_suite_doc(doc: dict[str, Any], path: Path | str) -> Path:
    """Write a suite document to `path` (atomically, parents created)."""
    # 0644: mkstemp makes 0600, and a suite is a shared, committed config file.
    return write_json(path, doc, 0o644)


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
