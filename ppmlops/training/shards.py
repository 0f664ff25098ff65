"""Each training worker reads its own rows of the run's Parquet snapshot; the driver reads none.

The driver (the train task, or the Ray job's entry point on a cluster) used to read and encode the
whole snapshot and put it in Ray's object store, so the Airflow worker's memory grew with the
table (3.2 GB at 1M rows). Now it hands the workers a `Snapshot` (ppmlops.training.worker_job): the snapshot's paths (storage
every node reaches, like the checkpoints) and the spec, whose declared ranges and categories are
all the encoding needs. Rank r of w keeps the rows whose position in the training snapshot is
r mod w, read in record batches so a worker holds its shard and one batch, never the table; only
rank 0 reads the held-out rows (it alone makes the noisy releases).

The ranks' shards are disjoint and cover the table, so each row is Poisson-sampled on exactly one
rank, as before: the loop's sampler then draws from the rank's own shard (Arrays.sharded).
"""

from __future__ import annotations

import numpy as np

from ppmlops.errors import TrainingError
from ppmlops.training.worker_job import Snapshot

BATCH_ROWS = 65_536


def read(snapshot: Snapshot, path: str, rank: int, world: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows rank, rank + world, ... of the Parquet file at `path`, encoded (X float32, y int64)."""
    import pyarrow.parquet as pq

    from ppmlops.data.features import encode, feature_names

    spec = snapshot.spec()
    ds = spec.dataset
    columns = list(dict.fromkeys([f.name for f in ds.features] + [ds.label.column]))
    width = len(feature_names(spec))
    xs, ys, offset = [], [], 0
    try:
        source = pq.ParquetFile(path)
    except (OSError, ValueError) as err:
        raise TrainingError(f"cannot read the staged snapshot {path}: {err}") from None
    for batch in source.iter_batches(batch_size=BATCH_ROWS, columns=columns):
        n = batch.num_rows
        first = (rank - offset) % world  # this rank's first row within the batch
        if first < n:
            X, y, _ = encode(batch.take(np.arange(first, n, world)).to_pandas(), spec)
            xs.append(X)
            ys.append(y)
        offset += n
    if not xs:
        return np.zeros((0, width), np.float32), np.zeros(0, np.int64)
    return np.concatenate(xs), np.concatenate(ys)


def shard(snapshot: Snapshot, rank: int, world: int, canaries=None):
    """This rank's Arrays (sharded), with the number of canary columns the loop appends per batch."""
    from ppmlops.audit.canary import CanarySet
    from ppmlops.training.loop import Arrays

    X, y = read(snapshot, snapshot.train, rank, world)
    if len(X) == 0:
        raise TrainingError(f"rank {rank} of {world} has no training rows in {snapshot.train}: "
                            "the run has fewer rows than workers")
    if rank == 0:
        Xh, yh = read(snapshot, snapshot.holdout, 0, 1)
    else:
        Xh, yh = np.zeros((0, X.shape[1]), np.float32), np.zeros(0, np.int64)
    # The canary columns are zero on every real row: the loop appends them per batch.
    columns = CanarySet.of(canaries).columns if canaries is not None else 0
    return Arrays(X, y, Xh, yh, sharded=True, canary_columns=columns)
