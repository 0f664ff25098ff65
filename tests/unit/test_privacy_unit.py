"""The unit of privacy (issue 27 item 5): at most k rows per person, chosen without looking at
values, and every charge accounted for adding or removing one person's k rows."""

from __future__ import annotations

import csv
import math
import stat
from fractions import Fraction
from pathlib import Path

import dp_accounting
import numpy as np
import pandas as pd
import pytest
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant
from scipy import stats as st

from ppmlops.data.ingest import ingest
from ppmlops.data.person_bound import KEEP, OVER, UNKNOWN, PersonBound
from ppmlops.errors import SpecError
from ppmlops.privacy.accountant import ORDERS, Segment, epsilon_from_rdp, segment_rdp
from ppmlops.privacy.ledger import Charge, Ledger
from ppmlops.privacy.planning import EpochShape, RunRequest, plan_run
from ppmlops.privacy.releases import CountGroup, release_segment
from ppmlops.privacy.session import Grant, PrivacySession
from ppmlops.privacy.unit import row_noise, unit_sample_rate, unit_scaled
from ppmlops.spec import parse_spec
from ppmlops.stages.card import unit_note, unit_text

DELTA = 1e-5
K = 3
# Person i has i + 1 rows: persons 0..2 are within the bound, 3..9 over it.
PERSONS = [f"cust-{i:04d}" for i in range(10)]


def _doc(path: Path, **privacy) -> dict:
    return {
        "name": "people",
        "dataset": {
            "id": "people", "source": {"path": str(path)},
            "label": {"column": "y", "positive": "yes", "values": ["yes", "no"]},
            "consent": {"column": "consent"},
            "identifiers": ["customer_id"], "pseudonymize": ["customer_id"],
            "features": [{"name": "age", "type": "numeric", "range": [18, 90]},
                         {"name": "plan", "type": "categorical", "categories": ["basic", "premium"]}],
        },
        "privacy": {"epsilon": 3.0, "delta": DELTA, "run_epsilon": 1.0,
                    "unit": {"column": "customer_id", "max_rows": K}} | privacy,
        "training": {"test_fraction": 0.5, "seed": 0},
        "deploy": {"model_name": "people"},
    }


def _rows(age_of=lambda i, j: 20 + (7 * i + 3 * j) % 60, label_of=lambda i, j: "yes" if (i + j) % 2 else "no"):
    rows = []
    # Interleaved, as event tables are: person i's j-th row comes in round j.
    for j in range(len(PERSONS)):
        for i, person in enumerate(PERSONS):
            if j <= i:
                rows.append([person, str(age_of(i, j)), "basic" if j % 2 else "premium", "yes", label_of(i, j)])
    return rows


def _write(path: Path, rows) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["customer_id", "age", "plan", "consent", "y"])
        w.writerows(rows)
    return path


def _ingest(tmp_path: Path, name: str, rows, monkeypatch):
    monkeypatch.setenv("PPMLOPS_PSEUDONYM_KEY", "k" * 32)
    src = _write(tmp_path / f"{name}.csv", rows)
    spec = parse_spec(_doc(src))
    result = ingest(spec, tmp_path / name, home=tmp_path / "home")
    q = pd.read_csv(result.quarantine_path, dtype=str)
    return spec, result, q


# -- the bound ------------------------------------------------------------------------------------

