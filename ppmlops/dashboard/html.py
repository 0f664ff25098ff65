"""Server-rendered pages: the overview, a dataset, the ledger, a decision (the run page is
run_page.py). The markup is in templates/ (Jinja2, autoescaped: templating.py); this module
shapes what they show: the View, the charts' data, the words of figures and checks.

Plain HTML with inline SVG charts, one stylesheet and one tiny theme script served by the app,
nothing fetched from elsewhere (the dashboard must work on an offline host and inside the
Airflow UI's iframe). What a reader without the compliance role may not see (access.py) is left
out here, not hidden with CSS.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode

from ppmlops.dashboard import access, charts, templating
from ppmlops.dashboard.access import Reader
from ppmlops.dashboard.html_base import OUTCOME_WORDS
from ppmlops.dashboard.runs import RunIndex, RunRef, RunState


@dataclass(frozen=True)
class View:
    """Who reads, where the dashboard root is from this page, and how to find runs' pipelines."""

    reader: Reader
    up: str = "./"
    runs: RunIndex | None = None

    def at(self, up: str) -> "View":
        return View(self.reader, up, self.runs)

    def pipeline_of(self, run_id: Any, dataset_id: str | None = None) -> str | None:
        """The pipeline whose folder holds the run (None: no folder: the run id is not linked)."""
        found = self.runs.find(run_id, dataset_id) if self.runs is not None else None
        return found.pipeline if found else None

    def in_flight_state(self, run_id: Any, dataset_id: str | None = None) -> dict | None:
        """The state of a run in flight (running or waiting), for its badge; None for any other run."""
        found = self.runs.find(run_id, dataset_id) if self.runs is not None else None
        state = self.runs.state(found) if found else None
        return state.as_dict() if state and state.in_flight else None

    def in_flight(self, dataset_id: str | None = None) -> list[tuple[RunRef, RunState]]:
        return self.runs.in_flight(dataset_id) if self.runs is not None else []

    def render(self, template: str, title: str, **context: Any) -> str:
        return templating.render(template, v=self, title=title, up=self.up, who=self.reader.words, now=_now(),
                                 **context)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def error_page(title: str, message: str, *, hint: str = "", up: str = "./", login: str = "") -> str:
    """A page that failed (no reader: it may be the login that failed)."""
    return templating.render("error.html", title=title, message=message, hint=hint, login=login, up=up, who="",
                             now=_now())


# -- overview ---------------------------------------------------------------------------------

def overview(v: View, settings_info: dict, budgets: Any, decisions: Any, models: Any, runs: Any,
             steps: dict[str, Any]) -> str:
    spend = [spend_chart(d, steps.get(d["dataset_id"]) or [])
             for d in (budgets["datasets"] if isinstance(budgets, dict) else [])]
    return v.render("overview.html", "Privacy and compliance", settings_info=settings_info, budgets=budgets,
                    decisions=decisions, models=models, runs=runs, spend_charts=spend)


def _where(use: dict) -> str:
    from ppmlops.privacy.block_view import partition_words

    if use.get("worst_block") is None:
        return "nothing charged yet"
    if not use.get("blocked"):
        return f"{partition_words(use.get('worst_partition'))}; one block: the whole dataset"
    return f"block {use['worst_block']}, {partition_words(use.get('worst_partition'))}"


REPLAYABLE_TITLE = ("drawn with randomness reproducible: anyone who knows the seed and run id can replay the "
                   "noise, so these releases are exact in effect and their epsilon guarantees nothing")


