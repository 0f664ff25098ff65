"""The white-box scores of the canary audit (ppmlops.audit.canary), and the cut that removes the
canaries' input columns from the model before it leaves the run."""

from __future__ import annotations

import numpy as np
import torch

from ppmlops.audit.canary import CanarySet
from ppmlops.training.models import build_model

FIRST_WEIGHT = "0.weight"  # build_model's first layer: Sequential index 0


def white_box_scores(kind: str, hidden: list[int], init_state: dict, final_state: dict,
                     canaries: CanarySet) -> np.ndarray:
    """Per canary: its column's weight change since initialisation, projected on the direction
    in which its own gradient at initialisation would move that column (unit length)."""
    model = build_model(kind, canaries.width, hidden)
    model.load_state_dict(init_state)
    moved = (final_state[FIRST_WEIGHT] - init_state[FIRST_WEIGHT]).double()
    features = torch.as_tensor(canaries.features)
    scores = np.zeros(len(canaries))
    for i in range(len(canaries)):
        model.zero_grad(set_to_none=True)
        torch.log_softmax(model(features[i:i + 1]), dim=1)[0, int(canaries.labels[i])].backward()
        column = canaries.n_features + i
        direction = model[0].weight.grad[:, column].double()
        norm = direction.norm()
        scores[i] = float(moved[:, column] @ direction / norm) if norm > 0 else 0.0
    return scores


def without_canary_columns(state: dict, n_features: int) -> dict:
    """The model for real rows: the first layer cut to the real features (canary columns are
    zero in every real row, so predictions do not change)."""
    out = {k: v.detach().cpu().clone() for k, v in state.items()}
    out[FIRST_WEIGHT] = out[FIRST_WEIGHT][:, :n_features].contiguous()
    return out
