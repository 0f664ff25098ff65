"""`ppmlops risk scan` and `ppmlops risk suggest`: the privacy risk assessment from a shell.

  ppmlops risk scan FILE_OR_SPEC [--json] [--out REPORT.json] [options]
  ppmlops risk suggest FILE_OR_SPEC --out expectations/NAME.json [options]

FILE_OR_SPEC is a CSV or Parquet file, or a pipeline spec (.yaml/.yml), whose source, consent
rules, declarations, regulation and delta are then used. Exit status: 0 done, 1 the input
could not be assessed (unreadable file, missing column, bad spec), 2 a bad argument.
"""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path
from typing import Any

from ppmlops.cli_guard import BadArgument, guarded, whole_number

REGULATIONS = ("gdpr", "hipaa", "ccpa", "none")




def register(subparsers: Any) -> None:
    """Add the `risk` command group to an argparse subparsers object."""
    risk = subparsers.add_parser("risk", help="privacy risk assessment (PRAM)",
                                 description="Find sensitive data in a CSV/Parquet file or a spec's source and "
                                             "score its privacy risk, item by item.")
    sub = risk.add_subparsers(dest="risk_command", required=True)

    p = sub.add_parser("scan", help="assess a file or a spec's source",
                       description="Run the whole risk assessment: detectors, categories, k-anonymity, "
                                   "consent, score.")
    _input_arguments(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--out", metavar="REPORT.json", help="also write the JSON report to this file")
    p.set_defaults(func=guarded(_scan, "ppmlops risk scan"))

    p = sub.add_parser("suggest", help="write a Great Expectations suite from a scan",
                       description="Scan, then write an expectation suite with the sensitivity rules "
                                   "(for people to review and edit under expectations/).")
    _input_arguments(p)
    p.add_argument("--out", required=True, metavar="SUITE.json", help="where to write the suite")
    p.add_argument("--name", metavar="NAME", help="suite name (default: the dataset id or the file's stem)")
    p.set_defaults(func=guarded(_suggest, "ppmlops risk suggest"))


def _input_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="FILE_OR_SPEC", help="CSV or Parquet file, or a pipeline spec (.yaml)")
    p.add_argument("--format", choices=("csv", "parquet"), help="file format (default: from the suffix)")
    p.add_argument("--encoding", default="auto", choices=("auto", "utf-8", "latin-1", "cp1252"),
                   help="CSV encoding (default: UTF-8 if the whole file decodes as UTF-8, else cp1252, else latin-1)")
    p.add_argument("--delimiter", metavar="D", help="CSV delimiter: one character or 'tab' (default: detected)")
    p.add_argument("--label", metavar="COL", help="the label column (a training column)")
    p.add_argument("--features", metavar="A,B,...",
                   help="the training feature columns (default: every column but the label and consent columns)")
    p.add_argument("--consent-column", metavar="COL", help="consent flag column")
    p.add_argument("--consent-granted", metavar="V,...", help="values that grant consent (default: true,yes,1,y)")
    p.add_argument("--purposes-column", metavar="COL", help="column listing consented purposes")
    p.add_argument("--purpose", default="training", help="purpose that must be consented to (default: training)")
    p.add_argument("--expiry-column", metavar="COL", help="column with the consent's expiry date (ISO 8601)")
    p.add_argument("--as-of", metavar="YYYY-MM-DD", help="date consent expiry is judged on (default: today, UTC)")
    for flag, what in (("--identifiers", "direct identifiers"), ("--quasi-identifiers", "quasi-identifiers"),
                       ("--special-categories", "special categories"), ("--not-sensitive", "not sensitive")):
        p.add_argument(flag, metavar="A,B,...", help=f"columns declared {what} (a declaration beats detection)")
    p.add_argument("--regulation", choices=REGULATIONS, default="gdpr", help="regulation profile (default: gdpr)")
    p.add_argument("--delta", metavar="D", help="the DP delta for the dataset-size component (default: none)")
    p.add_argument("--k", metavar="K", help="k for k-anonymity (default: from the regulation)")
    p.add_argument("--sample-rows", default="10000", metavar="N", help="rows sampled for value detection (default 10000)")
    p.add_argument("--quarantine", metavar="PATH", help="write malformed lines here (CSV with _line and _reason)")




# ---------------------------------------------------------------------------------------------- arguments


def _columns(text: str | None) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()] if text else []


