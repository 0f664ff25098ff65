"""Gaussian noise from AES-256-CTR (ppmlops.privacy.cipher_noise; issue 28, item 4).

The keystream is checked against the published test vectors of NIST SP 800-38A (F.5.5,
CTR-AES256) by encrypting with our stream's construction; the Gaussians against N(0, 1) by
Kolmogorov-Smirnov (float64), chi-square over equiprobable bins (the float32 path), moments,
tail frequencies and independence of neighbours and of the two draws of each output; the fast
float32 path against the torch transform in float64 on the documented keystream layout, which
also shows each output is two draws from disjoint bytes and that calls never reuse keystream;
and the checks are shown to catch a wrong law. Fixed keys: the tests cannot flake.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from ppmlops.privacy import cipher_noise
from ppmlops.privacy.cipher_noise import (BLOCK, AesCtrKeystream, BYTES_PER_OUTPUT, gaussian_noise, standard_normals,
                                          tail_mass)
from ppmlops.privacy.randomness import NoiseSource, Randomness, RandomnessError

KEY = bytes.fromhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
COUNTER = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
PLAIN = bytes.fromhex("6bc1bee22e409f96e93d7e117393172a" "ae2d8a571e03ac9c9eb76fac45af8e51"
                      "30c81c46a35ce411e5fbc1191a0a52ef" "f69f2445df4f9b17ad2b417be66c3710")
CIPHER = bytes.fromhex("601ec313775789a5b7a7f504bbf3d228" "f443e3ca4d62b59aca84e990cacaf5c5"
                       "2b0930daa23de94ce87017ba2d84988d" "dfc9c58db67aada613c2dd08457941a6")


def test_the_keystream_is_aes_256_ctr_by_the_nist_vectors():
    """SP 800-38A F.5.5 with its initial counter block: our stream XOR the plaintext is the
    published ciphertext, whole and when read in pieces."""
    stream = AesCtrKeystream(KEY)
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    # The stream starts its counter at zero; the vector's counter block is set the same way.
    stream._enc = Cipher(algorithms.AES(KEY), modes.CTR(COUNTER)).encryptor()
    pieces = np.concatenate([stream.read(5), stream.read(27), stream.read(32)])
    assert bytes(pieces ^ np.frombuffer(PLAIN, np.uint8)) == CIPHER
    # From a zero counter the first block is AES_K(0^128): the cipher itself, checked the same way.
    zero = AesCtrKeystream(KEY).read(16)
    ecb = Cipher(algorithms.AES(KEY), modes.ECB()).encryptor().update(bytes(16))
    assert bytes(zero) == ecb


def test_a_stream_never_repeats_keystream_across_reads():
    s = AesCtrKeystream(KEY)
    a, b = s.read(4096), s.read(4096)
    assert not np.array_equal(a, b)
    assert bytes(AesCtrKeystream(KEY).read(8192)) == bytes(np.concatenate([a, b]))


def test_the_gaussians_are_standard_normal():
    z = gaussian_noise(AesCtrKeystream(KEY), 400_000, 1.0, torch.float64).numpy()
    assert stats.kstest(z, "norm").pvalue > 1e-3
    assert abs(z.mean()) < 5 / math.sqrt(len(z)) and abs(z.var() - 1) < 0.01
    assert abs(stats.skew(z)) < 0.02 and abs(stats.kurtosis(z)) < 0.04
    for k in (1, 2, 3, 4):  # two-sided tail frequencies within 5 standard errors
        p = math.erfc(k / math.sqrt(2))
        assert abs(np.mean(np.abs(z) > k) - p) < 5 * math.sqrt(p * (1 - p) / len(z))
    assert abs(np.corrcoef(z[:-1], z[1:])[0, 1]) < 5 / math.sqrt(len(z))  # neighbours independent


def test_each_draw_is_normal_and_the_output_scales_with_std():
    """The raw draws before the sum of two are N(0, 1) too; the output's spread is std."""
    draws = standard_normals(AesCtrKeystream(KEY).read(12 * 200_000), torch.float64).numpy()
    assert stats.kstest(draws, "norm").pvalue > 1e-3
    x = gaussian_noise(AesCtrKeystream(b"\x01" * 32), 200_000, 3.5).numpy()
    assert x.dtype == np.float32 and abs(x.std() - 3.5) < 0.03


