"""The canary audit's side of the DP-SGD step (ppmlops.audit.canary explains the audit): rank 0
injects the gradient canaries into the clipped sum before the noise, reads each step's noisy sum at
their coordinates back and keeps their running scores; and the cut that removes the canary
columns from the model before it leaves the run."""

from __future__ import annotations

import os

import numpy as np
import torch

from ppmlops.audit.canary import CanarySet, observed_noise, step_scores
from ppmlops.errors import TrainingError
from ppmlops.privacy.randomness import NoiseSource


class GradientCanaries:
    """The run's canaries on rank 0 (exactly one rank injects, so the all-reduced sum holds each
    sampled canary once). `inject` is called by the optimizer's noise path (every clipping mode)
    with the clipped sum of the first layer's weight; `observe` after the step."""

    def __init__(self, canaries: CanarySet, weight: torch.nn.Parameter, sample_rate: float,
                 scores: list[float] | None = None):
        rows, cols = canaries.coordinates
        if weight.dim() != 2 or weight.shape[1] != canaries.width or weight.shape[0] != canaries.units:
            raise TrainingError(f"the first layer's weight has shape {tuple(weight.shape)}, but the "
                                f"{len(canaries)} canaries need ({canaries.units}, {canaries.width})")
        self.weight, self.sample_rate = weight, float(sample_rate)
        self.rows = torch.as_tensor(rows, device=weight.device)
        self.cols = torch.as_tensor(cols, device=weight.device)
        self.members = torch.as_tensor(np.flatnonzero(canaries.included), device=weight.device)
        if scores is not None and len(scores) != len(canaries):
            raise TrainingError(f"the checkpoint holds {len(scores)} canary scores for {len(canaries)} canaries")
        self.scores = np.zeros(len(canaries)) if scores is None else np.asarray(scores, dtype=np.float64)

    def inject(self, summed: torch.Tensor, max_grad_norm: float, source: NoiseSource) -> torch.Tensor:
        """The clipped sum plus C e_j for each included canary the step's Poisson coin takes (rate
        q, as every row); a new tensor, the clipped sum is left as it is."""
        taken = self.members[torch.from_numpy(source.bernoulli(len(self.members), self.sample_rate))
                             .to(self.members.device)]
        out = summed.clone()
        # +C: SGD then moves these weights down; distinct coordinates, so no index adds twice.
        out[self.rows[taken], self.cols[taken]] += float(max_grad_norm)
        return out

    def observe(self, divisor: float, max_grad_norm: float) -> None:
        """Add this step's per-canary log likelihood ratio: the step's gradient (the noisy sum over
        every rank, divided by the public divisor) at the canary coordinates, in units of C, under
        the noise those coordinates show (ppmlops.audit.canary.observed_noise)."""
        grad = self.weight.grad
        if grad is None:
            raise TrainingError("the DP-SGD step left no gradient on the first layer to audit")
        x = (grad.detach()[self.rows, self.cols].double() * divisor / max_grad_norm).cpu().numpy()
        self.scores += step_scores(x, self.sample_rate, observed_noise(x))

    def save(self, path: str) -> None:
        """Write the scores where the evaluate stage reads them (atomically: a crash leaves the old file)."""
        if not path:
            return
        tmp = f"{path}.incoming"
        with open(tmp, "wb") as f:
            np.save(f, self.scores)
        os.replace(tmp, path)


def read_scores(path: str | os.PathLike) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def without_canary_columns(state: dict, n_features: int, layer: str | None = "0") -> dict:
    """The model for real rows: the canaries' layer (a built-in's first) cut to the real features
    (canary columns are zero in every real row, so predictions do not change). A model without a
    canary layer trained on the real features alone: nothing to cut."""
    out = {k: v.detach().cpu().clone() for k, v in state.items()}
    if layer is not None:
        key = weight_key(layer)
        out[key] = out[key][:, :n_features].contiguous()
    return out


def weight_key(layer: str) -> str:
    """The state_dict key of a layer's weight ("" is the model itself, e.g. a bare nn.Linear)."""
    return f"{layer}.weight" if layer else "weight"
