"""The pipeline stops at assess, before plan and train, when a direct identifier is a feature."""

from __future__ import annotations

import pytest

from ppmlops import pipeline
from ppmlops.risk.report import IdentifierInFeatures
from ppmlops.run.records import ExactRisk, Refusal
from ppmlops.spec import parse_spec
from ppmlops.stages import assess, ingest
from ppmlops.run.context import RunContext, RunParams


def test_an_email_column_among_features_stops_the_run_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path / "home"))
    emails = [f"person{i}@example.org" for i in range(60)]
    src = tmp_path / "train.csv"
    src.write_text("contact,age,y\n" + "\n".join(
        f"{e},{20 + i % 50},{'yes' if i % 3 else 'no'}" for i, e in enumerate(emails)) + "\n")
    spec = parse_spec({
        "name": "leaky",
        "dataset": {"id": "leaky", "source": {"path": str(src)},
                    "label": {"column": "y", "positive": "yes", "values": ["yes", "no"]},
                    "features": [{"name": "contact", "type": "categorical", "categories": emails},
                                 {"name": "age", "type": "numeric", "range": [18, 90]}]},
        "privacy": {"epsilon": 1.0, "delta": 1e-5, "run_epsilon": 1.0},
        "deploy": {"model_name": "leaky"},
    })
    ctx = RunContext(spec=spec, run_id="run-1", params=RunParams.defaults(spec))
    ingest.run(ctx)
    with pytest.raises(IdentifierInFeatures, match="contact"):
        assess.run(ctx)
    assert ctx.store.read(ExactRisk).report["level"] == "high"  # the officer's report, in private/
    refused = ctx.store.read(Refusal)
    assert refused.stage == "assess" and "contact (email" in refused.reasons[0]
    assert not (ctx.run_dir / "plan.json").exists() and not (ctx.run_dir / "train.json").exists()
    summary = pipeline.summary(ctx)
    assert summary["decision"] == "refused at assess"
    # Found from public facts (the declared categories), so the refusal needs no charge: nothing
    # was released about any row, and the dataset was never registered.
    from ppmlops.privacy.ledger import Ledger

    assert Ledger(ctx.settings.db_url).entries("leaky") == []
