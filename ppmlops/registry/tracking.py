"""Each ppmlops run as an MLflow run, holding only what the run releases.

Everything logged comes from the run's PUBLIC records (ppmlops.run.records): the spec and the
privacy plan as params; epoch settings, noisy counts, noisy held-out scores, the epsilon the
ledger charged and the canary audit as metrics; the gate decision and any approval as tags.
PRIVATE records (exact counts, the exact risk report, the canaries' coins) are never read here,
and seeds are never logged. The MLflow run links to the Airflow DAG run and the dashboard's run
page by tags; the run folder's mlflow.json (shown on the dashboard's run page) links back.

When: the MLflow run is opened at plan (the first stage after the run's privacy is fixed), with
the spec, the noisy counts, the risk score, the plan and the training data as an MLflow dataset
input (ppmlops.registry.dataset_input: its public description, never a row). While training, the
driver logs each epoch's public values as they are written (ppmlops.registry.live_epochs); the
train, gate, approval and deploy stages sync after their records. The run is filed as a training
run: its experiment says it holds custom models (EXPERIMENT_KIND) and the registered version is
the run's model output (ppmlops.registry.store).

A sync is incremental: mlflow.json lists the stages already logged, so each stage's values are
logged once however often a stage syncs; an epoch already logged live is not logged again.
"""

from __future__ import annotations

import json
import logging
import os
import time
from functools import wraps
from typing import Any, Callable, Iterable, TypeVar
from urllib.parse import quote

from ppmlops.registry import backend
from ppmlops.run.records import (
    ApprovalRecord, CountsRelease, DeployRecord, EvaluationRecord, GateRecord, ModelCheck, PlanRecord, Record, Refusal,
    RiskAssessment, Staged, TrackedRun, TrainRecord,
)
from ppmlops.run.context import RunContext

log = logging.getLogger(__name__)
R = TypeVar("R", bound=Record)
_MAX_TAG = 8000  # MLflow's limit on a run tag's value
_NEVER = ("seed",)  # a seed would let anyone re-derive a reproducible run's noise


def sync(ctx: RunContext) -> TrackedRun:
    """Create the run's MLflow run on first call; log every public record not yet logged."""
    uri = backend.resolve_uri(ctx.settings.registry_dir)
    with backend.network_errors(uri):
        return _sync(ctx, uri, backend.client(uri))


def _sync(ctx: RunContext, uri: str, client) -> TrackedRun:
    tracked = ctx.store.read_optional(TrackedRun) or _start(ctx, uri, client)
    logged = list(tracked.logged)
    staged = ctx.store.read_optional(Staged)
    if staged is not None and "dataset" not in logged:
        from ppmlops.registry.dataset_input import log_dataset

        log_dataset(client, tracked.mlflow_run_id, ctx.spec, staged)
        logged.append("dataset")
    for name, cls, payload in _STAGES:
        record = ctx.store.read_optional(cls)
        if record is None or name in logged:
            continue
        metrics, params, tags = payload(record)
        _log(client, tracked.mlflow_run_id, metrics, params, tags)
        if name == "train":  # the epochs the driver did not log live (a Ray job followed elsewhere)
            log_epochs(client, tracked.mlflow_run_id, [h.model_dump() for h in record.history])
        logged.append(name)
        if name == "plan":
            _log_dataset_use(ctx, client, tracked.mlflow_run_id, 0)
    if _finished(ctx) and "finished" not in logged:
        if "plan" in logged:  # the grant is closed by now: the figure after the run
            _log_dataset_use(ctx, client, tracked.mlflow_run_id, 1)
        client.set_terminated(tracked.mlflow_run_id, "FINISHED")
        logged.append("finished")
    if logged != tracked.logged:
        tracked = ctx.store.write(tracked.model_copy(update={"logged": logged}))
    return tracked


def tracked(fn: Callable[[RunContext], R]) -> Callable[[RunContext], R]:
    """Sync the MLflow run after a stage has written its record (outermost, above @timed)."""

    @wraps(fn)
    def wrapper(ctx: RunContext) -> R:
        record = fn(ctx)
        sync(ctx)
        return record

    return wrapper


def sync_quietly(ctx: RunContext) -> None:
    """For a refusal on its way out: the refusal, not an MLflow outage, is what the task reports."""
    try:
        sync(ctx)
    except Exception as err:  # noqa: BLE001 - any tracking failure; the refusal stands
        log.warning("could not log run %s to MLflow: %s", ctx.run_id, backend.scrub(str(err)))


def links(ctx: RunContext, uri: str, experiment_id: str, run_id: str) -> dict[str, str]:
    base = (os.environ.get("AIRFLOW__API__BASE_URL") or "http://localhost:8080").rstrip("/")
    out = {"airflow": f"{base}/dags/{quote(ctx.spec.dag_id)}/runs/{quote(ctx.run_id, safe='')}",
           "dashboard": f"{base}/ppmlops/runs/{quote(ctx.spec.name)}/{quote(ctx.run_id, safe='')}"}
    if uri.startswith(("http://", "https://")):
        out["mlflow"] = f"{backend.shown(uri).rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return out


