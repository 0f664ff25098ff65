"""Example model factories for `model.factory` (docs/specs.md, "Bring your own model").

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


class SmallCNN(nn.Module):
    """Two 3x3 convolutions on a (side x side) single-channel image given as its flattened pixels,
    then a linear head. Convolutions act on each image alone (no BatchNorm), so Opacus bounds
    every row's gradient; there is no nn.Linear on the raw pixels, so the canary audit records
    that it cannot place its canaries (ppmlops.training.model_check)."""

    def __init__(self, side: int, n_outputs: int, channels: int):
        super().__init__()
        self.side = side
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1), nn.ReLU(),
        )
        half = (side + 1) // 2
        self.head = nn.Linear(2 * channels * half * half, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = x.reshape(len(x), 1, self.side, self.side)
        return self.head(self.features(images).flatten(1))


def cnn(n_features: int, n_outputs: int, channels: int = 8) -> nn.Module:
    """A small CNN for square single-channel images of n_features pixels (e.g. 64: digits' 8x8)."""
    side = int(round(n_features ** 0.5))
    if side * side != n_features:
        raise ValueError(f"cnn needs a square image: {n_features} features are not side x side pixels")
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    return SmallCNN(side, n_outputs, int(channels))
