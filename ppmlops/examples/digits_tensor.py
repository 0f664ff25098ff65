"""The files dags/pipelines/demo_digits_tensor.yaml and demo_digits_npz.yaml read: scikit-learn's
bundled `digits` (1,797 8x8 images of handwritten digits, 16 grey levels) with each image as ONE
fixed-shape tensor feature instead of 64 pixel columns.

    python -m ppmlops.examples.digits_tensor [--out DIR]    (default: $PPMLOPS_HOME/demo)

writes
  digits_images.parquet     columns `pixels` (a fixed_size_list<uint8>[64]: the image's 8x8 grey
                            levels row by row) and `digit` (the label, as text)
  digits_images.npz         one array `pixels`, shape (1797, 8, 8), uint8
  digits_labels.csv         the NPZ's label file: one column `digit`, row i the label of image i

The spec declares the tensor's shape ([1, 8, 8]: one channel) and range ([0, 16]), so encoding
scales from the declaration, never from the pixels. The data ships with scikit-learn (no
download); each file is written atomically and left alone when it is already there.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np

from ppmlops.atomic_file import replace_with, write_csv

PARQUET, NPZ, LABELS = "digits_images.parquet", "digits_images.npz", "digits_labels.csv"
COLUMN, LABEL, SIDE = "pixels", "digit", 8


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.uint8), bunch.target.astype(np.int64)  # (n, 8, 8) in 0..16, (n,)


def write_parquet(path: Path | str) -> Path:
    """The images as a fixed_size_list<uint8> column and the digit as text, unless `path` exists."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if path.exists():
        return path
    images, target = _digits()
    pixels = pa.FixedSizeListArray.from_arrays(pa.array(images.reshape(-1)), SIDE * SIDE)
    table = pa.table({COLUMN: pixels, LABEL: pa.array([str(t) for t in target.tolist()], pa.string())})
    path.parent.mkdir(parents=True, exist_ok=True)
    return replace_with(path, lambda tmp: pq.write_table(table, tmp))


def write_npz(path: Path | str, labels: Path | str) -> tuple[Path, Path]:
    """The images as an NPZ array `pixels` (n, 8, 8) and their digits as a one-column CSV."""
    import pandas as pd

    path, labels = Path(path), Path(labels)
    images, target = _digits()
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        def save(tmp: Path) -> None:
            buf = io.BytesIO()
            np.savez_compressed(buf, **{COLUMN: images})
            tmp.write_bytes(buf.getvalue())

        replace_with(path, save)
    if not labels.exists():
        write_csv(labels, pd.DataFrame({LABEL: target}))
    return path, labels


def write_all(out_dir: Path | str) -> list[Path]:
    out_dir = Path(out_dir)
    return [write_parquet(out_dir / PARQUET), *write_npz(out_dir / NPZ, out_dir / LABELS)]


def default_dir() -> Path:
    from ppmlops import settings

    return settings.load().home / "demo"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="the folder to write into (default: $PPMLOPS_HOME/demo)")
    args = ap.parse_args(argv)
    for path in write_all(args.out or default_dir()):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
