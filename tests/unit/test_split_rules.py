"""The split rules (ppmlops.privacy.split): each computes what it says, bit for bit, and the
ledger keeps a dataset's rule for its life."""

from __future__ import annotations

import hashlib
import random
import sqlite3

import pytest

from ppmlops.privacy.ledger import Ledger, SplitRuleMismatch
from ppmlops.privacy.split import BLAKE2B, DEFAULT_RULE, LEGACY_RULE, SIPHASH, SplitRules

MASK = 2**64 - 1


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & MASK


def siphash24(key: bytes, message: bytes) -> int:
    """SipHash-2-4 written from the paper (Aumasson & Bernstein 2012, section 2), in Python."""
    k0, k1 = int.from_bytes(key[:8], "little"), int.from_bytes(key[8:16], "little")
    v = [k0 ^ 0x736F6D6570736575, k1 ^ 0x646F72616E646F6D, k0 ^ 0x6C7967656E657261, k1 ^ 0x7465646279746573]

    def rounds(n: int) -> None:
        for _ in range(n):
            v[0] = (v[0] + v[1]) & MASK; v[1] = _rotl(v[1], 13); v[1] ^= v[0]; v[0] = _rotl(v[0], 32)  # noqa: E702
            v[2] = (v[2] + v[3]) & MASK; v[3] = _rotl(v[3], 16); v[3] ^= v[2]  # noqa: E702
            v[0] = (v[0] + v[3]) & MASK; v[3] = _rotl(v[3], 21); v[3] ^= v[0]  # noqa: E702
            v[2] = (v[2] + v[1]) & MASK; v[1] = _rotl(v[1], 17); v[1] ^= v[2]; v[2] = _rotl(v[2], 32)  # noqa: E702

    tail = len(message) % 8
    blocks = [int.from_bytes(message[i:i + 8], "little") for i in range(0, len(message) - tail, 8)]
    blocks.append(int.from_bytes(message[len(message) - tail:], "little") | ((len(message) & 0xFF) << 56))
    for m in blocks:
        v[3] ^= m
        rounds(2)
        v[0] ^= m
    v[2] ^= 0xFF
    rounds(4)
    return v[0] ^ v[1] ^ v[2] ^ v[3]


def splitmix_finalizer(x: int) -> int:
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & MASK
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def test_the_python_siphash_gives_the_reference_vectors():
    # vectors.h of the reference implementation: key 00..0f, message 00..(n-1), output little-endian.
    key = bytes(range(16))
    expected = {0: "310e0edd47db6f72", 1: "fd67dc93c539f874", 2: "5a4fa9d909806c0d", 3: "2d7efbd796666785",
                15: "e545be4961ca29a1"}
    for n, hex_le in expected.items():
        assert siphash24(key, bytes(range(n))).to_bytes(8, "little").hex() == hex_le


def test_the_siphash_rule_is_siphash_of_the_row_then_the_finalizer():
    rng = random.Random(4)
    messages = [bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 40))) for _ in range(300)]
    messages += ["\x1f".join(["39", "State-gov", "<=50K"]).encode(), "é€\x1fa".encode(), b""]
    for seed in (0, 7, 2**40 + 3):
        key = hashlib.sha256(f"ppmlops-split:{seed}".encode()).digest().hex()[:16].encode()
        got = SplitRules(SIPHASH, seed, 0.2).hashes(messages).tolist()
        assert got == [splitmix_finalizer(siphash24(key, m)) for m in messages]


def test_the_blake2b_rule_is_the_one_every_earlier_dataset_was_split_by():
    # Digests the split gave before rules were recorded (keyed BLAKE2b-64, key sha256 of the seed).
    pinned = {(0, ("39", "State-gov", "<=50K")): "f5480ff6c85b7e85", (0, ("a\x1fb", "é€")): "bf8f9d1ce460080d",
              (7, ("39", "State-gov", "<=50K")): "450900a40d5b5105", (7, ("a\x1fb", "é€")): "d1b508e883ba9103"}
    for (seed, record), digest in pinned.items():
        h = SplitRules(BLAKE2B, seed, 0.5).hashes(["\x1f".join(record).encode("utf-8")])
        assert int(h[0]).to_bytes(8, "big").hex() == digest
    assert LEGACY_RULE == BLAKE2B


