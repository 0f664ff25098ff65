"""Server-rendered pages: the overview, a dataset, a decision (the run page is run_page.py).

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

from ppmlops.dashboard import access, charts
from ppmlops.dashboard.access import Reader
from ppmlops.dashboard.html_base import (
    KIND, badge, bar, error_box, esc, link, num, page, run_link, section, seg, state_badge, table, when,
)
from ppmlops.dashboard.runs import RunIndex



@dataclass(frozen=True)
class View:
    """Who reads, where the dashboard root is from this page, and how to find runs' pipelines."""

    reader: Reader
    up: str = "./"
    runs: RunIndex | None = None

    def at(self, up: str) -> "View":
        return View(self.reader, up, self.runs)

    def run(self, run_id: Any, dataset_id: str | None = None) -> str:
        found = self.runs.find(run_id, dataset_id) if self.runs is not None else None
        return run_link(self.up, found.pipeline if found else None, run_id)

    def page(self, title: str, body: str) -> str:
        return page(title, body, up=self.up, who=self.reader.words)

    def in_flight_badge(self, run_id: Any, dataset_id: str | None = None) -> str:
        """A "running" (or "waiting") badge after a run in flight; nothing for any other run."""
        found = self.runs.find(run_id, dataset_id) if self.runs is not None else None
        state = self.runs.state(found) if found else None
        return " " + state_badge(state.as_dict()) if state and state.in_flight else ""


# -- overview ---------------------------------------------------------------------------------

def overview(v: View, settings_info: dict, budgets: Any, decisions: Any, models: Any, runs: Any,
             steps: dict[str, Any]) -> str:
    info = ""
    if v.reader.compliance:
        info = '<p class="muted small">' + " &middot; ".join(
            f"{esc(k)} <code>{esc(val)}</code>" for k, val in settings_info.items()) + "</p>"
    spend = "".join(charts.svg(spend_chart(d, steps.get(d["dataset_id"]) or []))
                    for d in (budgets["datasets"] if isinstance(budgets, dict) else []))
    body = (info + "<h2>Privacy budgets</h2>" + section(budgets, lambda b: budget_table(v, b))
            + f'<p class="small">{link(v.up + "ledger", "The ledger tables")}: every registered dataset, run and '
            "entry as the database holds them.</p>"
            + (f'<div class="charts">{spend}</div>' if spend else "")
            + in_flight_section(v)
            + "<h2>Recent runs</h2>" + section(runs, lambda r: run_table(v, r))
            + "<h2>Deployed models</h2>" + section(models, lambda m: model_sections(v, m))
            + "<h2>Audit log</h2>" + section(decisions, lambda d: chain_box(d["chain"]) + decision_table(v, d)))
    return v.page("Privacy and compliance", body)


def use_cell(use: dict | None) -> str:
    """The dataset's one figure (ppmlops.privacy.block_view), as every page shows it."""
    if not use:
        return '<span class="muted small">not registered</span>'
    return (f'{bar(use["share_used"])}<b class="share">{esc(use["share_text"])}</b> '
            f'<span class="small">used in the worst block ({esc(_where(use))})</span>')


def _where(use: dict) -> str:
    from ppmlops.privacy.block_view import partition_words

    if use.get("worst_block") is None:
        return "nothing charged yet"
    if not use.get("blocked"):
        return f"{partition_words(use.get('worst_partition'))}; one block: the whole dataset"
    return f"block {use['worst_block']}, {partition_words(use.get('worst_partition'))}"


