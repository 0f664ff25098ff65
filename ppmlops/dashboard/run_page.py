"""A run's page: a summary first (epsilon, accuracy, the gate's checks, the approval), then the
tuner's story per epoch as charts and a readable table, then the decisions; the raw records
last, folded, for compliance officers only.
"""

from __future__ import annotations

import json
from typing import Any

from ppmlops.dashboard import access, charts
from ppmlops.dashboard.html import View, airflow_run_link, approval_cell, chain_box, checks_list, decision_table
from ppmlops.dashboard.html_base import bar, badge, esc, link, num, section, seg, state_badge, table, OUTCOME_WORDS
from ppmlops.run.known import best_known
from ppmlops.run.records import KnownResult

# Epoch settings the tuner chooses, in natural units, with the words a person reads.
SETTINGS = (("noise_multiplier", "noise σ"), ("max_grad_norm", "clip norm"), ("learning_rate", "learning rate"))


def _rec(data: dict, name: str) -> dict:
    r = data["records"].get(name)
    return r if isinstance(r, dict) and set(r) != {"error"} else {}  # {"error": ...}: unreadable


def _card(label: str, value: str, sub: str = "") -> str:
    return f'<div class="card"><div class="label">{esc(label)}</div><div class="big">{value}</div>' \
           f'<div class="small muted">{sub}</div></div>'


def summary_cards(data: dict) -> str:
    plan, train, ev = _rec(data, "plan").get("privacy") or {}, _rec(data, "train"), _rec(data, "evaluate")
    audit = ev.get("audit") or {}
    used = max((train.get("epsilon_used") or {}).values(), default=None)
    cards = [
        _card("ε charged (the run's guarantee)", num(plan.get("epsilon")),
              f"granted {num(plan.get('run_epsilon'))} at δ {num(plan.get('delta'), '{:.0e}')}; "
              f"the epochs used {num(used)}"),
        _use_card(data, plan),
        evaluation_card(ev),
        _card("canary audit", "ε ≥ " + num(audit.get("epsilon_lower_bound")),
              f"lower bound at {num(audit.get('confidence'), '{:.0%}')} confidence, claimed ε {num(plan.get('epsilon'))}; "
              f"{num(audit.get('correct'))} of {num(audit.get('guesses'))} guesses right"),
    ]
    return f'<div class="summary">{"".join(cards)}</div>'


def evaluation_card(ev: dict) -> str:
    """The evaluation's noisy releases as its label.task has them (an older record is binary)."""
    task = ev.get("task") or "binary"
    if task == "regression":
        return _card("noisy held-out RMSE", num(ev.get("rmse"), "{:.3g}"),
                     f"MAE {num(ev.get('mae'), '{:.3g}')}; always predicting the noisy mean "
                     f"{num(ev.get('baseline_mean'), '{:.3g}')} scores RMSE {num(ev.get('baseline_rmse'), '{:.3g}')}")
    if task == "multiclass":
        return _card("noisy held-out accuracy", num(ev.get("accuracy"), "{:.3f}"),
                     f"majority baseline {num(ev.get('majority_baseline'), '{:.3f}')}; macro-F1 "
                     f"{num(ev.get('macro_f1'), '{:.3f}')} over {len(ev.get('classes') or [])} classes")
    return _card("noisy held-out accuracy", num(ev.get("accuracy"), "{:.3f}"),
                 f"majority baseline {num(ev.get('majority_baseline'), '{:.3f}')}; AUC {num(ev.get('auc'), '{:.3f}')}")


def _use_card(data: dict, plan: dict) -> str:
    """The dataset's figure now (the overview's, ppmlops.privacy.block_view) and this run's part of
    it. The plan record's shares were taken at plan over the run's own blocks: a different,
    older number, so it is named as such rather than shown as "the dataset's"."""
    use = data.get("dataset_use") or {}
    retired = [r.get("block") for r in plan.get("retired_blocks") or [] if isinstance(r, dict)]
    retired_words = f"; retired {', '.join(map(str, retired))}" if retired else ""
    if "error" in use or not use:
        return _card("dataset's lifetime budget used", "&ndash;",
                     esc(use.get("error", "the ledger could not be read")) + esc(retired_words))
    from ppmlops.dashboard.html import _where
    from ppmlops.privacy.block_view import percent

    return _card("dataset's lifetime budget used (now, worst block)", esc(use["share_text"]),
                 f"{bar(use['share_used'])}{esc(_where(use))}; this run added {esc(percent(use.get('run_share')))} "
                 f"to each block it read{esc(retired_words)}")


def _decision(decisions: Any, decision_id: Any, stage: str) -> dict:
    """This run's audit record by its decision id (else its newest record of `stage`)."""
    records = decisions.get("records", []) if isinstance(decisions, dict) else []
    for r in records:
        if decision_id and (r.get("decision") or {}).get("id") == decision_id:
            return r.get("decision") or {}
    staged = [r for r in records if r.get("stage") == stage]
    return (staged[0].get("decision") or {}) if staged else {}


