"""Who reads the dashboard, and what a reader without the compliance role is not shown.

Everyone logged in sees budgets, spend, outcomes, the checks and the tuner's story. Only a
compliance officer sees what could tell about the data or the host: the policy's raw inputs
(noisy row counts, risk findings), reasons that quote the dataset's size, stage records, ledger
notes and server paths. Which reasons quote sizes is the policy's own structured output
(`sized_reasons`), matched exactly, never guessed from the wording.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SIZED = "a check on the dataset's size failed (its numbers are shown to compliance officers)"
UNMARKED = "reasons hidden: recorded before the policy marked which reasons quote the dataset's size"
# Decisions whose reasons never quote sizes (the budget rule states limits and epsilons only).
SIZE_FREE_QUERIES = frozenset({"data.ppmlops.budget"})


@dataclass(frozen=True)
class Reader:
    name: str
    compliance: bool  # may read audit inputs, dataset sizes and server paths

    @property
    def words(self) -> str:
        return f"{self.name} ({'compliance officer' if self.compliance else 'viewer: budgets and outcomes'})"


# The app on its own (no Airflow in front) has no logins: whoever can reach it runs it.
LOCAL = Reader("local", compliance=True)


def reasons(reader: Reader, decision: dict[str, Any]) -> list[str]:
    """A decision's reasons as this reader may see them."""
    shown = [str(r) for r in decision.get("reasons") or []]
    if reader.compliance or not shown:
        return shown
    result = decision.get("result")
    sized = result.get("sized_reasons") if isinstance(result, dict) else None
    if sized is None:
        return shown if decision.get("query") in SIZE_FREE_QUERIES else [UNMARKED]
    sized = set(sized)
    return [SIZED if r in sized else r for r in shown]


def check_reasons(reader: Reader, check: dict[str, Any]) -> list[str]:
    """One deploy check's reasons as this reader may see them."""
    found = [str(r) for r in check.get("reasons") or []]
    if reader.compliance or not check.get("quotes_sizes"):
        return found
    return [SIZED] if found else []


def redact_record(reader: Reader, record: dict[str, Any]) -> dict[str, Any]:
    """An audit record for JSON: without the policy's input for a viewer, reasons redacted."""
    if reader.compliance:
        return record
    d = dict(record.get("decision") or {})
    d.pop("input", None)
    result = d.get("result")
    if isinstance(result, dict) and "checks" in result:
        kept = {k: v for k, v in result.items() if k not in ("reasons", "sized_reasons")}
        d["result"] = {**kept, "checks": [{**c, "reasons": check_reasons(reader, c)} for c in result["checks"]]}
    elif result is not None:
        d["result"] = {"outcome": d.get("outcome")}
    d["reasons"] = reasons(reader, record.get("decision") or {})
    return {**record, "decision": d}