def spend_chart(d: dict, steps: list[dict]) -> charts.Chart:
    """The worst block's share of its lifetime budget over time, per split (the dataset's figure)."""
    parts = sorted({p for s in steps for p in s["share"]})
    series = []
    for i, p in enumerate(parts):
        pts = tuple(charts.Point(_ts(s["at"]), 100 * float(s["share"].get(p, 0.0)),
                                 f"{p}: {_pct(s['share'].get(p, 0.0))} used in block {s['block'].get(p, '-')} "
                                 f"after: {s['words']} (run {s['run_id']})")
                    for s in steps)
        series.append(charts.Series(f"worst block's share used, {p} rows (%)", pts, colour=_colour(p, parts),
                                    shape="step"))
    markers = tuple(charts.Marker(_ts(s["at"]), "trimmed" if s["event"] == "trimmed" else "released",
                                  f"{s['words']} (run {s['run_id']}, {s['partition']})")
                    for s in steps if s["event"] in ("trimmed", "released"))
    refs = (charts.Reference(100.0, "lifetime budget (100%)"),) if d.get("epsilon_budget") is not None else ()
    return charts.Chart(f"{d['dataset_id']}: share of the lifetime budget used over time", "time (UTC)",
                        "% used (worst block)", tuple(series), refs, markers, x_kind="time")


def _colour(partition: str, parts: list[str]) -> int:
    # One colour per split on every chart (train blue, holdout amber), whichever splits are present.
    fixed = {"train": 1, "holdout": 2}
    if partition in fixed:
        return fixed[partition]
    return 3 + sorted(set(parts) - set(fixed)).index(partition) % 4


def _pct(share: Any) -> str:
    from ppmlops.privacy.block_view import percent

    return percent(share) if isinstance(share, (int, float)) else "-"


def block_chart(d: dict) -> charts.BlockChart:
    """Blocks by start date, each split's share of the block's budget, runs and retirements."""
    rows = list(d.get("block_rows") or [])
    retired = d.get("retired") or {}
    # Retired blocks the ledger charged nothing to still get a slot: the officer sees them left out.
    known = {r["block"] for r in rows}
    extra = sorted({x["block"] for xs in retired.values() for x in xs if x["block"] not in known})
    rows += [{"block": b, "start": next(x["start"] for xs in retired.values() for x in xs if x["block"] == b),
              "shares": {}, "worst": False, "runs": []} for b in extra]
    rows.sort(key=lambda r: (r.get("start") or "", r["block"]))
    slot = {r["block"]: i for i, r in enumerate(rows)}
    parts = sorted({p for r in rows for p in r["shares"]})
    use = d.get("use") or {}
    bars = tuple(charts.Bar(slot[r["block"]], float(r["shares"][p]), _colour(p, parts),
                            f"block {r['block']}, {p} rows: {_pct(r['shares'][p])} of its lifetime budget used",
                            highlight=r["worst"] and p == use.get("worst_partition"))
                 for r in rows for p in parts if p in r["shares"])
    run_ids = list(dict.fromkeys([x["run_id"] for x in d.get("run_spend") or []] + list(retired)))
    shown = run_ids[-30:]  # the newest runs; the table below lists all
    lanes = tuple(charts.Lane(run, tuple(slot[r["block"]] for r in rows if run in r["runs"]),
                              tuple((slot[x["block"]], x.get("why", "")) for x in retired.get(run, [])))
                  for run in shown)
    calendar = "one block: the whole dataset" if not d.get("block_length_seconds") else \
        f"blocks of {_length(d['block_length_seconds'])} from {d.get('block_origin')}"
    return charts.BlockChart(f"{d['dataset_id']}: share of each block's budget used ({calendar})",
                             tuple(r["block"] for r in rows), bars, lanes,
                             tuple((f"{p} rows", _colour(p, parts)) for p in parts),
                             omitted_lanes=len(run_ids) - len(shown))


def _length(seconds: float) -> str:
    from datetime import timedelta

    from ppmlops.privacy.blocks import length_text

    return length_text(timedelta(seconds=float(seconds)))


