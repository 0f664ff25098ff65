"""Ingest and the risk scan say how far they are (issue 30, item 3): in a task log only the share of
the source read and the time, never a count of private rows; on the data owner's terminal rows too."""

from __future__ import annotations

import re

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ppmlops.data import read_progress
from ppmlops.data.reading import SourceReader
from ppmlops.risk.scan import SourceInput, scan_sources


def _csv(tmp_path, rows=20_000):
    path = tmp_path / "t.csv"
    pd.DataFrame({"age": [20 + i % 50 for i in range(rows)], "zip": [f"{10000 + i % 977}" for i in range(rows)]}).to_csv(
        path, index=False)
    return path


def test_a_reader_knows_the_share_it_has_read(tmp_path):
    csv = SourceReader(_csv(tmp_path, 600_000), chunk_rows=50_000)  # about 6 MB: read in 2 MiB blocks
    assert csv.fraction_read() is None  # nothing read yet
    shares = [csv.fraction_read() for _ in csv.batches()]
    assert shares == sorted(shares) and 0 < shares[0] < 1 and shares[-1] == 1.0
    pq.write_table(pa.table({"age": list(range(10_000))}), tmp_path / "t.parquet", row_group_size=2_500)
    parquet = SourceReader(tmp_path / "t.parquet", "parquet", chunk_rows=2_500)
    assert [parquet.fraction_read() for _ in parquet.batches()] == [0.25, 0.5, 0.75, 1.0]


def test_a_task_log_gets_the_share_and_the_time_never_a_row_count(tmp_path):
    lines: list[str] = []
    with read_progress.shown("ingest: reading the source", public=True, emit=lines.append, every_s=0):
        scan_sources([SourceInput(_csv(tmp_path, 60_000))], sample_rows=10, chunk_rows=10_000)
    assert len(lines) >= 3, lines  # a line per batch at every_s=0, and the last
    for line in lines:
        assert re.fullmatch(r"ingest: reading the source: (\d+%, (about \S+ left, )?after \S+|100%, done in \S+)", line), line
        assert "60,000" not in line and "60000" not in line and "rows" not in line
    assert lines[-1].startswith("ingest: reading the source: 100%, done in")


def test_the_data_owners_terminal_gets_rows_too(tmp_path):
    lines: list[str] = []
    with read_progress.shown("risk scan", public=False, emit=lines.append, every_s=0):
        scan_sources([SourceInput(_csv(tmp_path, 30_000))], sample_rows=10, chunk_rows=10_000)
    assert re.fullmatch(r"risk scan: 30,000 rows, [\d,]+ rows/s, 100% \(of 30,000\), done in \S+", lines[-1]), lines


def test_nothing_is_shown_when_nobody_asked(tmp_path, capsys):
    scan_sources([SourceInput(_csv(tmp_path, 30_000))], sample_rows=10, chunk_rows=10_000)
    assert capsys.readouterr() == ("", "")
