"""The Jinja2 environment the dashboard's pages are rendered with (templates/, package data).

Autoescaping is on for every template: any value a template prints is escaped unless it is
markup on purpose (`markupsafe.Markup`: a macro's output, or `safe_svg` below). `finalize` does
that escaping with `html.escape` rather than markupsafe's own so the entities are spelled as
they always were on these pages (`&#x27;`, `&quot;`), which the tests and saved pages compare
against; it leaves markup alone, and prints None as nothing.

The one value passed as already-safe markup is an SVG chart from charts.py (`safe_svg`):
charts.py builds its SVG itself and escapes every text it writes into it (titles, labels, hover
texts; tests/unit/test_dashboard_views.py checks that), so marking its output safe is a
decision about that module, never a way around escaping data.
"""

from __future__ import annotations

import functools
import html
import math
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from ppmlops.dashboard import access, charts
from ppmlops.dashboard.html_base import KIND, STATE_CLASS, run_href, seg


def _finalize(value: Any) -> Any:
    if value is None:
        return ""
    if hasattr(value, "__html__"):
        return value
    return Markup(html.escape(str(value), quote=True))


def num(value: Any, fmt: str = "{:.4g}") -> Any:
    """A number for a table cell; a dash when there is none; "inf"/"nan" as queries.jsonable wrote them."""
    if value is None:
        return Markup("&ndash;")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return fmt.format(value)
    return value


def bar_width(fraction: Any) -> float:
    """How much of a budget is used, in percent of the bar (an unbounded use fills it)."""
    try:
        width = min(100.0, max(0.0, 100.0 * float(fraction)))  # float() also reads "inf"
    except (TypeError, ValueError):
        width = 0.0
    return width if math.isfinite(width) else 100.0


def badge_kind(outcome: Any) -> str:
    return KIND.get(outcome, "other") if isinstance(outcome, str) else "other"


def outcome_class(outcome: Any) -> str:
    return f"outcome-{KIND.get(outcome, 'other')}" if isinstance(outcome, str) else "outcome-other"


def safe_svg(chart: charts.Chart) -> Markup:
    """A line chart's SVG, markup by design (see the module's docstring)."""
    return Markup(charts.svg(chart))


def safe_block_svg(chart: charts.BlockChart) -> Markup:
    return Markup(charts.block_svg(chart))


@functools.lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(loader=PackageLoader("ppmlops.dashboard", "templates"), autoescape=True,
                      finalize=_finalize, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                      keep_trailing_newline=False)
    env.filters.update(num=num)
    env.tests["error"] = lambda value: isinstance(value, Exception)  # a section its query could not fill
    env.globals.update(seg=seg, run_href=run_href, bar_width=bar_width, badge_kind=badge_kind,
                       outcome_class=outcome_class, state_class=lambda s: STATE_CLASS.get(s, "other"),
                       svg=safe_svg, block_svg=safe_block_svg, reasons=access.reasons,
                       check_reasons=access.check_reasons)
    return env


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


def macro(template: str, name: str):
    """One macro of a template, callable from Python (a piece of a page, for its tests)."""
    return getattr(environment().get_template(template).module, name)
