"""The pieces every page is built from: escaping, links, badges, tables, the page frame.

Every value that came from data passes through `esc` (dataset ids, run ids and policy reasons
are written by people and pipelines and may hold markup). Links are relative, so the pages work
under whatever prefix Airflow mounts them at, also behind a proxy. The stylesheet and the one
small script (theme.js: Airflow's colour mode) are files served by the app itself, so the CSP
allows nothing inline and nothing from elsewhere.
"""

from __future__ import annotations

import html
import math
from datetime import datetime, timezone
from typing import Any, Callable
from urllib.parse import quote

# Policy outcomes, and a person's answer to a needs-approval gate (recorded as a decision too).
KIND = {"allow": "allow", "approved": "allow", "deny": "deny", "rejected": "deny", "needs_approval": "needs_approval"}
OUTCOME_WORDS = {"allow": "allowed", "deny": "denied", "needs_approval": "needs a person's approval",
                 "approved": "approved", "rejected": "rejected"}


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def num(value: Any, fmt: str = "{:.4g}") -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return esc(fmt.format(value))
    return esc(value)  # "inf", "nan" from queries.jsonable


def link(href: str, text: Any, title: str = "") -> str:
    extra = f' title="{esc(title)}"' if title else ""
    return f'<a href="{esc(href)}"{extra}>{esc(text)}</a>'


def seg(value: Any) -> str:
    """One path segment; '/' in a dataset id must not split it."""
    return quote(str(value), safe="")


def run_href(up: str, pipeline: str, run_id: str) -> str:
    """The one address of a run's page: its pipeline and Airflow's run id as it was given."""
    return f"{up}runs/{seg(pipeline)}/{seg(run_id)}"


def run_link(up: str, pipeline: str | None, run_id: Any) -> str:
    """A run id, linked to its page when its pipeline is known; always spelled as Airflow spells it."""
    if not run_id:
        return "&ndash;"
    if not pipeline:
        return f"<code>{esc(run_id)}</code>"
    return f'<a href="{esc(run_href(up, pipeline, str(run_id)))}"><code>{esc(run_id)}</code></a>'


def badge(outcome: Any) -> str:
    kind = KIND.get(outcome, "other") if isinstance(outcome, str) else "other"
    return f'<span class="badge b-{kind}">{esc(outcome)}</span>'


# A run's state (ppmlops.dashboard.runs.RunState) as a badge: in flight, stalled, or how it ended.
STATE_CLASS = {"running": "running", "waiting": "needs_approval", "stalled": "warn", "deployed": "ok",
               "refused": "deny", "denied": "deny", "rejected": "deny"}


def state_badge(state: dict | None) -> str:
    """The state's badge, its words on hover."""
    if not state:
        return "&ndash;"
    kind = STATE_CLASS.get(state.get("state"), "other")
    return f'<span class="badge b-{kind}" title="{esc(state.get("words"))}">{esc(state.get("state"))}</span>'


def bar(fraction: Any) -> str:
    """How much of a budget is used, as a small SVG bar (no inline style: the CSP forbids it)."""
    try:
        width = min(100.0, max(0.0, 100.0 * float(fraction)))  # float() also reads "inf"
    except (TypeError, ValueError):
        width = 0.0
    width = width if math.isfinite(width) else 100.0
    hot = " hot" if width >= 80 else ""  # most of the lifetime budget is gone
    return (f'<svg class="bar" viewBox="0 0 100 6" preserveAspectRatio="none" role="img" '
            f'aria-label="{width:.0f}% used"><rect class="track" width="100" height="6"/>'
            f'<rect class="fill{hot}" width="{width:.1f}" height="6"/></svg>')


def table(headers: list[str], rows: list[str], empty: str) -> str:
    if not rows:
        return f'<p class="muted">{esc(empty)}</p>'
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def page(title: str, body: str, *, up: str = "./", who: str = "") -> str:
    """`up` is the relative way back to the dashboard root from this page; `who` the reader's
    name and access, shown in the header."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    reader = f' <span class="muted">&middot; {esc(who)}</span>' if who else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{esc(title)} - ppmlops</title>"
            '<link rel="icon" href="data:,">'
            f'<link rel="stylesheet" href="{esc(up)}static/dashboard.css">'
            f'<script src="{esc(up)}static/theme.js"></script></head><body>'
            f'<nav class="small">{link(up, "Overview")}{link(up + "api/datasets", "JSON API")}{reader}</nav>'
            f"<h1>{esc(title)}</h1>{body}"
            f'<p class="muted small">Rendered {esc(now)}. Read-only view of the privacy ledger, '
            f"the audit log and the model registry.</p></body></html>")


def error_box(message: str) -> str:
    return f'<div class="error">{esc(message)}</div>'


def error_page(title: str, message: str, *, hint: str = "", up: str = "./", login: str = "") -> str:
    extra = f'<p class="muted">{esc(hint)}</p>' if hint else ""
    if login:
        extra += f'<p><a class="login" href="{esc(login)}">Log in to Airflow</a> and come back here.</p>'
    return page(title, error_box(message) + extra, up=up)


def section(data: Any, render: Callable[[Any], str]) -> str:
    """A section renders its data, or the message of the error that replaced it."""
    return error_box(str(data)) if isinstance(data, Exception) else render(data)


def when(iso: Any) -> str:
    """An ISO timestamp shortened for a table cell, the full value on hover."""
    if not iso:
        return "&ndash;"
    text = str(iso)
    return f'<span class="small" title="{esc(text)}">{esc(text[:19].replace("T", " "))}</span>'
