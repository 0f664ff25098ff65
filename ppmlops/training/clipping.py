"""Per-row gradient clipping for DP-SGD, three ways to the same result.

Every clipper runs one batch forward and backward and returns each row's gradient norm before
clipping (what the (clipped, unclipped) counts of the rule tuner are taken from). What it leaves
for the optimizer differs:

* ``linear`` (default where it applies): a ``nn.Sequential`` of ``nn.Linear`` layers and
  row-wise activations on (batch, features) inputs. A Linear layer's per-row weight gradient is
  the outer product g_i a_i^T of the gradient at its output and its input, so its norm is
  ||g_i|| ||a_i|| (and ||g_i|| for the bias): one backward to the layer outputs gives every
  norm, and the clipped sum is sum_i c_i g_i a_i^T, one matrix product per layer. No per-row
  gradient is ever materialised and there is no second backward pass.
* ``ghost``: Opacus's ghost clipping (GradSampleModuleFastGradientClipping with
  DPLossFastGradientClipping): norms from its norm samplers in a first backward, the clipped sum
  from a second backward of the reweighted loss; layers without a norm sampler fall back to
  Opacus's per-row gradient hooks inside the same module.
* ``hooks``: Opacus's GradSampleModule, per-row gradients materialised, clipped by the optimizer.

``linear`` and ``ghost`` leave the clipped sum in ``p.grad`` (the fast-clipping optimizer adds
noise to it); ``hooks`` leaves per-row gradients (the classic optimizer clips and sums). All three
clip with Opacus's factor min(1, C / (norm + 1e-6)), so the released sums are the same function of
the batch; tests/unit/test_clipping.py checks that on one batch.
"""

from __future__ import annotations

import contextlib

import warnings
from typing import Protocol

import torch
from torch import nn

from ppmlops.errors import TrainingError
from ppmlops.training.worker_job import CLIPPING_MODES
from ppmlops.training.tasks import loss_module, loss_sum
# Parameter-free layers that act on each row alone: a layer mixing rows (a batch statistic) would
# make a row's gradient depend on other rows, and the closed form would no longer be its gradient.
ROW_WISE = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.ELU, nn.SiLU, nn.Identity, nn.Dropout)
EPS = 1e-6  # Opacus's: clip factor C / (norm + EPS)


class Clipper(Protocol):
    module: nn.Module  # what the batch runs through
    fast: bool  # True: p.grad holds the clipped sum after backward; False: per-row gradients

    def backward(self, xb: torch.Tensor, yb: torch.Tensor, max_grad_norm: float) -> torch.Tensor:
        """Forward and backward on the batch; returns the per-row gradient norms before clipping."""


def linear_supported(net: nn.Module) -> bool:
    return (isinstance(net, nn.Sequential) and any(isinstance(m, nn.Linear) for m in net)
            and all(isinstance(m, nn.Linear) or (type(m) in ROW_WISE) for m in net))


def resolve_mode(mode: str, net: nn.Module) -> str:
    if mode not in CLIPPING_MODES:
        raise TrainingError(f"clipping must be one of {list(CLIPPING_MODES)}, got {mode!r}")
    if mode == "auto":
        return "linear" if linear_supported(net) else "ghost"
    if mode == "linear" and not linear_supported(net):
        raise TrainingError("linear clipping needs an nn.Sequential of Linear layers and row-wise activations "
                            f"({', '.join(t.__name__ for t in ROW_WISE)}); use 'ghost' or 'hooks' for this model")
    return mode


def _trains(layer: nn.Linear) -> bool:
    return layer.weight.requires_grad or (layer.bias is not None and layer.bias.requires_grad)


def _zero_grads(params) -> torch.Tensor:
    """An empty Poisson batch: the clipped sum is zero (the step still adds its noise)."""
    for p in params:
        p.grad = torch.zeros_like(p)
    return torch.empty(0)


