"""A ppmlops home as two finished runs leave it, for the dashboard's tests and benchmark: a
ledger with releases, grants trimmed and released, usage; real policy decisions (the shipped
Rego) in the audit log; run folders with typed records; registry versions with model cards.

Built from the stages' own record classes and the real ledger, audit log, policy engine and
registry, so a change of any of their shapes breaks these tests rather than drifting from them.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

from ppmlops.audit import AuditLog
from ppmlops.compliance.engine import evaluate
from ppmlops.compliance.documents import ModelCard
from ppmlops.compliance.examples import DEPLOY_INPUT, MODEL_CARD, TRAIN_INPUT
from ppmlops.privacy.accountant import Segment
from ppmlops.privacy.ledger import Charge, Ledger
from ppmlops.registry import Registry
from ppmlops.run import records as rec
from ppmlops.run.store import RunStore
from ppmlops.settings import Settings

DATASET = "demo_customers"
PIPELINE = "demo_churn"
DAG_ID = "ppmlops_demo_churn"
# Per epoch: (noise, clip, learning rate, noisy holdout accuracy, the tuner's reason)
EPOCHS = [(2.4, 1.0, 0.5, 0.61, "rule: first epoch runs the plan's settings"),
          (2.2, 0.45, 0.5, 0.66, "rule: improving: noise falls gradually; clip follows the 50% gradient-norm quantile"),
          (2.0, 2.0, 0.35, 0.64, "rule: plateau: clip opened up, learning rate lowered"),
          (2.0, 0.15, 0.35, 0.7, "rule: improving: clip follows the quantile")]


@dataclasses.dataclass(frozen=True)
class Built:
    settings: Settings
    good_run: str  # allowed after a person's approval, deployed
    denied_run: str  # denied at the gate (accuracy), never deployed
    refused_run: str  # stopped at plan: nothing left to train with


def _plan(run_id: str, share_before: float, share_after: float) -> rec.PlanRecord:
    privacy = rec.PrivacyPlan(
        dataset_id=DATASET, run_id=run_id, delta=1e-5, randomness="secure", accounting_order=12.0, run_epsilon=1.0,
        epsilon=0.98, epsilon_by_partition={"train": 0.98, "holdout": 0.4}, noise_multiplier=2.0, sample_rate=0.02,
        steps_per_epoch=20, epochs=len(EPOCHS), divisor=220.0, rows_estimate=4400.0, canaries=64, holdout_sigma=8.0,
        evaluation_sigma=4.0, grant=[rec.ChargeRecord(partition="train", mechanism="subsampled_gaussian",
                                                      noise_multiplier=2.0, sample_rate=0.02, steps=80)],
        dataset_share_before=share_before, dataset_share_after=share_after)
    return rec.PlanRecord(privacy=privacy, tuner="rule", reasons=["bound by request.epsilon_cap = 1.00"],
                          decisions=[], policy_input={"dataset": {"rows": 4400}})


def _train(accuracy_shift: float) -> rec.TrainRecord:
    history = [rec.EpochRecord(
        epoch=i, noise_multiplier=n, max_grad_norm=c, learning_rate=lr, steps=20, sample_rate=0.02,
        epsilon_used=0.2 * i, holdout_accuracy_noisy=acc + accuracy_shift,
        tuner=rec.TunerNote(tuner="rule", why=why, details={"log_lr": -0.69}))
        for i, (n, c, lr, acc, why) in enumerate(EPOCHS, start=1)]
    return rec.TrainRecord(model_path="model.pt", n_features=12, epochs_completed=len(EPOCHS), stopped_reason="",
                           history=history, usage_entries=[], tuner="rule", randomness="secure",
                           epsilon_used={"train": 0.8})


def _evaluation(accuracy: float, entry: int) -> rec.EvaluationRecord:
    return rec.EvaluationRecord(accuracy=accuracy, auc=0.81, majority_baseline=0.58, rows=880, sigma=4.0,
                                ledger_entry=entry, audit=rec.CanaryAudit(canaries=64, guesses=20, correct=14,
                                                                          epsilon_lower_bound=0.12,
                                                                          confidence=0.95, delta=1e-5))


def _ledger(ledger: Ledger, run_id: str, released_unused: bool) -> int:
    ledger.register_run(DATASET, run_id, PIPELINE, None)  # as plan does
    [release] = ledger.charge(dataset_id=DATASET, run_id=run_id, charges=[Charge("train", Segment(20.0, 1.0, 1))],
                              kind="release", key="assess/counts", randomness="secure")
    ledger.complete(release)
    ledger.charge(dataset_id=DATASET, run_id=run_id, kind="grant", key="plan/grant", randomness="secure",
                  charges=[Charge("train", Segment(2.0, 0.02, 80)), Charge("holdout", Segment(4.0, 1.0, 5), "gaussian")])
    if not released_unused:
        for epoch, (n, clip, *_rest) in enumerate(EPOCHS, start=1):
            usage = ledger.record_usage(dataset_id=DATASET, run_id=run_id, key=f"train/epoch-{epoch}",
                                        randomness="secure", charge=Charge("train", Segment(n, 0.02, 20),
                                                                           note=f"epoch {epoch}: clip {clip}"))
            ledger.complete(usage)
    ledger.close_grant(dataset_id=DATASET, run_id=run_id)
    return release


def _decision(log: AuditLog, query: str, doc: dict, run_id: str, stage: str) -> str:
    decision = evaluate(query, doc)
    log.record(decision, run_id=run_id, dataset_id=DATASET, stage=stage)
    return decision.to_dict()["id"]


def _deploy_input(run_id: str, accuracy: float) -> dict:
    doc = copy.deepcopy(DEPLOY_INPUT)
    doc["run"] = {**doc["run"], "id": run_id, "environment": "production"}
    doc["metrics"]["accuracy"] = accuracy
    if accuracy >= 0.6:
        doc["risk"]["score"] = 0.95  # a person must approve it
    else:
        doc["dataset"] = {**doc["dataset"], "rows": 250_000}  # and delta is not below 1/rows: a reason with a size
    return doc


def _finished_run(s: Settings, ledger: Ledger, log: AuditLog, run_id: str, *, accuracy: float,
                  share: tuple[float, float]) -> rec.GateRecord:
    store = RunStore.of(s.runs_dir, PIPELINE, run_id).ensure()
    store.write(rec.RunIdentity(run_id=run_id, pipeline=PIPELINE, dag_id=DAG_ID, dataset_id=DATASET))
    entry = _ledger(ledger, run_id, released_unused=False)
    _decision(log, "data.ppmlops.train", {**copy.deepcopy(TRAIN_INPUT), "run": {"id": run_id}}, run_id, "plan")
    store.write(_plan(run_id, *share))
    store.write(_train(accuracy - 0.7))
    store.write(_evaluation(accuracy, entry))
    decision = evaluate("data.ppmlops.deploy", _deploy_input(run_id, accuracy))
    log.record(decision, run_id=run_id, dataset_id=DATASET, stage="gate")
    d = decision.to_dict()
    return store.write(rec.GateRecord(outcome=d["outcome"], allowed=d["allowed"], reasons=d["reasons"],
                                      decision_id=d["id"], policy_hash=d["policy_hash"], engine=d["engine"]))


def build(s: Settings, good_run: str = "manual__2026-03-02T09:00:00+00:00",
          denied_run: str = "scheduled__2026-03-09T00:00:00+00:00",
          refused_run: str = "scheduled__2026-03-16T00:00:00+00:00", weights: Path | None = None) -> Built:
    ledger, log = Ledger(s.db_url), AuditLog(s.db_url)
    ledger.register_dataset(DATASET, epsilon_budget=3.0, delta=1e-5)
    gate = _finished_run(s, ledger, log, good_run, accuracy=0.72, share=(0.0, 0.3))
    store = RunStore.of(s.runs_dir, PIPELINE, good_run)
    store.write(rec.ApprovalRecord(approved=True, outcome="approved", by="officer", at="2026-03-02T10:00:00+00:00",
                                   channel="airflow-hitl", gate_decision_id=gate.decision_id,
                                   gate_reasons=gate.reasons, comment="margin over the baseline <holds>"))
    model = weights or s.home / "weights.pt"
    model.parent.mkdir(parents=True, exist_ok=True)
    model.write_bytes(b"weights")
    registry = Registry(s.registry_dir)
    # A whole card (ppmlops.compliance.documents.ModelCard, as deploy registers it): the example's,
    # with this run's numbers where the dashboard shows them.
    card = ModelCard.of(copy.deepcopy(MODEL_CARD) | {
        "model_name": PIPELINE, "pipeline": PIPELINE, "run_id": good_run, "dataset_id": DATASET,
        "epsilon": 0.98, "delta": 1e-5, "metrics": {"accuracy": 0.72, "auc": 0.81, "majority_baseline": 0.58},
        "privacy_audit": {"canaries": 64, "guesses": 20, "correct": 14, "epsilon_lower_bound": 0.12,
                          "confidence": 0.95, "delta": 1e-5},
        "epoch_settings": [{"epoch": i, "noise_multiplier": n, "max_grad_norm": c, "learning_rate": lr}
                           for i, (n, c, lr, *_r) in enumerate(EPOCHS, start=1)],
        "policy_decision": {"decision_id": gate.decision_id, "outcome": gate.outcome, "reasons": gate.reasons,
                            "policy_hash": gate.policy_hash, "engine": gate.engine},
        "approval": {"outcome": "approved", "by": "officer", "at": "2026-03-02T10:00:00+00:00"}}).document()
    version = registry.register(PIPELINE, model, card)
    registry.set_alias(PIPELINE, "production", version)
    store.write(rec.DeployRecord(model_name=PIPELINE, version=version, alias="production", path=str(model)))

    _finished_run(s, ledger, log, denied_run, accuracy=0.41, share=(0.3, 0.55))
    refused = RunStore.of(s.runs_dir, PIPELINE, refused_run).ensure()
    refused.write(rec.RunIdentity(run_id=refused_run, pipeline=PIPELINE, dag_id=DAG_ID, dataset_id=DATASET))
    decision_id = _decision(log, "data.ppmlops.train", {**copy.deepcopy(TRAIN_INPUT), "run": {"id": refused_run},
                                                        "consent": {"rows_in": 6000, "rows_refused": 3000,
                                                                    "coverage": 0.5}}, refused_run, "plan")
    refused.write(rec.Refusal(stage="plan", reasons=[r for r in log.records(run_id=refused_run)[-1]["decision"]
                                                     ["reasons"]], decision_id=decision_id))
    return Built(s, good_run, denied_run, refused_run)


def in_flight_run(s: Settings, run_id: str = "manual__2026-03-23T09:00:00+00:00", *, epochs_done: int = 2,
                  search: bool = False) -> RunStore:
    """A run of the pipeline still training: planned, `epochs_done` epoch lines written by rank 0
    (ppmlops.training.progress.append_epoch, as the loop writes them), no train.json yet. With
    `search`, its plan is a private search's (which writes no epoch lines)."""
    from ppmlops.training.progress import PROGRESS_FILE, append_epoch

    store = RunStore.of(s.runs_dir, PIPELINE, run_id).ensure()
    store.write(rec.RunIdentity(run_id=run_id, pipeline=PIPELINE, dag_id=DAG_ID, dataset_id=DATASET))
    plan = _plan(run_id, 0.55, 0.8)
    if search:
        plan = plan.model_copy(update={"privacy": plan.privacy.model_copy(update={"search": rec.SearchPlan(
            trials_mean=4.0, trials_shape=1.0, distribution="truncated negative binomial",
            learning_rate=(0.01, 1.0), max_grad_norm=(0.1, 4.0), score_sigma=8.0)})})
    store.write(plan)
    if not search:
        for i, (n, c, lr, acc, _why) in enumerate(EPOCHS[:epochs_done], start=1):
            append_epoch(store.root / PROGRESS_FILE, {"epoch": i, "noise_multiplier": n, "max_grad_norm": c,
                                                      "learning_rate": lr, "epsilon_used": 0.2 * i,
                                                      "sample_rate": 0.02, "holdout_accuracy_noisy": acc})
    return store
