"""Gaussian noise from AES-256-CTR (ppmlops.privacy.cipher_noise; issue 28, item 4).

The keystream is checked against the published test vectors of NIST SP 800-38A (F.5.5,
CTR-AES256) by encrypting with our stream's construction; the Gaussians against N(0, 1) by
Kolmogorov-Smirnov, moments, tail frequencies and independence of neighbours; and the checks are
shown to catch a wrong law. Fixed keys: the tests cannot flake.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from ppmlops.privacy.cipher_noise import (AesCtrKeystream, BYTES_PER_OUTPUT, gaussian_noise, standard_normals,
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
    draws = rng.standard_normal(400_001)
    overlapping = (draws[:-1] + draws[1:]) / math.sqrt(2)  # N(0, 1) each, but neighbours correlate 0.5
    assert stats.kstest(overlapping, "norm").pvalue > 1e-3
    assert abs(np.corrcoef(overlapping[:-1], overlapping[1:])[0, 1]) > 0.4
    assert BYTES_PER_OUTPUT == 24
