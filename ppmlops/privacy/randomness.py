"""Randomness for every draw that touches private rows: noise, sampling masks, canary coins.

Two modes, named on the model card and in every ledger entry:

* ``secure`` (the default): each source is keyed from OS entropy (``os.urandom``) and the key is
  never written down, so nobody can replay a run's draws. Gaussian noise comes from AES-256-CTR
  under a subkey (ppmlops.privacy.cipher_noise); uniforms, coins and sampled subsets from ChaCha20
  (``randomgen.ChaCha`` with 20 rounds, the stream cipher behind Linux's own CSPRNG); integer
  draws for the exact discrete Gaussian come from ``secrets``.
* ``reproducible``: the same generators keyed from a hash of public parts (spec seed, run id,
  epoch, rank, role). Replaying the run gives the same model bit for bit, so the privacy claim
  does NOT hold against an adversary who knows those parts: for tests and benchmarks only, and
  the deploy policy refuses such models.

Floating point. A Gaussian sample added to a float carries information in its low bits about
the value it was added to (Jin et al. 2022, arXiv 2112.05307; Holohan & Braghin 2021, arXiv
2107.10138). Gradient noise is therefore the sum of two independent N(0, std^2) draws divided by
sqrt(2) (same variance, a support too dense to invert), each draw from uniforms no other draw
shares, from AES-256-CTR (ppmlops.privacy.cipher_noise says why two suffice where Opacus's secure
mode, over torch's shared-uniform Box-Muller, takes four).
Released counts avoid floats altogether: they are integers plus an exact discrete Gaussian
(Canonne, Kamath & Steinke 2020, arXiv 2004.00010, Algorithms 1-3), whose Renyi DP at sensitivity
Delta is at most alpha Delta^2 / (2 sigma^2), the continuous Gaussian's, so the ledger charges it
as such.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import secrets
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal, Sequence

import numpy as np

from ppmlops.errors import PpmlopsError

Mode = Literal["secure", "reproducible"]
MODES: tuple[Mode, ...] = ("secure", "reproducible")

# sigma^2 of the discrete Gaussian is rounded UP to this grid, so the noise is never smaller
# than planned and the rationals of the exact sampler stay small.
_SIGMA2_GRID = 2**20


def discrete_sigma2(sigma: float) -> Fraction:
    """The variance parameter the exact sampler uses for `sigma`: sigma^2 rounded up to the grid,
    in exact arithmetic (a float product sigma * sigma may round below the true square)."""
    if not (math.isfinite(sigma) and sigma > 0):
        raise RandomnessError(f"discrete Gaussian sigma must be a finite number > 0, got {sigma!r}")
    return Fraction(math.ceil(Fraction(sigma) ** 2 * _SIGMA2_GRID), _SIGMA2_GRID)


class RandomnessError(PpmlopsError):
    """A randomness mode or parameter is not usable."""


def check_mode(mode: object) -> Mode:
    if mode not in MODES:
        raise RandomnessError(f"randomness must be one of {', '.join(MODES)}, got {mode!r}")
    return mode  # type: ignore[return-value]


def _key_from(parts: Sequence[object]) -> int:
    digest = hashlib.sha256(json.dumps([str(p) for p in parts]).encode("utf-8")).digest()
    return int.from_bytes(digest, "big")


@dataclass(frozen=True)
class Randomness:
    """How a run draws its random numbers: the mode plus, in reproducible mode only, public parts.

    ``source(role, ...)`` hands out one independent stream per use; in secure mode every call
    draws a fresh 256-bit key from the OS, so two sources never share a stream and none can be
    reconstructed later.
    """

    mode: Mode = "secure"
    parts: tuple[str, ...] = ()  # reproducible mode: e.g. (spec seed, run id)

    def __post_init__(self) -> None:
        check_mode(self.mode)

    @classmethod
    def secure(cls) -> "Randomness":
        return cls("secure")

    @classmethod
    def reproducible(cls, *parts: object) -> "Randomness":
        return cls("reproducible", tuple(str(p) for p in parts))

    @classmethod
    def for_run(cls, mode: object, seed: object, run_id: str) -> "Randomness":
        """A run's randomness in `mode` (the plan's, or the run context's): secure, or keyed from the
        run's public parts (its seed and run id). The one place that names those parts, so the
        stages, the workers and a private search draw from the same streams of one run."""
        return cls.secure() if check_mode(mode) == "secure" else cls.reproducible(seed, run_id)

    @property
    def is_secure(self) -> bool:
        return self.mode == "secure"

    def source(self, role: str, *more: object) -> "NoiseSource":
        if self.is_secure:
            return NoiseSource(int.from_bytes(os.urandom(32), "big"), secure=True)
        return NoiseSource(_key_from((*self.parts, role, *more)), secure=False)

    def torch_seed(self, role: str, *more: object) -> int:
        """A 63-bit seed for torch's own generator (model initialisation, which touches no
        private row): fresh OS entropy in secure mode, derived from the parts otherwise."""
        if self.is_secure:
            return secrets.randbits(63)
        return _key_from((*self.parts, role, *more)) >> (256 - 63)


class NoiseSource:
    """One stream of draws. Not picklable on purpose: a key must not travel or be stored."""

    def __init__(self, key: int, *, secure: bool):
        from randomgen import ChaCha

        from ppmlops.privacy.cipher_noise import AesCtrKeystream

        self._secure = secure
        self._gen = np.random.Generator(ChaCha(key=key, rounds=20))
        # Gaussian noise: AES-256-CTR under a subkey of the same key (a PRF output, so the two
        # streams are independent), turned into Gaussians by numpy on the CPU or torch on a GPU
        # (ppmlops.privacy.cipher_noise).
        self._gaussian = AesCtrKeystream(hashlib.sha256(b"ppmlops gaussian noise" + key.to_bytes(32, "big")).digest())
        # Exact integer draws: the OS in secure mode, a seeded generator in reproducible mode.
        self._ints = secrets.SystemRandom() if secure else random.Random(key)

    def __reduce__(self):
        raise TypeError("a NoiseSource holds a secret key and cannot be pickled; create one where it is used")

    # -- continuous ---------------------------------------------------------------------------
    def uniform(self, n: int) -> np.ndarray:
        return self._gen.random(int(n))

    def bernoulli(self, n: int, p: float) -> np.ndarray:
        """n independent coins, each True with probability p (Poisson sampling masks)."""
        return self._gen.random(int(n)) < float(p)

    def poisson_subset(self, n: int, p: float) -> np.ndarray:
        """The sorted indices of `n` items each included independently with probability p, drawn
        in O(size) rather than O(n): a size K ~ Binomial(n, p), then a uniformly random K-subset.

        The same law as n coins. Under independent coins a subset s has probability
        p^|s| (1-p)^(n-|s|), which depends on s only through |s|: so the size is Binomial(n, p),
        and given the size every subset of that size is equally likely, which is what the second
        draw takes. Both draws come from this source's CSPRNG stream (numpy's Generator.binomial
        and Generator.choice without replacement over the ChaCha20 bit generator, both exact
        given uniform bits up to floating point in the binomial's acceptance tests).
        tests/unit/test_sampling_law.py checks sizes and per-index inclusion against the law."""
        n, p = int(n), float(p)
        if not 0.0 <= p <= 1.0:
            raise RandomnessError(f"inclusion probability must be in [0, 1], got {p!r}")
        k = int(self._gen.binomial(n, p)) if n > 0 else 0
        if k == 0:
            return np.empty(0, dtype=np.int64)
        idx = self._gen.choice(n, size=k, replace=False, shuffle=False).astype(np.int64, copy=False)
        idx.sort()
        return idx

    def gaussian(self, shape, std: float, dtype=np.float64) -> np.ndarray:
        """N(0, std^2) per element, each the sum of two independent draws / sqrt(2) (the
        floating-point mitigation; see ppmlops.privacy.cipher_noise), in `dtype`."""
        import torch

        shape = tuple(int(s) for s in np.atleast_1d(shape)) if not isinstance(shape, tuple) else shape
        torch_dtype = torch.float32 if np.dtype(dtype) == np.float32 else torch.float64
        return self.gaussian_tensor(math.prod(shape), std, torch_dtype).numpy().reshape(shape)

    def gaussian_tensor(self, count: int, std: float, dtype=None, device=None):
        """`count` values of N(0, std^2) as a torch tensor of `dtype` (float32 by default), made on
        `device` (the training GPU, say) from this source's AES-256-CTR keystream."""
        from ppmlops.privacy.cipher_noise import gaussian_noise

        if std < 0 or not math.isfinite(std):
            raise RandomnessError(f"noise std must be a finite number >= 0, got {std!r}")
        return gaussian_noise(self._gaussian, count, std, dtype, device)

    # -- exact, for counts ----------------------------------------------------------------------
    def discrete_gaussian(self, sigma: float, size: int = 1) -> list[int]:
        """`size` exact draws of the discrete Gaussian N_Z(0, sigma^2) (sigma^2 rounded up)."""
        sigma2 = discrete_sigma2(sigma)
        return [self._discrete_gaussian(sigma2) for _ in range(int(size))]

    def _bernoulli(self, p: Fraction) -> bool:
        return self._ints.randrange(p.denominator) < p.numerator

    def _bernoulli_exp(self, gamma: Fraction) -> bool:
        """Bernoulli(exp(-gamma)) for rational gamma >= 0 (CKS20 Algorithm 1)."""
        while gamma > 1:
            if not self._bernoulli_exp_small(Fraction(1)):
                return False
            gamma -= 1
        return self._bernoulli_exp_small(gamma)

    def _bernoulli_exp_small(self, gamma: Fraction) -> bool:
        k = 1
        while self._bernoulli(gamma / k):
            k += 1
        return k % 2 == 1

    def _discrete_laplace(self, t: int) -> int:
        """P(x) proportional to exp(-|x| / t) over the integers (CKS20 Algorithm 2)."""
        while True:
            u = self._ints.randrange(t)
            if not self._bernoulli_exp(Fraction(u, t)):
                continue
            v = 0
            while self._bernoulli_exp(Fraction(1)):
                v += 1
            x = u + t * v
            negative = self._ints.randrange(2) == 1
            if negative and x == 0:
                continue
            return -x if negative else x

    def _discrete_gaussian(self, sigma2: Fraction) -> int:
        """CKS20 Algorithm 3: discrete Laplace proposals accepted with the Gaussian ratio."""
        t = math.isqrt(math.floor(sigma2)) + 1
        while True:
            y = self._discrete_laplace(t)
            gamma = (abs(y) - sigma2 / t) ** 2 / (2 * sigma2)
            if self._bernoulli_exp(gamma):
                return y
