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
from opacus.validators import ModuleValidator
from torch import nn

from ppmlops.errors import TrainingError
from ppmlops.privacy.randomness import NoiseSource
from ppmlops.training.canary_scores import GradientCanaries
from ppmlops.training.clipping import Clipper, GhostClipper, HooksClipper, LinearClipper, resolve_mode


class CsprngNoise:
    """Replaces an Opacus distributed optimizer's noise, scaling and reduction with one pass over
    one flat buffer: the noise comes from a NoiseSource on rank 0; mixed in ahead of the Opacus
    class, whose clipping and step stay as they are.

    Why fused. For a small model the step's cost is per operation, not per number: Opacus adds
    noise, scales and all-reduces parameter by parameter (and the fast-clipping optimizer
    deep-copies every gradient first), which made the Adult MLP's step 3x non-private with no
    noise at all. Here the clipped sums are gathered into one buffer, noised, divided by the
    public divisor and (with more than one rank) all-reduced once; each p.grad is a view of it.
    The released numbers are Opacus's: sum(clipped) + N(0, (sigma C)^2) on rank 0, divided by
    expected_batch_size, summed over the ranks and divided by their number.
    """

    noise_source: NoiseSource | None = None
    canaries: GradientCanaries | None = None  # set on rank 0 only: one rank injects
    _flat: torch.Tensor | None = None  # this step's noised, scaled gradients (p.grad are views)

    def add_noise(self) -> None:
        params = list(self.params)
        for p in params:
            # A clipped sum is released once: a second step on it without zero_grad (or a
            # second backward) would release it again with fresh noise, uncounted.
            if getattr(p.summed_grad, "_ppmlops_released", False):
                raise TrainingError("a clipped gradient sum was about to be released twice: call zero_grad "
                                    "between steps")
        flat = torch.cat([p.summed_grad.reshape(-1) for p in params]) if params else torch.zeros(0)
        if self.rank == 0:
            if self.noise_source is None:
                raise TrainingError("no noise source was set for this epoch: refusing to step without noise")
            canaries = self.canaries
            if canaries is not None:  # after clipping and summing, before noise
                offset = 0
                for p in params:
                    if p is canaries.weight:
                        piece = flat[offset:offset + p.numel()]
                        piece.copy_(canaries.inject(piece.view_as(p), self.max_grad_norm,
                                                    self.noise_source).reshape(-1))
                        break
                    offset += p.numel()
                else:
                    raise TrainingError("the canaries' weight is not among the optimizer's parameters")
            # One draw for all parameters (the cost is per call as much as per number), made on
            # the device the gradients are on: a GPU turns the keystream into Gaussians itself.
            single = all(p.summed_grad.dtype == torch.float32 for p in params)
            noise = self.noise_source.gaussian_tensor(flat.numel(), self.noise_multiplier * self.max_grad_norm,
                                                      torch.float32 if single else torch.float64, flat.device)
            flat.add_(noise.to(flat.dtype))
        if self.loss_reduction == "mean":
            flat.div_(self.expected_batch_size * self.accumulated_iterations)
        self._flat = flat
        self._unflatten(params, flat)
        for p in params:
            p.summed_grad._ppmlops_released = True

    @staticmethod
    def _unflatten(params: list, flat: torch.Tensor) -> None:
        """Each p.grad from its slice of `flat`: a view, or a copy in p's dtype where the
        parameters' dtypes differ (torch.cat promoted them)."""
        offset = 0
        for p in params:
            p.grad = flat[offset:offset + p.numel()].view_as(p).to(p.dtype)
            offset += p.numel()

    def scale_grad(self) -> None:
        """Done in add_noise, on the flat buffer."""

    def reduce_gradients(self) -> None:
        """Opacus's reduction (sum over ranks, then / world for a mean loss) as one all-reduce of
        the flat buffer instead of one per parameter; nothing to reduce in a world of one."""
        flat, self._flat = self._flat, None
        if self.world_size == 1 or flat is None:
            return
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        if self.loss_reduction == "mean":
            flat /= self.world_size
        self._unflatten(list(self.params), flat)  # where p.grad was a copy (mixed dtypes), the reduced sum


class CsprngDistributedDPOptimizer(CsprngNoise, DistributedDPOptimizer):
    """Clips and sums per-row gradients (hooks), then the CSPRNG noise."""


class CsprngFastClippingOptimizer(CsprngNoise, DistributedDPOptimizerFastGradientClipping):
    """Takes the clipped sum the clipper left in p.grad, then the CSPRNG noise."""

    def accumulate(self) -> None:
        # Opacus deep-copies p.grad into summed_grad; the clipper made p.grad for this step alone
        # and add_noise only reads it, so it is the sum itself (one step, no accumulation).
        for p in self.params:
            if p.summed_grad is not None:
                p.summed_grad.add_(p.grad)
            else:
                p.summed_grad = p.grad


