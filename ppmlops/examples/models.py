"""Example model factories for `model.factory` (README, "Bring your own model").

`build` is what a spec names as "ppmlops.examples.models:build": a residual MLP whose layers all act
on each row alone (Linear, LayerNorm, GELU), so Opacus gives exact per-row gradients (its ghost
clipping: LayerNorm is not a plain Linear stack) and nothing mixes rows. The first layer is an
nn.Linear on the raw features, which is where the canary audit puts its canaries.
"""

from __future__ import annotations

import torch
from torch import nn


class ResidualBlock(nn.Module):
    """x + Linear(GELU(LayerNorm(x))): pre-norm, so the identity path carries the signal at init."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.act = nn.GELU()
        self.linear = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.linear(self.act(self.norm(x)))


class ResidualMLP(nn.Module):
    def __init__(self, n_features: int, n_outputs: int, width: int, blocks: int):
        super().__init__()
        self.input = nn.Linear(n_features, width)
        self.blocks = nn.Sequential(*(ResidualBlock(width) for _ in range(blocks)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.input(x))))


def build(n_features: int, n_outputs: int, width: int = 64, blocks: int = 2) -> nn.Module:
    """A residual MLP: (batch, n_features) -> (batch, n_outputs) logits."""
    if width < 1 or blocks < 0:
        raise ValueError(f"width must be >= 1 and blocks >= 0, got width={width}, blocks={blocks}")
    return ResidualMLP(n_features, n_outputs, int(width), int(blocks))
