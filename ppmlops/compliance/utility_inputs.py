"""The policy inputs about a model's utility and its data's classes, from PUBLIC records only.

The deploy gate's `metrics` and the plan's `classes` are built here (the rest of each document
by ppmlops.stages.card.manifest and ppmlops.stages.plan.policy_input), so the fields the Rego
rules beats_baseline, evaluation_size and metric_defined read have one source. Every number is
a noisy release or post-processing of one: the decisions are public.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from ppmlops.run.records import CountsRelease, EvaluationRecord
from ppmlops.spec import Deploy

PARTITIONS = ("train", "holdout")
CLASSES = ("positive", "negative")


class ClassifierMetrics(BaseModel):
    """input.metrics of data.ppmlops.deploy for a binary or multiclass model. A binary document is
    exactly what it always was (no `task`, no `macro_f1`: the policy reads a missing task as binary)."""

    model_config = ConfigDict(extra="forbid")
    accuracy: float
    auc: float | None
    min_accuracy: float
    majority_baseline: float
    min_margin: float | None
    advantage_lower: float | None
    confidence: float | None
    rows: int
    rows_lower: float | None
    positives: int | None  # multiclass: the noisy rows of the largest class
    negatives: int | None  # multiclass: the noisy rows of the other classes
    class_rows_lower: float | None
    task: Literal["binary", "multiclass"] = "binary"
    macro_f1: float | None = None

    def document(self) -> dict[str, Any]:
        return self.model_dump(exclude={"task", "macro_f1"} if self.task == "binary" else set())


class RegressionMetrics(BaseModel):
    """input.metrics of data.ppmlops.deploy for a regression model, in the label's units;
    advantage_lower is the lower bound on (mean baseline's MSE - model's MSE) / range width^2."""

    model_config = ConfigDict(extra="forbid")
    task: Literal["regression"] = "regression"
    mae: float
    rmse: float
    baseline_mean: float
    baseline_rmse: float
    label_range: tuple[float, float]
    min_margin: float | None
    advantage_lower: float
    confidence: float
    rows: int
    rows_lower: float

    def document(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def deploy_metrics(evaluated: EvaluationRecord, deploy: Deploy) -> dict[str, Any]:
    """input.metrics of data.ppmlops.deploy, by the evaluation's task. The bounds are None for an
    evaluation recorded before they existed: the policy's input check then denies (it never
    guesses them)."""
    if evaluated.task == "regression":
        return RegressionMetrics(mae=evaluated.mae, rmse=evaluated.rmse, baseline_mean=evaluated.baseline_mean,
                                 baseline_rmse=evaluated.baseline_rmse, label_range=evaluated.label_range,
                                 min_margin=deploy.min_margin, advantage_lower=evaluated.advantage_lower,
                                 confidence=evaluated.confidence, rows=evaluated.rows,
                                 rows_lower=evaluated.rows_lower).document()
    return ClassifierMetrics(
        accuracy=evaluated.accuracy, auc=evaluated.auc, min_accuracy=deploy.min_accuracy,
        majority_baseline=evaluated.majority_baseline, min_margin=deploy.min_margin,
        advantage_lower=evaluated.advantage_lower, confidence=evaluated.confidence, rows=evaluated.rows,
        rows_lower=evaluated.rows_lower, positives=evaluated.positives, negatives=evaluated.negatives,
        class_rows_lower=evaluated.class_rows_lower, task=evaluated.task, macro_f1=evaluated.macro_f1).document()


def plan_classes(counts: CountsRelease, label: str, confidence: float, task: str = "binary") -> dict[str, Any] | None:
    """input.classes of data.ppmlops.train: the noisy rows of each class in each partition and the
    smaller of the two (clamped at 0). The policy refuses a partition whose noisy counts show one
    class; a confidence bound would refuse every small table under count noise (see the rule).
    None when the counts release has no class counts (released before they existed): the policy's
    input check then refuses to train.

    Multiclass: `positive` is the noisy rows of the largest class and `negative` the rest, so the
    smaller says whether a second class is there at all (post-processing of the per-class counts,
    which are listed under `by_class`). Regression: the rows below and at or above the declared
    range's midpoint (`task` tells the policy, which applies its single-class rule to
    classification only)."""
    if counts.labels is None or counts.sigma_labels is None:
        return None
    out: dict[str, Any] = {"label": label, "sigma": counts.sigma_labels, "confidence": confidence}
    if task != "binary":  # a binary input stays as it was: the policy reads a missing task as binary
        out["task"] = task
    for p in PARTITIONS:
        if task == "binary":
            noisy = {c: counts.labels[f"{p}:{c}"] for c in CLASSES}
        else:
            by_class = {k.split(":", 1)[1]: v for k, v in counts.labels.items() if k.startswith(f"{p}:")}
            largest = max(by_class.values())
            noisy = {"positive": largest, "negative": sum(by_class.values()) - largest}
        out[p] = noisy | {"smallest": float(max(0, min(noisy.values())))}
        if task != "binary":
            out[p]["by_class"] = by_class
    return out
