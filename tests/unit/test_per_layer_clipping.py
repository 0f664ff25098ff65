"""Per-layer clipping (training.per_layer_clipping, issue 29 item 6): each layer's per-row
gradient clipped to C / sqrt(layers), checked against autograd row by row; the same bound on a
row's whole gradient, so the noise and the accounting are the flat path's; refused where the
closed-form path does not apply."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ppmlops.errors import TrainingError
from ppmlops.training.clipping import LinearClipper
from ppmlops.training.models import build_model
from ppmlops.training.tasks import loss_sum


def _reference(net: nn.Sequential, X, y, clip: float):
    """Each row's gradient by autograd, each Linear's part clipped to clip / sqrt(layers), summed."""
    linears = [m for m in net if isinstance(m, nn.Linear)]
    bound = clip / math.sqrt(len(linears))
    total = [torch.zeros_like(p) for p in net.parameters()]
    clipped_rows = 0
    for i in range(len(y)):
        grads = torch.autograd.grad(loss_sum("binary", net(X[i:i + 1]), y[i:i + 1]), list(net.parameters()))
        by_layer = [grads[2 * k:2 * k + 2] for k in range(len(linears))]  # (weight, bias) per Linear
        any_clipped = False
        for k, (gw, gb) in enumerate(by_layer):
            norm = torch.sqrt(gw.pow(2).sum() + gb.pow(2).sum())
            factor = min(1.0, bound / (float(norm) + 1e-6))
            any_clipped |= factor < 1.0
            total[2 * k] += gw * factor
            total[2 * k + 1] += gb * factor
        clipped_rows += any_clipped
    return total, clipped_rows


def test_each_layer_is_clipped_to_its_share_of_the_bound():
    torch.manual_seed(5)
    net = build_model("mlp", 6, [9, 5])
    X, y = torch.randn(12, 6) * torch.linspace(0.05, 20, 12)[:, None], torch.randint(0, 2, (12,))
    clip = 2.0  # rows from tiny to large inputs: small enough that some rows are clipped in some layers and not in others
    want, clipped = _reference(net, X, y, clip)
    clipper = LinearClipper(net, net, "binary", per_layer=True)
    norms = clipper.backward(X, y, clip)
    for p, w in zip(net.parameters(), want):
        assert torch.allclose(p.grad, w, rtol=1e-4, atol=1e-6)
    assert 0 < clipped < len(y) and int((norms > clip).sum()) == clipped  # the counts: any layer clipped


def test_a_rows_whole_clipped_gradient_stays_within_the_flat_bound():
    torch.manual_seed(6)
    net = build_model("mlp", 6, [9, 5])
    X, y = torch.randn(1, 6) * 10, torch.tensor([1])
    LinearClipper(net, net, "binary", per_layer=True).backward(X, y, 1.0)
    whole = torch.sqrt(sum(p.grad.pow(2).sum() for p in net.parameters()))
    assert float(whole) <= 1.0 + 1e-5  # sqrt(L * (C / sqrt(L))^2) = C: the noise's sensitivity holds
    linears = [m for m in net if isinstance(m, nn.Linear)]
    for m in linears:
        part = torch.sqrt(m.weight.grad.pow(2).sum() + m.bias.grad.pow(2).sum())
        assert float(part) <= 1.0 / math.sqrt(len(linears)) + 1e-5


def test_per_layer_clipping_is_refused_off_the_closed_form_path(gloo_world_of_one):
    from ppmlops.training.private_model import make_private_model

    net = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))  # ghost clipping's model
    with pytest.raises(TrainingError, match="per_layer_clipping needs the closed-form clipping path.*ghost"):
        make_private_model(net, noise_multiplier=1.0, max_grad_norm=1.0, learning_rate=0.1, momentum=0.0,
                           divisor=8.0, device=torch.device("cpu"), per_layer=True)
