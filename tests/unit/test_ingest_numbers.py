"""Ingest's column-wise number check (ppmlops.data.ingest._numbers): a column of only '-', '.' and
digits is cast by pyarrow whole, without the regex. That is right only where pyarrow's cast
agrees with the rule `check` applies row by row (_NUMBER, then float()); these tests hold it to
that, value for value and bit for bit."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pyarrow as pa
import pytest

from ppmlops.data import ingest
from ppmlops.data.ingest import _NUMBER, _numbers


def _by_rule(values: list[str]) -> tuple[np.ndarray, np.ndarray]:
    plain = np.array([bool(_NUMBER.fullmatch(v)) for v in values], dtype=bool)
    x = np.array([float(v) if p else 0.0 for v, p in zip(values, plain)], dtype=np.float64)
    return plain, x


def _same(values: list[str]) -> None:
    plain, x = _numbers(pa.array(values, pa.string()))
    want_plain, want_x = _by_rule(values)
    assert np.array_equal(plain, want_plain)
    assert np.array_equal(x[plain].view(np.int64), want_x[want_plain].view(np.int64))  # -0.0 kept


def test_every_short_string_of_decimal_characters_is_judged_as_the_rule_judges_it():
    """Each string of up to four of '-', '.', digits alone in its column: the fast cast accepts
    exactly those _NUMBER matches, with float()'s value."""
    alphabet = "0123456789.-"
    for length in range(5):
        for chars in itertools.product(alphabet, repeat=length):
            _same(["".join(chars)])


def test_long_decimals_round_as_float_does():
    rng = random.Random(7)
    values = []
    while len(values) < 20_000:
        whole = "".join(rng.choice("0123456789") for _ in range(rng.randint(0, 25)))
        frac = "".join(rng.choice("0123456789") for _ in range(rng.randint(0, 25)))
        text = ("-" if rng.random() < 0.3 else "") + whole + ("." + frac if rng.random() < 0.8 else "")
        if whole or frac:
            values.append(text.rstrip(".") if not whole and text.endswith(".") else text)
    _same(values)


@pytest.mark.parametrize("odd", ["1.2.3", "", "-", " 5", "1e3", "+2", "nan", "inf", "٣", "5 ", "0x1"])
def test_a_value_the_fast_cast_cannot_take_sends_the_column_to_the_regex(monkeypatch, odd):
    """One odd value among plain ones: every row is judged as `check`'s rule judges it, the fast
    path taken or not; and without the fast path (the byte table emptied) the same."""
    values = ["1", "22.5", odd, "-0", ".5", "7."]
    _same(values)
    monkeypatch.setattr(ingest, "_DECIMAL_BYTE", np.zeros(256, dtype=bool))
    _same(values)


def test_a_plain_slice_is_cast_whole_whatever_its_buffer_holds(monkeypatch):
    """The byte check reads the slice's own bytes: a slice of plain numbers in a buffer that also
    holds text takes the fast cast (the regex is never asked)."""
    import pyarrow.compute as pc

    def no_regex(*args, **kwargs):
        raise AssertionError("the regex was asked")

    monkeypatch.setattr(pc, "match_substring_regex", no_regex)
    column = pa.array(["x", "1.5", "2", "y"], pa.string()).slice(1, 2)
    plain, x = _numbers(column)
    assert plain.tolist() == [True, True] and x.tolist() == [1.5, 2.0]


def test_float_texts_are_repr_whatever_the_value():
    """The canonical hash writes floats with repr(); _float_reprs takes pyarrow's text where it
    agrees and repr elsewhere: random bit patterns (every magnitude, NaN and infinities among
    them), prices, whole numbers up to 2**60, tiny values, and each boundary of the rule."""
    from ppmlops.data.ingest import _float_reprs

    rng = np.random.default_rng(2)
    values = np.concatenate([
        rng.integers(0, 2**64, 100_000, dtype=np.uint64).view(np.float64),
        np.round(rng.uniform(0, 1e4, 20_000), 2), rng.lognormal(0, 8, 20_000),
        rng.integers(-2**60, 2**60, 20_000).astype(np.float64), rng.uniform(0, 1e-3, 10_000),
        [0.0, -0.0, 1e-4, -1e-4, np.nextafter(1e-4, 0), 1e16, np.nextafter(1e16, 0), 2.0**53, 2.0**53 - 1,
         2.0**53 + 2, np.inf, -np.inf, np.nan, 5e-324, 1.7976931348623157e308, 0.1, 1 / 3, 100.0, 1e15, -7.0]])
    assert _float_reprs(values).to_pylist() == [repr(v) for v in values.tolist()]
