"""The privacy ledger: immutable lifetime budgets, the dataset-level filter, grants, usage, releases."""

from __future__ import annotations

import math
import multiprocessing
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, text

from ppmlops.errors import BudgetExceeded, PpmlopsError
from ppmlops.privacy.accountant import ORDERS, Segment, epsilon_from_rdp, segment_rdp
from ppmlops.privacy.ledger import BudgetMismatch, Charge, Ledger, counted
from ppmlops.privacy.lifetime import LifetimeBudget, epsilon_at, rdp_budget

Q = 256 / 32561
DELTA = 1e-5
EPOCH = Segment(1.1, Q, 127)
RELEASE = Segment(20.0, 1.0, 1)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path: Path) -> str:
    """A ledger database without the ledger's tables yet, on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'nested' / 'dir' / 'ledger.db'}"
    pg = request.getfixturevalue("pg_url")
    engine = create_engine(pg)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS privacy_ledger, privacy_datasets"))
    engine.dispose()
    return pg


@pytest.fixture
def ledger(db_url: str) -> Ledger:
    led = Ledger(db_url)
    led.register_dataset("adult", epsilon_budget=8.0, delta=DELTA, order=12.0)
    yield led
    led.close()


def grant(led: Ledger, run: str, *charges: Charge, dataset: str = "adult") -> list[int]:
    return led.charge(dataset_id=dataset, run_id=run, charges=list(charges), kind="grant", key="grant",
                      randomness="secure")


def test_creates_parent_directory_and_uses_wal(tmp_path):
    Ledger(f"sqlite:///{tmp_path / 'nested' / 'dir' / 'ledger.db'}").close()
    path = tmp_path / "nested" / "dir" / "ledger.db"
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_lifetime_budget_is_fixed_at_registration(ledger):
    again = ledger.register_dataset("adult", epsilon_budget=8.0, delta=DELTA)
    assert again == LifetimeBudget("adult", 8.0, DELTA, 12.0)
    with pytest.raises(BudgetMismatch, match="ppmlops ledger set-budget adult --epsilon 9") as err:
        ledger.register_dataset("adult", epsilon_budget=9.0, delta=DELTA)
    assert "epsilon 8 at delta 1e-05" in str(err.value)
    assert ledger.budget("adult").epsilon == 8.0  # nothing changed


def test_set_budget_changes_it_explicitly_and_never_below_the_spend(ledger):
    grant(ledger, "r1", Charge("train", EPOCH))
    before, after = ledger.set_budget("adult", epsilon_budget=9.0)
    assert (before.epsilon, after.epsilon, after.order) == (8.0, 9.0, 12.0)
    with pytest.raises(BudgetExceeded, match="already spent"):
        ledger.set_budget("adult", epsilon_budget=0.9)
    assert ledger.budget("adult").epsilon == 9.0


def test_the_lifetime_budget_is_the_rdp_that_converts_to_it():
    for eps, delta, order in [(3.0, 1e-5, 7.0), (1.0, 1e-7, 20.0), (8.0, 1e-5, 12.0)]:
        assert epsilon_at(rdp_budget(eps, delta, order), delta, order) == pytest.approx(eps, rel=1e-12)


def test_a_grant_is_admitted_only_within_the_curve_at_the_fixed_order(ledger):
    budget = ledger.budget("adult")
    i = ORDERS.index(12.0)
    fits = math.floor(budget.rdp / segment_rdp(EPOCH)[i])
    grant(ledger, "r1", *[Charge("train", EPOCH)] * fits)
    with pytest.raises(BudgetExceeded, match="partition 'train'"):
        grant(ledger, "r2", Charge("train", EPOCH))
    assert len(ledger.entries("adult")) == fits  # the refused grant left nothing behind


def test_the_order_is_never_chosen_after_the_fact(db_url):
    """Admission looks at the registered order alone: a charge that a better order would convert
    within budget is still refused (choosing the order after seeing the entries is not a filter)."""
    led = Ledger(db_url)
    budget = led.register_dataset("d", epsilon_budget=3.0, delta=DELTA, order=63.0)
    big = Segment(1.5, 0.2, 5)  # its RDP explodes at high orders
    assert segment_rdp(big)[ORDERS.index(63.0)] > budget.rdp
    from ppmlops.privacy.accountant import epsilon_from_rdp

    assert epsilon_from_rdp(segment_rdp(big), DELTA)[0] < 3.0  # some other order would have let it in
    with pytest.raises(BudgetExceeded):
        led.charge(dataset_id="d", run_id="r", charges=[Charge("train", big)], kind="release",
                   key="k", randomness="secure")


def test_the_worst_partition_binds_not_the_best(ledger):
    """Parallel composition: the dataset's spend is the MAX over partitions."""
    budget = ledger.budget("adult")
    i = ORDERS.index(12.0)
    holdout = Segment(3.0, 1.0, 1)
    n = math.floor(budget.rdp / segment_rdp(holdout)[i])
    grant(ledger, "r1", Charge("train", EPOCH), *[Charge("holdout", holdout, "gaussian")] * n)
    curves = ledger.charged_curves("adult")
    assert budget.share_used(curves) == pytest.approx(n * segment_rdp(holdout)[i] / budget.rdp)
    assert budget.share_used(curves) > budget.share_used({"train": curves["train"]})
    # the train partition has room, the holdout one does not: a grant touching holdout is refused
    with pytest.raises(BudgetExceeded, match="partition 'holdout'"):
        grant(ledger, "r2", Charge("train", EPOCH), Charge("holdout", holdout, "gaussian"))
    grant(ledger, "r3", Charge("train", EPOCH))