def test_each_person_keeps_at_most_k_rows_and_the_rest_are_quarantined_privately(tmp_path, monkeypatch):
    _, result, q = _ingest(tmp_path, "a", _rows(), monkeypatch)
    train = pd.read_parquet(result.snapshot_train)
    test = pd.read_parquet(result.snapshot_test)
    per_person = pd.concat([train, test])["customer_id_pseudonym"].value_counts()
    assert len(per_person) == len(PERSONS)
    assert sorted(per_person.tolist()) == sorted(min(i + 1, K) for i in range(len(PERSONS)))
    over = sum(max(0, i + 1 - K) for i in range(len(PERSONS)))
    assert result.rows_over_person_limit == over
    assert (q["_reason"].str.startswith("over the per-person row limit")).sum() == over
    # Private: in no released bin (the assess counts add up the quarantine reasons).
    assert sum(result.quarantine_reasons.values()) == 0
    # A person is in one partition only: their train and holdout charges compose in parallel.
    assert not set(train["customer_id_pseudonym"]) & set(test["customer_id_pseudonym"])
    assert result.split.startswith("keyed hash of each person's customer_id")
    # The quarantine keeps no raw identifier and nothing else of a dropped row.
    text = Path(result.quarantine_path).read_text()
    assert not any(p in text for p in PERSONS)
    assert set(q.columns) >= {"_record_hmac"} and q[["age", "plan", "y"]].isna().all().all()
    key = tmp_path / "home" / "keys" / "people.person-bound.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # The person column is used, then dropped: never a staged column.
    assert "customer_id" not in train.columns and "customer_id" in result.dropped_columns


def test_which_rows_are_kept_does_not_depend_on_any_value_but_the_person_id(tmp_path, monkeypatch):
    _, first, q1 = _ingest(tmp_path, "a", _rows(), monkeypatch)
    changed = _rows(age_of=lambda i, j: 89 - (5 * i + j) % 40, label_of=lambda i, j: "no" if (i + j) % 3 else "yes")
    _, second, q2 = _ingest(tmp_path, "b", changed, monkeypatch)
    dropped = lambda q: sorted(q.loc[q["_reason"].str.startswith("over the"), "_line"].astype(int))
    assert dropped(q1) == dropped(q2) and dropped(q1)
    assert first.rows_train + first.rows_test == second.rows_train + second.rows_test


def test_another_persons_rows_never_change_whose_rows_are_kept():
    alone = PersonBound("d", "c", 2, b"x" * 32)
    ids = ["a"] * 6
    alone.count(ids)
    mixed = PersonBound("d", "c", 2, b"x" * 32)
    other = ["a", "b", "b", "a", "a", "b", "a", "b", "a", "a"]
    mixed.count(other)
    verdicts = mixed.select(other)
    kept_a = [v for p, v in zip(other, verdicts) if p == "a"]
    assert kept_a == list(alone.select(ids))
    assert list(verdicts).count(KEEP) == 4 and alone.dropped == 4


def test_a_row_without_a_person_id_is_not_bounded_but_quarantined():
    b = PersonBound("d", "c", 1, b"x" * 32)
    b.count(["a", " ", "a"])
    assert list(b.select(["a", " ", "a"])).count(UNKNOWN) == 1 and b.unknown == 1
    assert b.totals.to_dict() == {"a": 2}


def test_a_person_column_that_is_a_feature_or_a_separate_test_file_is_refused(tmp_path):
    doc = _doc(tmp_path / "x.csv")
    doc["privacy"]["unit"]["column"] = "age"
    with pytest.raises(SpecError, match="privacy.unit.column 'age' is also a feature"):
        parse_spec(doc)
    doc = _doc(tmp_path / "x.csv")
    doc["dataset"]["test_source"] = {"path": str(tmp_path / "t.csv")}
    with pytest.raises(SpecError, match="privacy.unit needs the held-out rows chosen by person"):
        parse_spec(doc)


# -- the accounting, checked with dp-accounting -----------------------------------------------------

def _person_pld_epsilon(sigma: float, q: float, k: int, steps: int) -> float:
    """dp-accounting's PLD of the person-level mechanism with aligned clipped gradients: each of
    the person's k rows is sampled with rate q, so the gradient sum moves by Binomial(k, q) times
    the clip norm (a mixture of Gaussians). A valid lower bound on the worst case we must cover."""
    shifts = list(range(k + 1))
    probs = [float(p) for p in st.binom.pmf(shifts, k, q)]
    acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-3)
    acc.compose(dp_event.MixtureOfGaussiansDpEvent(sigma, [float(s) for s in shifts], probs), steps)
    return acc.get_epsilon(DELTA)


