"""One retraining run: the stages in order (ppmlops.stages), and the run's summary.

The DAG file wires the same stage functions as Airflow tasks; `run_all` chains them for the CLI
and the tests. The summary reads PUBLIC records only, so it may go to logs, XCom and the
console: every count and metric in it is a noisy release.
"""

from __future__ import annotations

from typing import Any

from ppmlops.run.records import (
    ApprovalRecord, CountsRelease, DeployRecord, EvaluationRecord, GateRecord, PlanRecord, Record, Refusal,
    RiskAssessment, TrackedRun, TrainRecord,
)
from ppmlops.stages import assess, deploy, evaluate, gate, ingest, plan, train, validate
from ppmlops.run.context import RunContext, RunParams

STAGES = ("ingest", "validate", "assess", "plan", "train", "evaluate", "gate", "deploy")
STAGE_RUNNERS = {"ingest": ingest.run, "validate": validate.run, "assess": assess.run, "plan": plan.run,
                 "train": train.run, "evaluate": evaluate.run, "gate": gate.run, "deploy": deploy.run}

__all__ = ["STAGES", "STAGE_RUNNERS", "RunContext", "RunParams", "run_all", "summary", "format_summary",
           "stage_line"]


def run_all(ctx: RunContext) -> dict[str, Any]:
    """Every stage in order, outside Airflow; stops at the gate when deployment is not allowed."""
    for name in STAGES[:-1]:
        STAGE_RUNNERS[name](ctx)
    if ctx.store.read(GateRecord).allowed:
        deploy.run(ctx)
    return summary(ctx)


def summary(ctx: RunContext) -> dict[str, Any]:
    """What happened in this run, from the public records present (a failed run has fewer)."""
    s = ctx.store
    out: dict[str, Any] = {"pipeline": ctx.spec.name, "run_id": ctx.run_id, "run_dir": str(s.root)}
    counts = s.read_optional(CountsRelease)
    if counts:
        # Noisy counts can come out below zero; shown clamped (the record keeps them unbiased).
        shown = {k: max(0, v) for k, v in counts.quarantined.items()}
        out.update(rows_train=max(0, counts.rows_train), rows_holdout=max(0, counts.rows_holdout),
                   rows_quarantined=sum(shown.values()), quarantined_by_reason={k: v for k, v in shown.items() if v})
        out["rows_in"] = out["rows_train"] + out["rows_holdout"] + out["rows_quarantined"]
    risk = s.read_optional(RiskAssessment)
    if risk:
        out.update(risk_score=risk.score, risk_level=risk.level)
    planned = s.read_optional(PlanRecord)
    if planned:
        p = planned.privacy
        out.update(epsilon=p.epsilon, delta=p.delta, noise_multiplier=p.noise_multiplier, randomness=p.randomness,
                   dataset_share_used=p.dataset_share_after)
    trained = s.read_optional(TrainRecord)
    if trained:
        out.update(epsilon_used=trained.epsilon_used.get("train"), epochs=trained.epochs_completed,
                   stopped_reason=trained.stopped_reason)
    evaluated = s.read_optional(EvaluationRecord)
    if evaluated:
        out.update(accuracy=evaluated.accuracy, auc=evaluated.auc,
                   audit_epsilon_lower_bound=evaluated.audit.epsilon_lower_bound)
        if evaluated.task != "binary":
            out.update(task=evaluated.task, macro_f1=evaluated.macro_f1, mae=evaluated.mae, rmse=evaluated.rmse,
                       baseline_rmse=evaluated.baseline_rmse)
    decided = s.read_optional(GateRecord)
    if decided:
        out.update(decision=decided.outcome, decision_reasons=decided.reasons)
    approval = s.read_optional(ApprovalRecord)
    if approval:
        out.update(approval=f"{approval.outcome} by {approval.by}")
    deployed = s.read_optional(DeployRecord)
    if deployed:
        out.update(model_version=deployed.version, model_name=deployed.model_name, alias=deployed.alias)
    refused = s.read_optional(Refusal)
    if refused:
        out.update(decision=f"refused at {refused.stage}", decision_reasons=refused.reasons)
    tracked = s.read_optional(TrackedRun)
    if tracked:
        out.update(mlflow_run_id=tracked.mlflow_run_id, mlflow_tracking_uri=tracked.tracking_uri)
    out["stage_seconds"] = {k: v.seconds for k, v in s.public_records().items() if v.seconds is not None}
    return out