def test_every_partition_a_charge_touches_must_fit(ledger):
    budget = ledger.budget("adult")
    fits = math.floor(budget.rdp / segment_rdp(EPOCH)[budget.index])
    grant(ledger, "r1", *[Charge("train", EPOCH)] * fits)  # training rows full, held-out rows untouched
    with pytest.raises(BudgetExceeded, match="partition 'train'"):
        grant(ledger, "r2", Charge("holdout", RELEASE, "gaussian"), Charge("train", EPOCH))
    grant(ledger, "r3", Charge("holdout", RELEASE, "gaussian"))


def test_grants_are_idempotent_per_run_and_cannot_change(ledger):
    first = grant(ledger, "r1", Charge("train", EPOCH), Charge("holdout", RELEASE, "gaussian"))
    assert grant(ledger, "r1", Charge("holdout", RELEASE, "gaussian"), Charge("train", EPOCH)) == first
    with pytest.raises(PpmlopsError, match="cannot change"):
        grant(ledger, "r1", Charge("train", Segment(2.0, Q, 127)))


def test_usage_needs_a_grant_and_is_written_ahead(ledger, db_url):
    with pytest.raises(PpmlopsError, match="no open grant"):
        ledger.record_usage(dataset_id="adult", run_id="r1", charge=Charge("train", EPOCH), key="e1",
                            randomness="secure")
    grant(ledger, "r1", Charge("train", EPOCH))
    entry = ledger.record_usage(dataset_id="adult", run_id="r1", charge=Charge("train", EPOCH), key="e1",
                                randomness="secure")
    code = (f"from ppmlops.privacy.ledger import Ledger; "
            f"print(*[e.status for e in Ledger({db_url!r}).entries('adult', kind='usage')])")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split() \
        == ["reserved"]  # another process sees it before complete()
    assert ledger.record_usage(dataset_id="adult", run_id="r1", charge=Charge("train", EPOCH), key="e1",
                               randomness="secure") == entry  # a re-run of the step adopts it
    ledger.complete(entry)
    with pytest.raises(PpmlopsError, match="already completed"):
        ledger.record_usage(dataset_id="adult", run_id="r1", charge=Charge("train", EPOCH), key="e1",
                            randomness="secure")


def test_usage_does_not_add_to_the_dataset_totals_the_grant_already_counts(ledger):
    grant(ledger, "r1", Charge("train", EPOCH), Charge("train", EPOCH))
    before = ledger.charged_curves("adult")["train"].copy()
    ledger.record_usage(dataset_id="adult", run_id="r1", charge=Charge("train", EPOCH), key="e1", randomness="secure")
    assert np.array_equal(ledger.charged_curves("adult")["train"], before)
    np.testing.assert_array_equal(ledger.usage_curves("adult", "r1")["train"], segment_rdp(EPOCH))


