"""Gaussian noise from AES-256-CTR within 3x of torch.normal's time, on the device that trains.

Why. Drawing DP-SGD's noise with numpy's Gaussian sampler over ChaCha20 cost 525 us a step for
the Adult MLP's 7,106 parameters, of which the cipher was about 1%: the rest is turning bits into
Gaussians one call at a time, four times over. Here OpenSSL's AES-256 in counter mode (through
`cryptography`, AES-NI where the CPU has it) makes the bits, and a vectorised Box-Muller transform
turns them into Gaussians: numpy's on the CPU, torch's on the training device when that is a GPU.

The transform. Each Gaussian takes its own pair of uniforms from the keystream:

    R = sqrt(-2 ln U1),  Z = R cos(theta),
    U1 = |k1 + 1/2| / 2^63 for a 64-bit word k1 read as a signed integer,
    theta = 2 pi k2 / 2^32 for a 32-bit word k2 read as a signed integer,

computed in the parameters' precision (Box & Muller 1958: for independent U1 uniform on (0, 1)
and theta uniform on the circle, Z is exactly N(0, 1)). U1 is uniform on the 2^63 midpoints
(j + 1/2) / 2^63: each j + 1/2 is |k1 + 1/2| for exactly two words, j and -1 - j, so folding the
sign is the same law as masking the sign bit (and costs one float pass instead of an integer
one). theta / 2 pi is uniform on the 2^32 evenly spaced points of [-1/2, 1/2), so cos(theta)
has the law of cos(2 pi U2) for U2 uniform on the same grid of [0, 1) (cos has period 2 pi); the
argument stays within [-pi, pi], where the cosine is cheapest. Only the cosine branch is used;
the sine of the same pair is never computed, so no two Gaussians share a uniform (see the
mitigation below). U1 is never 0 (ln is finite; float32 represents 2^-64 exactly and a small
|k1 + 1/2| without rounding, so the tail, where U1 is small, is as precise as float64 would
make it) and its smallest value 2^-64 bounds |Z| by R_max = sqrt(128 ln 2) = 9.42: the sampler's
law differs from N(0, 1) by at most P(|N(0,1)| > 9.42) < 4.6e-21 in total variation (the cut
tail; the discretisation of U1 and theta is below the resolution of the result). `tail_mass`
returns that bound; a run of T steps over d noisy coordinates, each the sum of two such draws,
is within 2 d T tail_mass() of exact Gaussian noise in total variation, which adds at most
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

Blocks, and where the time goes. Outputs come in blocks of BLOCK = 32,768 (the last block of a
call holds the rest): a block of b outputs reads the next 24 b bytes of keystream, first 2 b
radius words, then 2 b angle words; draw i takes radius word i and angle word i, and output j
sums draws j and b + j. So no two draws of a call, or of two calls, share a byte of keystream.
On the CPU in float32 (training) numpy does the transform block by block: the cipher writes
each block's keystream straight into a buffer the stream keeps (update_into, no copy), and the
dozen passes over it (conversions, numpy's vectorised float32 log2, sqrt and cos, faster than
torch's on an AVX-512 CPU) run over buffers that stay in the L2 cache; std / sqrt(2) goes into
the radius, sqrt(-std^2 ln 2 log2 U1), not into a pass of its own. On one thread that is about 2.6x
torch.normal's time at 7,106 parameters and 2x at one and ten million (benchmarks/noise.py; the
cipher alone is 0.5-0.9x; torch.normal is not a CSPRNG and uses both Box-Muller branches of each
pair, so it transforms a quarter of our uniforms).
On a GPU, or in float64, torch does the same transform on the device, all blocks at once.

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
# outputs per block: a block's keystream (768 KiB) and its two float32 buffers (256 KiB each) stay
# near the L2 cache while the dozen passes of the transform run over them
BLOCK = 1 << 15
_CHUNK = 1 << 24  # read() makes keystream in pieces of at most 16 MiB, so memory stays bounded
_SLACK = 15  # update_into's output may need a cipher block less one byte beyond the input's length
_ANGLE = 2.0 * math.pi * 2.0 ** -32  # radians per step of the signed 32-bit angle word


def tail_mass() -> float:
    """An upper bound on P(|N(0,1)| > R_max), the law's one departure from N(0, 1) (see above)."""
    r_max = math.sqrt(-2.0 * math.log(2.0 ** -64))
    return math.erfc(r_max / math.sqrt(2.0))


_zeros = b""


def _zero_bytes(n: int) -> memoryview:
    """n zero bytes to encrypt: one shared, immutable buffer (bytes(n) is calloc'd, so its pages
    read as the kernel's zero page and cost no cache)."""
    global _zeros
    if len(_zeros) < n:
        _zeros = bytes(max(n, 24 * BLOCK))
    return memoryview(_zeros)[:n]


