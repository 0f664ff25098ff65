"""Feature encoding from the spec alone.

Ranges and category lists come from the pipeline spec, never from the rows: a min, max, mean or
category set computed on private data is a release the training epsilon does not cover, and a
width that depended on the data would change the model's shape from run to run.

numeric      clip to the declared [low, high] (log1p of value and bounds first when `log`),
             then scale to [0, 1]; one column named after the feature
categorical  one-hot over the declared categories in declared order; columns `name=category`
tensor       each of the prod(shape) values clipped to the declared [low, high] and scaled to
             [0, 1], flat in C order; columns `name[i]` (ppmlops.data.tensors)
label        binary: 1 where the value equals label.positive, 0 for every other declared value;
             multiclass: the class's index in label.classes; regression: the number scaled to
             [0, 1] by label.range (float32), what the model predicts (`unscale` undoes it)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ppmlops.errors import DataError
from ppmlops.data import tensors
from ppmlops.spec import CategoricalFeature, Feature, Label, NumericFeature, PipelineSpec, TensorFeature


def feature_names(spec: PipelineSpec) -> list[str]:
    return columns_of(spec.dataset.features)


def columns_of(features: Sequence[Feature]) -> list[str]:
    """The encoded columns' names, in order."""
    names: list[str] = []
    for f in features:
        if isinstance(f, NumericFeature):
            names.append(f.name)
        elif isinstance(f, TensorFeature):
            names.extend(tensors.column_names(f))
        else:
            names.extend(f"{f.name}={c}" for c in f.categories)
    return names


def encode(df: pd.DataFrame, spec: PipelineSpec) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """X (float32, n x width), y (int64 class indices; float32 in [0, 1] for regression) and the
    column names of X."""
    ds = spec.dataset
    if ds.label.column not in df.columns:
        raise DataError(f"cannot encode: label column {ds.label.column!r} missing from the staged snapshot "
                        f"({len(df.columns)} columns)")
    X = encode_features(df, ds.features)
    y = encode_label(df[ds.label.column], ds.label)
    return X, y, feature_names(spec)


def encode_label(col: pd.Series, label: Label) -> np.ndarray:
    """The label column as the task's targets (see the module docstring)."""
    if label.task == "binary":
        return _label(col, label.positive, label.values)
    if label.task == "multiclass":
        codes = pd.Index(label.classes, dtype=object).get_indexer(col.astype("string").to_numpy(dtype=object))
        if (codes < 0).any():
            row = int(np.flatnonzero(codes < 0)[0])
            raise DataError(f"cannot encode label {col.name}: row {row} is not one of {label.classes}")
        return codes.astype(np.int64)
    values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    lo, hi = label.range
    bad = ~(np.isfinite(values) & (values >= lo) & (values <= hi))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"cannot encode label {col.name}: row {row} is not a number in [{lo:g}, {hi:g}] "
                        f"({int(bad.sum())} such rows); ingestion should have quarantined it")
    return ((values - lo) / (hi - lo)).astype(np.float32)


def unscale(values, label: Label) -> np.ndarray:
    """A regression model's outputs (the label scaled to [0, 1]) in the label's own units, clipped
    to the declared range: the model never claims a value the spec rules out."""
    lo, hi = label.range
    return lo + np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0) * (hi - lo)


def encode_features(df: pd.DataFrame, features: Sequence[Feature]) -> np.ndarray:
    """X alone (float32): what a deployed model applies to rows that have no label."""
    missing = [f.name for f in features if f.name not in df.columns]
    if missing:
        raise DataError(f"cannot encode: column(s) {missing} missing from the rows ({len(df.columns)} columns)")
    blocks: list[np.ndarray] = []
    for f in features:
        if isinstance(f, NumericFeature):
            blocks.append(_numeric(df[f.name], f)[:, None])
        elif isinstance(f, TensorFeature):
            blocks.append(tensors.encode(df[f.name], f))
        else:
            blocks.append(_one_hot(df[f.name], f))
    return np.concatenate(blocks, axis=1).astype(np.float32) if blocks else np.zeros((len(df), 0), np.float32)


def _numeric(col: pd.Series, f: NumericFeature) -> np.ndarray:
    values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"cannot encode column {f.name}: row {row} is not a finite number "
                        f"({int(bad.sum())} such rows); ingestion should have quarantined it")
    lo, hi = f.range
    if f.log:
        if lo <= -1:
            raise DataError(f"cannot encode column {f.name}: log scaling needs a range above -1, got [{lo:g}, {hi:g}]")
        values, lo, hi = np.log1p(np.clip(values, f.range[0], f.range[1])), np.log1p(lo), np.log1p(hi)
    return (np.clip(values, lo, hi) - lo) / (hi - lo)


def _one_hot(col: pd.Series, f: CategoricalFeature) -> np.ndarray:
    codes = pd.Index(f.categories, dtype=object).get_indexer(col.to_numpy(dtype=object))  # -1: unknown
    unknown = codes < 0
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise DataError(f"cannot encode column {f.name}: row {row} is not a declared category "
                        f"({int(unknown.sum())} such rows); ingestion should have quarantined it")
    out = np.zeros((len(codes), len(f.categories)), dtype=np.float32)
    out[np.arange(len(codes)), codes] = 1.0
    return out


def _label(col: pd.Series, positive: str, values: list[str]) -> np.ndarray:
    text = col.astype("string")
    known = text.isin(values).fillna(False).to_numpy(dtype=bool)
    if not known.all():
        row = int(np.flatnonzero(~known)[0])
        raise DataError(f"cannot encode label {col.name}: row {row} is not one of {values}")
    return (text == positive).to_numpy(dtype=bool).astype(np.int64)
