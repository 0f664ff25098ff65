"""Privacy: the noise is as large as the ledger is told. The exact discrete Gaussian of released
counts never runs below the sigma^2 it was asked for, and a DP-SGD step adds N(0, (sigma C)^2) to
every coordinate, on every clipping path."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from ppmlops.privacy.randomness import Randomness, discrete_sigma2
from ppmlops.training.models import build_model
from ppmlops.training.private_model import make_private_model

GRID = Fraction(1, 2**20)


@pytest.mark.parametrize("sigma", [0.1, 1 / 3, math.sqrt(2), math.sqrt(2.5), 7.3, 123.456])
def test_privacy_discrete_gaussian_sigma2_is_never_rounded_down(sigma):
    # Exact arithmetic: these squares are not on the 2^-20 grid, so rounding down would land below.
    exact = Fraction(sigma) ** 2
    assert exact <= discrete_sigma2(sigma) < exact + GRID


def test_privacy_discrete_gaussian_variance_is_the_sigma2_asked_for():
    sigma2 = 2.5  # the discrete Gaussian's variance equals sigma^2 to ~e^-49 here (Poisson summation)
    draws = np.array(Randomness.reproducible("noise-test").source("dg").discrete_gaussian(math.sqrt(sigma2), 40_000))
    # The variance estimate's standard error is sqrt(2) sigma^2 / sqrt(n) = 0.7%: 4% is ~6 of them.
    assert abs(draws.var() / sigma2 - 1) < 0.04
    assert abs(draws.mean()) < 5 * math.sqrt(sigma2 / len(draws))


@pytest.mark.parametrize("clipping", ["linear", "ghost", "hooks"])
def test_privacy_dp_sgd_step_adds_noise_multiplier_times_clip_norm(gloo_world_of_one, clipping):
    """Zero inputs and no bias: every row's gradient is exactly zero, so the step's update is the
    noise alone, divided by the divisor and scaled by the learning rate."""
    sigma, clip, lr, divisor = 1.3, 0.7, 1.0, 5.0
    net = build_model("logistic", 2000, bias=False)  # 4000 weights: the std estimate is within ~1.1%
    before = net[0].weight.detach().clone()
    model = make_private_model(net, noise_multiplier=sigma, max_grad_norm=clip, learning_rate=lr, momentum=0.0,
                               divisor=divisor, device=torch.device("cpu"), clipping=clipping)
    model.set_epoch(noise_multiplier=sigma, max_grad_norm=clip, learning_rate=lr,
                    noise_source=Randomness.reproducible("noise-test", clipping).source("noise"))
    model.step(torch.zeros(8, 2000), torch.tensor([0, 1] * 4))
    noise = (before - net[0].weight.detach()).numpy().ravel() * divisor / lr
    assert abs(noise.std() / (sigma * clip) - 1) < 0.06  # halving the noise is 50% off
    assert abs(noise.mean()) < 5 * sigma * clip / math.sqrt(noise.size)
