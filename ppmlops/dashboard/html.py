"""Server-rendered pages: plain HTML and a little inline CSS, no JavaScript, nothing fetched from
elsewhere (the dashboard must work on an offline host and inside the Airflow UI's iframe).

Every value that came from data passes through `esc` (dataset ids, run ids and policy reasons
are written by people and pipelines and may hold markup). Links are relative, so the pages work
under whatever prefix Airflow mounts them at, also behind a proxy.
"""

from __future__ import annotations

import html
import json
from datetime import datetime, timezone
from typing import Any, Callable
from urllib.parse import quote, urlencode

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.2rem;color:#1d2430;font-size:14px}
h1{font-size:1.4rem;margin:0 0 .3rem}h2{font-size:1.1rem;margin:1.6rem 0 .5rem}
nav a{margin-right:1rem}.muted{color:#667}.small{font-size:12px}
table{border-collapse:collapse;width:100%;margin:.3rem 0}
th,td{border-bottom:1px solid #dde;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f5f9;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.outcome-deny td{background:#fde8e8}tr.outcome-needs_approval td{background:#fff4d6}
.badge{display:inline-block;padding:0 .45rem;border-radius:.6rem;font-size:12px;font-weight:600}
.b-allow,.b-ok{background:#dcf3e3;color:#14532d}.b-deny,.b-broken{background:#f9d0d0;color:#7f1d1d}
.b-needs_approval,.b-warn{background:#fde7b0;color:#713f12}.b-other{background:#e5e7eb}
.bar{background:#e5e7eb;height:.55rem;width:8rem;border-radius:.3rem;overflow:hidden}
.bar span{display:block;height:100%;background:#2f6fdf}.bar span.hot{background:#c2410c}
.error{border:1px solid #f1a1a1;background:#fff1f1;padding:.6rem .8rem;border-radius:.3rem}
pre{background:#f6f8fa;padding:.6rem;overflow:auto;font-size:12px}ul.reasons{margin:0;padding-left:1.1rem}
code{font-size:12px}
"""
# Policy outcomes, and a person's answer to a needs-approval gate (recorded as a decision too).
KIND = {"allow": "allow", "approved": "allow", "deny": "deny", "rejected": "deny", "needs_approval": "needs_approval"}


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def num(value: Any, fmt: str = "{:.4g}") -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return esc(fmt.format(value))
    return esc(value)  # "inf", "nan" from queries.jsonable


def link(href: str, text: Any) -> str:
    return f'<a href="{esc(href)}">{esc(text)}</a>'


def seg(value: Any) -> str:
    """One path segment; '/' in a dataset id must not split it."""
    return quote(str(value), safe="")


def badge(outcome: Any) -> str:
    kind = KIND.get(outcome, "other") if isinstance(outcome, str) else "other"
    return f'<span class="badge b-{kind}">{esc(outcome)}</span>'


def table(headers: list[str], rows: list[str], empty: str) -> str:
    if not rows:
        return f'<p class="muted">{esc(empty)}</p>'
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def page(title: str, body: str, *, up: str = "./") -> str:
    """`up` is the relative way back to the dashboard root from this page."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{esc(title)} - ppmlops</title><style>{CSS}</style></head><body>"
            f'<nav class="small">{link(up, "Overview")}{link(up + "api/datasets", "JSON API")}</nav>'
            f"<h1>{esc(title)}</h1>{body}"
            f'<p class="muted small">Rendered {esc(now)}. Read-only view of the privacy ledger, '
            f"the audit log and the model registry.</p></body></html>")


def error_box(message: str) -> str:
    return f'<div class="error">{esc(message)}</div>'


def error_page(title: str, message: str, *, hint: str = "", up: str = "./") -> str:
    extra = f'<p class="muted">{esc(hint)}</p>' if hint else ""
    return page(title, error_box(message) + extra, up=up)


def section(data: Any, render: Callable[[Any], str]) -> str:
    """A section renders its data, or the message of the error that replaced it."""
    return error_box(str(data)) if isinstance(data, Exception) else render(data)


# -- overview ---------------------------------------------------------------------------------

def overview(settings_info: dict, budgets: Any, decisions: Any, models: Any, runs: Any) -> str:
    info = " &middot; ".join(f"{esc(k)} <code>{esc(v)}</code>" for k, v in settings_info.items())
    body = (f'<p class="muted small">{info}</p>'
            f"<h2>Privacy budgets</h2>{section(budgets, budget_table)}"
            f"<h2>Audit log</h2>{section(decisions, lambda d: chain_box(d['chain']) + decision_table(d, up='./'))}"
            f"<h2>Deployed models</h2>{section(models, model_tables)}"
            f"<h2>Recent runs</h2>{section(runs, run_table)}")
    return page("Privacy and compliance", body)


def budget_table(data: dict, up: str = "./") -> str:
    rows = []
    for d in data["datasets"]:
        frac = d["fraction_spent"]
        try:
            width = min(100.0, 100.0 * float(frac))  # float() also reads "inf" from jsonable
        except (TypeError, ValueError):
            width = 0.0
        hot = "hot" if width >= 80 else ""  # most of the lifetime budget is gone
        parts = ", ".join(f"{esc(p)} {num(e)}" for p, e in d["partitions"].items()) or "&ndash;"
        rows.append(
            f"<tr><td>{link(up + 'datasets/' + seg(d['dataset_id']), d['dataset_id'])}</td>"
            f'<td class="num">{num(d["epsilon_budget"])}</td><td class="num">{num(d["delta"], "{:.0e}")}</td>'
            f'<td class="num">{num(d["epsilon_spent"])}</td><td class="num">{num(d["epsilon_remaining"])}</td>'
            f'<td><div class="bar"><span class="{hot}" style="width:{width:.1f}%"></span></div>'
            f'<span class="small">{num(frac, "{:.0%}")}</span></td>'
            f"<td>{parts}</td><td class=\"num\">{len(d['runs'])}</td>"
            f'<td class="num">{d["entry_count"]}{_reserved(d)}</td></tr>')
    note = (f'<p class="muted small">Epsilon at the dataset\'s delta, {esc(data.get("accountant", "rdp")).upper()} '
            "accountant: all runs composed, worst partition. Reserved entries (written before their "
            "steps ran) count in full.</p>")
    return table(["dataset", "ε budget", "δ", "ε spent", "ε remaining", "used", "ε by partition", "runs",
                  "entries"], rows, "No dataset in the privacy ledger yet.") + note


def _reserved(d: dict) -> str:
    n = d.get("reserved_count") or 0
    return f' <span class="badge b-warn" title="reserved, never completed">{n} reserved</span>' if n else ""


def chain_box(chain: dict) -> str:
    if chain["intact"]:
        return (f'<p><span class="badge b-ok">chain intact</span> {chain["records"]} records verified '
                f'<span class="muted small">(head <code>{esc((chain["head"] or {}).get("hash", "")[:16])}</code>; '
                "keep the head elsewhere to detect truncation)</span></p>")
    items = "".join(f"<li>{esc(p)}</li>" for p in chain["problems"])
    return f'<div class="error"><span class="badge b-broken">chain BROKEN</span><ul>{items}</ul></div>'


def decision_table(data: dict, up: str = "./") -> str:
    rows = []
    for r in data["records"]:
        d = r.get("decision") or {}
        outcome = d.get("outcome")
        cls = f"outcome-{KIND.get(outcome, 'other')}" if isinstance(outcome, str) else "outcome-other"
        reasons = "".join(f"<li>{esc(x)}</li>" for x in d.get("reasons") or [])
        ph = str(d.get("policy_hash") or "")
        rows.append(
            f'<tr class="{cls}"><td>{link(up + "decisions/" + seg(r["seq"]), r["seq"])}</td>'
            f'<td class="small">{esc(r.get("recorded_at"))}</td><td>{esc(r.get("run_id"))}</td>'
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
            f'{link(up + "api/decisions?" + urlencode({k: v for k, v in data["filter"].items() if v}), "as JSON")}</p>')


def model_tables(data: dict) -> str:
    if not data["models"]:
        return f'<p class="muted">No model in the registry at <code>{esc(data["registry_dir"])}</code>.</p>'
    out = []
    for m in data["models"]:
        by_version: dict[int, list[str]] = {}
        for alias, version in m["aliases"].items():
            by_version.setdefault(version, []).append(alias)
        rows = []
        for v in m["versions"]:
            card = v.get("card") or {}
            metrics = card.get("metrics") or {}
            approval = card.get("approval") or {}
            gate = card.get("policy_decision") or {}
            aliases = " ".join(f'<span class="badge b-{"ok" if a == "production" else "other"}">{esc(a)}</span>'
                               for a in by_version.get(v["version"], []))
            rows.append(
                f"<tr><td>v{esc(v['version'])} {aliases}</td><td class=\"small\">{esc(card.get('created_at'))}</td>"
                f"<td>{esc(card.get('run_id'))}</td><td>{esc(card.get('dataset_id'))}</td>"
                f'<td class="num">{num(card.get("epsilon"))}</td>'
                f'<td class="num">{num(card.get("delta"), "{:.0e}")}</td>'
                f'<td class="num">{num(metrics.get("accuracy"))}</td><td class="num">{num(metrics.get("auc"))}</td>'
                f"<td>{badge(gate['outcome']) if gate.get('outcome') else '&ndash;'}</td>"
                f"<td>{_approval(approval)}</td>"
                f"<td>{error_box(v['error']) if v.get('error') else ''}</td></tr>")
        production = m["production"]
        head = f"production: v{esc(production)}" if production is not None else "no production alias"
        err = error_box(m["error"]) if m.get("error") else ""
        out.append(f"<h3>{esc(m['model_name'])} <span class=\"muted small\">{head}</span></h3>{err}"
                   + table(["version", "registered", "run", "dataset", "ε", "δ", "accuracy", "AUC", "gate",
                            "approval", ""], rows, "No complete version."))
    return "".join(out)


def _approval(approval: dict) -> str:
    if not approval:
        return "&ndash;"
    who, when = approval.get("by"), approval.get("at")
    return f"{badge(approval.get('outcome'))} {esc(who)} <span class=\"small muted\">{esc(when)}</span>"


def run_table(data: dict, up: str = "./") -> str:
    rows = []
    for r in data["runs"]:
        when = datetime.fromtimestamp(r["modified"], timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        rows.append(
            f"<tr><td>{esc(r['pipeline'])}</td>"
            f"<td>{link(up + 'runs/' + seg(r['pipeline']) + '/' + seg(r['run']), r['run'])}</td>"
            f"<td class=\"small\">{esc(when)}</td><td>{esc(', '.join(r['records']))}</td>"
            f"<td>{badge(r['outcome']) if r['outcome'] else '&ndash;'}</td></tr>")
    return table(["pipeline", "run", "last written (UTC)", "records", "gate"], rows, "No run folders yet.")


# -- detail pages -----------------------------------------------------------------------------

def dataset_page(d: dict, decisions: Any) -> str:
    up = "../"
    runs = [f"<tr><td>{esc(r['run_id'])}</td><td class=\"num\">{num(r['epsilon'])}</td>"
            f"<td>{', '.join(f'{esc(p)} {num(e)}' for p, e in r['epsilon_by_partition'].items())}</td>"
            f"<td class=\"num\">{r['entries']}</td><td class=\"num\">{r['steps']}</td>"
            f"<td>{esc(', '.join(r['statuses']))}</td></tr>" for r in d["run_spend"]]
    entries = [f"<tr><td class=\"num\">{e['id']}</td><td>{esc(e['run_id'])}</td><td>{esc(e['partition'])}</td>"
               f"<td>{esc(e['mechanism'])}</td><td class=\"num\">{num(e['noise_multiplier'])}</td>"
               f"<td class=\"num\">{num(e['sample_rate'])}</td><td class=\"num\">{e['steps']}</td>"
               f"<td>{esc(e['status'])}</td><td class=\"small\">{esc(e['created_at'])}</td>"
               f"<td class=\"small\">{esc(e.get('completed_at'))}</td><td>{esc(e.get('note'))}</td></tr>"
               for e in d["entries"]]
    body = (budget_table({"datasets": [d]}, up=up)
            + "<h2>Spend per run</h2><p class=\"muted small\">Each run's entries composed on their own; the "
            "dataset total above composes all runs, which is less than the sum.</p>"
            + table(["run", "ε", "ε by partition", "entries", "steps", "status"], runs, "No entries.")
            + "<h2>Ledger entries</h2>"
            + table(["id", "run", "partition", "mechanism", "σ", "q", "steps", "status", "reserved", "completed",
                     "note"], entries, "No entries.")
            + "<h2>Decisions on this dataset</h2>"
            + section(decisions, lambda x: chain_box(x["chain"]) + decision_table(x, up=up)))
    return page(f"Dataset {d['dataset_id']}", body, up=up)


def decision_page(data: dict) -> str:
    r = data["record"]
    d = r.get("decision") or {}
    reasons = "".join(f"<li>{esc(x)}</li>" for x in d.get("reasons") or []) or "<li>none</li>"
    facts = [("outcome", badge(d.get("outcome"))), ("query", f"<code>{esc(d.get('query'))}</code>"),
             ("stage", esc(r.get("stage"))), ("run", esc(r.get("run_id"))), ("dataset", esc(r.get("dataset_id"))),
             ("recorded", esc(r.get("recorded_at"))), ("engine", esc(d.get("engine"))),
             ("policy sha256", f"<code>{esc(d.get('policy_hash'))}</code>"),
             ("record hash", f"<code>{esc(r.get('hash'))}</code>"),
             ("previous hash", f"<code>{esc(r.get('prev_hash'))}</code>")]
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in facts)
    body = (chain_box(data["chain"]) + f"<table>{rows}</table><h2>Reasons</h2><ul>{reasons}</ul>"
            + "<h2>Policy input</h2><pre>" + esc(json.dumps(d.get("input"), indent=2, sort_keys=True)) + "</pre>"
            + "<h2>Policy result</h2><pre>" + esc(json.dumps(d.get("result"), indent=2, sort_keys=True)) + "</pre>")
    return page(f"Decision {r['seq']}", body, up="../")


def epoch_table(history: list) -> tuple[list[str], list[list[Any]]]:
    """Columns are whatever keys the epochs have (the tuner's explanation among them), nested
    mappings flattened one level as "key.sub": the training loop may add keys at any time."""
    columns: list[str] = []
    rows = []
    for h in history:
        flat: dict[str, Any] = {}
        for k, v in (h.items() if isinstance(h, dict) else [("value", h)]):
            if isinstance(v, dict) and v:
                flat.update({f"{k}.{k2}": v2 for k2, v2 in v.items()})
            else:
                flat[k] = v
        columns += [c for c in flat if c not in columns]
        rows.append(flat)
    return columns, [[r.get(c) for c in columns] for r in rows]


def _cell(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f'<td class="num">{num(value)}</td>'
    if isinstance(value, (list, dict)):
        return f"<td><code>{esc(json.dumps(value, sort_keys=True))}</code></td>"
    return f"<td>{esc(value)}</td>"


def run_page(data: dict, decisions: Any) -> str:
    up = "../../"
    columns, rows = epoch_table(data["epochs"])
    epochs = table(columns, ["<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows],
                   "No training history in this run.")
    records = "".join(f"<details><summary>{esc(name)}.json</summary><pre>"
                      f"{esc(json.dumps(rec, indent=2, sort_keys=True))}</pre></details>"
                      for name, rec in data["records"].items())
    body = (f'<p class="muted small">Folder <code>{esc(data["run_dir"])}</code> &middot; '
            f'{link(up + "api/runs/" + seg(data["pipeline"]) + "/" + seg(data["run"]), "as JSON")}</p>'
            "<h2>Training, epoch by epoch</h2><p class=\"muted small\">Settings each epoch ran with, what the "
            "privacy filter let it spend, and whatever the tuner recorded about its choice.</p>"
            + epochs + "<h2>Decisions</h2>"
            + section(decisions, lambda x: chain_box(x["chain"]) + decision_table(x, up=up))
            + "<h2>Stage records</h2>" + records)
    return page(f"Run {data['pipeline']} / {data['run']}", body, up=up)
