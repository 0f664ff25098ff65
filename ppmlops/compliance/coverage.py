"""Coverage of Rego tests, as `opa test --coverage` reports it.

The OPA engine's cover tracer (github.com/open-policy-agent/opa/v1/cover) writes one report per
evaluation: per file, the source ranges it evaluated ("covered") and the coverable ranges it did
not ("not_covered"), with {"row", "col"} positions. `opa test` keeps one tracer across all tests;
the bindings give one report per evaluation, so `merge` combines them the way one tracer would:
a range is covered when any evaluation covered it, and not covered when every evaluation left it
out. Line counts follow OPA's: the distinct rows the covered ranges span, and separately the
distinct rows the not-covered ranges span (a row that is partly evaluated counts in both).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_Range = tuple[int, int, int, int]  # start row, start col, end row, end col


def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report in OPA's JSON shape from the per-evaluation reports (same modules in each)."""
    covered: dict[str, set[_Range]] = {}
    not_covered: dict[str, set[_Range]] = {}
    for report in reports:
        for path, file_report in (report.get("files") or {}).items():
            hits = {_key(r) for r in file_report.get("covered") or []}
            misses = {_key(r) for r in file_report.get("not_covered") or []}
            covered.setdefault(path, set()).update(hits)
            not_covered[path] = not_covered[path] & misses if path in not_covered else misses
    files = {}
    for path in sorted(set(covered) | set(not_covered)):
        hits, misses = covered.get(path, set()), not_covered.get(path, set()) - covered.get(path, set())
        files[path] = _file_report(sorted(hits), sorted(misses))
    total_covered = sum(f["covered_lines"] for f in files.values())
    total_missed = sum(f["not_covered_lines"] for f in files.values())
    return {"files": files, "covered_lines": total_covered, "not_covered_lines": total_missed,
            "coverage": _percent(total_covered, total_missed)}


def _key(r: dict) -> _Range:
    return (r["start"]["row"], r["start"].get("col", 0), r["end"]["row"], r["end"].get("col", 0))


def _file_report(hits: list[_Range], misses: list[_Range]) -> dict[str, Any]:
    covered_lines, not_covered_lines = len(_rows(hits)), len(_rows(misses))
    return {
        "covered": [_range(r) for r in hits],
        "not_covered": [_range(r) for r in misses],
        "covered_lines": covered_lines,
        "not_covered_lines": not_covered_lines,
        "coverage": _percent(covered_lines, not_covered_lines),
    }


def _range(r: _Range) -> dict:
    return {"start": {"row": r[0], "col": r[1]}, "end": {"row": r[2], "col": r[3]}}


def _rows(ranges: list[_Range]) -> set[int]:
    return {row for r in ranges for row in range(r[0], r[2] + 1)}


def _percent(covered: int, missed: int) -> float:
    return 100.0 * covered / (covered + missed) if covered + missed else 0.0


# ---------------------------------------------------------------------------------------------
# the report as the CLI prints it
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FileCoverage:
    path: str
    covered_lines: int
    not_covered_lines: int
    percent: float
    not_covered_rows: list[int]  # every row a not-covered range spans, ascending


@dataclass(frozen=True)
class CoverageReport:
    files: list[FileCoverage]
    covered_lines: int
    not_covered_lines: int
    percent: float
    opa_json: dict[str, Any]  # the merged report in OPA's own JSON shape (`opa test --coverage`)

    @classmethod
    def from_opa(cls, report: dict[str, Any]) -> "CoverageReport":
        files = [
            FileCoverage(path, f["covered_lines"], f["not_covered_lines"], f["coverage"],
                         sorted(_rows([_key(r) for r in f["not_covered"]])))
            for path, f in sorted(report["files"].items())
        ]
        return cls(files, report["covered_lines"], report["not_covered_lines"], report["coverage"], report)


def row_spans(rows: list[int]) -> str:
    """[3, 4, 5, 9] -> "3-5, 9"."""
    spans: list[list[int]] = []
    for row in rows:
        if spans and row == spans[-1][1] + 1:
            spans[-1][1] = row
        else:
            spans.append([row, row])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
