"""Gaussian noise from AES-256-CTR at about the speed of the cipher, on the device that trains.

Why. Drawing DP-SGD's noise with numpy's Gaussian sampler over ChaCha20 cost 525 us a step for
the Adult MLP's 7,106 parameters, of which the cipher was about 1%: the rest is turning bits into
Gaussians one call at a time, four times over. Here OpenSSL's AES-256 in counter mode (through
`cryptography`, AES-NI where the CPU has it) makes the bits in one call, and torch turns them into
Gaussians with one vectorised Box-Muller transform, on the training device when that is a GPU.

The transform. Each Gaussian takes its own pair of uniforms from the keystream:

    R = sqrt(-2 ln U1),  Z = R cos(2 pi U2),
    U1 = (k1 + 1/2) / 2^63 for the low 63 bits k1 of a 64-bit word,
    U2 = (k2 + 1/2) / 2^31 for the low 31 bits k2 of a 32-bit word,

computed in the parameters' precision (Box & Muller 1958: for independent uniform U1, U2 on
(0, 1), Z is exactly N(0, 1)). Only the cosine branch is used; the sine of the same pair is
thrown away, so no two Gaussians share a uniform (see the mitigation below). U1 is never 0 (ln
is finite; float32 represents 2^-64 exactly and a small k1 without rounding, so the tail, where
U1 is small, is as precise as float64 would make it) and its smallest value 2^-64 bounds |Z| by
R_max = sqrt(128 ln 2) = 9.42: the sampler's law differs from N(0, 1) by at most
P(|N(0,1)| > 9.42) < 4.6e-21 in total variation (the cut tail; the discretisation of U1 and U2
is below the resolution of the result). `tail_mass` returns that bound; a run of T steps over d noisy coordinates, each the sum of two such draws, is within
2 d T tail_mass() of exact Gaussian noise in total variation, which adds at most
(1 + e^eps) 2 d T tail_mass() to its delta: 3.4e-8 for 10^8 parameters over 10^4 steps at eps 1
(0.3% of delta 1e-5), 2.4e-12 for the Adult MLP's 7,106. ppmlops leaves it out of the ledger and
says so here.

The floating-point mitigation, re-derived. A float Gaussian added to a float value leaves in the
low bits of the sum traces of the value (Mironov 2012 for Laplace; Jin et al. 2022,
arXiv 2112.05307, for Gaussians; Holohan & Braghin 2021, arXiv 2107.10138): the set of floats a
sampler can output is sparse and structured, so the set of values consistent with one output is
small. Holohan & Braghin's remedy: output the sum of n independent Gaussian draws scaled by
1/sqrt(n) (same variance), whose set of reachable values is dense enough that the attack's
candidate set is no longer informative; they show n = 2 suffices in their setting, when the n
draws are independent, i.e. computed from disjoint random inputs. torch's normal (which Opacus's
secure mode calls) produces Gaussians in pairs from one pair of uniforms (both Box-Muller
branches), so two consecutive draws share their uniforms and are jointly a function of one
pair; Opacus therefore sums 2n = 4 draws and divides by 2. Here every draw has uniforms of its
own, so n = 2 independent draws, (Z1 + Z2) / sqrt(2), give the mitigation with half the bits and
half the transforms. Draws and sum are in the parameters' dtype, as torch.normal's are in
Opacus.

Keys. In secure mode the key is 32 bytes of OS entropy held only by this object (never written
or pickled); in reproducible mode it is derived from the run's public parts, like every other
reproducible source (ppmlops.privacy.randomness). The counter starts at zero and runs on across
calls, so a stream never reuses keystream.
"""

from __future__ import annotations

import math

import numpy as np

# bytes of keystream per output: two Gaussians, each an 8-byte radius word and a 4-byte angle word
BYTES_PER_OUTPUT = 24
_CHUNK = 1 << 24  # keystream is made in pieces of at most 16 MiB, so memory stays bounded


def tail_mass() -> float:
    """An upper bound on P(|N(0,1)| > R_max), the law's one departure from N(0, 1) (see above)."""
    r_max = math.sqrt(-2.0 * math.log(2.0 ** -64))
    return math.erfc(r_max / math.sqrt(2.0))


class AesCtrKeystream:
    """AES-256-CTR keystream from `key` (32 bytes), the counter starting at zero."""

    def __init__(self, key: bytes):
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        if len(key) != 32:
            raise ValueError("AES-256 needs a 32-byte key")
        self._enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
        self._zeros = bytes(0)

    def __reduce__(self):
        raise TypeError("a keystream holds a secret key and cannot be pickled")

    def read(self, n: int) -> np.ndarray:
        """The next `n` bytes of keystream (the encryption of zeros), as uint8."""
        n = int(n)
        out = np.empty(n, dtype=np.uint8)
        view = memoryview(out)
        done = 0
        while done < n:
            m = min(_CHUNK, n - done)
            if len(self._zeros) < m:
                self._zeros = bytes(m)
            # update() returns m bytes for m bytes in CTR mode (a stream mode: nothing is held back).
            view[done:done + m] = self._enc.update(memoryview(self._zeros)[:m])
            done += m
        return out


_LOW63, _LOW31 = 0x7FFF_FFFF_FFFF_FFFF, 0x7FFF_FFFF


def standard_normals(raw, dtype=None, device=None):
    """Z = sqrt(-2 ln U1) cos(2 pi U2) per 12 bytes of `raw` (see the module), in `dtype`: the
    first 8/12 of the bytes are the radius words, the rest the angle words, in the same order.
    In place where it can be: at a few thousand parameters the cost is per operation."""
    import torch

    dtype = dtype or torch.float32
    t = torch.as_tensor(raw)
    if device is not None:
        t = t.to(device, non_blocking=True)
    n = t.numel() // 12
    radius = t[: 8 * n].view(torch.int64).bitwise_and(_LOW63).to(dtype)
    radius.add_(0.5).mul_(2.0 ** -63).log_().mul_(-2.0).sqrt_()
    angle = t[8 * n: 12 * n].view(torch.int32).bitwise_and(_LOW31).to(dtype)
    angle.add_(0.5).mul_(2.0 * math.pi * 2.0 ** -31).cos_()
    return radius.mul_(angle)


def gaussian_noise(stream: AesCtrKeystream, count: int, std: float, dtype=None, device=None):
    """`count` values of N(0, std^2), each (Z1 + Z2) / sqrt(2) of two independent draws, as a torch
    tensor of `dtype` (default float32) on `device` (default CPU)."""
    import torch

    dtype = dtype or torch.float32
    count = int(count)
    if count == 0:
        return torch.zeros(0, dtype=dtype, device=device)
    z = standard_normals(stream.read(BYTES_PER_OUTPUT * count), dtype, device)  # 2 * count draws
    return z[:count].add_(z[count:]).mul_(std / math.sqrt(2.0))
