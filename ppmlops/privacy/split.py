"""Which partition (train or test) a row goes to: a hash of its content, fixed for a dataset's life.

Without a test_source, ingest puts a row in the test partition when a 64-bit hash of its content
(its fields joined by \\x1f, in UTF-8; under a person unit, the person's id) divided by 2^64 is
below training.test_fraction, so a row keeps its partition when the dataset grows between runs.
The ledger's accounting relies on that: train and test rows are charged in separate filters by
parallel composition, which a row that changed partition between runs would break. So the rule
that computes the hash is recorded with the dataset when it is registered (Ledger.split_rule)
and never changes for it; a run whose ingest used another rule is refused.

Two rules, both keyed from the public spec seed (the split needs a uniform hash of the content
that is the same in every run, not secrecy; the key only makes two pipelines' splits differ):

  "blake2b"  keyed BLAKE2b with an 8-byte digest, key sha256("ppmlops-split:<seed>"). One hashlib
             call per row from Python, the slowest part of ingest under this rule
             (benchmarks/ingest_phases.py prints both rules' costs). The rule of every dataset registered before split rules were
             recorded (their ledger row has none).
  "siphash"  SipHash-2-4 (Aumasson & Bernstein 2012; a PRF for short inputs) of the same bytes,
             key the first 16 hex digits of that sha256, then splitmix64's finalizer (a bijection
             of 64-bit words): pandas.util.hash_array computes exactly this in C for a whole
             chunk at once. tests/unit/test_split_rules.py pins it to the
             SipHash reference vectors, so a pandas release that computed something else would
             fail there rather than move rows. The rule of every dataset registered since.

Under "siphash", ingest hashes a block of CSV lines read without quoting in C
(ppmlops/privacy/_splithash.c, `line_hashes`): the line with each delimiter read as \x1f is
the record's fields joined by \x1f, so the hash is computed in place, with no bytes object per
row (translating, splitting and handing pandas a Python object per row cost more than the hash
itself). The extension is optional; without it the same hashes come from the joined fields.
tests/unit/test_split_accelerator.py holds the two to each other.

The verdict compares in float64: a uint64 converts to the nearest double and dividing by 2^64 is
exact, so the verdict is that of the exact quotient rounded as Python's int / int rounds it.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

import numpy as np

try:  # compiled by the install (pyproject.toml's ext-modules), optional: see line_hashes
    from ppmlops.privacy._splithash import siphash_lines as _siphash_lines
except ImportError:
    _siphash_lines = None

BLAKE2B, SIPHASH = "blake2b", "siphash"
RULES = (BLAKE2B, SIPHASH)
LEGACY_RULE = BLAKE2B  # a dataset registered before rules were recorded
DEFAULT_RULE = SIPHASH  # a dataset registered from now on


class SplitRules:
    """The verdicts of one rule under one seed and test fraction."""

    def __init__(self, rule: str, seed: int, fraction: float):
        if rule not in RULES:
            raise ValueError(f"unknown split rule {rule!r} (known: {', '.join(RULES)})")
        self.rule, self.fraction = rule, fraction
        self._key = hashlib.sha256(f"ppmlops-split:{seed}".encode()).digest()  # any int seed, fixed-size key

    def describe(self) -> str:
        return "SipHash-2-4" if self.rule == SIPHASH else "keyed BLAKE2b"

    def are_test(self, joined: Sequence[bytes] | Iterable[bytes]) -> np.ndarray:
        """The verdict for each row, given its fields joined by \\x1f as UTF-8 (True: test); a
        numpy object array of bytes is hashed as it is."""
        return self.verdicts(self.hashes(joined))

    def verdicts(self, hashes: np.ndarray) -> np.ndarray:
        """The verdict for each row given its hash (`hashes` or `line_hashes`)."""
        return hashes.astype(np.float64) / 2.0**64 < self.fraction

    def line_hashes(self, data: bytes, eol: bytes, delimiter: bytes) -> tuple[np.ndarray, np.ndarray] | None:
        """`hashes` of each line of `data` (data.split(eol), the empty part after a final eol
        dropped) with each `delimiter` byte read as \\x1f, which is a record's fields joined by
        \\x1f where its line holds no quoting; and where each line ends (the offset of its eol's
        last byte, or where that would be). Computed in place by the C extension; None where it
        cannot be (the legacy rule, the extension not built, a delimiter of more than one byte),
        and the caller hashes the joined fields instead."""
        if self.rule != SIPHASH or _siphash_lines is None or len(delimiter) != 1 or not eol:
            return None
        hashes, ends = _siphash_lines(data, eol, delimiter[0], self._key.hex()[:16].encode())
        return np.frombuffer(hashes, dtype=np.uint64), np.frombuffer(ends, dtype=np.int64)

    def is_test(self, record: Sequence[str]) -> bool:
        """The verdict for one record of text fields."""
        return bool(self.are_test(["\x1f".join(record).encode("utf-8")])[0])

    def hashes(self, joined: Sequence[bytes] | Iterable[bytes]) -> np.ndarray:
        if self.rule == SIPHASH:
            import pandas as pd

            if isinstance(joined, np.ndarray):
                values = joined
            elif isinstance(joined, (list, tuple)):
                values = np.empty(len(joined), dtype=object)
                values[:] = joined
            else:
                values = np.fromiter(joined, dtype=object)
            if not len(values):
                return np.zeros(0, dtype=np.uint64)
            return pd.util.hash_array(values, hash_key=self._key.hex()[:16], categorize=False)
        base = hashlib.blake2b(digest_size=8, key=self._key)
        digests = bytearray()  # not a list of 8-byte objects: a chunk's worth would be megabytes
        copy = base.copy
        for message in joined:
            h = copy()
            h.update(message)
            digests += h.digest()
        return np.frombuffer(bytes(digests), dtype=">u8").astype(np.uint64)