@pytest.mark.parametrize("rule", [BLAKE2B, SIPHASH])
def test_the_verdicts_of_a_chunk_are_those_of_each_row(rule):
    rng = random.Random(1)
    records = [["".join(rng.choice("ab1é€ ,\x1f") for _ in range(rng.randint(0, 9))) for _ in range(rng.randint(1, 5))]
               for _ in range(5_000)]
    for seed, fraction in ((0, 0.2), (3, 0.5), (7, 0.0), (9, 1.0), (11, 1 / 3)):
        rules = SplitRules(rule, seed, fraction)
        expected = [rules.is_test(r) for r in records]
        assert rules.are_test(["\x1f".join(r).encode("utf-8") for r in records]).tolist() == expected
        assert rules.are_test(("\x1f".join(r).encode("utf-8") for r in records)).tolist() == expected
        share = sum(expected) / len(expected)
        assert abs(share - fraction) < 0.03


def test_the_two_rules_split_differently():
    rows = [f"row {i}".encode() for i in range(2000)]
    a, b = SplitRules(BLAKE2B, 0, 0.5).are_test(rows), SplitRules(SIPHASH, 0, 0.5).are_test(rows)
    assert 0.4 < (a != b).mean() < 0.6


def test_the_ledger_keeps_a_datasets_split_rule(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(url)
    assert ledger.split_rule("new") is None
    ledger.register_dataset("new", epsilon_budget=1.0, delta=1e-6, split_rule=DEFAULT_RULE)
    assert ledger.split_rule("new") == DEFAULT_RULE == SIPHASH
    ledger.register_dataset("new", epsilon_budget=1.0, delta=1e-6, split_rule=SIPHASH)  # the same: fine
    ledger.register_dataset("new", epsilon_budget=1.0, delta=1e-6)  # not known yet (before ingest): fine
    with pytest.raises(SplitRuleMismatch, match="split rule 'siphash'.*by 'blake2b'"):
        ledger.register_dataset("new", epsilon_budget=1.0, delta=1e-6, split_rule=BLAKE2B)

    # A dataset registered before rules were recorded has none stored: it keeps the legacy rule.
    ledger.register_dataset("older", epsilon_budget=1.0, delta=1e-6, split_rule=SIPHASH)
    with sqlite3.connect(tmp_path / "ledger.db") as conn:
        conn.execute("UPDATE privacy_datasets SET split_rule = NULL WHERE dataset_id = 'older'")
    assert Ledger(url).split_rule("older") == LEGACY_RULE == BLAKE2B
    with pytest.raises(SplitRuleMismatch):
        Ledger(url).register_dataset("older", epsilon_budget=1.0, delta=1e-6, split_rule=SIPHASH)
    Ledger(url).register_dataset("older", epsilon_budget=1.0, delta=1e-6, split_rule=BLAKE2B)


def test_a_run_splits_by_the_rule_its_dataset_was_registered_with(tmp_path, monkeypatch):
    """Through the stages: a new dataset is split by the default rule and registered with it; a
    dataset registered before rules were recorded is split by the legacy rule in every later run,
    so its rows keep their partitions."""
    import pandas as pd
    from plans import demo_table_run

    from ppmlops.run.records import StagedData
    from ppmlops.stages import assess, ingest

    def staged(run_id: str):
        ctx = demo_table_run(tmp_path, monkeypatch, run_id, rows=3000)
        ingest.run(ctx)
        assess.run(ctx)
        result = ctx.store.read(StagedData).result
        return ctx, result, len(pd.read_parquet(result.snapshot_test))

    ctx, first, test_rows = staged("run-1")
    assert first.split_rule == SIPHASH and "rule siphash" in first.split
    ledger = Ledger(ctx.settings.db_url)
    assert ledger.split_rule(ctx.spec.dataset.id) == SIPHASH
    _, again, again_rows = staged("run-2")
    assert again.split_rule == SIPHASH and again_rows == test_rows and again.sha256 == first.sha256

    db = ctx.settings.db_url.removeprefix("sqlite:///")
    with sqlite3.connect(db) as conn:  # as a ledger written before split rules were recorded
        conn.execute("UPDATE privacy_datasets SET split_rule = NULL")
    _, legacy, legacy_rows = staged("run-3")
    assert legacy.split_rule == BLAKE2B and "rule blake2b" in legacy.split
    assert legacy.sha256 != first.sha256  # the same rows, other partitions
    assert legacy.rows_staged == first.rows_staged and legacy_rows != test_rows
