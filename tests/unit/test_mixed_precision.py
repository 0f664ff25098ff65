"""training.precision bf16 (issue 29, item 6): the forward and backward in bfloat16, the per-row
norms, clipping and clipped sums in float32, so no row's clipped gradient exceeds the clip norm
(checked in float64 from the released sum of a one-row batch); close to the fp32 path; refused
where the clipping path would compute norms in bfloat16."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ppmlops.errors import TrainingError
from ppmlops.training.clipping import LinearClipper
from ppmlops.training.models import build_model


def _grads(net):
    return [p.grad.detach().clone() for p in net.parameters()]


def test_bf16_clipped_sums_are_close_to_fp32_and_float32():
    torch.manual_seed(7)
    net = build_model("mlp", 12, [32, 16])
    X, y = torch.randn(64, 12) * 4, torch.randint(0, 2, (64,))
    fp32, bf16 = copy.deepcopy(net), copy.deepcopy(net)
    n32 = LinearClipper(fp32, fp32, "binary").backward(X, y, 0.5)
    n16 = LinearClipper(bf16, bf16, "binary", precision="bf16").backward(X, y, 0.5)
    assert all(g.dtype == torch.float32 for g in _grads(bf16))
    a = torch.cat([g.flatten() for g in _grads(fp32)])
    b = torch.cat([g.flatten() for g in _grads(bf16)])
    assert float((a - b).norm() / a.norm()) < 0.1  # bfloat16 keeps 8 bits of mantissa
    assert torch.allclose(n32, n16, rtol=0.15)


@pytest.mark.parametrize("scale", [0.1, 10.0, 1000.0])
def test_no_rows_clipped_gradient_exceeds_the_bound_in_bf16(scale):
    torch.manual_seed(8)
    net = build_model("mlp", 12, [32, 16])
    for i in range(8):  # one row at a time: the released sum is that row's clipped gradient
        X, y = torch.randn(1, 12) * scale, torch.tensor([i % 2])
        LinearClipper(net, net, "binary", precision="bf16").backward(X, y, 1.0)
        whole = torch.sqrt(sum(p.grad.double().pow(2).sum() for p in net.parameters()))
        assert float(whole) <= 1.0 + 1e-5


def test_bf16_is_refused_off_the_closed_form_path(gloo_world_of_one):
    from ppmlops.training.private_model import make_private_model

    net = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    with pytest.raises(TrainingError, match="precision bf16 needs the closed-form clipping path.*ghost"):
        make_private_model(net, noise_multiplier=1.0, max_grad_norm=1.0, learning_rate=0.1, momentum=0.0,
                           divisor=8.0, device=torch.device("cpu"), precision="bf16")
