"""What readers show of an EvaluationRecord of each label.task (the card, MLflow, the run summary):
every number a noisy release on the held-out partition or post-processing of one
(ppmlops.stages.evaluate, ppmlops.stages.task_evaluation)."""

from __future__ import annotations


def card_metrics(r) -> dict:
    """The model card's metrics for an EvaluationRecord of any task (all noisy releases)."""
    if r.task == "binary":
        return {"accuracy": r.accuracy, "auc": r.auc, "majority_baseline": r.majority_baseline, "rows": r.rows}
    if r.task == "multiclass":
        return {"task": r.task, "accuracy": r.accuracy, "macro_f1": r.macro_f1, "majority_baseline": r.majority_baseline,
                "rows": r.rows, "classes": r.classes, "confusion": r.confusion}
    return {"task": r.task, "mae": r.mae, "rmse": r.rmse, "baseline_mean": r.baseline_mean,
            "baseline_rmse": r.baseline_rmse, "rows": r.rows, "label_range": list(r.label_range or ())}


def tracked_metrics(r) -> list[tuple[str, float]]:
    """(MLflow metric name, value) for the task's noisy metrics."""
    names = {"binary": [("accuracy_noisy", r.accuracy), ("majority_baseline_noisy", r.majority_baseline)],
             "multiclass": [("accuracy_noisy", r.accuracy), ("majority_baseline_noisy", r.majority_baseline),
                            ("macro_f1_noisy", r.macro_f1)],
             "regression": [("mae_noisy", r.mae), ("rmse_noisy", r.rmse), ("baseline_rmse_noisy", r.baseline_rmse)]}
    return [(k, v) for k, v in names[r.task] if v is not None]


def summary(r) -> str:
    """One line on what the evaluation released (the run's stage summary)."""
    audit = f"canary audit epsilon lower bound {r.audit.epsilon_lower_bound:.3f}"
    if r.task == "multiclass":
        return (f"noisy accuracy {r.accuracy:.4f}, macro-F1 {r.macro_f1:.4f}, majority rate {r.majority_baseline:.4f}; "
                + audit)
    return f"noisy MAE {r.mae:.4g}, RMSE {r.rmse:.4g}, mean baseline RMSE {r.baseline_rmse:.4g}; " + audit
