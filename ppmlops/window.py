"""A run's data window: which source rows a run of a scheduled pipeline trains on.

A run has a data interval [start, end) (Airflow's, for scheduled runs and backfills). The spec's
`dataset.window` says how rows are selected for it:

* `column`: rows whose timestamp in that column lies in [start, end) (or [end - lookback, end)
  with `lookback`, a sliding window); a value that is not a timestamp is quarantined;
* `partition`: the source path holds `{start:FORMAT}` / `{end:FORMAT}` placeholders (strftime),
  formatted with the interval, so each run reads its own file;
* `whole_table`: every row, whatever the interval (stated explicitly).

A run without an interval (a CLI run, a manual run of an unscheduled DAG) has end = now and no
start. Timestamps without a zone are UTC. Consent is judged as of the interval's end.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Literal

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class DataInterval:
    start: datetime | None  # None: unbounded below
    end: datetime

    @classmethod
    def until_now(cls) -> "DataInterval":
        return cls(None, datetime.now(timezone.utc))

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                object.__setattr__(self, name, value.replace(tzinfo=timezone.utc))

    def with_lookback(self, lookback: timedelta | None) -> "DataInterval":
        return DataInterval(self.end - lookback, self.end) if lookback else self

    def contains(self, t: datetime) -> bool:
        return (self.start is None or self.start <= t) and t < self.end

    @property
    def as_of(self) -> date:
        """The day consent is judged on: the last day inside the interval."""
        return (self.end - timedelta(microseconds=1)).date()


@dataclass(frozen=True)
class RowWindow:
    """The rows a run read, as recorded in its snapshot, grant notes and card (public: the bounds
    come from the run's interval, not from the data)."""

    mode: Literal["whole_table", "column", "partition"] = "whole_table"
    column: str | None = None
    start: datetime | None = None
    end: datetime | None = None

    @classmethod
    def selecting(cls, mode: str, column: str | None, interval: DataInterval) -> "RowWindow":
        return cls(mode, column, interval.start, interval.end)  # type: ignore[arg-type]

    def interval(self) -> DataInterval | None:
        return None if self.end is None else DataInterval(self.start, self.end)

    def text(self) -> str:
        if self.mode == "whole_table":
            return "the whole table"
        what = f"column {self.column}" if self.column else "the partition"
        return f"{what} in [{_when(self.start) if self.start else 'the start'}, {_when(self.end) if self.end else 'now'})"


def _when(t: datetime) -> str:
    """A bound as people read it: the day alone at midnight, else to the second, in UTC."""
    t = t.astimezone(timezone.utc)
    return f"{t:%Y-%m-%d}" if t.time() == datetime.min.time() else f"{t:%Y-%m-%d %H:%M:%S} UTC"


def parse_timestamp(text: str) -> datetime | None:
    """An ISO 8601 date or date-time (ASCII digits only); None when the text is not one."""
    text = text.strip()
    if not text.isascii() or not _DATE.match(text):
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


PARTITION_FIELDS = ("start", "end")


def partition_template_problem(template: str) -> str | None:
    """Why `template` is not a partition template, or None.

    Only `{start}`, `{end}`, `{start:FORMAT}` and `{end:FORMAT}` (strftime codes) are allowed:
    str.format would also follow attribute and index access (`{start.__class__.__mro__}`),
    conversions (`{start!r}`) and nested fields, which let a spec reach into Python objects.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:  # an unmatched brace
        return f"{err} (write a literal brace as {{{{ or }}}})"
    fields = 0
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        if name not in PARTITION_FIELDS:
            return (f"{shown} is not allowed: only {{start}}, {{end}}, {{start:FORMAT}} or {{end:FORMAT}} "
                    f"(strftime codes such as %Y-%m-%d)")
        if conversion or "{" in (spec or "") or "}" in (spec or ""):
            return f"{shown} is not allowed: a FORMAT is strftime codes only (e.g. {{{name}:%Y-%m-%d}})"
        fields += 1
    if not fields:
        return "it has no {start:FORMAT} or {end:FORMAT} placeholder (e.g. events/{start:%Y-%m-%d}.csv)"
    return None


def format_partition(template: str, interval: DataInterval) -> str:
    """The source path for the interval: `{start:%Y-%m-%d}` and `{end:...}` formatted.

    Formatted field by field, never by str.format, so even a template that skipped the spec's
    check (one from an expanded variable) cannot reach an attribute; ValueError if it is not one.
    """
    problem = partition_template_problem(template)
    if problem is not None:
        raise ValueError(problem)
    values = {"start": interval.start or interval.end, "end": interval.end}
    out = []
    for literal, name, spec, _ in string.Formatter().parse(template):
        out.append(literal)
        if name is not None:
            out.append(values[name].strftime(spec) if spec else str(values[name]))
    return "".join(out)
