"""What the pages' templates and charts share: escaping, path segments, run addresses, the words
and badge classes of outcomes and run states.

Every value that came from data is escaped (dataset ids, run ids and policy reasons are written by
people and pipelines and may hold markup): the templates by autoescaping (templating.py), the
SVG charts by `esc`. Links are relative, so the pages work under whatever prefix Airflow mounts
them at, also behind a proxy.
"""

from __future__ import annotations

import html
from typing import Any
from urllib.parse import quote

# Policy outcomes, and a person's answer to a needs-approval gate (recorded as a decision too).
KIND = {"allow": "allow", "approved": "allow", "deny": "deny", "rejected": "deny", "needs_approval": "needs_approval"}
OUTCOME_WORDS = {"allow": "allowed", "deny": "denied", "needs_approval": "needs a person's approval",
                 "approved": "approved", "rejected": "rejected"}
# A run's state (ppmlops.dashboard.runs.RunState) as a badge: in flight, stalled, or how it ended.
STATE_CLASS = {"running": "running", "waiting": "needs_approval", "stalled": "warn", "deployed": "ok",
               "refused": "deny", "denied": "deny", "rejected": "deny"}


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def seg(value: Any) -> str:
    """One path segment; '/' in a dataset id must not split it."""
    return quote(str(value), safe="")


def run_href(up: str, pipeline: str, run_id: str) -> str:
    """The one address of a run's page: its pipeline and Airflow's run id as it was given."""
    return f"{up}runs/{seg(pipeline)}/{seg(run_id)}"
