"""Fixed-shape tensor features (ppmlops.spec.TensorFeature): one array per row, read, checked,
staged and encoded from the spec's declarations alone.

Ingestion reads every value as text (ppmlops.data.reading): a Parquet list column's row is its
Python list as str() writes it ("[0.0, 1.5, None, nan]"), an NPZ array's row the same, and a CSV
cell may hold a JSON array. `parse` reads either form back, and `problem` says why a row cannot
be staged (wrong number of values, a null, a value that is not a finite number, one the declared
dtype cannot hold), naming the element's position and never a value: the reason goes into the
quarantine file and its category into the run's noisy counts, like any other invalid value.

Values outside the declared range are kept as they are in the snapshot and clipped by `encode`,
which scales from the declared [low, high] to [0, 1]: no statistic of the rows (a min, a max, a
mean) ever decides the scaling.
"""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

import numpy as np

from ppmlops.errors import DataError
from ppmlops.spec import TensorFeature, dtype_limits

# Python's str() of a list writes None, nan and inf where JSON has null, NaN and Infinity.
_PY_WORDS = re.compile(r"\b(None|nan|inf)\b")
_JSON_WORD = {"None": "null", "nan": "NaN", "inf": "Infinity"}


class _Bad(Exception):
    """Why one row's array cannot be staged (a reason without values)."""


def parse(text: str, f: TensorFeature) -> np.ndarray:
    """The row's prod(shape) values as float64, C order; _Bad names what is wrong."""
    text = text.strip()
    if not text:
        raise _Bad("the array is empty or null")
    if not text.startswith("["):
        raise _Bad("not an array of numbers")
    try:
        parsed = json.loads(_PY_WORDS.sub(lambda m: _JSON_WORD[m.group(1)], text))
    except (ValueError, RecursionError):
        raise _Bad("not an array of numbers") from None
    if not isinstance(parsed, list):
        raise _Bad("not an array of numbers")
    try:  # the common case at numpy's speed: regular nested lists of numbers
        arr = np.asarray(parsed)
    except ValueError:
        arr = None  # ragged: the slow path names it
    if arr is not None and arr.dtype.kind in "iuf":
        return _shaped(arr.reshape(-1).astype(np.float64), list(arr.shape), f)
    flat: list[Any] = []
    nested = _shape_of(parsed, flat)
    if nested is None:
        raise _Bad("ragged: its nested lists differ in length")
    _check_shape(len(flat), nested, f)
    values = np.empty(f.size, dtype=np.float64)
    for i, v in enumerate(flat):
        if v is None:
            raise _Bad(f"value {_position(i, f.shape)} is null")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _Bad(f"value {_position(i, f.shape)} is not a number")
        values[i] = v
    return values


def _shaped(values: np.ndarray, nested: list[int], f: TensorFeature) -> np.ndarray:
    _check_shape(len(values), nested, f)
    return values


def _check_shape(count: int, nested: list[int], f: TensorFeature) -> None:
    """_Bad unless the row holds prod(shape) values, flat or nested as the declared shape (a
    dimension of size 1 may be left out of the nesting)."""
    if count != f.size:
        raise _Bad(f"{count} values, the declared shape {f.shape} has {f.size}")
    if len(nested) > 1 and [d for d in nested if d != 1] != [d for d in f.shape if d != 1]:
        raise _Bad(f"nested as {nested}, the declared shape is {f.shape}")


def _shape_of(x: Any, flat: list[Any]) -> list[int] | None:
    """The nested lists' shape (appending the leaves to `flat`), or None when they are ragged."""
    if not isinstance(x, list):
        flat.append(x)
        return []
    shapes = [_shape_of(v, flat) for v in x]
    if any(s is None for s in shapes) or any(s != shapes[0] for s in shapes[1:]):
        return None
    return [len(x)] + (shapes[0] if shapes else [])


def _position(i: int, shape: Sequence[int]) -> str:
    """Element i's index in the declared shape, e.g. [0, 3, 5]."""
    return "[" + ", ".join(str(int(k)) for k in np.unravel_index(i, tuple(shape))) + "]"


def check_values(values: np.ndarray, f: TensorFeature) -> None:
    """_Bad for a value that is not finite or that the declared dtype cannot hold."""
    finite = np.isfinite(values)
    if not finite.all():
        raise _Bad(f"value {_position(int(np.flatnonzero(~finite)[0]), f.shape)} is not a finite number")
    limits = dtype_limits(f.dtype)
    if limits is not None:
        bad = (values != np.round(values)) | (values < limits[0]) | (values > limits[1])
        if bad.any():
            raise _Bad(f"value {_position(int(np.flatnonzero(bad)[0]), f.shape)} is not a {f.dtype}")
    elif f.dtype == "float32":
        big = np.abs(values) > np.finfo(np.float32).max
        if big.any():
            raise _Bad(f"value {_position(int(np.flatnonzero(big)[0]), f.shape)} is beyond float32's range")


