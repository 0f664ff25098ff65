"""A run's page: a summary first (epsilon, accuracy, the gate's checks, the approval), then the
tuner's story per epoch as charts and a readable table, then the decisions; the raw records
last, folded, for compliance officers only. The markup is templates/run.html and _run.html;
this module picks out what they show from the run's public records.

The records arrive as RunStore validated and dumped them (dashboard.runs.detail): every field of
the record class is a key. The page reads them through `Fields`, whose `.get` of a name the
record does not have raises: a template reading `epsilon_spent` where the record says
`epsilon_used` fails a test instead of showing a dash for ever.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ppmlops.dashboard import charts, templating
from ppmlops.dashboard.html import Check, View, checks
from ppmlops.privacy.block_view import percent
from ppmlops.run.known import best_known
from ppmlops.run.records import EpochRecord, KnownResult

# Epoch settings the tuner chooses, in natural units, with the words a person reads.
SETTINGS = (("noise_multiplier", "noise σ"), ("max_grad_norm", "clip norm"), ("learning_rate", "learning rate"))


class Fields(dict):
    """A record's fields (all of them: model_dump writes each, None included) as the page reads
    them. `.get(name)` of a name the record lacks is the page's mistake and raises."""

    def get(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            raise KeyError(f"the run page reads {key!r}, a field this record does not have "
                           f"(it has {', '.join(map(str, self))})")
        return super().get(key, default)


def fields(value: Any) -> Any:
    """`value` with every mapping in it read as `Fields`."""
    if isinstance(value, dict):
        return Fields({k: fields(v) for k, v in value.items()})
    if isinstance(value, list):
        return [fields(v) for v in value]
    return value


def _rec(data: dict, name: str) -> dict:
    r = data["records"].get(name)
    return fields(r) if isinstance(r, dict) and set(r) != {"error"} else {}  # {"error": ...}: unreadable


def _epochs(data: dict) -> list[dict]:
    """train.json's history as recorded, or (while training) the epoch lines so far, which hold a
    subset of an epoch record's fields: the rest read as None, a name no epoch record has raises."""
    if not data.get("epochs_live"):
        return fields(data["epochs"])
    blank = dict.fromkeys(EpochRecord.model_fields)
    return [Fields(blank | e) if isinstance(e, dict) else e for e in data["epochs"]]


@dataclass(frozen=True)
class Summary:
    """What the summary cards read: the plan's privacy, the evaluation, the dataset's use now."""

    plan: dict
    evaluation: dict
    use: dict
    epsilon_used: float | None


def summary(data: dict) -> Summary:
    train = _rec(data, "train")
    used = max((train.get("epsilon_used") or {}).values(), default=None)
    return Summary(_rec(data, "plan").get("privacy") or {}, _rec(data, "evaluate"), data.get("dataset_use") or {},
                   used)


def evaluation_card(ev: dict) -> str:
    """The evaluation's noisy releases as its label.task has them (an older record is binary)."""
    return str(templating.macro("_run.html", "evaluation_card")(ev))


def _decision(decisions: Any, decision_id: Any, stage: str) -> dict:
    """This run's audit record by its decision id (else its newest record of `stage`)."""
    records = decisions.get("records", []) if isinstance(decisions, dict) else []
    for r in records:
        if decision_id and (r.get("decision") or {}).get("id") == decision_id:
            return r.get("decision") or {}
    staged = [r for r in records if r.get("stage") == stage]
    return (staged[0].get("decision") or {}) if staged else {}


@dataclass(frozen=True)
class Gate:
    """The gate section's facts: where the run was refused, or the gate's outcome, its checks (the
    policy's own list, matched to the person's answer), the approval and the deploy."""

    refused: dict
    gate: dict
    decision: dict  # the audit record's decision, or the record's own reasons when none is found
    outcome: str | None = None
    answered: str | None = None  # a person's answer: "approved" / "rejected"
    checks: list[Check] = field(default_factory=list)
    approval: dict = field(default_factory=dict)
    deploy: dict = field(default_factory=dict)


def gate_facts(v: View, data: dict, decisions: Any) -> Gate:
    gate, refused, approval, deploy = (_rec(data, n) for n in ("gate", "refused", "approval", "deploy"))
    if refused:
        decision = _decision(decisions, refused.get("decision_id"), str(refused.get("stage")))
        return Gate(refused, gate, decision or {"reasons": refused.get("reasons")})
    if not gate:
        return Gate(refused, gate, {})
    decision = _decision(decisions, gate.get("decision_id"), "gate")
    # A decision from before the policy listed its checks has reasons only.
    answered = approval.get("outcome") if approval else None
    return Gate(refused, gate, decision or {"reasons": gate.get("reasons")}, gate.get("outcome"), answered,
                checks(v, decision.get("result"), answered), approval, deploy)


def _changes(prev: dict | None, cur: dict) -> list[str]:
    if prev is None:
        return []
    out = []
    for key, words in SETTINGS:
        a, b = prev.get(key), cur.get(key)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) > 1e-12 * max(1.0, abs(a)):
            out.append(f"{words} {'↑' if b > a else '↓'} {a:.3g} → {b:.3g}")
    return out


def epoch_charts(epochs: list[dict]) -> list[charts.Chart]:
    rows = [e for e in epochs if isinstance(e, dict) and isinstance(e.get("epoch"), int)]
    markers = tuple(charts.Marker(e["epoch"], "tuner", f"epoch {e['epoch']}: " + "; ".join(ch) + " — "
                                  + str((e.get("tuner") or {}).get("why", "")))
                    for prev, e in zip([None, *rows], rows) for ch in [_changes(prev, e)] if ch)
    figures = []
    for i, (key, words) in enumerate(SETTINGS + (("holdout_accuracy_noisy", "noisy held-out accuracy"),)):
        pts = tuple(charts.Point(e["epoch"], float(e[key])) for e in rows if isinstance(e.get(key), (int, float)))
        figures.append(charts.Chart(f"{words} per epoch", "epoch", words, (charts.Series(words, pts, i + 1),),
                                    markers=markers, x_kind="integer"))
    return figures


def epoch_rows(epochs: list[dict]) -> list[tuple[dict, list[str]]]:
    """Each epoch with what the tuner changed from the one before."""
    rows = [e for e in epochs if isinstance(e, dict)]
    return [(e, _changes(prev, e)) for prev, e in zip([None, *rows], rows)]


@dataclass(frozen=True)
class Tuning:
    """Where the run's tuning started (all public: charged releases and post-processing of them)."""

    search: dict | None
    chosen: dict | None
    warm: list[dict]
    best: dict | None


def tuning_facts(data: dict) -> Tuning:
    plan_rec, train = _rec(data, "plan"), _rec(data, "train")
    warm = [w for w in plan_rec.get("warm_start") or [] if isinstance(w, dict)]
    found = best_known([KnownResult.model_validate(w) for w in warm]) if warm else None
    return Tuning((plan_rec.get("privacy") or {}).get("search"), train.get("search"), warm,
                  fields(found.model_dump()) if found else None)


def run_page(v: View, data: dict, decisions: Any) -> str:
    s = summary(data)
    epochs = _epochs(data)
    return v.render("run.html", f"Run {data['run_id']}", data=data, decisions=decisions, summary=s,
                    dataset=data.get("dataset_id") or s.plan.get("dataset_id"), gate=gate_facts(v, data, decisions),
                    stopped=_rec(data, "train").get("stopped_reason"), epoch_figures=epoch_charts(epochs),
                    epoch_rows=epoch_rows(epochs), tuning=tuning_facts(data))


templating.environment().globals.update(SETTINGS=SETTINGS, percent=percent)
