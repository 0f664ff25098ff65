"""A new dataset id over rows another id covers is refused unless an officer approves it (issue 27,
item 8): a rename must not reset the rows' lifetime budget."""

from __future__ import annotations

import pytest

from ppmlops.audit.log import AuditLog
from ppmlops.cli import main
from ppmlops.privacy.identity import DatasetSources, SourceAlreadyCovered, source_identity
from ppmlops.privacy.ledger import Ledger
from ppmlops.privacy.planning import split_conflict
from ppmlops.run.records import CountsRelease, Refusal
from ppmlops.spec import parse_spec
from ppmlops.stages import assess, ingest
from ppmlops.run.context import RunContext, RunParams


def _spec(src, dataset_id: str, label: str = "y"):
    return parse_spec({
        "name": f"p_{dataset_id}",
        "dataset": {"id": dataset_id, "source": {"path": str(src)},
                    "label": {"column": label, "positive": "yes", "values": ["yes", "no"]},
                    "features": [{"name": "age", "type": "numeric", "range": [18, 90]}]},
        "privacy": {"epsilon": 3.0, "delta": 1e-5, "run_epsilon": 1.0},
        "deploy": {"model_name": "m"},
    })


@pytest.fixture
def src(tmp_path, monkeypatch):
    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path / "home"))
    path = tmp_path / "train.csv"
    path.write_text("age,y\n" + "\n".join(f"{20 + i % 50},{'yes' if i % 3 else 'no'}" for i in range(300)) + "\n")
    return path


def _assess(spec, run_id="run-1") -> RunContext:
    ctx = RunContext(spec=spec, run_id=run_id, params=RunParams.defaults(spec))
    ingest.run(ctx)
    assess.run(ctx)
    return ctx


def test_a_renamed_dataset_over_the_same_source_is_refused_before_any_charge(src):
    first = _assess(_spec(src, "customers"))
    url = first.settings.db_url
    ctx = RunContext(spec=_spec(src, "customers_v2"), run_id="run-2", params=RunParams.defaults(_spec(src, "x")))
    ingest.run(ctx)
    with pytest.raises(SourceAlreadyCovered, match=r"dataset 'customers_v2' reads .*train\.csv, which dataset "
                                                   r"'customers' already covers.*ppmlops ledger link customers_v2"):
        assess.run(ctx)
    ledger = Ledger(url)
    assert ledger.budget("customers_v2") is None and ledger.entries("customers_v2") == []
    assert ctx.store.read(Refusal).stage == "assess" and ctx.store.read_optional(CountsRelease) is None
    # The same id again is fine, and so is another label over the same rows under the same id.
    _assess(_spec(src, "customers", label="y"), run_id="run-3")


def test_an_officers_approval_is_audited_and_lets_the_new_id_register(src, capsys):
    first = _assess(_spec(src, "customers"))
    url = first.settings.db_url
    # Without the explicit approval the command refuses and says how to share the budget instead.
    code = main(["ledger", "link", "customers_v2", "--to", "customers", "--reason", "r", "--db-url", url])
    assert code == 2 and "set dataset.id: customers in the spec" in capsys.readouterr().err
    code = main(["ledger", "link", "customers_v2", "--to", "customers", "--approve-new-budget",
                 "--reason", "new cohort agreement 2027-04", "--by", "officer", "--db-url", url])
    assert code == 0, capsys.readouterr().err
    [record] = AuditLog(url).records(dataset_id="customers_v2")
    assert record["stage"] == "ledger" and record["decision"]["input"]["over"] == "customers"
    assert record["decision"]["reasons"] == ["officer: new cohort agreement 2027-04"]
    assert AuditLog(url).verify() == []
    _assess(_spec(src, "customers_v2"), run_id="run-2")  # now registers with its own budget
    assert Ledger(url).budget("customers_v2") is not None
    # The approval holds both ways: the old id keeps training too.
    _assess(_spec(src, "customers"), run_id="run-3")


def test_an_approval_names_a_known_dataset(src, capsys):
    first = _assess(_spec(src, "customers"))
    code = main(["ledger", "link", "b", "--to", "nobody", "--approve-new-budget", "--reason", "r",
                 "--db-url", first.settings.db_url])
    assert code == 2 and "dataset 'nobody' has no recorded source" in capsys.readouterr().err
    assert AuditLog(first.settings.db_url).records(dataset_id="b") == []


def test_a_dataset_keeps_every_source_it_read(tmp_path, src):
    url = f"sqlite:///{tmp_path / 'l.db'}"
    other = tmp_path / "other.csv"
    other.write_text(src.read_text())
    store = DatasetSources(url)
    store.claim(source_identity(_spec(src, "a")))
    store.claim(source_identity(_spec(other, "a")))  # a's spec moved to another file
    with pytest.raises(SourceAlreadyCovered, match="'a' already covers"):
        store.claim(source_identity(_spec(src, "b")))  # its old file is still a's rows
    assert store.sources("a") == sorted([str(src.resolve()), str(other.resolve())])


def test_the_split_conflict_message_no_longer_advises_a_new_dataset_id():
    class Entry:
        partition, note = "holdout", "grant: x; split seed 1, test_fraction 0.2"

    message = split_conflict([Entry()], "seed 2, test_fraction 0.2")
    assert "use a new dataset id" not in message and "does not reset their budget" in message