def stage(text: str, f: TensorFeature) -> tuple[np.ndarray | None, str | None]:
    """(the row's values in the declared dtype, None) or (None, why it is quarantined)."""
    try:
        values = parse(text, f)
        check_values(values, f)
    except _Bad as why:
        return None, f"column {f.name}: {why}"
    return values.astype(f.dtype), None


def stage_column(texts: Sequence[str], f: TensorFeature) -> tuple[np.ndarray, np.ndarray]:
    """(rows staged as a (n, size) array of the dtype, per row whether it was stageable)."""
    out = np.zeros((len(texts), f.size), dtype=f.dtype)
    ok = np.zeros(len(texts), dtype=bool)
    for i, text in enumerate(texts):
        values, why = stage(text, f)
        if why is None:
            out[i] = values
            ok[i] = True
    return out, ok


def column_names(f: TensorFeature) -> list[str]:
    """The encoded columns' names: name[i] for each of the prod(shape) values, C order."""
    return [f"{f.name}[{i}]" for i in range(f.size)]


def as_matrix(column: Any, f: TensorFeature) -> np.ndarray:
    """A tensor column (a pandas Series of arrays or lists, as a snapshot reads back; an ndarray
    of shape (n, *shape) or (n, size); or a pyarrow list array) as (n, size) float64."""
    try:
        import pyarrow as pa

        if isinstance(column, (pa.Array, pa.ChunkedArray)):
            column = column.to_pylist()
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        pass
    if isinstance(column, np.ndarray) and column.dtype != object:
        rows = column.reshape(len(column), -1) if column.ndim > 1 else column.reshape(-1, 1)
    else:
        items = list(column.to_numpy(dtype=object) if hasattr(column, "to_numpy") else column)
        rows = np.zeros((len(items), f.size), dtype=np.float64)
        for i, item in enumerate(items):
            if item is None:
                raise DataError(f"cannot encode column {f.name}: row {i} is null; ingestion should have quarantined it")
            if isinstance(item, str):
                values, why = stage(item, f)
                if why is not None:
                    raise DataError(f"cannot encode row {i}: {why}")
                item = values
            flat = _flat(item)
            if flat.size != f.size:
                raise DataError(f"cannot encode column {f.name}: row {i} has {flat.size} values, the declared "
                                f"shape {f.shape} has {f.size}")
            rows[i] = flat
    if rows.shape[1:] != (f.size,):
        raise DataError(f"cannot encode column {f.name}: rows of {rows.shape[1:]} values, the declared shape "
                        f"{f.shape} has {f.size}")
    return rows.astype(np.float64, copy=False)


def _flat(item: Any) -> np.ndarray:
    """One row's values flat, float64 (nested lists or arrays of arrays, as Parquet reads back)."""
    if isinstance(item, np.ndarray) and item.dtype != object:
        return item.astype(np.float64).reshape(-1)
    if isinstance(item, (list, tuple, np.ndarray)):
        parts = [_flat(v) for v in item]
        return np.concatenate(parts) if parts else np.zeros(0)
    return np.asarray([np.nan if item is None else item], dtype=np.float64)


def encode(column: Any, f: TensorFeature) -> np.ndarray:
    """(n, size) float32: each value clipped to the declared range and scaled to [0, 1] from it.
    A value that is not a finite number is an error (ingestion quarantines such rows)."""
    rows = as_matrix(column, f)
    bad = ~np.isfinite(rows)
    if bad.any():
        row = int(np.flatnonzero(bad.any(axis=1))[0])
        raise DataError(f"cannot encode column {f.name}: row {row} holds a value that is not a finite number; "
                        "ingestion should have quarantined it")
    lo, hi = f.range
    return ((np.clip(rows, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def arrow_type(f: TensorFeature):
    """The snapshot's column type: a fixed_size_list of the declared dtype."""
    import pyarrow as pa

    return pa.list_(pa.from_numpy_dtype(np.dtype(f.dtype)), f.size)


def to_arrow(rows: np.ndarray, f: TensorFeature):
    """(n, size) values as the snapshot's fixed_size_list array."""
    import pyarrow as pa

    values = pa.array(np.ascontiguousarray(rows, dtype=f.dtype).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(values, f.size)


