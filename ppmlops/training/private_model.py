"""Opacus per-sample clipping with the run's own noise: the DP-SGD step every rank takes.

Built from Opacus's parts rather than PrivacyEngine.make_private, because two things must be
ours:

* Noise. Rank 0 adds N(0, (sigma C)^2) to the sum of clipped gradients, drawn from the run's
  NoiseSource (ChaCha20 keyed from OS entropy, with the floating-point mitigation of
  ppmlops.privacy.randomness) instead of torch's generator; Opacus's own secure mode needs
  torchcsprng, which has no build for this torch. Other ranks add nothing; the all-reduce sums
  the ranks, so each step releases sum(clipped grads) + noise once.
* The divisor. The noisy sum is divided by a PUBLIC constant, the plan's expected batch (from
  the noisy row count). Opacus would divide by int(len(dataset) * q), a function of the exact
  row count, which would scale every update by a private number.

Accounting is the ledger's (ppmlops.privacy), not Opacus's accountant, so there is none here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP
from opacus.optimizers import DistributedDPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.validators import ModuleValidator
from torch import nn

from ppmlops.errors import TrainingError
from ppmlops.privacy.randomness import NoiseSource


class CsprngDistributedDPOptimizer(DistributedDPOptimizer):
    """Opacus's distributed DP optimizer with its noise drawn from a NoiseSource on rank 0."""

    noise_source: NoiseSource | None = None

    def add_noise(self) -> None:
        if self.rank != 0:
            for p in self.params:
                p.grad = p.summed_grad.view_as(p)
            return
        if self.noise_source is None:
            raise TrainingError("no noise source was set for this epoch: refusing to step without noise")
        params = list(self.params)
        total = sum(p.summed_grad.numel() for p in params)
        # One draw for all parameters: the CSPRNG's cost is per call as much as per number.
        flat = torch.from_numpy(self.noise_source.gaussian((total,), self.noise_multiplier * self.max_grad_norm))
        offset = 0
        for p in params:
            _check_processed_flag(p.summed_grad)
            n = p.summed_grad.numel()
            noise = flat[offset:offset + n].view(p.summed_grad.shape).to(p.summed_grad.device, p.summed_grad.dtype)
            p.grad = (p.summed_grad + noise).view_as(p)
            offset += n
            _mark_as_processed(p.summed_grad)


@dataclass
class PrivateModel:
    net: nn.Module  # the plain model (its weights are what is saved)
    module: nn.Module  # GradSampleModule around DPDDP around `net`
    optimizer: CsprngDistributedDPOptimizer

    def set_epoch(self, *, noise_multiplier: float, max_grad_norm: float, learning_rate: float,
                  noise_source: NoiseSource | None) -> None:
        self.optimizer.noise_multiplier = float(noise_multiplier)
        self.optimizer.max_grad_norm = float(max_grad_norm)
        for group in self.optimizer.param_groups:
            group["lr"] = float(learning_rate)
        self.optimizer.noise_source = noise_source

    def step(self, xb: torch.Tensor, yb: torch.Tensor, counts: list[int] | None = None) -> None:
        """One DP-SGD step on a (possibly empty) batch. With `counts` ([clipped, unclipped]),
        adds this rank's exact per-row clipping counts (the caller noises their epoch sum)."""
        self.optimizer.zero_grad(set_to_none=True)
        out = self.module(xb)
        # The mean loss, but 0 rather than NaN on an empty batch; Opacus rescales by the batch size.
        loss = F.cross_entropy(out, yb, reduction="sum") / max(len(yb), 1)
        with warnings.catch_warnings():
            # Inputs never require grad, so torch notes that Opacus's backward hooks fire on outputs
            # only; that is exactly what per-sample gradients need.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            loss.backward()
        if counts is not None and len(yb):
            clipped = int((per_sample_norms(self.optimizer) > self.optimizer.max_grad_norm).sum())
            counts[0] += clipped
            counts[1] += len(yb) - clipped
        self.optimizer.step()


def per_sample_norms(optimizer) -> torch.Tensor:
    """Each row's gradient norm before clipping, as Opacus's clipping computes it."""
    norms = [g.reshape(len(g), -1).norm(2, dim=-1) for g in optimizer.grad_samples]
    return torch.stack(norms, dim=1).norm(2, dim=1)


def make_private_model(net: nn.Module, *, noise_multiplier: float, max_grad_norm: float, learning_rate: float,
                       momentum: float, divisor: float, device: torch.device) -> PrivateModel:
    """Wrap `net` for distributed DP-SGD; torch.distributed must already be initialised."""
    if not dist.is_available() or not dist.is_initialized():
        raise TrainingError("distributed DP-SGD needs torch.distributed initialised (Ray Train does this)")
    errors = ModuleValidator.validate(net, strict=False)
    if errors:
        raise TrainingError(f"the model has layers DP-SGD cannot bound per row: {errors[0]}")
    if not divisor > 0:
        raise TrainingError(f"the update divisor must be > 0, got {divisor!r}")
    net.to(device)
    ddp = DPDDP(net)  # broadcasts rank 0's weights; gradients are reduced by the optimizer
    module = GradSampleModule(ddp, batch_first=True, loss_reduction="mean")
    # A second forward/backward before a step would change the effective sampling rate.
    module.forbid_grad_accumulation()
    world = dist.get_world_size()
    optimizer = CsprngDistributedDPOptimizer(
        torch.optim.SGD(net.parameters(), lr=learning_rate, momentum=momentum),
        noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
        # Each rank divides by divisor / world, the all-reduce sums and divides by world again.
        expected_batch_size=divisor / world, loss_reduction="mean")
    return PrivateModel(net, module, optimizer)
