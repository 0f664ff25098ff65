"""The privacy ledger: write-ahead, lifetime composition per dataset, parallel partitions."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import update

from ppmlops.errors import BudgetExceeded, PpmlopsError
from ppmlops.privacy.accountant import ORDERS, Segment, epsilon, rdp_curve, segment_rdp
from ppmlops.privacy.ledger import Ledger, ledger_table

Q = 256 / 32561
DELTA = 1e-5
EPOCH = Segment(1.1, Q, 127)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'nested' / 'dir' / 'ledger.db'}"


@pytest.fixture
def ledger(db_url: str) -> Ledger:
    led = Ledger(db_url)
    led.register_dataset("adult", epsilon_budget=8.0, delta=DELTA)
    yield led
    led.close()


def test_creates_parent_directory_and_uses_wal(db_url, tmp_path):
    Ledger(db_url).close()
    path = tmp_path / "nested" / "dir" / "ledger.db"
    assert path.exists()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"privacy_ledger", "privacy_datasets"} <= tables


def test_reservation_is_committed_before_the_steps_run(ledger, db_url):
    entry_id = ledger.reserve(dataset_id="adult", run_id="run-1", segment=EPOCH, note="epoch 1")
    # A second instance, and a second process, see it before complete() is called.
    [seen] = Ledger(db_url).entries("adult")
    assert (seen.id, seen.status, seen.note) == (entry_id, "reserved", "epoch 1")
    code = (
        "import sys; from ppmlops.privacy.ledger import Ledger; "
        f"e = Ledger({db_url!r}).entries('adult'); print(len(e), e[0].status, e[0].steps)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["1", "reserved", str(EPOCH.steps)]
    ledger.complete(entry_id)
    assert Ledger(db_url).entries("adult")[0].status == "completed"


def test_entry_stores_parameters_and_curve(ledger):
    ledger.reserve(dataset_id="adult", run_id="run-1", segment=EPOCH, partition="train")
    [e] = ledger.entries()
    assert (e.dataset_id, e.run_id, e.partition, e.mechanism) == ("adult", "run-1", "train", "subsampled_gaussian")
    assert (e.noise_multiplier, e.sample_rate, e.steps) == (EPOCH.noise_multiplier, EPOCH.sample_rate, EPOCH.steps)
    np.testing.assert_array_equal(e.rdp, segment_rdp(EPOCH))
    assert e.created_at.endswith("+00:00")
    assert e.segment == EPOCH


def test_crashed_run_still_counts(ledger, db_url):
    ledger.reserve(dataset_id="adult", run_id="crashed", segment=EPOCH)  # never completed
    done = ledger.reserve(dataset_id="adult", run_id="ok", segment=EPOCH)
    ledger.complete(done)
    reopened = Ledger(db_url)
    assert [e.status for e in reopened.entries("adult")] == ["reserved", "completed"]
    assert reopened.epsilon_spent("adult") == pytest.approx(epsilon([EPOCH, EPOCH], DELTA), rel=1e-12)


def test_runs_compose_in_rdp_and_convert_once(ledger):
    run1 = [Segment(1.1, Q, 127)] * 3
    run2 = [Segment(0.9, Q, 127), Segment(1.4, 2 * Q, 64)]
    for run_id, plan in (("run-1", run1), ("run-2", run2)):
        for seg in plan:
            ledger.complete(ledger.reserve(dataset_id="adult", run_id=run_id, segment=seg))
    total = ledger.epsilon_spent("adult")
    assert total == pytest.approx(epsilon(run1 + run2, DELTA), rel=1e-12)
    per_run = [ledger.epsilon_spent("adult", run_id=r) for r in ("run-1", "run-2")]
    assert per_run[0] == pytest.approx(epsilon(run1, DELTA), rel=1e-12)
    # Composing curves is tighter than adding epsilons, and more than either run alone.
    assert max(per_run) < total < sum(per_run)
    np.testing.assert_allclose(ledger.rdp_spent("adult", partition="train"), rdp_curve(run1 + run2), rtol=1e-12)
    np.testing.assert_allclose(ledger.rdp_spent("adult", run_id="run-2"), rdp_curve(run2), rtol=1e-12)


def test_partitions_compose_in_parallel(ledger):
    train = [Segment(1.0, Q, 500)]
    validation = [Segment(5.0, 1.0, 3)]  # noisy metrics on the held-out rows
    ledger.reserve(dataset_id="adult", run_id="r", segment=train[0], partition="train")
    ledger.reserve(dataset_id="adult", run_id="r", segment=validation[0], partition="validation",
                   mechanism="gaussian")
    eps_train, eps_val = epsilon(train, DELTA), epsilon(validation, DELTA)
    assert ledger.epsilon_spent("adult") == pytest.approx(max(eps_train, eps_val), rel=1e-12)
    assert ledger.epsilon_spent("adult") < epsilon(train + validation, DELTA)
    np.testing.assert_array_equal(
        ledger.rdp_spent("adult"), np.maximum(rdp_curve(train), rdp_curve(validation)))
    assert ledger.summary("adult")["datasets"][0]["partitions"] == pytest.approx(
        {"train": eps_train, "validation": eps_val}, rel=1e-12)


def test_epsilon_is_converted_at_the_registered_delta(ledger):
    ledger.reserve(dataset_id="adult", run_id="r", segment=EPOCH)
    at_registered = ledger.epsilon_spent("adult")
    assert ledger.epsilon_spent("adult", delta=1e-8) > at_registered
    ledger.register_dataset("adult", epsilon_budget=8.0, delta=1e-8)  # upsert
    assert ledger.dataset("adult") == {"dataset_id": "adult", "epsilon_budget": 8.0, "delta": 1e-8}
    assert ledger.epsilon_spent("adult") == ledger.epsilon_spent("adult", delta=1e-8)


def test_reservation_over_the_dataset_budget_is_refused_and_not_recorded(ledger):
    ledger.register_dataset("adult", epsilon_budget=1.0, delta=DELTA)
    ok = Segment(1.1, Q, 127)
    ledger.reserve(dataset_id="adult", run_id="r", segment=ok)
    with pytest.raises(BudgetExceeded, match=r"'adult' would reach epsilon .* over its budget 1"):
        ledger.reserve(dataset_id="adult", run_id="r", segment=Segment(0.6, Q, 2000))
    assert len(ledger.entries("adult")) == 1
    # Opting out records it anyway (e.g. to account for a release that already happened).
    ledger.reserve(dataset_id="adult", run_id="r", segment=Segment(0.6, Q, 2000), enforce_budget=False)
    summary = ledger.summary("adult")["datasets"][0]
    assert summary["epsilon_spent"] > 1.0 and summary["epsilon_remaining"] == 0.0


def test_summary_shape(ledger):
    ledger.register_dataset("other", epsilon_budget=2.0, delta=1e-6)
    e1 = ledger.reserve(dataset_id="adult", run_id="run-1", segment=EPOCH, note="epoch 1")
    ledger.complete(e1)
    ledger.reserve(dataset_id="adult", run_id="run-2", segment=EPOCH)
    doc = ledger.summary()
    json.dumps(doc)  # serialisable as is
    assert doc["accountant"] == "rdp" and doc["orders"] == list(ORDERS)
    adult, other = doc["datasets"]
    assert set(adult) == {"dataset_id", "epsilon_budget", "delta", "epsilon_spent", "epsilon_remaining",
                          "partitions", "runs", "entries"}
    assert adult["dataset_id"] == "adult" and adult["runs"] == ["run-1", "run-2"]
    assert adult["epsilon_spent"] == pytest.approx(epsilon([EPOCH, EPOCH], DELTA), rel=1e-12)
    assert adult["epsilon_remaining"] == pytest.approx(8.0 - adult["epsilon_spent"])
    assert [e["status"] for e in adult["entries"]] == ["completed", "reserved"]
    assert "rdp" not in adult["entries"][0] and adult["entries"][0]["note"] == "epoch 1"
    assert other == {"dataset_id": "other", "epsilon_budget": 2.0, "delta": 1e-6, "epsilon_spent": 0.0,
                     "epsilon_remaining": 2.0, "partitions": {}, "runs": [], "entries": []}
    assert [d["dataset_id"] for d in ledger.summary("other")["datasets"]] == ["other"]


def test_curves_from_another_order_grid_are_recomputed(ledger, db_url):
    entry_id = ledger.reserve(dataset_id="adult", run_id="r", segment=EPOCH)
    with ledger._engine.begin() as conn:  # as an older version with a 3-order grid would have written it
        conn.execute(update(ledger_table).where(ledger_table.c.id == entry_id)
                     .values(orders=json.dumps([2.0, 4.0, 8.0]), rdp=json.dumps([0.1, 0.2, 0.3])))
    [e] = Ledger(db_url).entries()
    np.testing.assert_array_equal(e.rdp, segment_rdp(EPOCH))


def test_errors_name_the_problem(ledger):
    with pytest.raises(PpmlopsError, match="'unknown' is not registered"):
        ledger.reserve(dataset_id="unknown", run_id="r", segment=EPOCH)
    with pytest.raises(PpmlopsError, match="no entry with id 999"):
        ledger.complete(999)
    with pytest.raises(PpmlopsError, match="mechanism"):
        ledger.reserve(dataset_id="adult", run_id="r", segment=EPOCH, mechanism="laplace")
    with pytest.raises(PpmlopsError, match="sample_rate 1"):
        ledger.reserve(dataset_id="adult", run_id="r", segment=EPOCH, mechanism="gaussian")
    with pytest.raises(PpmlopsError, match="run_id"):
        ledger.reserve(dataset_id="adult", run_id="", segment=EPOCH)
    with pytest.raises(PpmlopsError, match="epsilon_budget"):
        ledger.register_dataset("adult", epsilon_budget=-1, delta=DELTA)
    with pytest.raises(PpmlopsError, match="delta"):
        ledger.register_dataset("adult", epsilon_budget=1, delta=1.5)
    with pytest.raises(PpmlopsError, match="not registered"):
        ledger.epsilon_spent("unknown")
    with pytest.raises(PpmlopsError, match="'unknown' is not in the privacy ledger"):
        ledger.summary("unknown")
    with pytest.raises(PpmlopsError, match="not a valid SQLAlchemy URL"):
        Ledger("not a url")


def test_in_memory_sqlite():
    led = Ledger("sqlite://")
    led.register_dataset("d", epsilon_budget=1.0, delta=DELTA)
    led.reserve(dataset_id="d", run_id="r", segment=EPOCH)
    assert led.epsilon_spent("d") == pytest.approx(epsilon([EPOCH], DELTA), rel=1e-12)


def _reserve_until_refused(db_url: str, worker: int, results) -> None:
    granted = 0
    try:
        led = Ledger(db_url)
        for i in range(40):
            try:
                led.reserve(dataset_id="shared", run_id=f"w{worker}", segment=EPOCH, note=str(i))
                granted += 1
            except BudgetExceeded:
                break
    except Exception as err:  # reported to the parent, which fails the test with it
        results.put((worker, repr(err)))
        return
    results.put((worker, granted))


def test_concurrent_writers_cannot_jointly_overspend(db_url):
    led = Ledger(db_url)
    budget = 2.0
    led.register_dataset("shared", epsilon_budget=budget, delta=DELTA)
    # How many epochs fit when granted one at a time by a single writer.
    fits = next(n for n in range(1, 200) if epsilon([EPOCH] * (n + 1), DELTA) > budget)
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_reserve_until_refused, args=(db_url, w, results)) for w in range(3)]
    for p in procs:
        p.start()
    granted = dict(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert all(isinstance(n, int) for n in granted.values()), granted
    assert sum(granted.values()) == fits == len(led.entries("shared"))
    assert led.epsilon_spent("shared") <= budget