class AesCtrKeystream:
    """AES-256-CTR keystream from `key` (32 bytes), the counter starting at zero."""

    def __init__(self, key: bytes):
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        if len(key) != 32:
            raise ValueError("AES-256 needs a 32-byte key")
        self._enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
        self._scratch = None

    def __reduce__(self):
        raise TypeError("a keystream holds a secret key and cannot be pickled")

    def read_into(self, buf: np.ndarray, n: int) -> np.ndarray:
        """Write the next `n` bytes of keystream into the uint8 array `buf`, which must hold
        n + 15 bytes (update_into's rule for block ciphers); returns buf[:n]."""
        if buf.size < n + _SLACK:
            raise ValueError(f"a buffer for {n} bytes of keystream must hold {n + _SLACK}")
        # CTR is a stream mode: update_into writes as many bytes as it reads, holding none back.
        for done in range(0, n, _CHUNK):
            m = min(_CHUNK, n - done)
            self._enc.update_into(_zero_bytes(m), buf[done:done + m + _SLACK])
        return buf[:n]

    def read(self, n: int) -> np.ndarray:
        """The next `n` bytes of keystream (the encryption of zeros), as uint8."""
        n = int(n)
        return self.read_into(np.empty(n + _SLACK, dtype=np.uint8), n)

    def scratch(self, outputs: int):
        """Buffers for blocks of up to `outputs` outputs (at most BLOCK): keystream bytes and two
        float32 arrays of 2 * outputs draws. Kept for the next call, since allocating them anew
        costs page faults at every step; so a stream is for one thread at a time (as its cipher
        context is). They hold the last block's keystream and draws, which are no more secret
        than the noise made from them."""
        if self._scratch is None or self._scratch[1].size < 2 * outputs:
            self._scratch = (np.empty(BYTES_PER_OUTPUT * outputs + _SLACK, np.uint8),
                             np.empty(2 * outputs, np.float32), np.empty(2 * outputs, np.float32))
        return self._scratch


def standard_normals(raw, dtype=None, device=None):
    """Draws Z = sqrt(-2 ln U1) cos(theta) per 12 bytes of `raw`'s last dimension (see the
    module), in `dtype`: the first 8/12 of each row's bytes are the radius words, the rest the
    angle words, in the same order. In torch, so on any device. In place where it can be: at a
    few thousand parameters the cost is per operation."""
    import torch

    dtype = dtype or torch.float32
    t = torch.as_tensor(raw)
    if device is not None:
        t = t.to(device, non_blocking=True)
    n = t.shape[-1] // 12
    radius = t[..., : 8 * n].view(torch.int64).to(dtype)
    radius.add_(0.5).abs_().mul_(2.0 ** -63).log_().mul_(-2.0).sqrt_()
    angle = t[..., 8 * n: 12 * n].view(torch.int32).to(dtype).mul_(_ANGLE).cos_()
    return radius.mul_(angle)


def _blocks_numpy(stream: AesCtrKeystream, out: np.ndarray, std: float) -> None:
    """`out` (float32) filled with N(0, std^2) noise block by block, on the CPU: numpy's vectorised
    float32 log2, cos and sqrt are faster than torch's on the CPU, and each pass is over buffers
    that stay in cache."""
    count = out.size
    # std / sqrt(2) goes into the radius: sqrt(-std^2 ln 2 log2 U1) = (std / sqrt 2) sqrt(-2 ln U1),
    # saving a pass, where std^2 ln 2 times log2 U1 (-64 to -8.6e-8) stays a normal float32.
    folded = 2.0 ** -50 <= std <= 2.0 ** 50
    neg_var = np.float32(-math.log(2.0) * (std * std if folded else 1.0))
    kbuf, radius, angle = stream.scratch(min(count, BLOCK))
    update_into = stream._enc.update_into  # straight to the cipher: a block needs no 16 MiB pieces
    half, ulp63, rad = np.float32(0.5), np.float32(2.0 ** -63), np.float32(_ANGLE)
    for lo in range(0, count, BLOCK):
        b = min(BLOCK, count - lo)
        update_into(_zero_bytes(BYTES_PER_OUTPUT * b), kbuf)
        r, c = radius[: 2 * b], angle[: 2 * b]
        np.copyto(r, kbuf[: 16 * b].view(np.int64), casting="unsafe")
        np.add(r, half, out=r)
        np.abs(r, out=r)
        np.multiply(r, ulp63, out=r)
        np.log2(r, out=r)
        np.multiply(r, neg_var, out=r)
        np.sqrt(r, out=r)
        np.copyto(c, kbuf[16 * b: 24 * b].view(np.int32), casting="unsafe")
        np.multiply(c, rad, out=c)
        np.cos(c, out=c)
        np.multiply(c, r, out=c)
        np.add(c[:b], c[b:], out=out[lo:lo + b])
    if not folded:
        np.multiply(out, np.float32(std), out=out)


def _blocks_torch(stream: AesCtrKeystream, out, std: float) -> None:
    """`out` filled with N(0, std^2) noise by torch on its device, all blocks at once."""
    import torch

    count = out.numel()
    t = torch.from_numpy(stream.read(BYTES_PER_OUTPUT * count))
    if out.device.type != "cpu":
        t = t.to(out.device, non_blocking=True)
    full, rest = divmod(count, BLOCK)
    if full:
        z = standard_normals(t[: full * BYTES_PER_OUTPUT * BLOCK].view(full, -1), out.dtype)
        torch.add(z[:, :BLOCK], z[:, BLOCK:], out=out[: full * BLOCK].view(full, BLOCK))
    if rest:
        z = standard_normals(t[full * BYTES_PER_OUTPUT * BLOCK:], out.dtype)
        torch.add(z[:rest], z[rest:], out=out[full * BLOCK:])
    out.mul_(std / math.sqrt(2.0))


def gaussian_noise(stream: AesCtrKeystream, count: int, std: float, dtype=None, device=None):
    """`count` values of N(0, std^2), each (Z1 + Z2) / sqrt(2) of two independent draws, as a torch
    tensor of `dtype` (default float32) on `device` (default CPU)."""
    import torch

    dtype = dtype or torch.float32
    out = torch.empty(int(count), dtype=dtype, device=device)
    if out.numel() == 0:
        return out
    if out.device.type == "cpu" and dtype == torch.float32:
        _blocks_numpy(stream, out.numpy(), float(std))
    else:
        _blocks_torch(stream, out, float(std))
    return out