GLOSSARY = (
    ("lifetime budget", "The (ε, δ) every row of the dataset may lose over the dataset's whole life, fixed when "
                        "the dataset was registered. Each block and split has it in full (its rows are "
                        "disjoint from the others'), as an RDP budget at the dataset's accounting order."),
    ("block", "A slice of event time (privacy.blocks, e.g. one week) on a calendar fixed by the spec, not by the "
              "data; a row belongs to the one block its event time falls in. A dataset without blocks is one "
              "block, the whole dataset."),
    ("share used", "For one block and split: the RDP its charges add up to at the dataset's order, as a share of "
                   "the lifetime RDP budget. Additive: two equal runs use twice one run's share. Admission "
                   "refuses any charge that would take a block past 100%."),
    ("worst block", "The block and split with the largest share used. Its share is the dataset's figure: the "
                    "one shown on the overview, this page, run pages, the trigger form, the CLI and MLflow. A "
                    "row's guarantee is its own block's; none is weaker than the worst block's."),
    ("grant", "A run's whole budget, reserved at plan before it trains, charged to every block of its window; "
              "it counts in full while the run is live."),
    ("trimmed", "A grant closed when its run ended: from then on only what the run used (its usage rows) "
                "counts."),
    ("released", "A grant closed unused: it stops counting. Noisy statistics released at assess (counts, "
                 "accuracy) are releases too and count for good."),
    ("retired", "A block of a run's window whose budget could not afford the run: the run left its rows out "
                "(quarantined, not dropped) and trained on the others. Block bounds come from the calendar, so "
                "naming them reveals nothing."),
    ("dominant share", "For one pipeline: the largest share of a block's budget its runs have used. Pipelines "
                       "on one dataset share each block's unlocked budget by it (DPF): each has a fair part, "
                       "an equal share of what is unlocked; a run keeps off the unused part of every pipeline "
                       "whose dominant share is no larger than its own pipeline's (up to what that pipeline's "
                       "last run cost), so the pipeline that has had the least may take more."),
    ("ε of a charge", "One release or grant on its own, at its best order: how a run's guarantee is stated. "
                      "Charges do not add up in ε; that is why the dataset's figure is a share."),
)


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


# -- models -----------------------------------------------------------------------------------

def clip_norms(card: dict) -> str:
    """The clip norms the epochs ran with (the spec's max_grad_norm is only the tuner's start)."""
    used = [e.get("max_grad_norm") for e in card.get("epoch_settings") or [] if isinstance(e, dict)]
    used = [float(x) for x in used if isinstance(x, (int, float))]
    if not used:
        return "–"
    return ", ".join(f"{x:.3g}" for x in used) if len(used) <= 6 else f"{min(used):.3g} to {max(used):.3g}"


def _versions(m: dict) -> list[tuple[int, dict]]:
    return sorted(((ver["version"], ver.get("card") or {}) for ver in m["versions"]), key=lambda t: t[0])


def accuracy_chart(m: dict) -> charts.Chart:
    pts = tuple(charts.Point(float(c["epsilon"]), float(c["metrics"]["accuracy"]),
                             f"v{n}: accuracy {c['metrics']['accuracy']:.3f} at ε {c['epsilon']:.3g}")
                for n, c in _versions(m) if _number(c.get("epsilon")) and _number((c.get("metrics") or {}).get("accuracy")))
    base = tuple(charts.Point(float(c["epsilon"]), float(c["metrics"]["majority_baseline"]),
                              f"v{n}: majority baseline {c['metrics']['majority_baseline']:.3f}")
                 for n, c in _versions(m) if _number(c.get("epsilon"))
                 and _number((c.get("metrics") or {}).get("majority_baseline")))
    return charts.Chart(f"{m['model_name']}: accuracy against ε, every version", "ε of the version's run",
                        "noisy accuracy", (charts.Series("accuracy", pts, 1, "dots"),
                                           charts.Series("majority baseline", base, 5, "dots")))