def test_the_tail_bound_is_what_the_module_says():
    assert tail_mass() < 5e-21
    # the largest draw the words allow: U1 = 2^-64 (63 zero bits plus the half)
    worst = torch.tensor([0] * 8 + [0] * 4, dtype=torch.uint8).numpy()
    assert float(standard_normals(worst, torch.float64)[0]) == pytest.approx(math.sqrt(128 * math.log(2)), rel=1e-9)


def test_noise_sources_give_the_same_noise_only_in_reproducible_mode():
    rep = [Randomness.reproducible("seed", "run").source("noise", 1).gaussian_tensor(100, 1.0) for _ in range(2)]
    assert torch.equal(rep[0], rep[1])
    sec = [Randomness.secure().source("noise", 1).gaussian_tensor(100, 1.0) for _ in range(2)]
    assert not torch.equal(sec[0], sec[1])
    assert NoiseSource(7, secure=False).gaussian((3, 2), 1.0).shape == (3, 2)
    with pytest.raises(RandomnessError, match="noise std"):
        NoiseSource(7, secure=False).gaussian_tensor(3, float("nan"))
    with pytest.raises(TypeError, match="cannot be pickled"):
        import pickle

        pickle.dumps(AesCtrKeystream(KEY))


def test_the_checks_catch_a_wrong_law():
    """The same checks reject noise that is not N(0, 1) iid: a uniform of the same variance, and
    sums of two draws where neighbouring outputs share one draw (a slicing bug in the sum)."""
    rng = np.random.default_rng(1)
    uniform = rng.uniform(-math.sqrt(3), math.sqrt(3), 400_000)
    assert stats.kstest(uniform, "norm").pvalue < 1e-6
    assert _chi2_pvalue(uniform) < 1e-6
    # and a float32 law a step off: the variance 2% too large
    assert _chi2_pvalue(rng.standard_normal(12 * BLOCK) * 1.02) < 1e-4
    draws = rng.standard_normal(400_001)
    overlapping = (draws[:-1] + draws[1:]) / math.sqrt(2)  # N(0, 1) each, but neighbours correlate 0.5
    assert stats.kstest(overlapping, "norm").pvalue > 1e-3
    assert abs(np.corrcoef(overlapping[:-1], overlapping[1:])[0, 1]) > 0.4
    assert BYTES_PER_OUTPUT == 24


def _expected(key: bytes, count: int, std: float, skip: int = 0) -> np.ndarray:
    """The noise the module's docstring specifies, in float64 from the keystream itself: blocks of
    BLOCK outputs, each 24 b bytes of 2 b radius words then 2 b angle words, output j the scaled
    sum of draws j and b + j."""
    raw = AesCtrKeystream(key).read(skip + BYTES_PER_OUTPUT * count)[skip:]
    out = []
    for lo in range(0, count, BLOCK):
        b = min(BLOCK, count - lo)
        z = standard_normals(raw[BYTES_PER_OUTPUT * lo: BYTES_PER_OUTPUT * (lo + b)], torch.float64).numpy()
        out.append((z[:b] + z[b:]) * std / math.sqrt(2.0))
    return np.concatenate(out)