@pytest.mark.parametrize("sigma,q,k,steps", [(1.0, 0.02, 4, 200), (2.0, 0.05, 3, 100), (0.9, 0.01, 8, 500)])
def test_the_charged_curve_bounds_dp_accountings_person_level_mechanism(sigma, q, k, steps):
    charged = epsilon_from_rdp(segment_rdp(unit_scaled(Segment(sigma, q, steps), k)), DELTA)[0]
    truth = _person_pld_epsilon(sigma, q, k, steps)
    assert charged >= truth
    # Sensitivity 1 instead of k (the row-level charge) would under-count the person's loss.
    assert epsilon_from_rdp(segment_rdp(Segment(sigma, q, steps)), DELTA)[0] < truth


def test_without_sampling_the_charge_is_exactly_the_gaussian_at_sensitivity_k():
    acc = rdp_privacy_accountant.RdpAccountant(orders=ORDERS)
    acc.compose(dp_accounting.GaussianDpEvent(6.0 / 3), 1)
    assert epsilon_from_rdp(segment_rdp(unit_scaled(Segment(6.0, 1.0, 1), 3)), DELTA)[0] == pytest.approx(
        acc.get_epsilon(DELTA), rel=1e-9)
    # The count release: sensitivity k per group is the same curve as unit_scaled.
    groups = [CountGroup(6.0, 3)]
    np.testing.assert_allclose(segment_rdp(release_segment(groups)), segment_rdp(unit_scaled(Segment(6.0, 1.0, 1), 3)))


def test_the_person_rate_is_the_chance_any_row_is_sampled_and_never_below_it():
    for q, k in ((0.01, 4), (0.3, 7), (1e-6, 1000)):
        exact = 1 - (1 - Fraction(q)) ** k  # in rationals: no rounding to hide behind
        assert Fraction(unit_sample_rate(q, k)) >= exact
        assert unit_sample_rate(q, k) <= min(1.0, k * q)
    assert unit_scaled(Segment(1.3, 0.02, 5), 1) == Segment(1.3, 0.02, 5)  # one row: unchanged
    assert unit_scaled(Segment(row_noise(0.71, 3), 1.0, 1), 3).noise_multiplier >= 0.71