def budget_table(v: View, data: dict) -> str:
    rows = []
    for d in data["datasets"]:
        rows.append(
            f"<tr><td>{link(v.up + 'datasets/' + seg(d['dataset_id']), d['dataset_id'])}</td>"
            f'<td class="num">{num(d["epsilon_budget"])}</td><td class="num">{num(d["delta"], "{:.0e}")}</td>'
            f'<td>{use_cell(d.get("use"))}</td><td class="num">{len(d["runs"])}</td>'
            f'<td class="num">{d["entry_count"]}{_reserved(d)}{_replayable(d.get("replayable_count"))}</td></tr>')
    note = ('<p class="muted small">"Used" is the share of the lifetime budget used in the dataset\'s worst '
            "block and split: RDP at the dataset's accounting order against the lifetime RDP budget, the "
            "figure admission checks and the one the run pages, the trigger form, <code>ppmlops ledger show</code> "
            "and MLflow show. A run's grant counts in full while the run is live.</p>")
    return table(["dataset", "lifetime ε", "δ", "used", "runs", "entries"], rows,
                 "No dataset in the privacy ledger yet.") + note


REPLAYABLE_TITLE = ("drawn with randomness reproducible: anyone who knows the seed and run id can replay the "
                   "noise, so these releases are exact in effect and their epsilon guarantees nothing")


def _replayable(n: int | None) -> str:
    return (f' <span class="badge b-deny" title="{REPLAYABLE_TITLE}">{n} replayable: no guarantee</span>'
            if n else "")


def _reserved(d: dict) -> str:
    n = d.get("reserved_count") or 0
    return f' <span class="badge b-warn" title="reserved, never completed">{n} reserved</span>' if n else ""


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


def glossary() -> str:
    items = "".join(f"<dt>{esc(term)}</dt><dd>{esc(words)}</dd>" for term, words in GLOSSARY)
    return f'<h2>What the figures mean</h2><dl class="glossary">{items}</dl>'


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def chain_box(chain: dict) -> str:
    if chain["intact"]:
        return (f'<p><span class="badge b-ok">chain intact</span> {chain["records"]} records verified '
                f'<span class="muted small">(head <code>{esc((chain["head"] or {}).get("hash", "")[:16])}</code>; '
                "keep the head elsewhere to detect truncation)</span></p>")
    items = "".join(f"<li>{esc(p)}</li>" for p in chain["problems"])
    return f'<div class="error"><span class="badge b-broken">chain BROKEN</span><ul>{items}</ul></div>'


def decision_table(v: View, data: dict) -> str:
    rows = []
    for r in data["records"]:
        d = r.get("decision") or {}
        outcome = d.get("outcome")
        cls = f"outcome-{KIND.get(outcome, 'other')}" if isinstance(outcome, str) else "outcome-other"
        reasons = "".join(f"<li>{esc(x)}</li>" for x in access.reasons(v.reader, d))
        ph = str(d.get("policy_hash") or "")
        rows.append(
            f'<tr class="{cls}"><td>{link(v.up + "decisions/" + seg(r["seq"]), r["seq"])}</td>'
            f'<td>{when(r.get("recorded_at"))}</td><td>{v.run(r.get("run_id"), r.get("dataset_id"))}</td>'
            f'<td>{esc(r.get("dataset_id"))}</td><td>{esc(r.get("stage"))}</td>'
            f'<td><code>{esc(d.get("query"))}</code></td>'
            f'<td>{badge(outcome)}</td><td><ul class="reasons">{reasons}</ul>'
            f'{"<p>" + esc("error: " + str(d["error"])) + "</p>" if d.get("error") else ""}</td>'
            f'<td>{esc(d.get("engine"))}</td><td><code title="{esc(ph)}">{esc(ph[:12])}</code></td></tr>')
    shown = len(data["records"])
    more = f" Showing the newest {shown} of {data['total']}." if data["total"] > shown else ""
    return (table(["seq", "recorded", "run", "dataset", "stage", "query", "outcome", "reasons", "engine",
                   "policy hash"], rows, "No decisions recorded yet.")
            + f'<p class="muted small">Newest first.{esc(more)} '
            f'{link(v.up + "api/decisions?" + urlencode({k: val for k, val in data["filter"].items() if val}), "as JSON")}</p>')


# -- models -----------------------------------------------------------------------------------

def model_sections(v: View, data: dict) -> str:
    if not data["models"]:
        where = f' at <code>{esc(data["registry_dir"])}</code>' if v.reader.compliance else ""
        return f'<p class="muted">No model in the registry{where}.</p>'
    return "".join(_model(v, m) for m in data["models"])