def _reason_list(v: View, decision: dict, fallback: Any) -> str:
    reasons = access.reasons(v.reader, decision or {"reasons": fallback})
    return '<ul class="reasons">' + "".join(f"<li>{esc(r)}</li>" for r in reasons) + "</ul>"


def gate_section(v: View, data: dict, decisions: Any) -> str:
    gate, refused, approval, deploy = (_rec(data, n) for n in ("gate", "refused", "approval", "deploy"))
    if refused:
        decision = _decision(decisions, refused.get("decision_id"), str(refused.get("stage")))
        return (f"<h2>Refused at {esc(refused.get('stage'))}: {badge('deny')}</h2><p>The run stopped before "
                f"it trained.</p>{_reason_list(v, decision, refused.get('reasons'))}")
    if not gate:
        return "<h2>Deploy gate</h2><p class=\"muted\">The run has not reached the deploy gate.</p>"
    decision = _decision(decisions, gate.get("decision_id"), "gate")
    # A decision from before the policy listed its checks has reasons only.
    outcome = gate.get("outcome")
    answered = approval.get("outcome") if approval else None
    checks = checks_list(v, decision.get("result"), answered) or _reason_list(v, decision, gate.get("reasons"))
    airflow = airflow_run_link(v.up, data["dag_id"], data["run_id"], data["id_known"])
    if approval:
        answer = (f"<p>Approval: {approval_cell(approval)} <span class=\"muted small\">via "
                  f"{esc(approval.get('channel'))}</span></p>")
    else:
        answer = f"<p>Waiting for a person's approval in Airflow ({airflow}).</p>" if outcome == "needs_approval" else ""
    deployed = (f"<p>Deployed: <b>{esc(deploy.get('model_name'))} v{esc(deploy.get('version'))}</b> as "
                f"<code>{esc(deploy.get('alias'))}</code>.</p>") if deploy else ""
    # After a person's answer the gate's state is that answer: a run that was approved and deployed
    # no longer reads "needs approval".
    state = (f"{badge(answered)} {esc(OUTCOME_WORDS['needs_approval'])}, {esc(OUTCOME_WORDS.get(answered, ''))}"
             if answered else f"{badge(outcome)} {esc(OUTCOME_WORDS.get(outcome, ''))}")
    return f"<h2>Deploy gate: {state}</h2>{checks}{answer}{deployed}"


def _changes(prev: dict | None, cur: dict) -> list[str]:
    if prev is None:
        return []
    out = []
    for key, words in SETTINGS:
        a, b = prev.get(key), cur.get(key)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) > 1e-12 * max(1.0, abs(a)):
            out.append(f"{words} {'↑' if b > a else '↓'} {a:.3g} → {b:.3g}")
    return out


def epoch_charts(epochs: list[dict]) -> str:
    rows = [e for e in epochs if isinstance(e, dict) and isinstance(e.get("epoch"), int)]
    markers = tuple(charts.Marker(e["epoch"], "tuner", f"epoch {e['epoch']}: " + "; ".join(ch) + " — "
                                  + str((e.get("tuner") or {}).get("why", "")))
                    for prev, e in zip([None, *rows], rows) for ch in [_changes(prev, e)] if ch)
    figures = []
    for i, (key, words) in enumerate(SETTINGS + (("holdout_accuracy_noisy", "noisy held-out accuracy"),)):
        pts = tuple(charts.Point(e["epoch"], float(e[key])) for e in rows if isinstance(e.get(key), (int, float)))
        figures.append(charts.svg(charts.Chart(f"{words} per epoch", "epoch", words,
                                               (charts.Series(words, pts, i + 1),), markers=markers,
                                               x_kind="integer")))
    return f'<div class="charts">{"".join(figures)}</div>'


def epoch_table(epochs: list[dict], plan: dict, live: bool = False) -> str:
    """`live`: the epoch lines of a run still training, which carry no tuner's reason (train.json's
    history, written when training ends, has it)."""
    rows, prev = [], None
    budget = plan.get("epsilon")
    for e in (x for x in epochs if isinstance(x, dict)):
        tuner = e.get("tuner") or {}
        change = _changes(prev, e)
        why = (esc(tuner.get("why")) if tuner else
               '<span class="muted">recorded when training ends</span>' if live else
               '<span class="muted">no tuner: the plan\'s settings</span>')
        rows.append(
            f'<tr><td class="num">{esc(e.get("epoch"))}</td>'
            + "".join(f'<td class="num">{num(e.get(k))}</td>' for k, _ in SETTINGS)
            + f'<td class="num">{num(e.get("steps"))} at q {num(e.get("sample_rate"), "{:.3g}")}</td>'
            f'<td class="num">{num(e.get("epsilon_used"))}{" of " + num(budget) if budget is not None else ""}</td>'
            f'<td class="num">{num(e.get("holdout_accuracy_noisy"), "{:.3f}")}</td>'
            f'<td>{why}{"<br><span class=small>" + esc("; ".join(change)) + "</span>" if change else ""}</td></tr>')
        prev = e
    return table(["epoch", "noise σ", "clip norm", "learning rate", "admitted steps", "ε used so far",
                  "noisy held-out acc.", "the tuner's reason (and what changed)"], rows,
                 "No training history in this run.")


