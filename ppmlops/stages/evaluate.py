"""evaluate: noisy utility on the held-out rows, charged under the run's grant, and the canary audit.

What follows is the binary task's release; multiclass and regression have their own, of the same
cost (ppmlops.stages.task_evaluation).

One release on the held-out partition, of two groups of counts: the 2x2 confusion matrix
(prediction at threshold 0.5 by true class) and a histogram of the predicted probability in BINS
bins per true class. A row adds one to one count of each group, so the release costs one
Gaussian mechanism of effective noise plan.evaluation_sigma (the confusion matrix gets half the
histogram's noise: the gate reads it). Accuracy, the majority rate, the class counts, ROC AUC
(binned) and the gate's lower confidence bounds (confidence_bounds) are post-processing of those
noisy counts. The canary audit scores the synthetic canaries only. The run's grant ends here.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

from ppmlops.audit.canary import AuditBound, audit
from ppmlops.privacy.ledger import HOLDOUT, Ledger
from ppmlops.privacy.releases import CountGroup, noisy_counts, release_segment, sigmas_for
from ppmlops.privacy.session import PrivacySession
from ppmlops.run.grant import grant_of
from ppmlops.run.records import CanaryAudit, EvaluationRecord, PlanRecord, StagedData, TrainRecord
from ppmlops.run.context import RunContext
from ppmlops.stages.context import timed

BINS = 10
# The confusion matrix's cells, (prediction, true class) at threshold 0.5: one row adds one to one.
CELLS = ("tp", "fp", "fn", "tn")


def exact_counts(p: np.ndarray, y: np.ndarray) -> dict[str, dict[str, int]]:
    predicted, positive = p >= 0.5, y == 1
    confusion = {"tp": int(np.sum(predicted & positive)), "fp": int(np.sum(predicted & ~positive)),
                 "fn": int(np.sum(~predicted & positive)), "tn": int(np.sum(~predicted & ~positive))}
    bins = np.minimum((p * BINS).astype(int), BINS - 1)
    hist = {f"{label}:{b}": int(np.sum((bins == b) & (y == label))) for label in (0, 1) for b in range(BINS)}
    return {"confusion": confusion, "scores": hist}


def groups_for(sigma: float) -> dict[str, CountGroup]:
    confusion_sigma, histogram_sigma = sigmas_for(sigma, [1.0, 2.0], [1, 1])
    return {"confusion": CountGroup(confusion_sigma), "scores": CountGroup(histogram_sigma)}


def metrics_of(noisy: dict[str, dict[str, int]]) -> dict[str, float | None]:
    """Accuracy and majority rate from the noisy confusion matrix, binned ROC AUC from the noisy
    histogram (each count clamped at 0). The AUC is None unless both classes' histograms hold rows."""
    tp, fp, fn, tn = (max(0, noisy["confusion"][k]) for k in CELLS)
    n = tp + fp + fn + tn
    neg = np.array([max(0, noisy["scores"][f"0:{b}"]) for b in range(BINS)], dtype=float)
    pos = np.array([max(0, noisy["scores"][f"1:{b}"]) for b in range(BINS)], dtype=float)
    auc = None
    if pos.sum() > 0 and neg.sum() > 0:
        below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])  # negatives in lower bins; ties count half
        auc = float(np.sum(pos * (below + 0.5 * neg)) / (pos.sum() * neg.sum()))
    return {"accuracy": (tp + tn) / n if n else 0.5, "auc": auc,
            "majority_baseline": max(tp + fn, fp + tn) / n if n else 0.5, "rows": int(n),
            "positives": int(noisy["confusion"]["tp"] + noisy["confusion"]["fn"]),
            "negatives": int(noisy["confusion"]["fp"] + noisy["confusion"]["tn"])}


# The bounds below hold together with probability >= confidence: this many one-sided events share
# 1 - confidence equally (Bonferroni, valid whatever their dependence; they share the same noise).
_EVENTS = 6


def confidence_bounds(confusion: dict[str, int], cell_sigma: float, confidence: float) -> dict[str, float]:
    """Lower confidence bounds against the release's noise, from the noisy confusion matrix alone
    (post-processing, free).

    What they bound: the held-out rows as they are. advantage_lower bounds (accuracy - majority
    rate) on those rows, rows_lower their number, class_rows_lower the rows of their smaller class.
    Each cell is its exact count + N(0, cell_sigma^2) (the discrete Gaussian's tails are no heavier
    than the continuous one's). Against class k the advantage's count is tn - fn for the positive
    class and tp - fp for the negative (d = [correct] - [label is k] per row), a difference of two
    cells (noise std sqrt(2) cell_sigma); its lower bound is divided by the upper bound of n when
    positive and the lower bound when negative, and the advantage is the smaller of the two
    classes'. Six one-sided events (2 classes, n's two sides, the two class counts) share
    1 - confidence.

    What they do not bound: how the model would do on other rows. A model no better than guessing
    can beat the majority on a small held-out sample by chance (sampling error about
    sqrt(rows predicted as the minority) / n); the policy's min_holdout_rows (and min_margin) are
    the officer's control of that, and docs/policies.md says so.
    """
    z = NormalDist().inv_cdf(1 - (1 - confidence) / _EVENTS)
    tp, fp, fn, tn = (float(confusion[k]) for k in CELLS)
    n = tp + fp + fn + tn
    n_lo = max(0.0, n - z * 2 * cell_sigma)  # four cells: std 2 sigma
    n_hi = max(1.0, n + z * 2 * cell_sigma)
    pair = math.sqrt(2) * cell_sigma  # std of a sum or difference of two cells
    lows = []
    for d in (tn - fn, tp - fp):  # against the positive, then the negative class
        low = d - z * pair
        lows.append(low / (n_hi if low >= 0 else max(1.0, n_lo)))
    return {"advantage_lower": max(-1.0, min(1.0, min(lows))), "rows_lower": n_lo,
            "class_rows_lower": max(0.0, min(tp + fn, fp + tn) - z * pair)}


