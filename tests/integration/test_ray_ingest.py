"""Ingest on Ray Data on a real two-node Ray cluster (ppmlops.data.ray_ingest) against the local path.

One loopback cluster (`ray start --head` plus a node joining it, one CPU each) for the module.
Each test ingests the same file both ways and wants the same snapshots (rows and order), the same
hashes, the same quarantine file byte for byte and the same IngestResult.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from datetime import date, datetime, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from ppmlops.data import ray_ingest
from ppmlops.data.ingest import ingest, snapshot_sha256
from ppmlops.data.synthetic import generate
from ppmlops.errors import DataError
from ppmlops.privacy.blocks import calendar_of
from ppmlops.privacy.split import DEFAULT_RULE, LEGACY_RULE
from ppmlops.risk.screen import DirectIdentifierScreen
from ppmlops.spec import parse_spec
from ppmlops.training.local_cluster import start_local_cluster
from ppmlops.window import DataInterval

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
KEY = "k" * 32
MADE_ON = date(2024, 6, 3)
INTERVAL = DataInterval(None, datetime(2024, 5, 27, tzinfo=timezone.utc))  # a week before the newest rows


@pytest.fixture(scope="module")
def cluster():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    with start_local_cluster(nodes=2, cpus_per_node=1) as c:
        assert len(c.node_ids) == 2
        yield c
        ray.shutdown()


def spec_for(path: Path, fmt: str | None = None):
    doc = copy.deepcopy(yaml.safe_load((REPO / "dags" / "pipelines" / "demo.yaml").read_text()))
    doc["dataset"]["source"] = {"path": str(path)} | ({"format": fmt} if fmt else {})
    doc["dataset"]["pseudonymize"] = ["customer_id"]
    return parse_spec(doc)


def demo_rows(rows: int = 6000):
    df = generate(rows, seed=7, event_weeks=12, made_on=MADE_ON)
    # An undeclared column, screened cell by cell (some cells are e-mail addresses).
    df["notes"] = [f"write to p{i}@mail.example" if i % 97 == 0 else f"note {i % 5}" for i in range(len(df))]
    return df


def messy_csv(path: Path, rows: int = 6000) -> Path:
    """The demo table with every kind of bad row: malformed lines, refusals (the generator's),
    invalid numbers and labels, unknown categories, a blank line, rows outside the window."""
    text = demo_rows(rows).to_csv(index=False, lineterminator="\n")
    assert '"' not in text
    lines = text.splitlines()
    header = lines[0].split(",")
    age, plan, label = header.index("age"), header.index("plan"), header.index("churned")
    for i in range(1, len(lines)):
        fields = lines[i].split(",")
        if i % 37 == 0:
            fields.append("extra")
        elif i % 41 == 0:
            fields[age] = "abc"
        elif i % 43 == 0:
            fields[plan] = "gold"
        elif i % 53 == 0:
            fields[label] = ""
        elif i % 59 == 0:
            fields[age] = " 30 "  # accepted, by the row-wise check
        lines[i] = ",".join(fields)
    lines.insert(500, "")
    path.write_text("\n".join(lines) + "\n")
    return path


def both_ways(spec, tmp_path: Path, cluster, monkeypatch, part_bytes: int, chunk_rows: int = 400,
              split_rule: str = DEFAULT_RULE):
    monkeypatch.setenv("PPMLOPS_PSEUDONYM_KEY", KEY)
    selected = INTERVAL.with_lookback(spec.dataset.window.lookback)
    blocks = calendar_of(spec.privacy).touching(selected.start, selected.end)
    given = dict(interval=INTERVAL, home=tmp_path / "home", screen=DirectIdentifierScreen(), retired=[blocks[1]],
                 chunk_rows=chunk_rows, split_rule=split_rule)
    local = ingest(spec, tmp_path / "local", **given)
    remote = ray_ingest.ingest_on_cluster(spec, tmp_path / "cluster", cluster.address, part_bytes=part_bytes, **given)
    return local, remote


def assert_same(local, remote, tmp_path: Path) -> dict:
    moved = {"snapshot_train", "snapshot_test", "quarantine_path"}
    a, b = dataclasses.asdict(local), dataclasses.asdict(remote)
    assert {k: v for k, v in a.items() if k not in moved} == {k: v for k, v in b.items() if k not in moved}
    for name in ("snapshot_train", "snapshot_test"):
        left, right = pq.read_table(a[name]), pq.read_table(b[name])
        assert left.schema.equals(right.schema, check_metadata=True) and left.equals(right)
    assert Path(a["quarantine_path"]).read_bytes() == Path(b["quarantine_path"]).read_bytes()
    assert snapshot_sha256(b["snapshot_train"], b["snapshot_test"]) == remote.sha256 == local.sha256
    run = tmp_path / "cluster"
    assert not (run / ray_ingest.PARTS_DIR).exists() and not list(run.glob(".*tmp"))
    return json.loads((run / ray_ingest.RECORD).read_text())


def test_a_messy_csv_on_two_nodes_is_what_local_ingest_stages(cluster, tmp_path, monkeypatch):
    src = messy_csv(tmp_path / "customers.csv")
    local, remote = both_ways(spec_for(src), tmp_path, cluster, monkeypatch, part_bytes=60_000)
    record = assert_same(local, remote, tmp_path)
    # Every kind of row was there to be merged.
    assert {"malformed line", "no consent", "invalid value", "unknown category", "invalid label"} <= set(
        local.quarantine_reasons)
    assert local.rows_outside_window > 0 and local.rows_outside_open_blocks > 0 and local.quarantine_cells_withheld
    assert remote.source_sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    assert len(record["parts"]) >= 6 and set(record["nodes"]) == cluster.node_ids
    assert {p["node"] for p in record["parts"]} == cluster.node_ids
    assert sum(p["rows_in"] for p in record["parts"]) == local.rows_in


def test_a_parquet_source_is_read_by_row_groups(cluster, tmp_path, monkeypatch):
    src = tmp_path / "customers.parquet"
    df = demo_rows(3000)
    df.loc[df.index % 41 == 0, "age"] = "abc"
    pq.write_table(__import__("pyarrow").Table.from_pandas(df, preserve_index=False), src, row_group_size=250)
    # Under the legacy split rule (a dataset registered before rules were recorded): the parts split as
    # the local path does under it, and not as the default would.
    local, remote = both_ways(spec_for(src), tmp_path, cluster, monkeypatch, part_bytes=1, split_rule=LEGACY_RULE)
    record = assert_same(local, remote, tmp_path)
    assert remote.split_rule == LEGACY_RULE and "rule blake2b" in remote.split
    assert len(record["parts"]) == 12 and [p["first_line"] for p in record["parts"]][:3] == [1, 251, 501]


def test_a_quoted_csv_is_read_as_one_part(cluster, tmp_path, monkeypatch):
    src = messy_csv(tmp_path / "customers.csv", rows=1500)
    lines = src.read_text().splitlines()
    notes = lines[0].split(",").index("notes")
    for i in (100, 700, 1200):  # a quoted field, one holding a line break (a record on two lines)
        fields = lines[i].split(",")
        fields[notes] = '"one, two\nthree"' if i == 700 else '"quoted"'
        lines[i] = ",".join(fields)
    src.write_text("\n".join(lines) + "\n")
    local, remote = both_ways(spec_for(src), tmp_path, cluster, monkeypatch, part_bytes=20_000)
    record = assert_same(local, remote, tmp_path)
    assert len(record["parts"]) == 1 and record["how"].startswith("one part: the file holds a quote")


def test_an_undecodable_byte_fails_as_local_ingest_does_and_stages_nothing(cluster, tmp_path, monkeypatch):
    src = messy_csv(tmp_path / "customers.csv", rows=1500)
    data = bytearray(src.read_bytes())
    line_start = data.index(b"\n", len(data) * 2 // 3) + 1  # a line in the last third (a later part)
    data[data.index(b",", line_start) + 1] = 0xFF
    src.write_bytes(bytes(data))
    with pytest.raises(DataError) as local:
        both_ways(spec_for(src), tmp_path, cluster, monkeypatch, part_bytes=20_000)
    monkeypatch.setenv("PPMLOPS_PSEUDONYM_KEY", KEY)
    with pytest.raises(DataError) as remote:
        ray_ingest.ingest_on_cluster(spec_for(src), tmp_path / "cluster", cluster.address, interval=INTERVAL,
                                     home=tmp_path / "home", part_bytes=20_000)
    assert str(remote.value) == str(local.value) and "byte 0xff" in str(remote.value)
    assert sorted(p.name for p in (tmp_path / "cluster").iterdir()) == []


def test_the_risk_scan_on_two_nodes_is_the_local_scan(cluster, tmp_path):
    from ppmlops.risk.ray_scan import scan_on_cluster
    from ppmlops.risk.scan import SourceInput, scan_sources

    src = messy_csv(tmp_path / "customers.csv", rows=4000)
    spec = spec_for(src)
    given = dict(consent=spec.dataset.consent, as_of=MADE_ON, sample_rows=700, seed=3, chunk_rows=300)
    sources = [SourceInput(src, "csv", "utf-8", None)]
    local = scan_sources(sources, **given)
    remote = scan_on_cluster(sources, address=cluster.address, part_bytes=40_000, **given)
    assert dataclasses.asdict(remote) == dataclasses.asdict(local)
    assert local.sample_rows == 700 and local.rows_refused > 0 and local.files[0].rows_malformed > 20