def test_a_plan_for_k_rows_per_person_holds_its_epsilon_for_a_person(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    budget = ledger.register_dataset("d", epsilon_budget=3.0, delta=DELTA)
    req = RunRequest(dataset_id="d", delta=DELTA, epochs=2, shape=EpochShape.of(4000, 0, 256), tuner_signals=False,
                     holdout_epsilon=0.5, run_stats={}, split="s", unit_rows=4)
    planned = plan_run(budget, {}, req, 1.0)
    one_row = plan_run(budget, {}, RunRequest(**{**req.__dict__, "unit_rows": 1}), 1.0)
    assert planned.noise_multiplier > 3 * one_row.noise_multiplier  # a person is 4 rows: more noise per row
    q, steps = req.shape.sample_rate, req.shape.steps * req.epochs
    truth = _person_pld_epsilon(planned.noise_multiplier, q, 4, steps)
    assert truth <= planned.epsilon_by_partition["train"] <= 1.0 + 1e-9
    # The session charges a step of the plan as the plan did, bit for bit, and records it person-level.
    session = PrivacySession.open(ledger, Grant("d", "r", DELTA, "secure", planned.charges, unit_rows=4))
    step = Segment(planned.noise_multiplier, q, req.shape.steps)
    for e in range(req.epochs):
        session.complete(session.spend("train", step, key=f"train/epoch-{e}", note=""))
    usage = ledger.entries("d", "r", kind="usage")
    assert [u.segment for u in usage] == [unit_scaled(step, 4)] * req.epochs
    assert not session.admits("train", step)  # the grant is used up at the person level


def test_assess_charges_the_count_release_for_a_whole_person(tmp_path, monkeypatch):
    """The counts' noise grows k-fold and the ledger charges the release at sensitivity k: the
    charged curve is at least the Gaussian mechanism's with each group moved k times as much."""
    from ppmlops.run.records import CountsRelease
    from ppmlops.stages import assess, ingest as ingest_stage
    from ppmlops.run.context import RunContext, RunParams

    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PPMLOPS_PSEUDONYM_KEY", "k" * 32)
    rows = [r for _ in range(20) for r in _rows()]  # 1,100 rows, 10 persons
    spec = parse_spec(_doc(_write(tmp_path / "many.csv", rows)) | {"name": "people"})
    ctx = RunContext(spec=spec, run_id="run-1", params=RunParams.defaults(spec))
    ingest_stage.run(ctx)
    assess.run(ctx)
    counts = ctx.store.read(CountsRelease)
    [entry] = [e for e in Ledger(ctx.settings.db_url).entries("people", "run-1") if e.partition == "train"]
    # Every group of the release moves by K times its per-row sensitivity when a person is added.
    groups = [CountGroup(counts.sigma_rows, K), CountGroup(counts.sigma_labels, K)]
    if counts.sigma_k is not None:
        groups.append(CountGroup(counts.sigma_k, K * (counts.k - 1)))
    truth = segment_rdp(release_segment(groups))
    assert np.all(segment_rdp(entry.segment) >= truth * (1 - 1e-12))
    assert counts.epsilon == pytest.approx(spec.privacy.stats_epsilon, rel=1e-3)


# -- the card ---------------------------------------------------------------------------------------

def test_the_card_states_the_unit_and_what_it_means_across_blocks(tmp_path):
    spec = parse_spec(_doc(tmp_path / "x.csv"))
    assert unit_text(spec, K) == "unit: one person (column customer_id), at most 3 rows per person per run"
    assert "protected per block" in unit_note(spec, K) and "composes" in unit_note(spec, K)
    doc = _doc(tmp_path / "x.csv")
    del doc["privacy"]["unit"]
    plain = parse_spec(doc)
    assert plain.privacy.unit_rows == 1
    assert unit_text(plain, 1) == "unit: one row"
    assert "differ by one row" in unit_note(plain, 1)


def test_the_unit_of_privacy_is_fixed_at_registration(tmp_path):
    """Charges so far were calibrated to the registered unit: another unit is refused, whether a
    spec names a person where rows were the unit, or another k; a ledger from before units were
    recorded takes the first unit stated."""
    from sqlalchemy import create_engine, text

    from ppmlops.privacy.ledger import PrivacyUnit, UnitMismatch

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(url)
    person = PrivacyUnit("customer_id", 3)
    ledger.register_dataset("people", epsilon_budget=3.0, delta=1e-5, unit=person)
    assert ledger.register_dataset("people", epsilon_budget=3.0, delta=1e-5, unit=person).epsilon == 3.0
    for other in (PrivacyUnit(), PrivacyUnit("customer_id", 4), PrivacyUnit("account_id", 3)):
        with pytest.raises(UnitMismatch, match="restore privacy.unit"):
            ledger.register_dataset("people", epsilon_budget=3.0, delta=1e-5, unit=other)
    ledger.register_dataset("rows", epsilon_budget=3.0, delta=1e-5, unit=PrivacyUnit())
    with pytest.raises(UnitMismatch, match="one row"):
        ledger.register_dataset("rows", epsilon_budget=3.0, delta=1e-5, unit=person)
    # A dataset registered before units were recorded: the first unit stated is recorded, once.
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE privacy_datasets SET unit_column = NULL, unit_max_rows = NULL "
                          "WHERE dataset_id = 'rows'"))
    engine.dispose()
    assert ledger.unit("rows") is None
    ledger.register_dataset("rows", epsilon_budget=3.0, delta=1e-5, unit=person)
    assert ledger.unit("rows") == person
    with pytest.raises(UnitMismatch):
        ledger.register_dataset("rows", epsilon_budget=3.0, delta=1e-5, unit=PrivacyUnit())
