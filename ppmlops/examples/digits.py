"""The table dags/pipelines/demo_digits.yaml reads: scikit-learn's bundled `digits` (1,797 8x8
images of handwritten digits, 16 grey levels) as a CSV with one column per pixel (px_0 .. px_63,
row by row) and the digit as the label.

    python -m ppmlops.examples.digits [PATH]    (default: $PPMLOPS_HOME/demo/digits.csv)

The data ships with scikit-learn (no download); the file is written atomically and left alone
when it is already there, so a pipeline may be pointed at it like any other source.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ppmlops.atomic_file import write_csv
PIXELS = 64
COLUMNS = [f"px_{i}" for i in range(PIXELS)]
LABEL = "digit"


def write_digits(path: Path | str) -> Path:
    """Write the digits table to `path` unless it exists; returns the path."""
    from sklearn.datasets import load_digits

    path = Path(path)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = load_digits(as_frame=True).frame
    frame.columns = COLUMNS + [LABEL]
    frame = frame.astype({c: int for c in COLUMNS})
    return write_csv(path, frame)


def default_path() -> Path:
    from ppmlops import settings

    return settings.load().home / "demo" / "digits.csv"


if __name__ == "__main__":
    print(write_digits(sys.argv[1] if len(sys.argv) > 1 else default_path()))
