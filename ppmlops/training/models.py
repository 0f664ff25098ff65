"""Model builders for tabular data under DP-SGD: two logits for a binary label (as always), one
per class for multiclass, one output for regression (ppmlops.training.tasks).

Only layers Opacus can compute per-sample gradients for are used, and no BatchNorm: batch
statistics mix records, so a record's influence would no longer be bounded by clipping its own
gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

MODEL_KINDS = ("logistic", "mlp")
N_CLASSES = 2


def build_model(kind: str, n_features: int, hidden: Sequence[int] = (64,), *, bias: bool = True,
                n_outputs: int = N_CLASSES) -> nn.Module:
    """A model mapping (batch, n_features) float32 to (batch, n_outputs) outputs (2 logits by default).

    "logistic" is one Linear layer; "mlp" is Linear+ReLU per entry of `hidden`, then a Linear to
    the two logits. `bias=False` drops every bias term (tests use it to make gradients vanish
    on zero inputs).
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"model kind must be one of {list(MODEL_KINDS)}, got {kind!r}")
    if int(n_outputs) != n_outputs or n_outputs < 1:
        raise ValueError(f"n_outputs must be a positive integer, got {n_outputs!r}")
    n_outputs = int(n_outputs)
    if int(n_features) != n_features or n_features < 1:
        raise ValueError(f"n_features must be a positive integer, got {n_features!r}")
    n_features = int(n_features)
    if kind == "logistic":
        return nn.Sequential(nn.Linear(n_features, n_outputs, bias=bias))
    widths = list(hidden)
    if not widths:
        raise ValueError("an mlp needs at least one hidden layer; use kind 'logistic' for none")
    for w in widths:
        if int(w) != w or w < 1:
            raise ValueError(f"hidden layer widths must be positive integers, got {widths}")
    layers: list[nn.Module] = []
    width_in = n_features
    for w in widths:
        layers += [nn.Linear(width_in, int(w), bias=bias), nn.ReLU()]
        width_in = int(w)
    layers.append(nn.Linear(width_in, n_outputs, bias=bias))
    return nn.Sequential(*layers)


@torch.no_grad()
def outputs(model: nn.Module, X, head, batch_size: int = 8192, zero_columns: int = 0) -> "torch.Tensor":
    """`head(the model's outputs)` for each row of X (a float32 array or tensor), in eval mode, batch
    by batch, on CPU. `zero_columns` zero inputs are appended to each batch (the canary audit's
    columns, never stored with the rows)."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        X = torch.as_tensor(X, dtype=torch.float32)
        out = []
        for start in range(0, len(X), batch_size):
            batch = X[start : start + batch_size]
            if zero_columns:
                batch = nn.functional.pad(batch, (0, zero_columns))
            out.append(head(model(batch.to(device))).cpu())
        return torch.cat(out) if out else torch.empty(0)
    finally:
        model.train(was_training)


def predict_proba(model: nn.Module, X, batch_size: int = 8192, zero_columns: int = 0) -> "torch.Tensor":
    """Probability of class 1 for each row of X, on CPU (see `outputs`)."""
    return outputs(model, X, lambda logits: torch.softmax(logits, dim=1)[:, 1], batch_size, zero_columns)
