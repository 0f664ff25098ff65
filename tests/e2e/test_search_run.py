"""A private hyperparameter search run end to end through Airflow's dag.test(): the trigger form's
`search` Param, K secret trials on local Ray (each steered by the bayes tuner on its own noisy
held-out accuracy: ANOM's search, within-run adaptation and warm start in one run), the best one
evaluated, gated and deployed.

The search's cost is Papernot & Steinke's bound over the trial-count distribution, charged whole:
dp-accounting's RepeatAndSelectDpEvent reproduces the card's epsilon from the plan, the ledger keeps
the search's pieces counted after the run ends, and nothing public says how many trials ran.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ppmlops import pipeline, settings
from ppmlops.run.records import CountsRelease, PlanRecord, TrainRecord
from ppmlops.spec import load_spec
from ppmlops.run.context import RunContext, RunParams

pytestmark = [pytest.mark.e2e, pytest.mark.ray]
REPO = Path(__file__).resolve().parents[2]
CONF = {"epochs": 2, "search": True}


@pytest.fixture(scope="module")
def search_run(airflow_db, tmp_path_factory):
    """The small e2e pipeline as a dataset of its own (the other e2e runs spend e2e_small's budget)."""
    import yaml
    from airflow.dag_processing.dagbag import DagBag

    doc = yaml.safe_load((REPO / "tests" / "e2e" / "e2e_small.yaml").read_text())
    doc["name"], doc["dataset"]["id"], doc["deploy"]["model_name"] = "e2e_search", "e2e_search", "e2e_search_churn"
    # its own generated table: a second dataset id over e2e_small's file would be refused (a rename
    # must not give the same rows a fresh budget)
    doc["dataset"]["source"]["path"] = "${PPMLOPS_HOME}/e2e/search_customers.csv"
    doc["search"] = {"tuner": "bayes"}
    folder = tmp_path_factory.mktemp("search-pipelines")
    (folder / "e2e_search.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PPMLOPS_PIPELINES", str(folder))
        bag = DagBag(dag_folder=str(REPO / "dags"))
        assert bag.import_errors == {}
        spec = load_spec(folder / "e2e_search.yaml")
        run = bag.dags[spec.dag_id].test(run_conf=CONF)
    ctx = RunContext(spec=spec, run_id=run.run_id, params=RunParams.from_mapping(spec, CONF))
    return run, spec, ctx


def test_a_search_run_deploys_its_best_trial_and_names_it_on_the_card(search_run):
    from ppmlops.registry.store import Registry

    run, spec, ctx = search_run
    summary = pipeline.summary(ctx)
    assert str(run.state) == "success", pipeline.format_summary(summary)
    card = Registry(settings.load().registry_dir).card(spec.deploy.model_name, summary["model_version"])
    chosen = ctx.store.read(TrainRecord).search
    assert card["search"]["chosen"] == chosen.model_dump() and card["tuner"] == "fixed"
    lo, hi = spec.search.learning_rate
    assert lo <= chosen.learning_rate <= hi and card["search"]["epsilon"] == card["epsilon"]
    assert "secret" in card["search"]["trials"] and card["search"]["trial_tuner"] == "bayes"
    assert "wall-clock duration" in card["search"]["not_covered"]  # the timing channel, said plainly
    # the chosen trial's epochs are its output; it ended at the settings it names
    assert [e.epoch for e in chosen.schedule] == [1, 2]
    assert (chosen.schedule[-1].learning_rate, chosen.schedule[-1].holdout_accuracy_noisy) == (
        chosen.learning_rate, chosen.holdout_accuracy_noisy)


def test_the_next_run_starts_from_the_chosen_trials_epochs(search_run):
    from ppmlops.run.known import known_results

    _, spec, ctx = search_run
    warm = known_results(settings.load().runs_dir, spec.name)
    assert {w.run_id for w in warm} == {ctx.run_id}
    assert [w.what for w in warm] == ["search's chosen trial, epoch 1 of 2", "search", "evaluation"]


def test_dp_accounting_reproduces_the_search_epsilon_and_the_ledger_keeps_it(search_run):
    import dp_accounting
    from dp_accounting import dp_event
    from dp_accounting.rdp import rdp_privacy_accountant

    from ppmlops.privacy.accountant import ORDERS
    from ppmlops.privacy.ledger import Ledger

    _, spec, ctx = search_run
    plan, counts = ctx.store.read(PlanRecord).privacy, ctx.store.read(CountsRelease)
    stats = dp_accounting.GaussianDpEvent(counts.noise_multiplier)
    trial = dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(
        plan.sample_rate, dp_accounting.GaussianDpEvent(plan.noise_multiplier)), plan.steps_per_epoch * plan.epochs)
    train = rdp_privacy_accountant.RdpAccountant(orders=list(ORDERS))
    train.compose(dp_accounting.ComposedDpEvent([stats, dp_event.RepeatAndSelectDpEvent(
        trial, plan.search.trials_mean, plan.search.trials_shape)]))
    holdout = rdp_privacy_accountant.RdpAccountant(orders=list(ORDERS))
    # a tuned trial releases a noisy accuracy after each of its epochs, each at score_sigma x sqrt(epochs)
    scores = dp_accounting.SelfComposedDpEvent(
        dp_accounting.GaussianDpEvent(plan.search.score_sigma * plan.epochs ** 0.5), plan.epochs)
    holdout.compose(dp_accounting.ComposedDpEvent([stats, dp_event.RepeatAndSelectDpEvent(
        scores, plan.search.trials_mean, plan.search.trials_shape),
        dp_accounting.GaussianDpEvent(plan.evaluation_sigma)]))
    assert plan.epsilon == pytest.approx(max(train.get_epsilon(plan.delta), holdout.get_epsilon(plan.delta)), rel=1e-6)
    entries = Ledger(settings.load().db_url).entries(spec.dataset.id, run_id=ctx.run_id)
    searches = [e for e in entries if e.mechanism == "private_search"]
    assert {e.partition for e in searches} == {"train", "holdout"} and {e.status for e in searches} == {"completed"}
    # no usage row for any trial (their number would show), only the final evaluation's
    assert [e.key for e in entries if e.kind == "usage"] == ["holdout/evaluation"]


