"""The DP-SGD step every rank takes: per-row clipping (ppmlops.training.clipping) with the run's
own noise.

Built from Opacus's parts rather than PrivacyEngine.make_private, because two things must be
ours:

* Noise. Rank 0 adds N(0, (sigma C)^2) to the sum of clipped gradients, drawn from the run's
  NoiseSource (ChaCha20 keyed from OS entropy, with the floating-point mitigation of
  ppmlops.privacy.randomness) instead of torch's generator; Opacus's own secure mode needs
  torchcsprng, which has no build for this torch. Other ranks add nothing; the all-reduce sums
  the ranks, so each step releases sum(clipped grads) + noise once.
* Canaries. With the canary audit attached (rank 0 only), the sampled gradient canaries join the
  clipped sum right before the noise, on every clipping mode (ppmlops.training.canary_scores).
* The divisor. The noisy sum is divided by a PUBLIC constant, the plan's expected batch (from
  the noisy row count). Opacus would divide by int(len(dataset) * q), a function of the exact
  row count, which would scale every update by a private number.

The clipping is the fast kind by default (closed-form norms for linear stacks, Opacus's ghost
clipping otherwise) with Opacus's distributed fast-clipping optimizer; ``clipping="hooks"`` keeps
the classic per-row gradients and optimizer. Both optimizers take the noise path below.
Accounting is the ledger's (ppmlops.privacy), not Opacus's accountant, so there is none here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP
from opacus.optimizers import DistributedDPOptimizer, DistributedDPOptimizerFastGradientClipping
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.validators import ModuleValidator
from torch import nn

from ppmlops.errors import TrainingError
from ppmlops.privacy.randomness import NoiseSource
from ppmlops.training.canary_scores import GradientCanaries
from ppmlops.training.clipping import Clipper, GhostClipper, HooksClipper, LinearClipper, resolve_mode


class CsprngNoise:
    """Replaces an Opacus distributed optimizer's add_noise (the noise comes from a NoiseSource on
    rank 0) and coalesces its reduction; mixed in ahead of the Opacus class, whose clipping,
    scaling and step stay as they are."""

    noise_source: NoiseSource | None = None
    canaries: GradientCanaries | None = None  # set on rank 0 only: one rank injects

    def add_noise(self) -> None:
        if self.rank != 0:
            for p in self.params:
                p.grad = p.summed_grad.view_as(p)
            return
        if self.noise_source is None:
            raise TrainingError("no noise source was set for this epoch: refusing to step without noise")
        params = list(self.params)
        canaries = self.canaries
        if canaries is not None and not any(p is canaries.weight for p in params):
            raise TrainingError("the canaries' weight is not among the optimizer's parameters")
        total = sum(p.summed_grad.numel() for p in params)
        # One draw for all parameters (the cost is per call as much as per number), made on the
        # device the gradients are on: a GPU turns the keystream into Gaussians itself.
        single = all(p.summed_grad.dtype == torch.float32 for p in params)
        flat = self.noise_source.gaussian_tensor(total, self.noise_multiplier * self.max_grad_norm,
                                                 torch.float32 if single else torch.float64,
                                                 params[0].summed_grad.device if params else None)
        offset = 0
        for p in params:
            _check_processed_flag(p.summed_grad)
            n = p.summed_grad.numel()
            noise = flat[offset:offset + n].view(p.summed_grad.shape).to(p.summed_grad.device, p.summed_grad.dtype)
            summed = p.summed_grad
            if canaries is not None and p is canaries.weight:  # after clipping and summing, before noise
                summed = canaries.inject(summed.view_as(p), self.max_grad_norm, self.noise_source).view(summed.shape)
            p.grad = (summed + noise).view_as(p)
            offset += n
            _mark_as_processed(p.summed_grad)

    def reduce_gradients(self) -> None:
        """Opacus's reduction (sum over ranks, then / world for a mean loss) as one all-reduce of
        every gradient in a flat buffer instead of one per parameter: same numbers, fewer
        round trips."""
        params = [p for p in self.params if p.requires_grad]
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        if self.loss_reduction == "mean":
            flat /= self.world_size
        offset = 0
        for p in params:
            p.grad = flat[offset:offset + p.numel()].view_as(p)
            offset += p.numel()


class CsprngDistributedDPOptimizer(CsprngNoise, DistributedDPOptimizer):
    """Clips and sums per-row gradients (hooks), then the CSPRNG noise."""


class CsprngFastClippingOptimizer(CsprngNoise, DistributedDPOptimizerFastGradientClipping):
    """Takes the clipped sum the clipper left in p.grad, then the CSPRNG noise."""


@dataclass
class PrivateModel:
    net: nn.Module  # the plain model (its weights are what is saved)
    clipper: Clipper
    optimizer: CsprngDistributedDPOptimizer | CsprngFastClippingOptimizer
    clipping: str  # the resolved mode: linear, ghost or hooks

    @property
    def module(self) -> nn.Module:
        return self.clipper.module

    @property
    def canaries(self) -> GradientCanaries | None:
        return self.optimizer.canaries

    def attach_canaries(self, canaries: GradientCanaries) -> None:
        """On rank 0 only: every later step injects the canaries and scores them."""
        self.optimizer.canaries = canaries

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
        norms = self.clipper.backward(xb, yb, self.optimizer.max_grad_norm)
        if counts is not None and len(yb):
            clipped = int((norms > self.optimizer.max_grad_norm).sum())
            counts[0] += clipped
            counts[1] += len(yb) - clipped
        self.optimizer.step()
        canaries = self.optimizer.canaries
        if canaries is not None:
            opt = self.optimizer
            canaries.observe(opt.expected_batch_size * opt.world_size, opt.max_grad_norm)


def make_private_model(net: nn.Module, *, noise_multiplier: float, max_grad_norm: float, learning_rate: float,
                       momentum: float, divisor: float, device: torch.device, clipping: str = "auto") -> PrivateModel:
    """Wrap `net` for distributed DP-SGD; torch.distributed must already be initialised.

    `clipping`: "auto" (linear where it applies, else ghost), "linear", "ghost" or "hooks"."""
    if not dist.is_available() or not dist.is_initialized():
        raise TrainingError("distributed DP-SGD needs torch.distributed initialised (Ray Train does this)")
    errors = ModuleValidator.validate(net, strict=False)
    if errors:
        raise TrainingError(f"the model has layers DP-SGD cannot bound per row: {errors[0]}")
    if not divisor > 0:
        raise TrainingError(f"the update divisor must be > 0, got {divisor!r}")
    mode = resolve_mode(clipping, net)
    net.to(device)
    ddp = DPDDP(net)  # broadcasts rank 0's weights; gradients are reduced by the optimizer
    world = dist.get_world_size()
    optimizer_class = CsprngDistributedDPOptimizer if mode == "hooks" else CsprngFastClippingOptimizer
    optimizer = optimizer_class(
        torch.optim.SGD(net.parameters(), lr=learning_rate, momentum=momentum),
        noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
        # Each rank divides by divisor / world, the all-reduce sums and divides by world again.
        expected_batch_size=divisor / world, loss_reduction="mean")
    if mode == "linear":
        clipper: Clipper = LinearClipper(ddp, net)
    elif mode == "ghost":
        clipper = GhostClipper(ddp, optimizer, max_grad_norm)
    else:
        clipper = HooksClipper(ddp)
    return PrivateModel(net, clipper, optimizer, mode)
