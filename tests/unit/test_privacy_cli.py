"""`privacy epsilon`, `privacy calibrate` and `ledger show`, through a parser built like ppmlops.cli's."""

from __future__ import annotations

import argparse
import json

import pytest

from ppmlops import ledger_cli as privacy_cli
from ppmlops.privacy.accountant import Segment, epsilon
from ppmlops.privacy.ledger import Ledger

Q = 256 / 32561


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="ppmlops")
    sub = parser.add_subparsers(dest="command", required=True)
    privacy_cli.register(sub)
    args = parser.parse_args(argv)
    code = args.func(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_epsilon_json(capsys):
    code, out, err = run(["privacy", "epsilon", "--segment", f"1.1,{Q},1271", "--segment", "2.0,1,3",
                          "--delta", "1e-5", "--json"], capsys)
    assert code == 0 and err == ""
    doc = json.loads(out)
    assert doc["epsilon"] == pytest.approx(epsilon([Segment(1.1, Q, 1271), Segment(2.0, 1.0, 3)], 1e-5), rel=1e-12)
    assert doc["order"] > 1 and doc["delta"] == 1e-5 and len(doc["segments"]) == 2


def test_epsilon_human(capsys):
    code, out, _ = run(["privacy", "epsilon", "--segment", "1.1,0.01,1000", "--delta", "1e-5"], capsys)
    assert code == 0
    expected = epsilon([Segment(1.1, 0.01, 1000)], 1e-5)
    assert f"epsilon = {expected:.4f} at delta = 1e-05" in out
    assert "noise_multiplier" in out.splitlines()[0]


def test_calibrate_json_round_trips(capsys):
    code, out, _ = run(["privacy", "calibrate", "--epsilon", "1", "--delta", "1e-5",
                        "--sample-rate", str(Q), "--steps", "1271", "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["epsilon"] <= 1.0
    assert doc["epsilon"] == pytest.approx(epsilon([Segment(doc["noise_multiplier"], Q, 1271)], 1e-5), rel=1e-12)
    assert epsilon([Segment(doc["noise_multiplier"] * 0.999, Q, 1271)], 1e-5) > 1.0


def test_calibrate_human(capsys):
    code, out, _ = run(["privacy", "calibrate", "--epsilon", "3", "--delta", "1e-5",
                        "--sample-rate", "0.01", "--steps", "500"], capsys)
    assert code == 0 and "noise_multiplier" in out and len(out.strip().splitlines()) == 3


@pytest.mark.parametrize("argv,named", [
    (["privacy", "epsilon", "--segment", "1.0,abc,10", "--delta", "1e-5"], "--segment '1.0,abc,10': Q"),
    (["privacy", "epsilon", "--segment", "1.0,1.5,10", "--delta", "1e-5"], "(0, 1]"),
    (["privacy", "epsilon", "--segment", "1.0,0,10", "--delta", "1e-5"], "Q"),
    (["privacy", "epsilon", "--segment", "0,0.1,10", "--delta", "1e-5"], "SIGMA"),
    (["privacy", "epsilon", "--segment", "1.0,0.1", "--delta", "1e-5"], "SIGMA,Q,STEPS"),
    (["privacy", "epsilon", "--segment", "1.0,0.1,2.5", "--delta", "1e-5"], "STEPS"),
    (["privacy", "epsilon", "--segment", "1.0,0.1,10", "--delta", "1"], "--delta"),
    (["privacy", "epsilon", "--segment", "1.0,0.1,10", "--delta", "nan"], "--delta"),
    (["privacy", "calibrate", "--epsilon", "-1", "--delta", "1e-5", "--sample-rate", "0.1", "--steps", "10"],
     "--epsilon"),
    (["privacy", "calibrate", "--epsilon", "1", "--delta", "1e-5", "--sample-rate", "2", "--steps", "10"],
     "--sample-rate"),
    (["privacy", "calibrate", "--epsilon", "1", "--delta", "1e-5", "--sample-rate", "0.1", "--steps", "0"],
     "--steps"),
])
def test_bad_arguments_give_one_line_and_exit_2(argv, named, capsys):
    code, out, err = run(argv, capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert named in err and "error" in err


def test_ledger_show(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'l.db'}"
    from ppmlops.privacy.ledger import Charge

    led = Ledger(url)
    budget = led.register_dataset("adult", epsilon_budget=4.0, delta=1e-5, order=10.0)
    [e1] = led.charge(dataset_id="adult", run_id="run-1", charges=[Charge("train", Segment(1.1, Q, 127), note="epoch 1")],
                      kind="grant", key="grant", randomness="secure")
    led.complete(e1)
    led.charge(dataset_id="adult", run_id="run-2", charges=[Charge("train", Segment(1.1, Q, 127))], kind="grant",
               key="grant", randomness="secure")
    share = budget.share_used(led.charged_curves("adult"))

    code, out, _ = run(["ledger", "show", "--db-url", url, "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    [ds] = doc["datasets"]
    assert ds["share_used"] == pytest.approx(share, rel=1e-12) and len(ds["entries"]) == 2
    assert ds["accounting_order"] == 10.0

    code, out, _ = run(["ledger", "show", "--db-url", url, "--dataset", "adult"], capsys)
    assert code == 0
    # The dashboard's figure and words (ppmlops.privacy.block_view): one block, the worst split named.
    assert (f"dataset adult: {share:.1%} of the lifetime budget (ε 4 at δ 1e-05) used in the worst block "
            "(training rows; one block: the whole dataset) (Renyi filter at order 10)") in out
    assert ds["use"]["share_used"] == ds["share_used"] and ds["use"]["worst_block"] == "all"
    assert "run-1" in out and "reserved" in out and "completed" in out and "epoch 1" in out and "grant" in out


def test_ledger_set_budget_is_explicit_and_audited(tmp_path, capsys):
    from ppmlops.audit.log import AuditLog

    url = f"sqlite:///{tmp_path / 'l.db'}"
    Ledger(url).register_dataset("adult", epsilon_budget=4.0, delta=1e-5)
    code, out, _ = run(["ledger", "set-budget", "adult", "--epsilon", "5", "--reason", "board approved 2027 budget",
                        "--by", "officer", "--db-url", url], capsys)
    assert code == 0 and "epsilon 4 at delta 1e-05 -> epsilon 5" in out
    assert Ledger(url).budget("adult").epsilon == 5.0
    [record] = AuditLog(url).records(dataset_id="adult")
    decision = record["decision"]
    assert decision["reasons"] == ["officer: board approved 2027 budget"] and decision["input"]["before"]["epsilon"] == 4.0


def test_ledger_show_defaults_to_settings_db_url(tmp_path, monkeypatch, capsys):
    url = f"sqlite:///{tmp_path / 'home.db'}"
    monkeypatch.setenv("PPMLOPS_DB_URL", url)
    Ledger(url).register_dataset("d", epsilon_budget=1.0, delta=1e-6)
    code, out, _ = run(["ledger", "show", "--json"], capsys)
    assert code == 0 and [d["dataset_id"] for d in json.loads(out)["datasets"]] == ["d"]


def test_ledger_show_missing_database_is_not_created(tmp_path, capsys):
    path = tmp_path / "absent.db"
    code, out, _ = run(["ledger", "show", "--db-url", f"sqlite:///{path}"], capsys)
    assert code == 0 and "empty" in out and not path.exists()
    code, out, err = run(["ledger", "show", "--db-url", f"sqlite:///{path}", "--dataset", "x"], capsys)
    assert code == 2 and "'x'" in err and len(err.strip().splitlines()) == 1


def test_ledger_show_unknown_dataset(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'l.db'}"
    Ledger(url)
    code, _, err = run(["ledger", "show", "--db-url", url, "--dataset", "nope"], capsys)
    assert code == 2 and "'nope' is not in the privacy ledger" in err


def _ledger_with_grants(tmp_path) -> str:
    from ppmlops.privacy.ledger import Charge

    url = f"sqlite:///{tmp_path / 'l.db'}"
    led = Ledger(url)
    led.register_dataset("adult", epsilon_budget=4.0, delta=1e-5, order=10.0)
    led.register_dataset("census", epsilon_budget=4.0, delta=1e-5, order=10.0)
    for run_id in ("manual__2026-11-02", "manual__2026-11-09"):
        led.charge(dataset_id="adult", run_id=run_id, charges=[Charge("train", Segment(1.1, Q, 127))], kind="grant",
                   key="grant", randomness="secure")
    led.close()
    return url


def test_ledger_close_of_an_unknown_run_is_an_error_listing_the_runs_with_grants(tmp_path, capsys):
    """Issue 26, 9: it printed "grant released" and exited 0 having done nothing."""
    url = _ledger_with_grants(tmp_path)
    code, out, err = run(["ledger", "close", "adult", "nope_run", "--db-url", url], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert ("run 'nope_run' has no grant on dataset 'adult', nothing was closed; runs with grants of adult: "
            "manual__2026-11-09, manual__2026-11-02") in err
    code, _, err = run(["ledger", "close", "adult", "manual__2026-11-9", "--db-url", url], capsys)
    assert code == 2 and "did you mean 'manual__2026-11-09'?" in err
    code, _, err = run(["ledger", "close", "census", "manual__2026-11-09", "--db-url", url], capsys)
    assert code == 2 and "no grant on dataset 'census'" in err and "there are no runs with grants of census" in err
    assert [e.status for e in Ledger(url).entries("adult", kind="grant")] == ["reserved", "reserved"]


def test_ledger_close_of_an_unknown_dataset_names_the_datasets(tmp_path, capsys):
    url = _ledger_with_grants(tmp_path)
    code, _, err = run(["ledger", "close", "adutl", "manual__2026-11-09", "--db-url", url], capsys)
    assert code == 2 and "dataset 'adutl' is not in the privacy ledger at" in err
    assert "datasets: adult, census; did you mean 'adult'?" in err


def test_ledger_close_releases_once_then_says_it_was_already_closed(tmp_path, capsys):
    url = _ledger_with_grants(tmp_path)
    code, out, _ = run(["ledger", "close", "adult", "manual__2026-11-09", "--db-url", url], capsys)
    assert code == 0 and out.strip() == "run manual__2026-11-09 on adult: grant released"
    code, out, _ = run(["ledger", "close", "adult", "manual__2026-11-09", "--db-url", url], capsys)
    assert code == 0 and "grant already closed (released); nothing changed" in out
    assert sorted(e.status for e in Ledger(url).entries("adult", kind="grant")) == ["released", "reserved"]


def test_ledger_set_budget_and_its_audit_record_commit_together(tmp_path, capsys):
    """The audit record is written in the budget change's own transaction: when it cannot be
    appended, the budget is not changed either (before: the change was committed first and then
    left unaudited)."""
    import sqlalchemy as sa

    from ppmlops.audit.log import AuditLog

    url = f"sqlite:///{tmp_path / 'l.db'}"
    Ledger(url).register_dataset("adult", epsilon_budget=4.0, delta=1e-5)
    AuditLog(url).record({"id": "x", "query": "q", "outcome": "allow", "engine": "e", "policy_hash": ""}, stage="s")
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # the audit log refuses appends (a full disk, a revoked grant...)
        conn.exec_driver_sql("CREATE TRIGGER no_more BEFORE INSERT ON audit_log BEGIN "
                             "SELECT RAISE(ABORT, 'audit log is read-only'); END")
    with pytest.raises(sa.exc.IntegrityError, match="audit log is read-only"):
        run(["ledger", "set-budget", "adult", "--epsilon", "9", "--reason", "r", "--db-url", url], capsys)
    assert Ledger(url).budget("adult").epsilon == 4.0
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER no_more")
    code, _, _ = run(["ledger", "set-budget", "adult", "--epsilon", "9", "--reason", "r", "--db-url", url], capsys)
    assert code == 0 and Ledger(url).budget("adult").epsilon == 9.0
    assert [r["decision"]["input"]["after"]["epsilon"] for r in AuditLog(url).records(dataset_id="adult")] == [9.0]
    engine.dispose()


def test_the_python_api_cannot_change_the_accounting_order(tmp_path):
    from ppmlops.privacy.ledger import BudgetMismatch

    url = f"sqlite:///{tmp_path / 'l.db'}"
    ledger = Ledger(url)
    ledger.register_dataset("adult", epsilon_budget=4.0, delta=1e-5, order=10.0)
    with pytest.raises(BudgetMismatch, match=r"'adult': the accounting order .* fixed at registration \(10\) and "
                                             r"cannot become 32"):
        ledger.set_budget("adult", epsilon_budget=5.0, order=32.0)
    after = ledger.budget("adult")
    assert after.order == 10.0 and after.epsilon == 4.0
    # Naming the registered order is allowed (nothing changes).
    assert ledger.set_budget("adult", epsilon_budget=5.0, order=10.0)[1].order == 10.0


def test_version_names_the_installed_distribution(capsys):
    from importlib.metadata import version

    from ppmlops.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"ppmlops {version('ppmlops')}"