def _model(v: View, m: dict) -> str:
    by_version: dict[int, list[str]] = {}
    for alias, version in m["aliases"].items():
        by_version.setdefault(version, []).append(alias)
    rows = [_version_row(v, ver, by_version.get(ver["version"], [])) for ver in m["versions"]]
    production = m["production"]
    head = f"production: v{esc(production)}" if production is not None else "no production alias"
    err = error_box(m["error"]) if m.get("error") else ""
    figures = charts.svg(accuracy_chart(m)) + charts.svg(audit_chart(m))
    return (f"<h3>{esc(m['model_name'])} <span class=\"muted small\">{head}</span></h3>{err}"
            f'<div class="charts">{figures}</div>'
            + table(["version", "registered", "run", "ε", "δ", "accuracy", "majority baseline", "AUC",
                     "audit ε ≥", "clip norms used", "gate", "approval", ""], rows, "No complete version."))


def _version_row(v: View, ver: dict, aliases: list[str]) -> str:
    card = ver.get("card") or {}
    metrics = card.get("metrics") or {}
    audit = card.get("privacy_audit") or {}
    gate = card.get("policy_decision") or {}
    tags = " ".join(f'<span class="badge b-{"ok" if a == "production" else "other"}">{esc(a)}</span>' for a in aliases)
    return (f"<tr><td>v{esc(ver['version'])} {tags}</td><td>{when(card.get('created_at'))}</td>"
            f"<td>{run_link(v.up, card.get('pipeline'), card.get('run_id'))}</td>"
            f'<td class="num">{num(card.get("epsilon"))}</td><td class="num">{num(card.get("delta"), "{:.0e}")}</td>'
            f'<td class="num">{num(metrics.get("accuracy"))}</td><td class="num">{num(metrics.get("majority_baseline"))}</td>'
            f'<td class="num">{num(metrics.get("auc"))}</td><td class="num">{num(audit.get("epsilon_lower_bound"))}</td>'
            f"<td>{esc(clip_norms(card))}</td>"
            f"<td>{badge(gate['outcome']) if gate.get('outcome') else '&ndash;'}</td>"
            f"<td>{approval_cell(card.get('approval') or {})}</td>"
            f"<td>{error_box(ver['error']) if ver.get('error') else ''}</td></tr>")


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


def approval_cell(approval: dict) -> str:
    if not approval:
        return "&ndash;"
    return f"{badge(approval.get('outcome'))} {esc(approval.get('by'))} {when(approval.get('at'))}"


# -- runs -------------------------------------------------------------------------------------

