"""Poisson sampling in lockstep across ranks, with masks from the run's CSPRNG.

Each rank owns the rows ``rank::world`` of the training set and includes every one of them in a
step independently with probability q (drawn as a Binomial size and a uniform subset: the same law), so every record is Poisson-sampled with rate q on exactly
one rank: the subsampled Gaussian mechanism the ledger charges. Every rank yields every batch,
empty ones included, so all ranks take the same number of steps and pair their all-reduces
(Opacus's distributed sampler skips empty batches, which would desynchronise them). The masks
come from a NoiseSource: OS-keyed ChaCha20 in secure mode, never torch's Mersenne Twister.
"""

from __future__ import annotations

from typing import Iterator

import torch

from ppmlops.errors import TrainingError
from ppmlops.privacy.randomness import NoiseSource


class LockstepPoissonSampler:
    def __init__(self, *, total_size: int, sample_rate: float, steps: int, rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise TrainingError(f"rank {rank} is outside a world of {world_size}")
        if total_size < world_size:
            raise TrainingError(f"{total_size} training rows cannot be shared among {world_size} workers: "
                                "each needs at least one")
        if not 0 < sample_rate <= 1 or steps < 1:
            raise TrainingError(f"need 0 < sample_rate <= 1 and steps >= 1, got {sample_rate!r}, {steps!r}")
        self.sample_rate, self.steps = float(sample_rate), int(steps)
        self.rows = torch.arange(rank, int(total_size), int(world_size))

    def batches(self, source: NoiseSource) -> Iterator[torch.Tensor]:
        """`steps` index batches of this rank's rows, each row in each batch with probability q,
        drawn in O(batch) (NoiseSource.poisson_subset: a Binomial size, then a uniform subset of
        that size, the same law as a coin per row at a fraction of the cost on large tables)."""
        n = len(self.rows)
        for _ in range(self.steps):
            yield self.rows[torch.from_numpy(source.poisson_subset(n, self.sample_rate))]

    def __len__(self) -> int:
        return self.steps
