"""The split rule's hash in C (ppmlops/privacy/_splithash.c, SplitRules.line_hashes): the same
numbers as the Python path (pandas' SipHash of each record's fields joined by \\x1f) for every
block the reader parses, so ingest stages and quarantines the same rows with it or without it."""

from __future__ import annotations

import copy
import os
import random
from pathlib import Path

import numpy as np
import pytest
import yaml

from ppmlops.data import reading
from ppmlops.data.reading import SourceReader
from ppmlops.privacy import split
from ppmlops.privacy.split import SplitRules

REPO = Path(__file__).resolve().parents[2]


def test_the_extension_is_built_where_the_project_was_set_up():
    assert split._siphash_lines is not None, (
        "ppmlops.privacy._splithash was not built: install a C compiler (Debian: gcc) and run ./dev setup "
        "again (ingest then hashes through Python, with the same results, slower)")


def _lines(rng: random.Random, delimiter: bytes) -> list[bytes]:
    alphabet = [b"a", b"1", b" ", "é".encode(), "€".encode(), b"\x1f", b"\x00", b"\t", b",", b";", b"|", b"\x80"]
    return [b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(rng.randint(0, 9))]


@pytest.mark.parametrize("seed", range(3))
def test_line_hashes_are_the_joined_fields_hashes(seed):
    rng = random.Random(seed)
    rules = SplitRules(split.SIPHASH, rng.randint(0, 2**31), 0.2)
    for _ in range(2000):
        delimiter = rng.choice([b",", b";", b"\t", b"|", b"\x00"])
        eol = rng.choice([b"\n", b"\r\n"])
        data = eol.join(line.replace(b"\r", b"").replace(b"\n", b"") for line in _lines(rng, delimiter))
        data += eol if rng.random() < 0.7 else b""
        parts = data.translate(bytes.maketrans(delimiter, b"\x1f")).split(eol)
        if data.endswith(eol):
            parts.pop()
        got, ends = rules.line_hashes(data, eol, delimiter)
        assert got.tolist() == rules.hashes(parts).tolist(), (data, eol, delimiter)
        # where each line ends: its eol's last byte, or where that would be after the data
        breaks = [i + len(eol) - 1 for i in range(len(data)) if data.startswith(eol, i)]
        assert ends.tolist() == (breaks + [len(data) + len(eol) - 1])[:len(parts)], (data, eol)
    assert SplitRules(split.BLAKE2B, 1, 0.2).line_hashes(b"a,b\n", b"\n", b",") is None  # the legacy rule: Python


def test_the_one_line_path_gives_the_same_hashes_as_the_four_line_one():
    """PPMLOPS_SPLITHASH_SCALAR turns the AVX2 path off at import: a fresh process compares."""
    import subprocess
    import sys

    probe = """
import random
from ppmlops.privacy import split
from ppmlops.privacy._splithash import avx2
rules, rng = split.SplitRules(split.SIPHASH, 3, 0.2), random.Random(5)
data = b"".join(bytes(rng.choice(b"ab,;1\\x1f") for _ in range(rng.randint(0, 70))) + b"\\n" for _ in range(3001))
print(avx2, rules.line_hashes(data, b"\\n", b",")[0].tolist() == rules.hashes(data.replace(b",", b"\\x1f").split(b"\\n")[:-1]).tolist())
"""
    for scalar, want in (("1", "0 True"), ("", None)):
        env = {k: v for k, v in os.environ.items() if k != "PPMLOPS_SPLITHASH_SCALAR"}
        if scalar:
            env["PPMLOPS_SPLITHASH_SCALAR"] = scalar
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.split()[-1] == "True" and (want is None or out.stdout.strip() == want), out.stdout


def _messy_csv(rng: random.Random, delimiter: str) -> str:
    """Plain records, blank and ragged lines, quoted fields (read by the csv module), any eol."""
    lines = [delimiter.join(["id", "x", "consent"])]
    for i in range(rng.randint(1, 120)):
        kind = rng.random()
        if kind < 0.75:
            lines.append(delimiter.join([f"r{i}", rng.choice(["1", "é", "", "a b", "2.5"]), rng.choice(["yes", "no"])]))
        elif kind < 0.83:
            lines.append("")
        elif kind < 0.9:
            lines.append(delimiter.join(["r"] * rng.randint(1, 5)))
        else:
            lines.append(delimiter.join([f"q{i}", f'"a{delimiter}b"', "yes"]))
    eol = rng.choice(["\n", "\r\n"])
    return eol.join(lines) + (eol if rng.random() < 0.8 else "")


@pytest.mark.parametrize("seed", range(3))
def test_a_batch_hashes_and_joins_its_rows_as_its_joined_fields_say(tmp_path, monkeypatch, seed):
    """Through the reader's batches (parsed blocks, csv-module runs, blocks with blank or ragged
    lines): split_hashes is the hash of joined(), and joined_at(rows) is joined() at those rows."""
    rng = random.Random(seed)
    rules = SplitRules(split.SIPHASH, 7, 0.3)
    for n in range(40):
        delimiter = rng.choice([",", ";", "\t"])
        path = tmp_path / f"m{n}.csv"
        path.write_text(_messy_csv(rng, delimiter), encoding="utf-8", newline="")
        monkeypatch.setattr(reading, "BLOCK_BYTES", rng.choice([16, 200, 2 << 20]))
        for batch in SourceReader(path, delimiter=delimiter, chunk_rows=rng.choice([5, 50_000])).batches([0, 2]):
            rows = sorted(rng.sample(range(batch.num_rows), rng.randint(0, batch.num_rows)))
            at = batch.joined_at(rows)  # before joined(): from the lines alone
            hashes = batch.split_hashes(rules.hashes, rules.line_hashes)
            joined = batch.joined()
            assert hashes.tolist() == rules.hashes(joined).tolist()
            assert at == {r: joined[r] for r in rows}


def test_ingest_gives_the_same_snapshot_and_quarantine_without_the_extensions(tmp_path, monkeypatch):
    from ppmlops.data import ingest as ingest_module
    from ppmlops.data.ingest import ingest
    from ppmlops.spec import parse_spec

    doc = copy.deepcopy(yaml.safe_load((REPO / "dags" / "pipelines" / "demo.yaml").read_text()))
    doc["dataset"]["source"] = {"path": str(tmp_path / "customers.csv"), "generate": {"event_weeks": 12, "rows": 6000,
                                                                                      "seed": 4}}
    spec = parse_spec(doc)
    monkeypatch.setattr(reading, "BLOCK_BYTES", 4096)  # many blocks, some cut mid-way through a batch
    calls = []
    hashed = split._siphash_lines
    monkeypatch.setattr(split, "_siphash_lines", lambda *a: calls.append(1) or hashed(*a))
    with_c = ingest(spec, tmp_path / "c")
    assert len(calls) > 10  # the blocks were hashed in C
    monkeypatch.setattr(split, "_siphash_lines", None)
    monkeypatch.setattr(ingest_module, "_join_rows", None)  # the canonical text joined by pyarrow too
    without = ingest(spec, tmp_path / "python")
    assert with_c.rows_quarantined > 0 and with_c.rows_test > 0
    assert (with_c.sha256, with_c.rows_train, with_c.rows_test, with_c.rows_quarantined) == (
        without.sha256, without.rows_train, without.rows_test, without.rows_quarantined)
    assert (tmp_path / "c" / "quarantine.csv").read_bytes() == (tmp_path / "python" / "quarantine.csv").read_bytes()