def _model_and_holdout(ctx: RunContext):
    import pandas as pd
    import torch

    from ppmlops.data.features import encode
    from ppmlops.training.factory import rebuild

    saved = torch.load(ctx.store.read(TrainRecord).model_path, weights_only=True)
    X, y, _ = encode(pd.read_parquet(ctx.store.read(StagedData).result.snapshot_test), ctx.spec)
    return rebuild(saved, X.shape[1]).eval(), X, y


def canary_audit(ctx: RunContext, n_features: int, delta: float) -> CanaryAudit:
    """The audit from the scores rank 0 kept while training (ppmlops.training.canary_scores) and
    the coins: no model and no row is read."""
    # ppmlops.audit sits below the run's records: it returns its own result, recorded here.
    return CanaryAudit.model_validate(_canary_bound(ctx, n_features, delta), from_attributes=True)


def _canary_bound(ctx: RunContext, n_features: int, delta: float) -> AuditBound:
    from ppmlops.audit.canary import AuditError
    from ppmlops.training.canary_scores import read_scores
    from ppmlops.training.driver import CANARY_SCORES_FILE, canaries

    plan = ctx.store.read(PlanRecord).privacy
    found = canaries(ctx, plan.canaries, n_features)
    if not found.included:  # none drawn (a private search): nothing to audit, and the record says so
        return audit(np.zeros(0), np.zeros(0, dtype=bool), delta=delta, confidence=ctx.spec.audit.confidence)
    path = ctx.store.private_path(CANARY_SCORES_FILE)
    if not path.exists():
        raise AuditError(f"the canary audit needs {path}, which the train stage writes; it is missing (the run was "
                         "trained before gradient canaries, or the file was removed): train the run again")
    scores = read_scores(path)
    if scores.shape != (len(found.included),):
        raise AuditError(f"{path} holds {scores.size} canary scores but {ctx.store.private_dir} has "
                         f"{len(found.included)} canaries: the file is not this run's")
    return audit(scores, np.asarray(found.included, dtype=bool), delta=delta, confidence=ctx.spec.audit.confidence)


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
    if ctx.spec.dataset.label.task != "binary":
        return _run_task(ctx, session, plan, model, X, y)
    groups = groups_for(plan.evaluation_sigma)
    admission = session.spend(HOLDOUT, release_segment(list(groups.values())), key="holdout/evaluation",
                              note="final noisy evaluation: (correct, wrong) and the score histogram by class",
                              mechanism="gaussian")
    noisy = noisy_counts(exact_counts(predict_proba(model, X).numpy(), y), groups, ctx.draws().source("evaluation"))
    cell_sigma, confidence = groups["confusion"].sigma, ctx.spec.deploy.confidence
    return _recorded(ctx, session, admission, plan, X, cell_sigma,
                     metrics_of(noisy.values) | confidence_bounds(noisy.values["confusion"], cell_sigma, confidence))


def _recorded(ctx: RunContext, session: PrivacySession, admission, plan, X, cell_sigma: float,
              fields: dict) -> EvaluationRecord:
    """The evaluation's record with the canary audit, then its release completed in the ledger."""
    record = ctx.store.write(EvaluationRecord(**fields, sigma=plan.evaluation_sigma, cell_sigma=cell_sigma,
                                              confidence=ctx.spec.deploy.confidence, ledger_entry=admission.entry_id,
                                              audit=canary_audit(ctx, X.shape[1], plan.delta)))
    session.complete(admission)
    session.close()
    return record


def _run_task(ctx: RunContext, session: PrivacySession, plan, model, X, y) -> EvaluationRecord:
    """A multiclass or regression evaluation (ppmlops.stages.task_evaluation): one release, charged
    once before any noise is drawn, like the binary one above."""
    from ppmlops.privacy.releases import noisy_sums
    from ppmlops.stages import task_evaluation as te
    from ppmlops.training.tasks import predict

    label, confidence = ctx.spec.dataset.label, ctx.spec.deploy.confidence
    predicted = predict(model, X, label.task)
    if label.task == "multiclass":
        k = len(label.classes)
        groups = te.multiclass_groups(plan.evaluation_sigma)
        note = f"final noisy evaluation: the {k}x{k} confusion matrix (one row moves one cell by 1)"
    else:
        groups = te.regression_groups(plan.evaluation_sigma)
        note = ("final noisy evaluation: rows, sum |error|, sum (d^2 - error^2), sum 2d, sum 4d^2 on the range-scaled "
                "label, d = label - 1/2 (every per-row value clipped into [-1, 1])")
    admission = session.spend(HOLDOUT, release_segment(list(groups.values())), key="holdout/evaluation", note=note,
                              mechanism="gaussian")
    source = ctx.draws().source("evaluation")
    if label.task == "multiclass":
        noisy = noisy_counts(te.multiclass_counts(predicted, y, k), groups, source)
        cell_sigma = groups[te.CONFUSION].sigma
        fields = te.multiclass_metrics(te.noisy_matrix(noisy.values, k), cell_sigma, confidence) | {
            "classes": list(label.classes)}
    else:
        released = noisy_sums(te.regression_sums(predicted, y), groups, source)
        cell_sigma = groups["gain"].sigma  # the noise on the sum the gate reads
        sigmas = {name: g.sigma for name, g in groups.items()}
        fields = te.regression_metrics(released.values, sigmas, confidence, label.range) | {
            "label_range": tuple(label.range)}
    return _recorded(ctx, session, admission, plan, X, cell_sigma, fields | {"task": label.task})
