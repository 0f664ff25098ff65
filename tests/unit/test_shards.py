"""The driver holds no rows; each worker reads its own shard of the snapshot (issue 28, item 2)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ppmlops.data.features import encode, feature_names
from ppmlops.data.synthetic import generate
from ppmlops.errors import TrainingError
from ppmlops.run.records import Canaries
from ppmlops.spec import load_spec
from ppmlops.training import shards
from ppmlops.training.worker_job import Snapshot
from ppmlops.training.loop import padded
from ppmlops.training.shards import shard

from policy_floors import lowered_policy_file

from conftest import REPO


def _snapshot(tmp_path, rows=1000):
    spec = load_spec(REPO / "dags" / "pipelines" / "demo.yaml")
    df = generate(rows, seed=3)
    df = df[df["consent"] == "yes"]
    keep = df[spec.dataset.label.column].isin(spec.dataset.label.values)
    for f in spec.dataset.features:
        keep &= (pd.to_numeric(df[f.name], errors="coerce").between(*f.range) if hasattr(f, "range")
                 else df[f.name].isin(f.categories))
    df = df[keep].reset_index(drop=True)
    train, holdout = tmp_path / "train.parquet", tmp_path / "holdout.parquet"
    df.iloc[: len(df) * 4 // 5].to_parquet(train, row_group_size=97)  # several row groups
    df.iloc[len(df) * 4 // 5:].to_parquet(holdout)
    return spec, Snapshot.of(spec, str(train), str(holdout)), df


def test_shards_are_disjoint_cover_the_table_and_encode_as_the_whole(tmp_path, monkeypatch):
    spec, snap, _ = _snapshot(tmp_path)
    monkeypatch.setattr(shards, "BATCH_ROWS", 50)  # batches that do not line up with the ranks
    X, y, names = encode(pd.read_parquet(snap.train), spec)
    assert names == feature_names(spec)
    world = 3
    parts = [shard(snap, r, world) for r in range(world)]
    for r, a in enumerate(parts):
        assert a.sharded
        np.testing.assert_array_equal(a.X, X[r::world])
        np.testing.assert_array_equal(a.y, y[r::world])
    assert sum(len(a.X) for a in parts) == len(X)
    Xh, yh, _ = encode(pd.read_parquet(snap.holdout), spec)
    np.testing.assert_array_equal(parts[0].X_holdout, Xh)  # only rank 0 reads the held-out rows
    assert len(parts[1].X_holdout) == len(parts[2].X_holdout) == 0


def test_canary_columns_are_appended_per_batch_on_every_rank(tmp_path):
    """The zero canary columns are not stored with every row (512 of them for the default audit):
    the shard says how many, and each batch gets them as it is used."""
    spec, snap, _ = _snapshot(tmp_path)
    width = len(feature_names(spec))
    record = Canaries(n_features=width, units=4, included=[True, False] * 8)
    a = shard(snap, 1, 2, record)
    assert a.X.shape[1] == width and a.canary_columns == 4
    batch = padded(torch.from_numpy(a.X[:5]), a.canary_columns)
    assert batch.shape == (5, width + 4) and not batch[:, width:].any()
    torch.testing.assert_close(batch[:, :width], torch.from_numpy(a.X[:5]))
    assert shard(snap, 1, 2).canary_columns == 0


def test_a_rank_without_rows_is_refused(tmp_path):
    spec, snap, _ = _snapshot(tmp_path, rows=10)
    with pytest.raises(TrainingError, match="has no training rows"):
        shard(snap, 50, 64)


def test_the_driver_reads_no_rows(tmp_path, monkeypatch):
    """The train stage hands the workers the snapshot's paths: with the encoder and Parquet reads
    made to fail in this process, the driver still builds and hands over its job."""
    import ppmlops.data.features as features
    from ppmlops.run.context import RunParams
    from ppmlops.stages import assess, ingest, plan, validate
    from ppmlops.run.context import RunContext
    from ppmlops.training import driver, launch

    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PPMLOPS_RANDOMNESS", "reproducible")
    monkeypatch.setenv("PPMLOPS_POLICY", str(lowered_policy_file(tmp_path)))  # the e2e table's few steps
    spec = load_spec(REPO / "tests" / "e2e" / "e2e_small.yaml")
    spec = spec.model_copy(update={"dataset": spec.dataset.model_copy(update={"test_data": True})})
    ctx = RunContext(spec=spec, run_id="drv", params=RunParams.from_mapping(spec, {"workers": 2, "epochs": 1}))
    for stage in (ingest, validate, assess, plan):
        stage.run(ctx)
    seen = {}

    def fake_train(job, arrays=None, tuner=None):
        seen["job"], seen["arrays"] = job, arrays
        raise launch.TrainingError("stop here: the workers are not started in this test")

    def no_rows(*a, **k):
        raise AssertionError("the driver read rows")

    monkeypatch.setattr(launch, "train_on_ray", fake_train)
    monkeypatch.setattr(features, "encode", no_rows)
    monkeypatch.setattr(pd, "read_parquet", no_rows)
    with pytest.raises(launch.TrainingError, match="stop here"):
        driver.train_here(ctx)
    job = seen["job"]
    assert seen["arrays"] is None and job.workers == 2
    staged = ctx.store.read(driver.StagedData).result
    assert (job.snapshot.train, job.snapshot.holdout) == (staged.snapshot_train, staged.snapshot_test)
    assert job.snapshot.spec() == spec