def test_nothing_public_says_how_many_trials_ran(search_run):
    import re

    from ppmlops.training.worker_job import SEARCH_STATE_FILE
    from ppmlops.training.launch import private_temp_root, ray_temp_dir
    from ppmlops.training.search_loop import SearchProgress

    run, _, ctx = search_run
    # K is in the search's private progress file, in Ray Train's storage under private/ (mode 0700)
    storage = ctx.store.private_dir / "ray"
    assert oct(storage.stat().st_mode & 0o777) == oct(ctx.store.private_dir.stat().st_mode & 0o777) == "0o700"
    (state_file,) = storage.rglob(SEARCH_STATE_FILE)
    state = SearchProgress(str(state_file)).load()[0].search
    k = state["trials"]
    assert k >= 1 and state["done"] == k
    assert not (ctx.store.root / "ray").exists()  # nothing of Ray at the public top any more
    # Ray Train saw one report and one checkpoint, whose state holds the chosen trial only
    snapshots = [json.loads(p.read_text()) for p in storage.rglob("checkpoint_manager_snapshot*.json")]
    assert [s["current_report_index"] for s in snapshots] == [1], snapshots
    assert [json.loads(p.read_text())["search"].keys() for p in storage.rglob("state.json")] == [{"best"}]

    # (the card's "trials" key says only that the count is secret)
    in_ray_logs = rf'"trials":\s*\d|current_report_index\W+{k}\b|Reporting training result|\b{k} trials\b'
    counting = re.compile(in_ray_logs + r'|"done":\s*\d')
    private = ctx.store.private_dir
    public = {str(p.relative_to(ctx.store.root)): p.read_text(errors="replace") for p in ctx.store.root.rglob("*")
              if p.is_file() and private not in p.parents}
    public["summary"] = json.dumps(pipeline.summary(ctx), default=str)
    for name, text in public.items():
        assert counting.search(text) is None, name
    # Ray's own session logs of this run: in a folder only this user enters, and counting nothing
    temp = ray_temp_dir()  # Ray makes it 0777; the folder around it is this user's only
    assert private_temp_root() in temp.parents and private_temp_root().stat().st_mode & 0o077 == 0
    since = run.start_date.timestamp()
    logs = [p for p in temp.glob("session_*/logs/**/*")
            if p.is_file() and not p.is_symlink() and p.stat().st_mtime >= since]
    assert logs, f"no Ray session logs under {temp} since the run started"
    for p in logs:
        assert re.search(in_ray_logs, p.read_text(errors="replace")) is None, p
    progress = (ctx.store.root / "progress.log").read_text().splitlines()
    assert len([line for line in progress if "private search" in line]) == 2, progress
