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
    """Two 3x3 convolutions on a (channels x height x width) image given as its flattened values,
    then a linear head. Convolutions act on each image alone (no BatchNorm), so Opacus bounds
    every row's gradient; there is no nn.Linear on the raw pixels, so the canary audit records
    that it cannot place its canaries (ppmlops.training.model_check)."""

    def __init__(self, shape: tuple[int, int, int], n_outputs: int, channels: int):
        super().__init__()
        self.shape = tuple(shape)
        c, h, w = self.shape
        self.features = nn.Sequential(
            nn.Conv2d(c, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.head = nn.Linear(2 * channels * ((h + 1) // 2) * ((w + 1) // 2), n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ppmlops hands every model its rows flat, (batch, n_features): the image is C order.
        images = x.reshape(len(x), *self.shape)
        return self.head(self.features(images).flatten(1))


def cnn(n_features: int, n_outputs: int, channels: int = 8, input_shape: list[int] | None = None) -> nn.Module:
    """A small CNN. With a tensor feature ppmlops passes its declared `input_shape`: [C, H, W], or
    [H, W] for one channel. Without one (a table of pixel columns), the n_features columns are a
    square single-channel image (e.g. 64: digits' 8x8)."""
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    if input_shape is not None:
        if len(input_shape) not in (2, 3):
            raise ValueError(f"cnn needs an image: input_shape [C, H, W] or [H, W], got {list(input_shape)}")
        shape = tuple(int(d) for d in input_shape) if len(input_shape) == 3 else (1, *map(int, input_shape))
        return SmallCNN(shape, n_outputs, int(channels))
    side = int(round(n_features ** 0.5))
    if side * side != n_features:
        raise ValueError(f"cnn needs a square image: {n_features} features are not side x side pixels")
    return SmallCNN((1, side, side), n_outputs, int(channels))
