"""Reproducible (replayable) randomness never releases anything about real data (issue 26, item 2).

Its draws are keyed from the seed and run id, both public: from a noisy count and those two values
anyone recomputes the noise and so the exact count. A run in that mode is refused at ingest, before
any release, unless the dataset is declared test data; the deploy gate sees the weakest mode of every
ledger entry the run made (not only the plan's); the dashboard marks replayable entries apart.
"""

from __future__ import annotations

import pytest

from ppmlops import pipeline
from ppmlops.privacy.accountant import Segment
from ppmlops.privacy.ledger import Charge, Ledger
from ppmlops.run.context import ReplayableRandomness, RunContext, RunParams
from ppmlops.run.records import CountsRelease, Refusal
from ppmlops.spec import parse_spec
from ppmlops.stages import assess, ingest


def _spec(tmp_path, test_data: bool, randomness: str = "secure"):
    src = tmp_path / "train.csv"
    src.write_text("age,y\n" + "\n".join(f"{20 + i % 50},{'yes' if i % 3 else 'no'}" for i in range(300)) + "\n")
    return parse_spec({
        "name": "replay",
        "dataset": {"id": "replay", "source": {"path": str(src)}, "test_data": test_data,
                    "label": {"column": "y", "positive": "yes", "values": ["yes", "no"]},
                    "features": [{"name": "age", "type": "numeric", "range": [18, 90]}]},
        "privacy": {"epsilon": 1.0, "delta": 1e-5, "run_epsilon": 1.0},
        "training": {"randomness": randomness},
        "deploy": {"model_name": "replay"},
    })


@pytest.mark.parametrize("how", ["environment", "spec"])
def test_reproducible_mode_on_real_data_is_refused_before_any_release(tmp_path, monkeypatch, how):
    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path / "home"))
    if how == "environment":
        monkeypatch.setenv("PPMLOPS_RANDOMNESS", "reproducible")
    spec = _spec(tmp_path, test_data=False, randomness="reproducible" if how == "spec" else "secure")
    ctx = RunContext(spec=spec, run_id="run-1", params=RunParams.defaults(spec))
    with pytest.raises(ReplayableRandomness, match=r"refused before any release.*dataset.test_data: true"):
        ingest.run(ctx)
    assert ctx.store.read(Refusal).stage == "ingest"
    assert pipeline.summary(ctx)["decision"] == "refused at ingest"
    # The second line of defence: a stage that draws a release refuses too, whatever ran before it.
    with pytest.raises(ReplayableRandomness):
        ctx.draws()
    assert Ledger(ctx.settings.db_url).entries("replay") == []
    assert ctx.store.read_optional(CountsRelease) is None


def test_declared_test_data_may_run_reproducibly_and_its_entries_say_so(tmp_path, monkeypatch):
    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PPMLOPS_RANDOMNESS", "reproducible")
    spec = _spec(tmp_path, test_data=True)
    ctx = RunContext(spec=spec, run_id="run-1", params=RunParams.defaults(spec))
    ingest.run(ctx)
    assess.run(ctx)
    entries = Ledger(ctx.settings.db_url).entries("replay")
    assert entries and {e.randomness for e in entries} == {"reproducible"}


def test_the_gate_sees_a_replayable_entry_behind_a_secure_plan(tmp_path, monkeypatch):
    from ppmlops.stages.card import run_randomness

    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path / "home"))
    spec = _spec(tmp_path, test_data=True)
    ctx = RunContext(spec=spec, run_id="run-1", params=RunParams.defaults(spec))
    ledger = Ledger(ctx.settings.db_url)
    ledger.register_dataset("replay", epsilon_budget=1.0, delta=1e-5)

    class Plan:  # only the field run_randomness reads
        randomness = "secure"

    charge = [Charge("train", Segment(20.0, 1.0, 1), "gaussian")]
    ledger.charge(dataset_id="replay", run_id="run-1", charges=charge, kind="release", key="a", randomness="secure")
    assert run_randomness(ctx, Plan()) == "secure"
    ledger.charge(dataset_id="replay", run_id="run-1", charges=charge, kind="release", key="b",
                  randomness="reproducible")
    assert run_randomness(ctx, Plan()) == "reproducible"
    # Another run's entries do not taint this one.
    ledger.charge(dataset_id="replay", run_id="run-2", charges=charge, kind="release", key="c",
                  randomness="reproducible")
    assert run_randomness(RunContext(spec=spec, run_id="run-3", params=ctx.params), Plan()) == "secure"


def test_the_dashboard_marks_replayable_entries(tmp_path, monkeypatch):
    from ppmlops.dashboard import queries
    from ppmlops import settings as settings_mod

    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path / "home"))
    settings = settings_mod.load()
    ledger = Ledger(settings.db_url)
    ledger.register_dataset("replay", epsilon_budget=1.0, delta=1e-5)
    charge = [Charge("train", Segment(20.0, 1.0, 1), "gaussian")]
    ledger.charge(dataset_id="replay", run_id="r1", charges=charge, kind="release", key="a", randomness="secure")
    ledger.charge(dataset_id="replay", run_id="r2", charges=charge, kind="release", key="b", randomness="reproducible")
    d = queries.dataset(settings, "replay")
    assert d["replayable_count"] == 1
    assert {r["run_id"]: r["replayable_entries"] for r in d["run_spend"]} == {"r1": 0, "r2": 1}
