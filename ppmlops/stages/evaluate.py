"""evaluate: noisy utility on the held-out rows, charged under the run's grant, and the canary audit.

One release on the held-out partition, of two groups of counts: the (correct, wrong) predictions
at threshold 0.5, and a histogram of the predicted probability in BINS bins per true class. A row
adds one to one count of each group, so the release costs one Gaussian mechanism of effective
noise plan.evaluation_sigma (the accuracy pair gets half the histogram's noise: the gate reads
accuracy). Accuracy, ROC AUC (binned) and the majority rate are post-processing of those noisy
counts. The canary audit scores the synthetic canaries only. The run's grant ends here.
"""

from __future__ import annotations

import numpy as np

from ppmlops.audit.canary import audit
from ppmlops.privacy.ledger import HOLDOUT, Ledger
from ppmlops.privacy.randomness import Randomness
from ppmlops.privacy.releases import CountGroup, noisy_counts, release_segment, sigmas_for
from ppmlops.privacy.session import PrivacySession
from ppmlops.run.grant import grant_of
from ppmlops.run.records import CanaryAudit, EvaluationRecord, PlanRecord, StagedData, TrainRecord
from ppmlops.stages.context import RunContext, timed

BINS = 10


def exact_counts(p: np.ndarray, y: np.ndarray) -> dict[str, dict[str, int]]:
    correct = int(((p >= 0.5) == (y == 1)).sum())
    bins = np.minimum((p * BINS).astype(int), BINS - 1)
    hist = {f"{label}:{b}": int(np.sum((bins == b) & (y == label))) for label in (0, 1) for b in range(BINS)}
    return {"outcome": {"correct": correct, "wrong": int(len(y) - correct)}, "scores": hist}


def groups_for(sigma: float) -> dict[str, CountGroup]:
    accuracy_sigma, histogram_sigma = sigmas_for(sigma, [1.0, 2.0], [1, 1])
    return {"outcome": CountGroup(accuracy_sigma), "scores": CountGroup(histogram_sigma)}


def metrics_of(noisy: dict[str, dict[str, int]]) -> dict[str, float | None]:
    """Accuracy, binned ROC AUC and majority rate from the noisy counts (each clamped at 0)."""
    c, w = (max(0, noisy["outcome"][k]) for k in ("correct", "wrong"))
    neg = np.array([max(0, noisy["scores"][f"0:{b}"]) for b in range(BINS)], dtype=float)
    pos = np.array([max(0, noisy["scores"][f"1:{b}"]) for b in range(BINS)], dtype=float)
    auc = None
    if pos.sum() > 0 and neg.sum() > 0:
        below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])  # negatives in lower bins; ties count half
        auc = float(np.sum(pos * (below + 0.5 * neg)) / (pos.sum() * neg.sum()))
    total = pos.sum() + neg.sum()
    return {"accuracy": c / (c + w) if c + w else 0.5, "auc": auc,
            "majority_baseline": float(max(pos.sum(), neg.sum()) / total) if total else 0.5, "rows": int(c + w)}


def _model_and_holdout(ctx: RunContext):
    import pandas as pd
    import torch

    from ppmlops.data.features import encode
    from ppmlops.training.models import build_model

    saved = torch.load(ctx.store.read(TrainRecord).model_path, weights_only=True)
    X, y, _ = encode(pd.read_parquet(ctx.store.read(StagedData).result.snapshot_test), ctx.spec)
    model = build_model(saved["kind"], X.shape[1], saved["hidden"])
    model.load_state_dict(saved["state_dict"])
    return model.eval(), X, y


def canary_audit(ctx: RunContext, n_features: int, delta: float) -> CanaryAudit:
    import torch

    from ppmlops.training.canary_scores import white_box_scores
    from ppmlops.training.driver import FULL_MODEL_FILE, INIT_FILE, canaries

    plan = ctx.store.read(PlanRecord).privacy
    found = canaries(ctx, plan.canaries, n_features)
    private = ctx.store.private_dir
    scores = white_box_scores(ctx.spec.model.kind, list(ctx.spec.model.hidden),
                              torch.load(private / INIT_FILE, weights_only=True),
                              torch.load(private / FULL_MODEL_FILE, weights_only=True), found)
    return audit(scores, found.included, delta=delta, confidence=ctx.spec.audit.confidence)


@timed
def run(ctx: RunContext) -> EvaluationRecord:
    from ppmlops.training.models import predict_proba

    done = ctx.store.read_optional(EvaluationRecord)
    plan = ctx.store.read(PlanRecord).privacy
    session = PrivacySession.open(Ledger(ctx.settings.db_url), grant_of(plan))
    if done is not None:  # a retried task: the release happened, complete and close
        session.ledger.complete(done.ledger_entry)
        session.close()
        return done
    model, X, y = _model_and_holdout(ctx)
    groups = groups_for(plan.evaluation_sigma)
    admission = session.spend(HOLDOUT, release_segment(list(groups.values())), key="holdout/evaluation",
                              note="final noisy evaluation: (correct, wrong) and the score histogram by class",
                              mechanism="gaussian")
    randomness = Randomness.secure() if plan.randomness == "secure" else Randomness.reproducible(ctx.params.seed,
                                                                                                  ctx.run_id)
    noisy = noisy_counts(exact_counts(predict_proba(model, X).numpy(), y), groups, randomness.source("evaluation"))
    record = ctx.store.write(EvaluationRecord(**metrics_of(noisy.values), sigma=plan.evaluation_sigma,
                                              ledger_entry=admission.entry_id,
                                              audit=canary_audit(ctx, X.shape[1], plan.delta)))
    session.complete(admission)
    session.close()
    return record