# float32 against the float64 reference: U1 near 1 rounds to float32's step 2^-24 there, so a
# small radius (R^2 = -2 ln U1 below 1e-3, a draw in a thousand) is off by up to about 1e-5
F32 = dict(rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("count", [1, 7_106, BLOCK, 2 * BLOCK + 1_001])
def test_every_path_makes_the_documented_noise(count):
    """float32 on the CPU (numpy, block by block), float64 and the device path (torch) all give the
    specified function of the keystream: float64 to 1e-12, float32 within its rounding, and the
    two float32 paths agree to a few units in the last place of the draws. So each output is two
    draws from disjoint keystream bytes, across block boundaries too."""
    want = _expected(KEY, count, 2.5)
    fast = gaussian_noise(AesCtrKeystream(KEY), count, 2.5)
    assert fast.dtype == torch.float32 and fast.shape == (count,)
    assert np.allclose(gaussian_noise(AesCtrKeystream(KEY), count, 2.5, torch.float64).numpy(), want,
                       rtol=1e-12, atol=1e-12)
    assert np.allclose(fast.numpy(), want, **F32)
    device = torch.empty(count, dtype=torch.float32)  # what a GPU runs, here on the CPU
    cipher_noise._blocks_torch(AesCtrKeystream(KEY), device, 2.5)
    assert np.allclose(fast.numpy(), device.numpy(), rtol=1e-5, atol=1e-5)


def test_calls_continue_the_keystream_and_never_reuse_it():
    """Each call reads exactly 24 bytes per output past the last call's, in every path, and the
    buffers a stream keeps between calls do not reach back into what it returned."""
    s = AesCtrKeystream(KEY)
    first = gaussian_noise(s, 5_000, 1.0)
    kept = first.clone()
    second = gaussian_noise(s, BLOCK + 3, 1.0)
    third = gaussian_noise(s, 10, 1.0, torch.float64)
    assert torch.equal(first, kept)
    assert np.allclose(second.numpy(), _expected(KEY, BLOCK + 3, 1.0, skip=24 * 5_000), **F32)
    assert np.allclose(third.numpy(), _expected(KEY, 10, 1.0, skip=24 * (5_000 + BLOCK + 3)), rtol=1e-12)
    tail = AesCtrKeystream(KEY).read(24 * (5_010 + BLOCK + 3) + 16)[-16:]
    assert bytes(s.read(16)) == bytes(tail)
    buf = np.empty(40, np.uint8)
    with pytest.raises(ValueError, match="must hold"):
        s.read_into(buf, 30)


def _chi2_pvalue(z: np.ndarray, bins: int = 64) -> float:
    """Chi-square of z against N(0, 1) over `bins` equiprobable bins."""
    edges = stats.norm.ppf(np.arange(1, bins) / bins)
    counts = np.bincount(np.searchsorted(edges, z), minlength=bins)
    return stats.chisquare(counts).pvalue


def test_the_float32_noise_is_standard_normal_and_its_draws_independent():
    """The training path, float32 on the CPU, over several blocks: chi-square over bins, moments,
    tails and neighbours; and its two draws per output (recomputed from the same keystream) are
    each N(0, 1) and uncorrelated, as are their squares."""
    n = 12 * BLOCK + 5_000
    z = gaussian_noise(AesCtrKeystream(KEY), n, 1.0).numpy().astype(np.float64)
    assert _chi2_pvalue(z) > 1e-4
    assert abs(z.mean()) < 5 / math.sqrt(n) and abs(z.var() - 1) < 6 * math.sqrt(2 / n)
    for k in (1, 2, 3, 4):
        p = math.erfc(k / math.sqrt(2))
        assert abs(np.mean(np.abs(z) > k) - p) < 5 * math.sqrt(p * (1 - p) / n)
    assert abs(np.corrcoef(z[:-1], z[1:])[0, 1]) < 5 / math.sqrt(n)
    raw = AesCtrKeystream(KEY).read(BYTES_PER_OUTPUT * BLOCK)
    draws = standard_normals(raw, torch.float64).numpy()
    z1, z2 = draws[:BLOCK], draws[BLOCK:]
    assert _chi2_pvalue(z1, 32) > 1e-4 and _chi2_pvalue(z2, 32) > 1e-4
    assert abs(np.corrcoef(z1, z2)[0, 1]) < 5 / math.sqrt(BLOCK)
    assert abs(np.corrcoef(z1 ** 2, z2 ** 2)[0, 1]) < 5 / math.sqrt(BLOCK)
    # and a 4 x 4 contingency table of the draws' quartiles: independent cells
    q = stats.norm.ppf([0.25, 0.5, 0.75])
    table = np.zeros((4, 4))
    np.add.at(table, (np.searchsorted(q, z1), np.searchsorted(q, z2)), 1)
    assert stats.chi2_contingency(table).pvalue > 1e-4


class _FixedWords:
    """A cipher context that hands out chosen words instead of keystream."""

    def __init__(self, words: bytes):
        self.words = words

    def update_into(self, data, buf):
        n = len(data)
        buf[:n] = np.frombuffer((self.words * (n // len(self.words) + 1))[:n], np.uint8)
        return n


def _from_words(radius: list[int], angle: list[int]) -> AesCtrKeystream:
    """A stream whose every output's two draws use radius words `radius` and angle words `angle`."""
    s = AesCtrKeystream(KEY)
    s._enc = _FixedWords(np.array(radius, "<i8").tobytes() + np.array(angle, "<i4").tobytes())
    return s


def test_the_fast_path_keeps_the_tail_and_the_sign_fold():
    """Radius words 0 and -1 are U1 = 2^-64, the largest radius, R_max, exactly as the module
    says; words j and -1 - j are the same U1; angle word 0 is cos = 1 and -2^31 is cos = -1."""
    r_max = math.sqrt(128 * math.log(2))
    top = gaussian_noise(_from_words([0, -1], [0, 0]), 1, math.sqrt(2.0))
    assert float(top[0]) == pytest.approx(2 * r_max, rel=1e-6)
    assert float(gaussian_noise(_from_words([0, 0], [-2 ** 31, 0]), 1, 1.0)[0]) == pytest.approx(0.0, abs=1e-5)
    for j in (5, 2 ** 20 + 3, 2 ** 40 + 12345):
        same = gaussian_noise(_from_words([j, -1 - j], [0, 0]), 1, 1.0)
        one = gaussian_noise(_from_words([j, j], [0, 0]), 1, 1.0)
        assert float(same[0]) == float(one[0])
        assert float(one[0]) == pytest.approx(2 * math.sqrt(-2 * math.log((j + 0.5) / 2 ** 63)) / math.sqrt(2), rel=1e-6)
    assert float(gaussian_noise(_from_words([0, 0], [0, 0]), 1, 1.0, torch.float64)[0]) == pytest.approx(
        math.sqrt(2) * r_max, rel=1e-12)


@pytest.mark.parametrize("std", [0.0, 1e-30, 3e-16, 7e15, 1e30])
def test_any_std_scales_the_noise(std):
    """Where the scale cannot ride in the radius (std^2 would leave float32's normal range) it is
    applied after; std 0 is zeros, never NaN."""
    x = gaussian_noise(AesCtrKeystream(KEY), 20_000, std).numpy().astype(np.float64)
    assert np.all(np.isfinite(x))
    if std == 0:
        assert not np.any(x)
    else:
        assert abs(x.std() / std - 1) < 0.03


def test_dtype_and_device():
    s = AesCtrKeystream(KEY)
    assert gaussian_noise(s, 0, 1.0).shape == (0,)
    assert gaussian_noise(s, 0, 1.0, torch.float64).dtype == torch.float64
    assert gaussian_noise(s, 3, 1.0, device="cpu").dtype == torch.float32
    assert gaussian_noise(s, 3, 1.0, torch.float64, torch.device("cpu")).dtype == torch.float64
    if torch.cuda.is_available():
        x = gaussian_noise(s, BLOCK + 7, 1.0, device="cuda")
        assert x.device.type == "cuda" and x.dtype == torch.float32 and abs(float(x.std()) - 1) < 0.03