def stage_line(name: str, record: Record) -> str:
    """One line a person reads in the task log for a finished stage (public values only)."""
    r: Any = record
    lines = {
        "ingest": lambda: (f"staged {len(r.columns)} columns from {', '.join(r.sources)}; rows: {r.window.text()}"
                           + (f"; privacy blocks {', '.join(r.blocks)}" if r.blocks != ["all"] else "")
                           + (f"; retired blocks (left out, rows quarantined): "
                              f"{', '.join(f'{b.block} [{b.start}, {b.end}) {b.why}' for b in r.retired_blocks)}"
                              if r.retired_blocks else "")),
        "validate": lambda: f"suite {r.suite} passed ({r.evaluated} expectations)",
        "assess": lambda: f"risk score {r.score:.3f} ({r.level})",
        "plan": lambda: (f"epsilon {r.privacy.epsilon:.4g} at delta {r.privacy.delta:g}: noise multiplier "
                         f"{r.privacy.noise_multiplier:.3g}, Poisson rate {r.privacy.sample_rate:.3g}, "
                         f"{r.privacy.steps_per_epoch} steps x {r.privacy.epochs} epochs; lifetime budget used "
                         f"{r.privacy.dataset_share_after:.1%} with this run"
                         + (f" (worst of blocks {', '.join(r.privacy.blocks)})" if r.privacy.blocks != ["all"] else "")
                         + (f"; retired blocks {', '.join(b.block for b in r.privacy.retired_blocks)}"
                            if r.privacy.retired_blocks else "")),
        "train": lambda: (f"private search: chosen learning rate {r.search.learning_rate:.3g}, clip "
                          f"{r.search.max_grad_norm:.3g} (noisy held-out accuracy {r.search.holdout_accuracy_noisy:.3f}); "
                          f"epsilon {r.epsilon_used.get('train', 0):.4g}, the whole search charged" if r.search else
                          f"{r.epochs_completed} epochs ({r.stopped_reason}); epsilon used "
                          f"{r.epsilon_used.get('train', 0):.4g} of the run's budget"),
        "evaluate": lambda: (f"noisy accuracy {r.accuracy:.4f}, AUC {_num(r.auc)}, majority rate "
                             f"{r.majority_baseline:.4f}; canary audit epsilon lower bound "
                             f"{r.audit.epsilon_lower_bound:.3f}" if r.task == "binary" else _task_summary(r)),
        "gate": lambda: f"decision {r.outcome}" + (f": {'; '.join(r.reasons)}" if r.reasons else ""),
        "deploy": lambda: f"{r.model_name} v{r.version} registered, alias {r.alias}",
    }
    return f"{name}: {lines[name]()}" if name in lines else f"{name}: done"


def _num(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def format_summary(s: dict[str, Any]) -> str:
    def num(key: str, fmt: str = "{:.4g}") -> str:
        return fmt.format(s[key]) if s.get(key) is not None else "-"

    reasons = f": {'; '.join(s['decision_reasons'])}" if s.get("decision_reasons") else ""
    lines = [
        f"ppmlops run {s['run_id']} ({s['pipeline']})",
        f"  rows (noisy counts) in {s.get('rows_in', '-')}: train {s.get('rows_train', '-')}, held out "
        f"{s.get('rows_holdout', '-')}, quarantined {s.get('rows_quarantined', '-')} {s.get('quarantined_by_reason', '')}",
        f"  risk score {num('risk_score', '{:.3f}')} ({s.get('risk_level', '-')})",
        f"  epsilon {num('epsilon')} at delta {num('delta', '{:.0e}')} (the run's fixed budget; training used "
        f"{num('epsilon_used')}); dataset lifetime budget used {num('dataset_share_used', '{:.1%}')}; "
        f"randomness {s.get('randomness', '-')}",
        f"  noisy accuracy {num('accuracy', '{:.4f}')}, AUC {num('auc', '{:.4f}')}; canary audit epsilon lower "
        f"bound {num('audit_epsilon_lower_bound', '{:.3f}')}",
        f"  decision {s.get('decision', '-')}{reasons}" + (f" ({s['approval']})" if "approval" in s else ""),
        (f"  model {s['model_name']} v{s['model_version']} ({s['alias']})" if "model_version" in s
         else "  model not deployed"),
        f"  run directory {s['run_dir']}",
    ]
    if s.get("mlflow_run_id"):
        lines.insert(-1, f"  MLflow run {s['mlflow_run_id']} in {s['mlflow_tracking_uri']}")
    return "\n".join(lines)


def _task_summary(r) -> str:
    from ppmlops.run.task_metrics import summary

    return summary(r)