def tuning_start(data: dict) -> str:
    """Where the run's tuning started: earlier runs' released results (warm start) and, for a
    private search, the chosen trial. All public: charged releases and post-processing of them."""
    plan_rec, train = _rec(data, "plan"), _rec(data, "train")
    warm = [w for w in plan_rec.get("warm_start") or [] if isinstance(w, dict)]
    search, chosen = (plan_rec.get("privacy") or {}).get("search"), train.get("search")
    parts = []
    if search and chosen:
        parts.append(
            f'<p>Private hyperparameter search: trials drawn from the {esc(search.get("distribution"))} '
            "distribution (how many ran is secret); the best by noisy held-out accuracy "
            f'({num(chosen.get("holdout_accuracy_noisy"), "{:.3f}")}) was kept: learning rate '
            f'{num(chosen.get("learning_rate"))}, clip norm {num(chosen.get("max_grad_norm"))}, noise σ '
            f'{num(chosen.get("noise_multiplier"))}. Its ε covers the whole search.</p>')
    if not warm:
        parts.append('<p class="muted small">No earlier run of this pipeline had released results to start from.</p>')
    else:
        found = best_known([KnownResult.model_validate(w) for w in warm])
        best = found.model_dump() if found else None
        parts.append(f'<p>Started from {len(warm)} results released by earlier runs of this pipeline'
                     + (f'; the best known: learning rate {num(best.get("learning_rate"))}, clip norm '
                        f'{num(best.get("max_grad_norm"))} (noisy accuracy {num(best.get("accuracy_noisy"), "{:.3f}")}, '
                        f'run {esc(best.get("run_id"))}, {esc(best.get("what"))})' if best else "") + ".</p>")
        rows = [f'<tr><td>{esc(w.get("run_id"))}</td><td>{esc(w.get("what"))}</td>'
                f'<td class="num">{num(w.get("learning_rate"))}</td><td class="num">{num(w.get("max_grad_norm"))}</td>'
                f'<td class="num">{num(w.get("accuracy_noisy"), "{:.3f}")}</td></tr>' for w in reversed(warm[-10:])]
        parts.append(table(["earlier run", "released after", "learning rate", "clip norm", "noisy accuracy"], rows, ""))
    return "<h2>Where tuning started</h2>" + "".join(parts)


def raw_records(v: View, data: dict) -> str:
    if not v.reader.compliance:
        return '<p class="muted small">The raw stage records and the run folder are shown to compliance officers.</p>'
    folded = "".join(f"<details><summary>{esc(name)}.json</summary><pre>"
                     f"{esc(json.dumps(rec, indent=2, sort_keys=True))}</pre></details>"
                     for name, rec in data["records"].items())
    return (f'<p class="muted small">Folder <code>{esc(data["run_dir"])}</code> &middot; '
            f'{link(v.up + "api/runs/" + seg(data["pipeline"]) + "/" + seg(data["run_id"]), "as JSON")}</p>'
            + folded)


def state_line(state: dict | None) -> str:
    """Where the run is: its state, the stage reached and, while it trains, epoch k of n."""
    if not state:
        return ""
    epoch = (f' &middot; epoch <b>{esc(state["epoch"])}</b> of {esc(state.get("epochs") or "?")}'
             if state.get("epoch") is not None and state.get("in_flight") else "")
    return (f'<p class="run-state">{state_badge(state)} {esc(state.get("words"))} &middot; stage '
            f'<b>{esc(state.get("stage"))}</b>{epoch}</p>')


def run_page(v: View, data: dict, decisions: Any) -> str:
    plan = _rec(data, "plan").get("privacy") or {}
    dataset = data.get("dataset_id") or plan.get("dataset_id")
    stopped = _rec(data, "train").get("stopped_reason")
    head = (f'<p class="small">Pipeline <b>{esc(data["pipeline"])}</b>'
            + (f' &middot; dataset {link(v.up + "datasets/" + seg(dataset), dataset)}' if dataset else "")
            + f' &middot; {airflow_run_link(v.up, data["dag_id"], data["run_id"], data["id_known"])} in Airflow</p>')
    body = (head + state_line(data.get("state")) + summary_cards(data) + gate_section(v, data, decisions)
            + "<h2>Training, epoch by epoch</h2><p class=\"muted small\">The settings each epoch ran with, what the "
            "privacy filter admitted, and the tuner's reason. Marked epochs: the tuner changed a setting."
            + (f" Training stopped: {esc(stopped)}." if stopped else "") + "</p>"
            + epoch_charts(data["epochs"]) + epoch_table(data["epochs"], plan, bool(data.get("epochs_live")))
            + tuning_start(data)
            + "<h2>Decisions</h2>" + section(decisions, lambda x: chain_box(x["chain"]) + decision_table(v, x))
            + "<h2>Stage records</h2>" + raw_records(v, data))
    return v.page(f"Run {data['run_id']}", body)
