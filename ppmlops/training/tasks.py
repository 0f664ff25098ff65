"""What each label.task trains on and predicts (the spec's label, ppmlops.spec.Label).

binary      two logits and cross-entropy, as always; a prediction is P(class 1)
multiclass  one logit per declared class and cross-entropy over them; a prediction is the argmax
regression  one output and the squared error against the label scaled to [0, 1] by its declared
            range (ppmlops.data.features); a prediction is the output clipped to [0, 1], so an
            error is never larger than the range: the bound the evaluation's sensitivity rests on

The loss changes nothing in the privacy accounting: DP-SGD clips each row's gradient whatever the
loss, so the noise multiplier alone prices a step.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

TASKS = ("binary", "multiclass", "regression")


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
    return task


def target_dtype(task: str):
    """The numpy dtype of the encoded label: class indices, or the scaled number."""
    return np.float32 if check_task(task) == "regression" else np.int64


def loss_sum(task: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The batch's summed loss: row i's share of the gradient is then exactly its own."""
    if task == "regression":
        return 0.5 * (out[:, 0] - y.to(out.dtype)).pow(2).sum()
    return F.cross_entropy(out, y, reduction="sum")


class SquaredError(nn.Module):
    """Half the squared error of the first output, reduced as `reduction` says (Opacus's ghost
    clipping sets it to "none" to read each row's loss)."""

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        per_row = 0.5 * (out[:, 0] - y.to(out.dtype)).pow(2)
        if self.reduction == "none":
            return per_row
        return per_row.sum() if self.reduction == "sum" else per_row.sum() / max(len(y), 1)


def loss_module(task: str) -> nn.Module:
    """The task's batch-mean loss as a module (what Opacus's ghost clipping wraps)."""
    return SquaredError("mean") if check_task(task) == "regression" else nn.CrossEntropyLoss(reduction="mean")


@torch.no_grad()
def predict(model: nn.Module, X, task: str, batch_size: int = 8192, zero_columns: int = 0) -> np.ndarray:
    """Per row: P(class 1) for binary, the class index for multiclass, the output clipped to [0, 1]
    for regression (on CPU; `zero_columns` as in ppmlops.training.models.predict_proba)."""
    from ppmlops.training.models import outputs, predict_proba

    if check_task(task) == "binary":
        return predict_proba(model, X, batch_size, zero_columns).numpy()
    dtype = np.int64 if task == "multiclass" else np.float64
    head = (lambda out: out.argmax(dim=1)) if task == "multiclass" else (lambda out: out[:, 0].clamp(0.0, 1.0))
    return outputs(model, X, head, batch_size, zero_columns).numpy().astype(dtype)


def scores(task: str, predicted: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each held-out row's score in [0, 1], what the tuner's noisy signal averages: 1 for a right
    class, else 0; for regression 1 - |error| on the [0, 1] scale (both clipped to it)."""
    if task == "binary":
        return ((predicted >= 0.5) == y).astype(np.float64)
    if task == "multiclass":
        return (predicted == y).astype(np.float64)
    return 1.0 - np.abs(np.clip(predicted, 0, 1) - np.clip(np.asarray(y, dtype=np.float64), 0, 1))
