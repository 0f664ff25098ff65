"""Cutting a CSV source into parts at line starts, with global line numbers (ppmlops.data.ray_ingest),
and Parquet row groups into parts: no cluster needed, the read of each part against the whole read."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ppmlops.data.ray_ingest import _count_range, cut_ranges, first_lines, group_row_groups
from ppmlops.data.reading import Part, SourceReader


def _records(reader: SourceReader) -> list[tuple[int, list[str]]]:
    out = []
    for batch in reader.batches():
        out += list(zip(batch.lines.tolist(), batch.records()))
        out += [(line, fields) for line, fields, _ in batch.ragged]
    return sorted(out)


def _parts(path: Path, part_bytes: int) -> tuple[list[Part], list[dict]]:
    whole = SourceReader(path, "csv", chunk_rows=7)
    start, lines = whole.data_start()
    size = path.stat().st_size
    counted = [_count_range(str(path), start, size, r) for r in cut_ranges(start, size, part_bytes)]
    return first_lines(counted, lines), counted


@pytest.mark.parametrize("part_bytes", [1, 13, 64, 1000, 10**6])
@pytest.mark.parametrize("eol", ["\n", "\r\n"])
def test_parts_read_what_the_whole_file_holds_with_its_line_numbers(tmp_path, part_bytes, eol):
    body = ["", "a,b,c"] + [f"{i},x{i},{'y' * (i % 23)}" for i in range(60)]
    body[20] = "1,2"  # a ragged line
    body[30] = ""  # a blank line
    body[41] = "x" * 150 + ",1,2"  # longer than some parts: they are empty
    path = tmp_path / "f.csv"
    path.write_bytes((eol.join(body) + eol).encode())
    parts, counted = _parts(path, part_bytes)
    assert not any(c["whole"] for c in counted)
    whole = _records(SourceReader(path, "csv", chunk_rows=7))
    assert whole[0][0] == 3 and len(whole) == 59
    pieces = []
    for p in parts:
        pieces += _records(SourceReader(path, "csv", delimiter=",", chunk_rows=5, part=p))
    assert pieces == whole
    assert parts[0].start == len(("" + eol + "a,b,c" + eol).encode()) and parts[-1].end == path.stat().st_size
    assert all(a.end == b.start for a, b in zip(parts, parts[1:]))


def test_a_last_line_without_a_line_break_and_a_quote_or_lone_cr_are_found(tmp_path):
    path = tmp_path / "f.csv"
    path.write_bytes(b"a,b\n1,2\n3,4\n5,6")
    parts, _ = _parts(path, 4)
    assert [p.first_line for p in parts] == [2, 3, 4]
    assert _records(SourceReader(path, "csv", delimiter=",", part=parts[-1])) == [(4, ["5", "6"])]
    for data in (b'a,b\n1,"2"\n3,4\n', b"a,b\n1,2\r3,4\n"):
        path.write_bytes(data)
        assert any(c["whole"] for c in _parts(path, 4)[1])


def test_parquet_parts_are_whole_row_groups_numbered_from_their_first_row(tmp_path):
    path = tmp_path / "f.parquet"
    pq.write_table(pa.table({"a": [str(i) for i in range(100)]}), path, row_group_size=30)
    meta = pq.ParquetFile(path).metadata
    groups = [(meta.row_group(g).num_rows, meta.row_group(g).total_byte_size) for g in range(meta.num_row_groups)]
    parts = group_row_groups(groups, groups[0][1] * 2)
    assert [(p.start, p.end, p.first_line) for p in parts] == [(0, 2, 1), (2, 4, 61)]
    pieces = []
    for p in parts:
        pieces += _records(SourceReader(path, "parquet", chunk_rows=7, part=p))
    assert pieces == _records(SourceReader(path, "parquet"))


def test_what_stays_on_the_local_path_says_why(tmp_path):
    import copy

    import yaml

    from ppmlops.data.ray_ingest import local_reason
    from ppmlops.risk.ray_scan import cluster_reason
    from ppmlops.risk.scan import SourceInput
    from ppmlops.spec import parse_spec

    doc = yaml.safe_load((Path(__file__).resolve().parents[2] / "dags" / "pipelines" / "demo.yaml").read_text())
    doc["dataset"]["source"] = {"path": str(tmp_path / "c.csv")}
    assert local_reason(parse_spec(doc)) is None
    bound = copy.deepcopy(doc)
    bound["privacy"]["unit"] = {"column": "customer_id", "max_rows": 2}
    assert "per-person bound" in local_reason(parse_spec(bound))
    held = copy.deepcopy(doc)
    held["dataset"]["test_source"] = {"path": str(tmp_path / "h.csv")}
    assert "test_source" in local_reason(parse_spec(held))
    npz = copy.deepcopy(doc)
    npz["dataset"]["source"] = {"path": str(tmp_path / "c.npz")}
    assert "read whole" in local_reason(parse_spec(npz))
    one = [SourceInput(tmp_path / "c.csv")]
    assert cluster_reason(one, None, None) is None
    assert cluster_reason(one * 2, None, None) == "several sources"
    assert cluster_reason(one, ["age"], None) and cluster_reason(one, None, tmp_path / "q.csv")


def test_the_stage_reads_on_the_cluster_only_when_one_is_configured_and_not_switched_off(monkeypatch):
    from types import SimpleNamespace

    from ppmlops.stages import ingest as stage

    calls = []
    monkeypatch.setattr(stage, "earlier_runs", lambda ctx: [])
    monkeypatch.setattr(stage, "ingest", lambda spec, folder, **kw: calls.append(("local", kw["split_rule"])))
    monkeypatch.setattr(stage.ray_ingest, "ingest_on_cluster",
                        lambda spec, folder, address, **kw: calls.append((address, kw["split_rule"])))
    monkeypatch.setattr(stage.ray_ingest, "local_reason", lambda spec: None)
    for address, on in ((None, True), ("h:6379", True), ("h:6379", False)):
        settings = SimpleNamespace(ray_address=address, ray_ingest=on, home=Path("/h"), source_urls={})
        stage.stage_source(SimpleNamespace(spec=None, settings=settings, interval=None,
                                           store=SimpleNamespace(private_dir=Path("/p"))), [], "blake2b")
    # Both paths split by the rule the stage read from the ledger.
    assert calls == [("local", "blake2b"), ("h:6379", "blake2b"), ("local", "blake2b")]