def test_an_unused_grant_is_released_and_a_used_one_trimmed_to_its_usage(ledger):
    grant(ledger, "idle", Charge("train", EPOCH))
    grant(ledger, "busy", Charge("train", EPOCH), Charge("train", EPOCH), Charge("holdout", RELEASE, "gaussian"))
    ledger.record_usage(dataset_id="adult", run_id="busy", charge=Charge("train", EPOCH), key="e1",
                        randomness="secure")
    assert ledger.close_grant(dataset_id="adult", run_id="idle") == "released"
    assert ledger.close_grant(dataset_id="adult", run_id="busy") == "trimmed"
    assert set(ledger.charged_curves("adult", "idle")) == set()
    # the dataset now counts the one epoch busy ran, not the two it was granted; the unused
    # holdout piece is released
    assert {(e.partition, e.status) for e in ledger.entries("adult", "busy", kind="grant")} == {
        ("train", "trimmed"), ("holdout", "released")}
    assert set(ledger.charged_curves("adult")) == {"train"}
    np.testing.assert_allclose(ledger.charged_curves("adult")["train"], segment_rdp(EPOCH))
    # the run's own guarantee is still its whole grant (the filter's fixed curve)
    two = epsilon_from_rdp(2 * segment_rdp(EPOCH), 1e-5)[0]
    assert ledger.epsilon_by_partition("adult", run_id="busy") == {"train": pytest.approx(two)}
    # a closed run writes no more usage
    with pytest.raises(PpmlopsError, match="no open grant"):
        ledger.record_usage(dataset_id="adult", run_id="busy", charge=Charge("train", EPOCH), key="e2",
                            randomness="secure")
    # a retried run asks for its grant again: it is re-admitted under the filter
    assert grant(ledger, "idle", Charge("train", EPOCH))
    assert ledger.charged_curves("adult")["train"][0] == pytest.approx(2 * segment_rdp(EPOCH)[0])
    # and a trimmed one too: the whole grant counts again (its usage lies under it)
    assert grant(ledger, "busy", Charge("train", EPOCH), Charge("train", EPOCH), Charge("holdout", RELEASE, "gaussian"))
    assert ledger.charged_curves("adult")["train"][0] == pytest.approx(3 * segment_rdp(EPOCH)[0])


def test_trimming_frees_the_unused_part_for_the_next_run(ledger):
    """A run that stopped early leaves its unused epochs to the next one; the sum of what ran
    stays under the lifetime filter (checked by dp-accounting in the e2e budget tests)."""
    pieces = [Charge("train", EPOCH)] * 3
    budget = ledger.budget("adult")
    taken = 0
    while True:
        try:
            grant(ledger, f"r{taken}", *pieces)
        except BudgetExceeded:
            break
        taken += 1
    assert taken >= 1
    ledger.record_usage(dataset_id="adult", run_id="r0", charge=Charge("train", EPOCH), key="e1", randomness="secure")
    for r in range(taken):
        ledger.close_grant(dataset_id="adult", run_id=f"r{r}")
    assert grant(ledger, "next", *pieces)  # r0's two unused epochs and the idle grants are free again
    assert budget.share_used(ledger.charged_curves("adult")) <= 1.0


def test_every_entry_records_its_randomness(ledger):
    ledger.charge(dataset_id="adult", run_id="r", charges=[Charge("train", RELEASE, "gaussian")], kind="release",
                  key="counts", randomness="reproducible")
    [e] = ledger.entries("adult")
    assert (e.kind, e.randomness, e.to_dict()["randomness"]) == ("release", "reproducible", "reproducible")
    with pytest.raises(PpmlopsError, match="randomness"):
        ledger.charge(dataset_id="adult", run_id="r2", charges=[Charge("train", RELEASE, "gaussian")],
                      kind="release", key="counts", randomness="mersenne")