@dataclass
class PrivateModel:
    net: nn.Module  # the plain model (its weights are what is saved)
    clipper: Clipper
    optimizer: CsprngDistributedDPOptimizer | CsprngFastClippingOptimizer
    clipping: str  # the resolved mode: linear, ghost or hooks
    # The most rows one forward and backward may take (None: the whole Poisson batch at once).
    # A larger batch is clipped in physical pieces whose clipped sums add up (virtual steps).
    physical_batch: int | None = None

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
        limit = self.physical_batch
        if limit and len(yb) > limit:
            norms = self._virtual_backward(xb, yb, limit)
        else:
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


    def _virtual_backward(self, xb: torch.Tensor, yb: torch.Tensor, limit: int) -> torch.Tensor:
        """A Poisson batch larger than memory allows, in physical pieces of at most `limit` rows.

        Clipping is per row, so the clipped sum of the batch is the sum of its pieces' clipped
        sums: each piece's is added up here, and the optimizer then adds one noise draw and takes
        one step for the whole logical batch. The sampling (one Poisson batch a step), the noise
        and the divisor are those of an unsplit step, so the accounting is unchanged; only the
        peak memory of a backward is bounded (Opacus's BatchMemoryManager splits the same way)."""
        params = list(self.optimizer.params)
        total: list[torch.Tensor] | None = None
        norms = []
        for start in range(0, len(yb), limit):
            for p in params:
                p.grad = None  # each piece's clipped sum on its own; the total is kept apart
            norms.append(self.clipper.backward(xb[start:start + limit], yb[start:start + limit],
                                               self.optimizer.max_grad_norm))
            grads = [p.grad for p in params]
            total = grads if total is None else [t.add_(g) for t, g in zip(total, grads)]
        for p, t in zip(params, total or []):
            p.grad = t
        return torch.cat(norms)


def per_layer_refusal(mode: str) -> str:
    return ("training.per_layer_clipping needs the closed-form clipping path (an nn.Sequential of Linear layers "
            f"and row-wise activations); this model takes the {mode} path, which clips each row's whole gradient")


def precision_refusal(mode: str) -> str:
    return ("training.precision bf16 needs the closed-form clipping path (an nn.Sequential of Linear layers and "
            f"row-wise activations), where the norms and clipping are computed in float32; this model takes the "
            f"{mode} path, whose per-row norms would be computed in bfloat16 and could round a row past the bound")


def make_private_model(net: nn.Module, *, noise_multiplier: float, max_grad_norm: float, learning_rate: float,
                       momentum: float, divisor: float, device: torch.device, clipping: str = "auto",
                       physical_batch: int | None = None, task: str = "binary",
                       per_layer: bool = False, precision: str = "fp32") -> PrivateModel:
    """Wrap `net` for distributed DP-SGD; torch.distributed must already be initialised.

    `clipping`: "auto" (linear where it applies, else ghost), "linear", "ghost" or "hooks".
    `per_layer`: each layer's gradient clipped to C / sqrt(layers) (the closed-form path only).
    `precision`: "bf16" runs the forward and backward in bfloat16, the clipping and noise in
    float32 (the closed-form path only)."""
    if not dist.is_available() or not dist.is_initialized():
        raise TrainingError("distributed DP-SGD needs torch.distributed initialised (Ray Train does this)")
    errors = ModuleValidator.validate(net, strict=False)
    if errors:
        raise TrainingError(f"the model has layers DP-SGD cannot bound per row: {errors[0]}")
    if not divisor > 0:
        raise TrainingError(f"the update divisor must be > 0, got {divisor!r}")
    mode = resolve_mode(clipping, net)
    if physical_batch is not None and (physical_batch < 1 or mode == "hooks"):
        raise TrainingError(f"a physical batch limit ({physical_batch!r}) needs a positive row count and a fast "
                            "clipping path (linear or ghost): hooks hold every row's gradient at once")
    if per_layer and mode != "linear":
        raise TrainingError(per_layer_refusal(mode))
    if precision not in ("fp32", "bf16"):
        raise TrainingError(f"training.precision must be fp32 or bf16, got {precision!r}")
    if precision == "bf16" and mode != "linear":
        raise TrainingError(precision_refusal(mode))
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
        clipper: Clipper = LinearClipper(ddp, net, task, per_layer, precision)
    elif mode == "ghost":
        clipper = GhostClipper(ddp, optimizer, max_grad_norm, task)
    else:
        clipper = HooksClipper(ddp, task)
    return PrivateModel(net, clipper, optimizer, mode, physical_batch)