# -- what each public record releases ---------------------------------------------------------

Payload = tuple[list[tuple[str, float, int]], dict[str, Any], dict[str, str]]  # metrics (key, value, step)


def _counts(r: CountsRelease) -> Payload:
    return ([("rows_train_noisy", r.rows_train, 0), ("rows_holdout_noisy", r.rows_holdout, 0),
             ("rows_quarantined_noisy", r.rows_quarantined, 0), ("counts_epsilon", r.epsilon, 0)],
            {"counts.sigma_rows": r.sigma_rows, "counts.k": r.k}, {})


def _risk(r: RiskAssessment) -> Payload:
    return [("risk_score", r.score, 0)], {"risk.regulation": r.regulation}, {"ppmlops.risk_level": r.level}


def _model(r: ModelCheck) -> Payload:
    """The spec's own model as checked: the factory and args are the spec's (logged with it), the
    code's version and what the check found are this record's."""
    params = {"model.code.module": r.code.module, "model.code.sha256": r.code.sha256,
              "model.code.distribution": r.code.distribution, "model.code.version": r.code.version,
              "model.parameters": r.parameters, "model.clipping": r.clipping, "model.canary_layer": r.canary_layer,
              "model.replaced": r.replaced}
    return [], params, {"ppmlops.model_factory": r.factory}


def _plan(r: PlanRecord) -> Payload:
    p = r.privacy.model_dump(mode="json", exclude={"grant", "run_id", "dataset_id", "dataset_share_before",
                                                   "dataset_share_after"})
    # The plan's shares are of the worst block of the RUN's window, at plan: named as such, so that
    # "dataset_share_used" (below, from the ledger) is the one figure the dashboard also shows.
    params = {f"plan.{k}": v for k, v in p.items()} | {"plan.tuner": r.tuner,
                                                      "plan.window_share_before": r.privacy.dataset_share_before,
                                                      "plan.window_share_after": r.privacy.dataset_share_after}
    return [("epsilon_charged", r.privacy.epsilon, 0)], params, {}


def dataset_use_tags(ledger: Any, dataset_id: str) -> dict[str, str]:
    """The dataset's figure (ppmlops.privacy.block_view, the dashboard's and the CLI's) as tags."""
    from ppmlops.privacy.block_view import dataset_use

    use = dataset_use(ledger, dataset_id)
    return {"ppmlops.dataset_share_used": use.text(), "ppmlops.dataset_worst_block": use.block or "-"}


def _log_dataset_use(ctx: RunContext, client, mlflow_run_id: str, step: int) -> None:
    """The dataset's figure as the ledger says it now: a metric (its history: at plan, at the
    end) and tags (the latest, with the worst block named). A ledger that cannot be read leaves
    them out with a warning: tracking never fails a stage."""
    from ppmlops.privacy.block_view import dataset_use
    from ppmlops.privacy.ledger import Ledger

    try:
        ledger = Ledger.reading(ctx.settings.db_url)
        try:
            use, tags = dataset_use(ledger, ctx.spec.dataset.id), dataset_use_tags(ledger, ctx.spec.dataset.id)
        finally:
            ledger.close()
    except Exception as err:  # noqa: BLE001 - any ledger failure; the stage's record stands
        log.warning("could not read dataset %s's budget use for MLflow: %s", ctx.spec.dataset.id, err)
        return
    _log(client, mlflow_run_id, [("dataset_share_used", use.share, step)], {}, tags)


def _train(r: TrainRecord) -> Payload:
    metrics = [("epochs_completed", r.epochs_completed, 0)]
    metrics += [(f"epsilon_used_{part}", eps, 0) for part, eps in sorted(r.epsilon_used.items())]
    return metrics, {"train.tuner": r.tuner, "train.randomness": r.randomness}, {"ppmlops.stopped_reason": r.stopped_reason}


def epoch_metrics(epoch: dict[str, Any]) -> list[tuple[str, float, int]]:
    """One epoch's public values as metrics at step = epoch (ppmlops.training.progress.EPOCH_KEYS:
    the settings, the epsilon used so far, and the noisy signals only when the tuner released them)."""
    from ppmlops.training.progress import EPOCH_KEYS

    return [(f"epoch/{key}", float(epoch[key]), int(epoch["epoch"])) for key in EPOCH_KEYS
            if epoch.get(key) is not None]


def log_epochs(client, mlflow_run_id: str, epochs: list[dict[str, Any]]) -> int:
    """Log the epochs not logged yet (the run's epsilon_used history says which); returns how many."""
    done = {m.step for m in client.get_metric_history(mlflow_run_id, "epoch/epsilon_used")}
    fresh = [e for e in epochs if int(e["epoch"]) not in done]
    _log(client, mlflow_run_id, [m for e in fresh for m in epoch_metrics(e)], {}, {})
    return len(fresh)