def test_a_database_from_the_first_schema_keeps_its_entries(tmp_path):
    """Ledgers written by 0.1 (no kind, key, randomness or accounting order) open and still count."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript("""
            CREATE TABLE privacy_datasets (dataset_id VARCHAR(200) PRIMARY KEY, epsilon_budget FLOAT NOT NULL,
              delta FLOAT NOT NULL, created_at VARCHAR(40) NOT NULL, updated_at VARCHAR(40) NOT NULL);
            CREATE TABLE privacy_ledger (id INTEGER PRIMARY KEY AUTOINCREMENT, dataset_id VARCHAR(200) NOT NULL,
              run_id VARCHAR(200) NOT NULL, partition VARCHAR(100) NOT NULL, mechanism VARCHAR(64) NOT NULL,
              noise_multiplier FLOAT NOT NULL, sample_rate FLOAT NOT NULL, steps INTEGER NOT NULL,
              status VARCHAR(16) NOT NULL, created_at VARCHAR(40) NOT NULL, completed_at VARCHAR(40),
              note TEXT NOT NULL, orders TEXT NOT NULL, rdp TEXT NOT NULL);
            INSERT INTO privacy_datasets VALUES ('d', 3.0, 1e-5, 'then', 'then');
        """)
        conn.execute("INSERT INTO privacy_ledger (dataset_id, run_id, partition, mechanism, noise_multiplier, "
                     "sample_rate, steps, status, created_at, note, orders, rdp) VALUES "
                     "('d', 'old', 'train', 'subsampled_gaussian', 1.1, ?, 127, 'completed', 'then', 'epoch 1', "
                     "'[2.0]', '[0.0]')", (Q,))
    led = Ledger(f"sqlite:///{path}")
    [e] = led.entries("d")
    assert (e.kind, e.randomness) == ("release", "unrecorded") and counted([e]) == [e]
    np.testing.assert_array_equal(e.rdp, segment_rdp(EPOCH))  # recomputed: the old row's grid differs
    assert led.budget("d").order in ORDERS


def test_errors_name_the_problem(ledger):
    with pytest.raises(PpmlopsError, match="'nope' is not registered"):
        ledger.charge(dataset_id="nope", run_id="r", charges=[Charge("train", EPOCH)], kind="grant", key="grant",
                      randomness="secure")
    with pytest.raises(PpmlopsError, match="needs sample_rate 1"):
        grant(ledger, "r", Charge("train", EPOCH, "gaussian"))
    with pytest.raises(PpmlopsError, match="not a valid SQLAlchemy URL"):
        Ledger("not a url")


def _grant_until_refused(db_url: str, worker: int, results) -> None:
    granted = 0
    try:
        led = Ledger(db_url)
        for i in range(200):
            try:
                led.charge(dataset_id="shared", run_id=f"w{worker}-{i}", charges=[Charge("train", EPOCH)],
                           kind="grant", key="grant", randomness="secure")
                granted += 1
            except BudgetExceeded:
                break
    except Exception as err:  # reported to the parent, which fails the test with it
        results.put((worker, repr(err)))
        return
    results.put((worker, granted))


def race(db_url: str, workers: int = 3) -> dict:
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_grant_until_refused, args=(db_url, w, results)) for w in range(workers)]
    for p in procs:
        p.start()
    granted = dict(results.get(timeout=180) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    return granted


def test_concurrent_runs_cannot_jointly_overspend_and_lose_no_entry(db_url):
    led = Ledger(db_url)
    budget = led.register_dataset("shared", epsilon_budget=2.0, delta=DELTA, order=12.0)
    fits = math.floor(budget.rdp / segment_rdp(EPOCH)[budget.index])
    granted = race(db_url)
    assert all(isinstance(n, int) for n in granted.values()), granted
    entries = led.entries("shared")
    assert sum(granted.values()) == fits == len(entries)
    assert len({e.run_id for e in entries}) == fits  # every admitted grant is there, once
    assert budget.share_used(led.charged_curves("shared")) <= 1.0


def test_a_read_only_ledger_is_named_not_a_raw_driver_error(pg_url):
    import sqlalchemy as sa

    Ledger(pg_url).register_dataset("d", epsilon_budget=1.0, delta=DELTA)
    name = sa.engine.make_url(pg_url).database
    admin = create_engine(sa.engine.make_url(pg_url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    try:
        with pytest.raises(PpmlopsError, match=r"cannot write to the privacy ledger in the database at "
                                               r"postgresql\+psycopg2://ppmlops:\*\*\*@.*read-only") as err:
            Ledger(pg_url).charge(dataset_id="d", run_id="r", charges=[Charge("train", RELEASE, "gaussian")],
                                  kind="release", key="k", randomness="secure")
        assert sa.engine.make_url(pg_url).password not in str(err.value)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'ALTER DATABASE "{name}" SET default_transaction_read_only = off')
        admin.dispose()