class LinearClipper:
    fast = True

    def __init__(self, ddp: nn.Module, net: nn.Sequential, task: str = "binary", per_layer: bool = False,
                 precision: str = "fp32"):
        self.task, self.per_layer = task, per_layer
        # bf16 (training.precision): the forward and the backward to the layers' outputs under
        # torch.autocast in bfloat16; every per-row norm, clipping factor and clipped sum below is
        # computed in float32 from float32 copies, so the bound on a row's gradient is exactly the
        # fp32 path's (a norm rounded down in bfloat16 could let a row past the clip norm).
        self.autocast = precision == "bf16"
        self.module, self.layers = ddp, list(net)
        self.params = [p for p in net.parameters() if p.requires_grad]

    def backward(self, xb: torch.Tensor, yb: torch.Tensor, max_grad_norm: float) -> torch.Tensor:
        if not len(yb):
            return _zero_grads(self.params)
        if xb.dim() != 2:
            raise TrainingError(f"linear clipping needs (batch, features) inputs, got shape {tuple(xb.shape)}")
        # Only layers with a trainable parameter (model.trainable freezes the rest): a frozen
        # layer's gradient is neither released nor part of a row's norm.
        inputs, outputs, tracked, h = [], [], [], xb
        # No autocast context at all in fp32: on a small model each step's cost is per operation.
        with (torch.autocast(xb.device.type, dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()):
            for layer in self.layers:
                if isinstance(layer, nn.Linear) and _trains(layer):
                    inputs.append(h.detach())
                    h = layer(h)
                    outputs.append(h)
                    tracked.append(layer)
                else:
                    h = layer(h)
            # Summed, not averaged: row i's share of the gradient at each output is then exactly its own.
            loss = loss_sum(self.task, h.float() if self.autocast else h, yb)
        grads = list(torch.autograd.grad(loss, outputs))
        if self.autocast:
            grads, inputs, h = [g.float() for g in grads], [a.float() for a in inputs], h.float()
        per = []  # each trainable layer's per-row squared gradient norm
        for layer, a, g in zip(tracked, inputs, grads):
            g2 = g.pow(2).sum(1)
            sq = torch.zeros(len(yb), dtype=h.dtype, device=h.device)
            if layer.weight.requires_grad:
                sq = sq + g2 * a.pow(2).sum(1)
            if layer.bias is not None and layer.bias.requires_grad:
                sq = sq + g2
            per.append(sq)
        if self.per_layer:
            # Per-layer clipping (training.per_layer_clipping): each of the L layers' gradient is
            # clipped to C / sqrt(L) on its own, so a row's whole gradient still has norm at most C
            # and the noise (sigma C) and accounting are the flat path's. The norm returned is
            # C times the largest ratio of a layer's norm to its bound: above C exactly when some
            # layer was clipped, as the clipping counts want.
            bound = max_grad_norm / len(per) ** 0.5
            layer_norms = torch.stack(per).sqrt()
            factors = (bound / (layer_norms + EPS)).clamp(max=1.0)
            norms = max_grad_norm * (layer_norms / bound).amax(0)
        else:
            norms = sum(per[1:], per[0]).sqrt()
            factors = [(max_grad_norm / (norms + EPS)).clamp(max=1.0)] * len(per)
        for layer, a, g, factor in zip(tracked, inputs, grads, factors):
            gc = g * factor[:, None]
            if layer.weight.requires_grad:
                layer.weight.grad = gc.t() @ a
            if layer.bias is not None and layer.bias.requires_grad:
                layer.bias.grad = gc.sum(0)
        return norms.detach()


class GhostClipper:
    fast = True

    def __init__(self, ddp: nn.Module, optimizer, max_grad_norm: float, task: str = "binary"):
        from opacus.grad_sample import GradSampleModuleFastGradientClipping
        from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

        self.module = GradSampleModuleFastGradientClipping(ddp, batch_first=True, loss_reduction="mean",
                                                           max_grad_norm=max_grad_norm, use_ghost_clipping=True)
        self.loss = DPLossFastGradientClipping(self.module, optimizer, loss_module(task),
                                               loss_reduction="mean")
        self.params = list(optimizer.params)

    def backward(self, xb: torch.Tensor, yb: torch.Tensor, max_grad_norm: float) -> torch.Tensor:
        self.module.max_grad_norm = float(max_grad_norm)
        if not len(yb):
            return _zero_grads(self.params)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            self.loss(self.module(xb), yb).backward()
        return self.module.per_sample_gradient_norms.detach()


class HooksClipper:
    fast = False

    def __init__(self, ddp: nn.Module, task: str = "binary"):
        self.task = task
        from opacus import GradSampleModule

        self.module = GradSampleModule(ddp, batch_first=True, loss_reduction="mean")
        # A second forward/backward before a step would change the effective sampling rate.
        self.module.forbid_grad_accumulation()
        self.params = [p for p in self.module.parameters() if p.requires_grad]

    def backward(self, xb: torch.Tensor, yb: torch.Tensor, max_grad_norm: float) -> torch.Tensor:
        out = self.module(xb)
        # The mean loss, but 0 rather than NaN on an empty batch; Opacus rescales by the batch size.
        loss = loss_sum(self.task, out, yb) / max(len(yb), 1)
        with warnings.catch_warnings():
            # Inputs never require grad, so torch notes that Opacus's backward hooks fire on outputs
            # only; that is exactly what per-sample gradients need.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            loss.backward()
        if not len(yb):
            return torch.empty(0)
        norms = [p.grad_sample.reshape(len(p.grad_sample), -1).norm(2, dim=-1) for p in self.params]
        return torch.stack(norms, dim=1).norm(2, dim=1)


def probe_norms(net: nn.Module, mode: str, xb: torch.Tensor, yb: torch.Tensor, task: str = "binary") -> torch.Tensor:
    """The per-row gradient norms `mode`'s clipper computes for `net` on one batch, outside any
    process group: the same code a worker runs, for a model's check before training
    (ppmlops.training.model_check). `net` is wrapped (Opacus adds hooks): pass a copy."""
    if mode == "linear":
        return LinearClipper(net, net, task).backward(xb, yb, 1.0)
    if mode == "ghost":
        from opacus.optimizers import DPOptimizerFastGradientClipping

        optimizer = DPOptimizerFastGradientClipping(torch.optim.SGD(net.parameters(), lr=0.0), noise_multiplier=0.0,
                                                    max_grad_norm=1.0, expected_batch_size=len(yb),
                                                    loss_reduction="mean")
        return GhostClipper(net, optimizer, 1.0, task).backward(xb, yb, 1.0)
    return HooksClipper(net, task).backward(xb, yb, 1.0)