def _evaluate(r: EvaluationRecord) -> Payload:
    from ppmlops.run.task_metrics import tracked_metrics

    metrics = [(name, value, 0) for name, value in tracked_metrics(r)]
    metrics += [("holdout_rows_noisy", r.rows, 0), ("audit_epsilon_lower_bound", r.audit.epsilon_lower_bound, 0)]
    if r.auc is not None:
        metrics.append(("auc_noisy", r.auc, 0))
    return metrics, {"evaluate.sigma": r.sigma, "audit.canaries": r.audit.canaries}, {}


def _gate(r: GateRecord) -> Payload:
    return ([("gate_allowed", float(r.allowed), 0)], {},
            {"ppmlops.decision": r.outcome, "ppmlops.decision_reasons": "; ".join(r.reasons),
             "ppmlops.decision_id": r.decision_id, "ppmlops.policy_hash": r.policy_hash,
             "ppmlops.policy_engine": r.engine})


def _approval(r: ApprovalRecord) -> Payload:
    return [], {}, {"ppmlops.approval": r.outcome, "ppmlops.approved_by": r.by, "ppmlops.approved_at": r.at}


def _deploy(r: DeployRecord) -> Payload:
    return [], {}, {"ppmlops.model": f"{r.model_name} v{r.version}", "ppmlops.model_uri": r.path,
                    "ppmlops.alias": r.alias, "ppmlops.card_sha256": r.card_sha256 or "-"}


def _refused(r: Refusal) -> Payload:
    return [], {}, {"ppmlops.decision": f"refused at {r.stage}", "ppmlops.decision_reasons": "; ".join(r.reasons)}


_STAGES: tuple[tuple[str, type[Record], Callable[[Any], Payload]], ...] = (
    ("assess", CountsRelease, _counts), ("risk", RiskAssessment, _risk), ("model", ModelCheck, _model),
    ("plan", PlanRecord, _plan),
    ("train", TrainRecord, _train), ("evaluate", EvaluationRecord, _evaluate), ("gate", GateRecord, _gate),
    ("approval", ApprovalRecord, _approval), ("deploy", DeployRecord, _deploy), ("refused", Refusal, _refused),
)


# -- MLflow calls -----------------------------------------------------------------------------

def _start(ctx: RunContext, uri: str, client) -> TrackedRun:
    exp = backend.experiment_id(uri, ctx.settings.registry_dir, ctx.spec.deploy.model_name)
    # No mlflow.runType tag: MLflow's only values for it mark GenAI evaluations and tests.
    run = client.create_run(exp, run_name=ctx.run_id, tags={"ppmlops.run_id": ctx.run_id,
                                                            "ppmlops.pipeline": ctx.spec.name})
    run_id = run.info.run_id
    found = links(ctx, uri, exp, run_id)
    tags = {"airflow.dag_id": ctx.spec.dag_id, "airflow.dag_run_id": ctx.run_id, "airflow.url": found["airflow"],
            "ppmlops.dashboard_url": found["dashboard"], "ppmlops.run_dir": str(ctx.run_dir),
            "mlflow.note.content": f"Airflow DAG run: {found['airflow']}\n\nppmlops dashboard: {found['dashboard']}"}
    _log(client, run_id, [], _spec_params(ctx), tags)
    return ctx.store.write(TrackedRun(tracking_uri=backend.shown(uri), experiment_id=exp, mlflow_run_id=run_id,
                                      links=found))


def _spec_params(ctx: RunContext) -> dict[str, Any]:
    spec = _flat(ctx.spec.model_dump(mode="json"), "spec.")
    run = {f"run.{k}": v for k, v in vars(ctx.params).items()}
    return {k: v for k, v in (spec | run).items() if not any(word in k for word in _NEVER)}


def _flat(doc: Any, prefix: str) -> dict[str, Any]:
    if isinstance(doc, dict) and doc:
        out: dict[str, Any] = {}
        for k, v in doc.items():
            out |= _flat(v, f"{prefix}{k}.")
        return out
    return {prefix.rstrip("."): doc}


def log_metrics(client, run_id: str, metrics: list[tuple[str, float, int]]) -> None:
    _log(client, run_id, metrics, {}, {})


def _log(client, run_id: str, metrics: list[tuple[str, float, int]], params: dict[str, Any],
         tags: dict[str, str]) -> None:
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    m = [Metric(k, float(v), now, step) for k, v, step in metrics]
    p = [Param(k, _text(v)[:6000]) for k, v in params.items()]
    t = [RunTag(k, str(v)[:_MAX_TAG]) for k, v in tags.items()]
    for chunk in _chunks(m, 1000):  # MLflow's per-batch limits
        client.log_batch(run_id, metrics=chunk)
    for chunk in _chunks(p, 100):
        client.log_batch(run_id, params=chunk)
    for chunk in _chunks(t, 100):
        client.log_batch(run_id, tags=chunk)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def _chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _finished(ctx: RunContext) -> bool:
    s = ctx.store
    gate = s.read_optional(GateRecord)
    approval = s.read_optional(ApprovalRecord)
    return (s.read_optional(DeployRecord) is not None or s.read_optional(Refusal) is not None
            or (gate is not None and gate.outcome == "deny") or (approval is not None and not approval.approved))