def _delta(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadArgument("--delta", f"{text!r} is not a number") from None
    if not 0 < value < 1:
        raise BadArgument("--delta", f"delta must be in (0, 1), got {text}")
    return value


def _delimiter(text: str | None) -> str | None:
    if text is None:
        return None
    text = {"tab": "\t", "\\t": "\t"}.get(text.lower(), text)
    if len(text) != 1 or text in {'"', "\r", "\n"}:
        raise BadArgument("--delimiter", f"expected one character or 'tab', got {text!r}")
    return text


def _as_of(text: str | None) -> date | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise BadArgument("--as-of", f"{text!r} is not a date (YYYY-MM-DD)") from None


def _is_spec(path: str) -> bool:
    return Path(path).suffix.lower() in {".yaml", ".yml"}


def _report(args: argparse.Namespace):
    from ppmlops.risk.assess import assess_file, assess_spec
    from ppmlops.risk.classify import Declarations
    from ppmlops.spec import Consent, load_spec

    sample_rows = whole_number(args.sample_rows, "--sample-rows", 0)
    as_of = _as_of(args.as_of)
    if _is_spec(args.path):
        ignored = [flag for flag, value in (
            ("--label", args.label), ("--features", args.features), ("--consent-column", args.consent_column),
            ("--identifiers", args.identifiers), ("--quasi-identifiers", args.quasi_identifiers),
            ("--special-categories", args.special_categories), ("--not-sensitive", args.not_sensitive),
            ("--delta", args.delta), ("--k", args.k), ("--quarantine", args.quarantine)) if value]
        if ignored:
            raise BadArgument(ignored[0], "the spec declares this; edit the spec instead")
        spec = load_spec(args.path)
        with _progress():
            return spec, assess_spec(spec, sample_rows=sample_rows, as_of=as_of)
    consent = None
    if args.consent_column:
        fields: dict[str, Any] = {"column": args.consent_column, "purposes_column": args.purposes_column,
                                  "purpose": args.purpose, "expiry_column": args.expiry_column}
        if args.consent_granted:
            fields["granted"] = _columns(args.consent_granted)
        try:
            consent = Consent(**fields)
        except ValueError as err:
            raise BadArgument("--consent-column", str(err).splitlines()[-1]) from None
    elif args.purposes_column or args.expiry_column:
        raise BadArgument("--purposes-column" if args.purposes_column else "--expiry-column",
                           "needs --consent-column (the consent flag)")
    declarations = Declarations(
        identifiers=frozenset(_columns(args.identifiers)),
        quasi_identifiers=frozenset(_columns(args.quasi_identifiers)),
        special_categories=frozenset(_columns(args.special_categories)),
        not_sensitive=frozenset(_columns(args.not_sensitive)))
    with _progress():
        report = assess_file(
            args.path, fmt=args.format, encoding=args.encoding, delimiter=_delimiter(args.delimiter), label=args.label,
            features=_columns(args.features) or None, consent=consent, declarations=declarations,
            regulation=args.regulation, delta=_delta(args.delta) if args.delta else None,
            k=whole_number(args.k, "--k", 2) if args.k else None, sample_rows=sample_rows, as_of=as_of,
            quarantine=Path(args.quarantine) if args.quarantine else None)
    return None, report


def _progress():
    """The scan's progress on stderr: the data owner's own terminal, so rows and rows/s too."""
    from ppmlops.data import read_progress

    return read_progress.shown("risk scan", public=False)


# ---------------------------------------------------------------------------------------------- commands


def _scan(args: argparse.Namespace) -> int:
    _, report = _report(args)
    doc = report.to_dict()
    if args.out:
        _write_json(Path(args.out), doc)
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    else:
        print(report.summary())
    return 0


def _write_json(path: Path, doc: Any) -> None:
    from ppmlops.atomic_file import write_json

    write_json(path, doc)


def _suggest(args: argparse.Namespace) -> int:
    from ppmlops.data.suites import write_suite_doc
    from ppmlops.risk.suggest import suite_for_file, suite_for_spec

    spec, report = _report(args)
    if spec is not None:
        suite = suite_for_spec(spec, report)
        if args.name:
            suite["name"] = args.name
    else:
        suite = suite_for_file(args.name or Path(args.path).stem, report)
    path = write_suite_doc(suite, args.out)
    print(f"wrote {path}: suite {suite['name']}, {len(suite['expectations'])} expectations, "
          f"from a scan of {report.sample_rows} sampled rows (risk score {report.score:.3f}, {report.level})")
    for f in report.findings:
        print(f"  {f['column']}: {f['category'].replace('_', ' ')} ({f['kind']}"
              f"{', a training column' if f['in_features'] else ''})")
    return 0