def run_table(v: View, data: dict) -> str:
    rows = []
    for r in data["runs"]:
        ts = datetime.fromtimestamp(r["modified"], timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        outcome = badge(r["outcome"]) if r["outcome"] else (badge("deny") + " refused" if r["refused"] else "&ndash;")
        state = r.get("state") or {}
        rows.append(
            f"<tr><td>{run_link(v.up, r['pipeline'], r['run_id'])}</td><td>{esc(r['pipeline'])}</td>"
            f"<td>{airflow_run_link(v.up, r['dag_id'], r['run_id'], r['id_known'])}</td>"
            f'<td>{state_badge(state)} <span class="small">{esc(state.get("words"))}</span></td>'
            f'<td class="small">{esc(ts)}</td><td>{esc(", ".join(r["records"]))}</td><td>{outcome}</td></tr>')
    return table(["run", "pipeline", "Airflow", "state", "last written (UTC)", "records", "gate"], rows,
                 "No run folders yet.")


def in_flight_section(v: View, dataset_id: str | None = None) -> str:
    """Runs in flight (of one dataset, or all): the stage each is at and, while training, the
    epoch. All public: which records exist, the plan's epochs, the epoch lines (runs.state_of)."""
    pairs = v.runs.in_flight(dataset_id) if v.runs is not None else []
    rows = []
    for ref, st in pairs:
        epoch = f"{st.epoch} of {st.epochs if st.epochs is not None else '?'}" if st.epoch is not None else "&ndash;"
        ts = datetime.fromtimestamp(st.last_written, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        rows.append(f"<tr><td>{run_link(v.up, ref.pipeline, ref.run_id)}</td><td>{esc(ref.pipeline)}</td>"
                    f"<td>{state_badge(st.as_dict())}</td><td>{esc(st.stage)}</td><td class=\"num\">{epoch}</td>"
                    f"<td>{esc(st.words)}</td><td class=\"small\">{esc(ts)}</td></tr>")
    return ("<h2>Runs in flight</h2>"
            + table(["run", "pipeline", "state", "stage", "epoch", "where it is", "last written (UTC)"], rows,
                    "No run in flight."))


def airflow_run_link(up: str, dag_id: str, run_id: str, known: bool = True) -> str:
    """The run's page in the Airflow UI (the dashboard is mounted at <root>/ppmlops/)."""
    if not known:
        return '<span class="muted small">run id not recorded</span>'
    href = f"{up}../dags/{seg(dag_id)}/runs/{seg(run_id)}"
    return f'<a href="{esc(href)}" target="_top">DAG run</a>'


# -- detail pages -----------------------------------------------------------------------------

def dataset_page(v: View, d: dict, decisions: Any) -> str:
    retired = d.get("retired") or {}
    runs = [f"<tr><td>{v.run(r['run_id'], d['dataset_id'])}</td>"
            f"<td class=\"num\">{esc(_pct(r.get('share')))}</td><td class=\"num\">{num(r['epsilon'])}</td>"
            f"<td>{', '.join(f'{esc(p)} {num(e)}' for p, e in r['epsilon_by_partition'].items())}</td>"
            f"<td class=\"small\">{esc(_block_span(r.get('blocks')))}</td>"
            f"<td class=\"small\">{esc(', '.join(x['block'] for x in retired.get(r['run_id'], []))) or '&ndash;'}</td>"
            f"<td class=\"num\">{r['entries']}</td><td class=\"num\">{r['steps']}</td>"
            f"<td>{esc(', '.join(r['statuses']))}"
            f"{_replayable(r.get('replayable_entries'))}{v.in_flight_badge(r['run_id'], d['dataset_id'])}</td></tr>"
            for r in d["run_spend"]]
    steps = [f"<tr><td>{when(s['at'])}</td><td>{v.run(s['run_id'], d['dataset_id'])}</td><td>{esc(s['words'])}</td>"
             f"<td>{esc(s['partition'])}</td><td class=\"num\">{num(s.get('charge_epsilon'))}</td>"
             f"<td>{_step_after(s)}</td></tr>"
             for s in d.get("spend_steps") or []]
    entries = [f"<tr><td class=\"num\">{e['id']}</td><td>{v.run(e['run_id'], d['dataset_id'])}</td><td>{esc(e['kind'])}</td>"
               f"<td>{esc(e['partition'])}</td><td class=\"small\">{esc(_block_span(e.get('blocks')))}</td>"
               f"<td class=\"num\">{num(e['noise_multiplier'])}</td>"
               f"<td class=\"num\">{num(e['sample_rate'])}</td><td class=\"num\">{e['steps']}</td>"
               f"<td>{esc(e['status'])}{_replayable(1 if e.get('randomness', 'secure') != 'secure' else 0)}</td>"
               f"<td>{when(e['created_at'])}</td><td>{when(e.get('completed_at'))}</td>"
               f"<td class=\"small\">{esc(e.get('note')) if v.reader.compliance else ''}</td></tr>"
               for e in d["entries"]]
    body = (budget_table(v, {"datasets": [d]}) + in_flight_section(v, d["dataset_id"])
            + "<h2>Blocks</h2><p class=\"muted small\">Each block of event time has the lifetime budget in full; "
            "a run is charged to every block of its window and to no other. The outlined bar is the worst block: "
            "its share is the dataset's figure above.</p>"
            + charts.block_svg(block_chart(d)) + pipelines_table(d)
            + charts.svg(spend_chart(d, d.get("spend_steps") or []))
            + "<h2>How the budget was spent</h2><p class=\"muted small\">Each change of what the dataset's totals "
            "count. A grant reserves a run's whole budget before it trains; when the run ends the grant is "
            "trimmed to what the run used, or released if it used nothing. \"ε of the charge\" is the release or "
            "grant on its own; \"used after\" is the dataset's figure right after the change.</p>"
            + table(["when", "run", "what happened", "partition", "ε of the charge", "used after (worst block)"],
                    steps, "No entries.")
            + "<h2>Spend per run</h2><p class=\"muted small\">\"Share\" is what the run adds to each block it "
            "read; ε is its guarantee on its own (its releases and whole grant). Shares add up within a block; "
            "epsilons do not.</p>"
            + table(["run", "share", "ε", "ε by partition", "blocks", "retired", "entries", "steps", "status"], runs,
                    "No entries.")
            + "<h2>Ledger entries</h2>"
            + table(["id", "run", "kind", "partition", "blocks", "σ", "q", "steps", "status", "reserved", "closed",
                     "note"], entries, "No entries.")
            + glossary()
            + "<h2>Decisions on this dataset</h2>"
            + section(decisions, lambda x: chain_box(x["chain"]) + decision_table(v, x)))
    return v.page(f"Dataset {d['dataset_id']}", body)


def pipelines_table(d: dict) -> str:
    """Each pipeline (spec) training on the dataset: its runs and its dominant share (see GLOSSARY)."""
    pipelines = d.get("pipelines") or {}
    rows = [f"<tr><td>{esc(name)}</td><td class=\"num\">{len(p.get('runs') or [])}</td>"
            f"<td class=\"num\">{esc(_pct(p.get('dominant_share')))}</td></tr>"
            for name, p in sorted(pipelines.items())]
    return ("<h2>Pipelines</h2><p class=\"muted small\">Pipelines on this dataset share each block's unlocked "
            "budget by dominant share (see the glossary below).</p>"
            + table(["pipeline", "runs", "dominant share"], rows, "No pipeline has planned a run yet."))


def ledger_page(v: View, data: dict) -> str:
    """The ledger's three tables as the database holds them (queries.ledger_tables)."""
    def days(seconds: Any) -> str:
        return "one block (the whole dataset)" if not seconds else f"{seconds / 86400:g} days"

    datasets = [f"<tr><td>{link(v.up + 'datasets/' + seg(d['dataset_id']), d['dataset_id'])}</td>"
                f"<td class=\"num\">{num(d['epsilon_budget'])}</td><td class=\"num\">{esc(d['delta'])}</td>"
                f"<td class=\"num\">{num(d['accounting_order'])}</td><td>{esc(days(d['block_seconds']))}</td>"
                f"<td class=\"small\">{esc(d['block_origin'] or '-')}</td><td>{esc(d['unit'] or 'one row')}</td></tr>"
                for d in data["datasets"]]
    runs = [f"<tr><td>{esc(r['dataset_id'])}</td><td>{esc(r['pipeline'])}</td>"
            f"<td>{v.run(r['run_id'], r['dataset_id'])}</td><td>{when(r['window_end'])}</td></tr>" for r in data["runs"]]
    entries = [f"<tr><td class=\"num\">{e['id']}</td><td>{esc(e['dataset_id'])}</td>"
               f"<td>{v.run(e['run_id'], e['dataset_id'])}</td><td>{esc(e['kind'])}</td><td>{esc(e['partition'])}</td>"
               f"<td>{esc(e['mechanism'])}</td><td class=\"num\">{num(e['noise_multiplier'])}</td>"
               f"<td class=\"num\">{num(e['sample_rate'])}</td><td class=\"num\">{e['steps']}</td>"
               f"<td>{esc(e['status'])}</td><td class=\"small\">{esc(_block_span(e.get('blocks')))}</td>"
               f"<td>{when(e['created_at'])}</td></tr>" for e in data["entries"]]
    body = ("<p class=\"muted small\">The privacy ledger's tables as the database holds them. A dataset's "
            "budget, delta, accounting order, blocks and unit are fixed when it is registered; runs are "
            "registered by pipeline at plan; every charge is an entry (see the glossary below).</p>"
            + "<h2>Datasets (privacy_datasets)</h2>"
            + table(["dataset", "ε budget", "δ", "order", "blocks", "block origin", "unit of privacy"], datasets,
                    "No dataset is registered.")
            + "<h2>Runs (privacy_runs)</h2>"
            + table(["dataset", "pipeline", "run", "window end"], runs, "No run is registered.")
            + "<h2>Entries (privacy_ledger)</h2>"
            + table(["id", "dataset", "run", "kind", "partition", "mechanism", "σ", "q", "steps", "status", "blocks",
                     "recorded"], entries, "No entries.")
            + glossary())
    return v.page("Ledger tables", body)


def _block_span(blocks: Any) -> str:
    if blocks is None:
        return "before blocks (every block then open)"
    if not isinstance(blocks, list) or not blocks:
        return "-"
    return blocks[0] if len(blocks) == 1 else f"{blocks[0]} to {blocks[-1]} ({len(blocks)} blocks)"


def _step_after(s: dict) -> str:
    if not s.get("share"):
        return "0%"
    p = max(sorted(s["share"]), key=lambda k: s["share"][k])
    return f"{esc(_pct(s['share'][p]))} <span class=\"small muted\">(block {esc(s['block'].get(p))}, {esc(p)})</span>"


def checks_list(v: View, result: Any, answered: str | None = None) -> str:
    """The deploy policy's checks, each passed or failed with its reasons (the policy's own list).
    A check whose effect is a person's approval is "not met" (its title states what would have
    let the model through without one), then the person's answer when there is one (`answered`)."""
    found = result.get("checks") if isinstance(result, dict) else None
    if not isinstance(found, list):
        return ""
    items = []
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
        why = "".join(f"<li>{esc(r)}</li>" for r in access.check_reasons(v.reader, c))
        items.append(f'<li><span class="badge {cls}">{mark}</span> {esc(c.get("title") or c.get("id"))}'
                     f'{"<ul class=reasons>" + why + "</ul>" if why else ""}</li>')
    return f'<ul class="checks">{"".join(items)}</ul>'


def decision_page(v: View, data: dict) -> str:
    r = data["record"]
    d = r.get("decision") or {}
    reasons = "".join(f"<li>{esc(x)}</li>" for x in access.reasons(v.reader, d)) or "<li>none</li>"
    facts = [("outcome", badge(d.get("outcome"))), ("query", f"<code>{esc(d.get('query'))}</code>"),
             ("stage", esc(r.get("stage"))), ("run", v.run(r.get("run_id"), r.get("dataset_id"))),
             ("dataset", esc(r.get("dataset_id"))), ("recorded", esc(r.get("recorded_at"))),
             ("engine", esc(d.get("engine"))), ("policy sha256", f"<code>{esc(d.get('policy_hash'))}</code>"),
             ("record hash", f"<code>{esc(r.get('hash'))}</code>"),
             ("previous hash", f"<code>{esc(r.get('prev_hash'))}</code>")]
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{val}</td></tr>" for k, val in facts)
    checks = checks_list(v, d.get("result"))
    body = (chain_box(data["chain"]) + f"<table>{rows}</table>"
            + (f"<h2>Checks</h2>{checks}" if checks else "") + f"<h2>Reasons</h2><ul>{reasons}</ul>")
    if v.reader.compliance:
        body += ("<h2>Policy input</h2><pre>" + esc(json.dumps(d.get("input"), indent=2, sort_keys=True)) + "</pre>"
                 "<h2>Policy result</h2><pre>" + esc(json.dumps(d.get("result"), indent=2, sort_keys=True)) + "</pre>")
    else:
        body += '<p class="muted small">The policy\'s input and raw result are shown to compliance officers.</p>'
    return v.page(f"Decision {r['seq']}", body)