def audit_chart(m: dict) -> charts.Chart:
    versions = _versions(m)
    claimed = tuple(charts.Point(n, float(c["epsilon"]), f"v{n}: claimed ε {c['epsilon']:.3g}")
                    for n, c in versions if _number(c.get("epsilon")))
    lower = tuple(charts.Point(n, float(a["epsilon_lower_bound"]), f"v{n}: audit lower bound ε ≥ {a['epsilon_lower_bound']:.3g}")
                  for n, c in versions for a in [c.get("privacy_audit") or {}] if _number(a.get("epsilon_lower_bound")))
    ticks = tuple((float(n), f"v{n}") for n, _ in versions)
    return charts.Chart(f"{m['model_name']}: canary audit lower bound against claimed ε", "version", "ε",
                        (charts.Series("claimed ε (accountant)", claimed, 1),
                         charts.Series("audit lower bound", lower, 2, dashed=True)), x_ticks=ticks)


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def utc_text(posix: float) -> str:
    """A file's modification time for a table cell."""
    return datetime.fromtimestamp(posix, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


# -- detail pages -----------------------------------------------------------------------------

def dataset_page(v: View, d: dict, decisions: Any) -> str:
    return v.render("dataset.html", f"Dataset {d['dataset_id']}", d=d, decisions=decisions)


def ledger_page(v: View, data: dict) -> str:
    """The ledger's three tables as the database holds them (queries.ledger_tables)."""
    return v.render("ledger.html", "Ledger tables", data=data)


def backfill_page(v: View, pipeline: str, *, spec: Any = None, start: str = "", end: str = "", cost: Any = None,
                  error: str = "") -> str:
    """What a backfill of [start, end] will cost (ppmlops.backfill_cost), with the form to ask."""
    return v.render("backfill.html", f"What a backfill of {pipeline} will cost", pipeline=pipeline,
                    schedule=getattr(spec, "schedule", None), dataset_id=spec.dataset.id if spec else None,
                    start=start, end=end, cost=cost, error=error)


def block_days(seconds: Any) -> str:
    return "one block (the whole dataset)" if not seconds else f"{seconds / 86400:g} days"


def _block_span(blocks: Any) -> str:
    if blocks is None:
        return "before blocks (every block then open)"
    if not isinstance(blocks, list) or not blocks:
        return "-"
    return blocks[0] if len(blocks) == 1 else f"{blocks[0]} to {blocks[-1]} ({len(blocks)} blocks)"


@dataclass(frozen=True)
class StepAfter:
    """The dataset's figure right after a change of the ledger: the worst split's share, where."""

    share: str
    block: Any
    partition: str


def step_after(s: dict) -> StepAfter | None:
    if not s.get("share"):
        return None
    p = max(sorted(s["share"]), key=lambda k: s["share"][k])
    return StepAfter(_pct(s["share"][p]), s["block"].get(p), p)


@dataclass(frozen=True)
class Check:
    mark: str
    cls: str
    title: Any
    reasons: list[str]


def checks(v: View, result: Any, answered: str | None = None) -> list[Check]:
    """The deploy policy's checks, each passed or failed with its reasons (the policy's own list).
    A check whose effect is a person's approval is "not met" (its title states what would have
    let the model through without one), then the person's answer when there is one (`answered`)."""
    found = result.get("checks") if isinstance(result, dict) else None
    if not isinstance(found, list):
        return []
    out = []
    for c in found:
        if not c.get("evaluated", True):
            mark, cls = "not evaluated", "b-other"
        elif c.get("passed"):
            mark, cls = "passed", "b-ok"
        else:
            mark, cls = ("failed", "b-deny")
            if c.get("effect") == "needs_approval":
                mark, cls = {"approved": ("not met: approved by a person", "b-ok"),
                             "rejected": ("not met: rejected by a person", "b-deny")}.get(
                                 answered or "", ("not met: needs a person's approval", "b-warn"))
        out.append(Check(mark, cls, c.get("title") or c.get("id"), list(access.check_reasons(v.reader, c))))
    return out


def decision_page(v: View, data: dict) -> str:
    r = data["record"]
    d = r.get("decision") or {}
    return v.render("decision.html", f"Decision {r['seq']}", r=r, chain=data["chain"],
                    checks=checks(v, d.get("result")))


def decisions_json_href(up: str, filter_: dict) -> str:
    return up + "api/decisions?" + urlencode({k: val for k, val in filter_.items() if val})


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True)


# What the templates call besides templating's own helpers.
templating.environment().globals.update(
    where=_where, pct=_pct, block_span=_block_span, step_after=step_after, block_days=block_days,
    utc_text=utc_text, clip_norms=clip_norms, spend_chart=spend_chart, block_chart=block_chart,
    accuracy_chart=accuracy_chart, audit_chart=audit_chart, decisions_json_href=decisions_json_href,
    pretty=pretty, GLOSSARY=GLOSSARY, REPLAYABLE_TITLE=REPLAYABLE_TITLE, OUTCOME_WORDS=OUTCOME_WORDS)
