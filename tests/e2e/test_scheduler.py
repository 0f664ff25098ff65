"""Scheduled retraining under a real Airflow: `./dev ui` (API server, scheduler on LocalExecutor,
DAG processor, triggerer; metadata and ledger on PostgreSQL), driven the way people drive it: the
backfill command from docs/runs.md, Airflow's REST API for triggers, settings and approvals, Ctrl-C
to stop.

Two pipelines over timestamped tables:

* `sched`: weekly (Mondays), production (the officer's policy makes every such deploy wait for
  a person), a two-week lookback over weekly privacy blocks, and a lifetime budget that one pot
  would spend in two runs. A backfill of four weeks runs them concurrently; each trains on its
  own two weeks and charges exactly those blocks; every week trains; the first train task to
  finish an epoch is killed and Airflow's retry resumes it from its checkpoint; an officer
  approves each deploy through the REST API.
* `tight`: daily, a lifetime budget one run can use up. Its three backfilled days plan at the
  same time: the ledger never grants more than the budget, and the policy refuses the next run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from ppmlops.data.synthetic import generate
from ppmlops.privacy.accountant import ORDERS
from ppmlops.privacy.ledger import Ledger
from ppmlops.run.records import ApprovalRecord, PlanRecord, Refusal, Staged, StagedData, TrainRecord
from airflow_proc import Airflow, stop, wait_for  # noqa: E402 - tests/ is on the path (conftest)
from policy_floors import lowered_policy  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
UTC = timezone.utc
TODAY = datetime.now(UTC).date()
DAYS = [TODAY - timedelta(days=n) for n in (3, 2, 1)]  # three complete daily intervals
ROWS_PER_DAY = 500
MONDAY = TODAY - timedelta(days=TODAY.weekday())
WEEKS = [MONDAY - timedelta(weeks=n) for n in (4, 3, 2, 1)]  # four complete weekly intervals
LOOKBACK = timedelta(weeks=2)
EPOCHS = 2


# --------------------------------------------------------------------------- the pipelines


def _at(start) -> datetime:
    """An interval's start: a date's midnight (UTC), or the time itself."""
    return start if isinstance(start, datetime) else datetime.combine(start, datetime.min.time(), UTC)


def write_table(path: Path, starts: list, length: timedelta) -> None:
    """The demo generator's rows with an event_time: 500 in each interval of `length` from `starts`."""
    df = generate(ROWS_PER_DAY * len(starts), seed=11)
    span = length.total_seconds()
    times = [_at(day) + timedelta(seconds=int(s)) for day in starts for s in np.linspace(60, span - 60, ROWS_PER_DAY)]
    df.insert(1, "event_time", [t.isoformat() for t in times])
    # fewer refusals than the generator's, on every day alike, so each day's consent coverage passes
    # the GDPR floor with room for the count noise (the first two thirds in row order left the last
    # day at the floor itself, and its noisy coverage fell below it now and then)
    refused = df.index[df["consent"] == "no"]
    df.loc[[i for n, i in enumerate(refused) if n % 3], "consent"] = "yes"
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)


def spec_doc(name: str, **changes) -> dict:
    doc = yaml.safe_load((REPO / "tests" / "e2e" / "e2e_small.yaml").read_text())
    doc.update(name=name, schedule="@daily", retries={"count": 2, "delay": "PT2S"})
    # each pipeline's dataset its own copy of the table: two dataset ids over one file are refused
    doc["dataset"].update(id=f"{name}_events", source={"path": f"${{PPMLOPS_HOME}}/data/{name}_events.csv"},
                          window={"column": "event_time"}, expected_rows=370)
    doc["training"].update(epochs=EPOCHS)
    doc["ray"] = {"workers": 1}  # trains in the task's process (ray.in_process) unless a pipeline says not
    doc["deploy"].update(model_name=f"{name}_churn")
    for path, value in changes.items():
        node = doc
        *parents, leaf = path.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return doc


# A week's 500 rows under this much noise learn little: the test is about the runs, not the model.
# Lifetime epsilon 1.9 holds about two and a half runs at run_epsilon 1 (counts included): one pot
# would refuse the third run; with weekly blocks each block is read by the two runs whose
# two-week window covers it, each sized to the half unlocked for it, and every week trains.
SCHED = spec_doc("sched", **{"deploy.environment": "production", "privacy.epsilon": 1.9, "privacy.blocks": "P7D",
                             "schedule": "0 0 * * 1", "dataset.window": {"column": "event_time", "lookback": "P14D"},
                             "dataset.expected_rows": 700, "deploy.min_accuracy": 0.0,
                             # Ray Train, so that a train task killed mid-run (below) is one with Ray
                             # workers under it; in process, two epochs on 1,000 rows end before a
                             # kill can land (tests/unit/test_in_process.py kills that path).
                             "ray": {"workers": 1, "in_process": False}})
TIGHT = spec_doc("tight", **{"privacy.epsilon": 1.0, "privacy.stats_epsilon": 0.1, "training.epochs": 1})


def late_doc() -> dict:
    """`late`: hourly, at the minute half an hour ago, never triggered. Unpausing it makes
    Airflow start the hour that ended 30 minutes ago, which the policy refuses as a run started
    late (its grace is a tenth of the hour). Built when Airflow starts, so the half hour holds."""
    minute = (datetime.now(UTC).minute + 30) % 60
    return spec_doc("late", **{"schedule": f"{minute} * * * *", "dataset.window": {"column": "event_time"},
                               "dataset.expected_rows": 370, "training.epochs": 1})


# --------------------------------------------------------------------------- Airflow


def _healthy(url: str) -> bool:
    try:
        health = httpx.get(f"{url}/api/v2/monitor/health", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return False
    return all(health.get(part, {}).get("status") == "healthy"
               for part in ("metadatabase", "scheduler", "triggerer", "dag_processor"))


@pytest.fixture(scope="module")
def airflow_db_url(postgres_server):
    """Airflow's metadata database on PostgreSQL, as a platform team runs it: with SQLite, five
    processes writing at once (scheduler, API server, DAG processor, triggerer, a CLI backfill)
    wait on one file lock."""
    from conftest import fresh_database

    with fresh_database(postgres_server, "airflow_meta") as url:
        yield url


@pytest.fixture(scope="module")
def airflow(tmp_path_factory, pg_url, airflow_db_url):
    from conftest import APPROVER, APPROVER_PASSWORD, free_port

    root = tmp_path_factory.mktemp("scheduler")
    home, pipelines = root / "ppmlops", root / "pipelines"
    pipelines.mkdir()
    for doc in (SCHED, TIGHT, late_doc()):
        (pipelines / f"{doc['name']}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    write_table(home / "data" / "sched_events.csv", WEEKS, timedelta(weeks=1))
    write_table(home / "data" / "tight_events.csv", DAYS, timedelta(days=1))
    hours = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    write_table(home / "data" / "late_events.csv", [hours + timedelta(hours=n) for n in range(4)], timedelta(hours=1))
    # The compliance office's policy: every production deploy of GDPR data waits for a person.
    policy = root / "policies.rego"
    shipped = (REPO / "policies.rego").read_text()
    gdpr = shipped.index('"gdpr": {')
    policy.write_text(shipped[:gdpr] + shipped[gdpr:].replace('"approval_environments": [],',
                                                              '"approval_environments": ["production"],', 1))
    # A day's 500 rows learn little (see SCHED): the utility floors are lowered as for every e2e
    # test (tests/policy_floors.py), so the runs, not the models, are what is tested.
    policy.write_text(lowered_policy(policy.read_text()))
    port = free_port()
    env = {**os.environ, "AIRFLOW_HOME": str(root / "airflow"), "PPMLOPS_HOME": str(home),
           "PPMLOPS_PIPELINES": str(pipelines), "PPMLOPS_DB_URL": pg_url, "PPMLOPS_POLICY": str(policy), "AIRFLOW__API__PORT": str(port),
           "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
           "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_db_url}
    env.pop("AIRFLOW__CORE__EXECUTOR", None)
    log = open(root / "airflow-ui.log", "wb")
    process = subprocess.Popen([str(REPO / "dev"), "ui"], env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    af = Airflow(process, f"http://127.0.0.1:{port}", env, root)
    try:
        wait_for("Airflow's components to report healthy", lambda: _healthy(af.url), 300, af, every_s=2)
        token = httpx.post(f"{af.url}/auth/token", json={"username": APPROVER, "password": APPROVER_PASSWORD},
                           timeout=30).json()["access_token"]
        af.client = httpx.Client(base_url=af.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        for doc in (SCHED, TIGHT, {"name": "late"}):
            wait_for(f"DAG ppmlops_{doc['name']}", lambda d=doc: af.api("GET", f"/api/v2/dags/ppmlops_{d['name']}")
                     .status_code == 200, 180, af, every_s=2)
        yield af
    finally:
        stop(process)
        log.close()


def backfill(af: Airflow, dag_id: str, max_active_runs: int, starts: list) -> list[dict]:
    """The backfill command of docs/runs.md, then the DAG unpaused; returns the backfill's runs once done."""
    af.cli("backfill", "create", "--dag-id", dag_id, "--from-date", starts[0].isoformat(),
           "--to-date", starts[-1].isoformat(), "--max-active-runs", str(max_active_runs))
    af.ok("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})
    return af.runs(dag_id)


def settled(af: Airflow, dag_id: str, count: int):
    def check():
        runs = [r for r in af.runs(dag_id) if r["run_type"] == "backfill"]
        return runs if len(runs) == count and all(r["state"] in ("success", "failed") for r in runs) else None
    return check


# --------------------------------------------------------------------------- sched


def _kill_the_first_training(af: Airflow, doc: dict) -> str:
    """Wait until a run has finished (and checkpointed) epoch 1, then SIGKILL its train task."""
    import psutil

    ledger = Ledger(af.env["PPMLOPS_DB_URL"])
    dataset = f"{doc['name']}_events"

    def trained_one_epoch():
        done = [e for e in ledger.entries(dataset, kind="usage") if e.key == "train/epoch-1" and e.status == "completed"]
        return done[0].run_id if done else None

    try:
        run_id = wait_for("a run to finish its first epoch", trained_one_epoch, 600, af, every_s=0.5)
    except pytest.fail.Exception as e:  # say where each run is: the train tasks' logs name the phase
        dag_id = f"ppmlops_{doc['name']}"
        pytest.fail(f"{e}\n{_task_report(af, dag_id, af.runs(dag_id), lambda ti: ti['task_id'] == 'train')}")
    # The task's process is titled "airflow worker -- <task instance id>".
    ti_id = af.tasks(f"ppmlops_{doc['name']}", run_id)["train"]["id"]
    # The LocalExecutor's supervisor may carry the same title as the task process it forks: the
    # task is the titled process with no titled child.
    titled = [p for p in psutil.process_iter(["name", "ppid"]) if p.info["name"] and ti_id in p.info["name"]]
    parents = {p.info["ppid"] for p in titled}
    task = [p for p in titled if p.pid not in parents]
    assert len(task) == 1, f"expected one task process for the train task {ti_id}, found {titled}"
    task[0].kill()  # as the OOM killer or a lost node would: no clean-up
    return run_id


def _approve_every_waiting_deploy(af: Airflow, dag_id: str, stop) -> list[str]:
    """Answer each approval request once per try of its task, as an officer would: a few seconds
    after it appears. (Answering within a second of the request can race Airflow 3.3's executor
    event for the paused attempt, which then retries the task: its new request is answered too.)"""
    answered: set[tuple[str, int]] = set()
    first_seen: dict[tuple[str, int], float] = {}
    while not stop():
        waiting = af.ok("GET", f"/api/v2/dags/{dag_id}/dagRuns/~/hitlDetails",
                        params={"response_received": False})["hitl_details"]
        for detail in waiting:
            ti = detail["task_instance"]
            key = (ti["dag_run_id"], int(ti.get("try_number") or 0))
            if key in answered:  # answered; the listing catches up once the triggerer resumes it
                continue
            if time.monotonic() - first_seen.setdefault(key, time.monotonic()) < 3:
                continue
            assert "Key numbers (noisy, already charged)" in detail["body"], detail["body"]
            af.ok("PATCH", f"/api/v2/dags/{dag_id}/dagRuns/{key[0]}/taskInstances/approve/-1/hitlDetails",
                  json={"chosen_options": ["Approve"], "params_input": {"comment": f"looks right ({key[0]})"}})
            answered.add(key)
        time.sleep(1)
    return sorted({run_id for run_id, _ in answered})


@pytest.fixture(scope="module")
def sched_backfill(airflow):
    dag_id = "ppmlops_sched"
    backfill(airflow, dag_id, max_active_runs=3, starts=WEEKS)
    killed = _kill_the_first_training(airflow, SCHED)
    done = settled(airflow, dag_id, len(WEEKS))
    approved = _approve_every_waiting_deploy(airflow, dag_id, done)
    return done(), killed, approved


def _why_not_success(af: Airflow, dag_id: str, runs: list[dict]) -> str:
    """Each unsuccessful run's task states and its failed tasks' logs, every try."""
    return _task_report(af, dag_id, [r for r in runs if r["state"] != "success"],
                        lambda ti: ti["state"] in ("failed", "up_for_retry")) or "every run succeeded"


def _task_report(af: Airflow, dag_id: str, runs: list[dict], logs_of) -> str:
    """The runs' task states, and the logs of every try of the tasks `logs_of` picks."""
    out = []
    for r in runs:
        tis = af.tasks(dag_id, r["dag_run_id"])
        out.append(f"{r['dag_run_id']} {r['state']}: " + ", ".join(f"{t} {ti['state']} (try {ti['try_number']})"
                                                                   for t, ti in tis.items()))
        for t, ti in ((t, ti) for t, ti in tis.items() if logs_of(ti)):
            for n in range(1, int(ti["try_number"] or 1) + 1):
                log = af.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{r['dag_run_id']}/taskInstances/{t}/logs/{n}")
                out.append(f"--- {t} try {n}:\n{log.text[-4000:]}")
    return "\n".join(out)


def test_a_backfill_trains_each_interval_on_its_own_rows(airflow, sched_backfill):
    runs, _, approved = sched_backfill
    assert [r["state"] for r in runs] == ["success"] * len(WEEKS), _why_not_success(airflow, "ppmlops_sched", runs)
    assert sorted(approved) == sorted(r["dag_run_id"] for r in runs)  # each deploy waited for the officer
    for r in runs:  # and kept the officer's answer with the comment typed in the approval form
        answer = airflow.context(SCHED, r["dag_run_id"]).store.read(ApprovalRecord)
        assert (answer.outcome, answer.comment) == ("approved", f"looks right ({r['dag_run_id']})")
    windows, hashes = set(), set()
    for r in runs:
        ctx = airflow.context(SCHED, r["dag_run_id"])
        staged, exact = ctx.store.read(Staged), ctx.store.read(StagedData).result
        end = datetime.fromisoformat(r["data_interval_end"])
        assert (staged.window.start, staged.window.end) == (end - LOOKBACK, end)
        # it staged the weeks of its own two-week window (the first run's earlier week is empty)
        weeks_in = sum(end - LOOKBACK <= datetime.combine(w, datetime.min.time(), UTC) < end for w in WEEKS)
        assert exact.rows_in == len(WEEKS) * ROWS_PER_DAY
        assert exact.rows_outside_window == (len(WEEKS) - weeks_in) * ROWS_PER_DAY
        assert exact.consent_as_of == (end - timedelta(days=1)).date().isoformat()  # the last day inside it
        windows.add(staged.window.start)
        hashes.add(exact.sha256)
    assert len(windows) == len(hashes) == len(WEEKS)


def test_each_run_charges_its_own_blocks_and_every_week_trains_where_one_pot_would_stop(airflow, sched_backfill):
    """What the ledger counts is what ran, block by block: dp-accounting, composing each run's
    count releases and usage from its own records over the blocks its window touches, finds each
    block's curve; every block stays within the lifetime budget, while the four runs together
    are more than that budget holds (one pot would have refused the third)."""
    import dp_accounting
    from dp_accounting.rdp import rdp_privacy_accountant

    runs, _, _ = sched_backfill
    ledger = Ledger(airflow.env["PPMLOPS_DB_URL"])
    dataset = "sched_events"
    budget = ledger.budget(dataset)
    entries = ledger.entries(dataset)
    assert {e.run_id for e in entries} == {r["dag_run_id"] for r in runs}
    per_block: dict[str, dict[str, rdp_privacy_accountant.RdpAccountant]] = {}
    one_pot = {p: rdp_privacy_accountant.RdpAccountant(orders=ORDERS) for p in ("train", "holdout")}
    for r in runs:
        ctx = airflow.context(SCHED, r["dag_run_id"])
        trained, plan = ctx.store.read(TrainRecord), ctx.store.read(PlanRecord).privacy
        assert trained.epochs_completed == EPOCHS  # every week trained
        end = datetime.fromisoformat(r["data_interval_end"])
        window_blocks = list(budget.calendar.touching(end - LOOKBACK, end))
        assert len(window_blocks) == 2 and plan.blocks == window_blocks
        mine = [x for x in entries if x.run_id == r["dag_run_id"]]
        assert all(list(x.blocks) == window_blocks for x in mine)  # every charge of the run, both blocks
        events = {"train": [], "holdout": []}
        for e in (x for x in mine if x.kind == "release"):
            events[e.partition].append(dp_accounting.GaussianDpEvent(e.noise_multiplier))
        for epoch in trained.history:
            events["train"].append(dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(
                epoch.sample_rate, dp_accounting.GaussianDpEvent(epoch.noise_multiplier)),
                epoch.steps))
            events["holdout"].append(dp_accounting.GaussianDpEvent(plan.holdout_sigma))
        events["holdout"].append(dp_accounting.GaussianDpEvent(plan.evaluation_sigma))
        for p, evs in events.items():
            one_pot[p].compose(dp_accounting.ComposedDpEvent(evs))
            for b in window_blocks:
                per_block.setdefault(b, {}).setdefault(
                    p, rdp_privacy_accountant.RdpAccountant(orders=ORDERS)).compose(dp_accounting.ComposedDpEvent(evs))
    charged = ledger.block_curves(dataset)
    assert set(charged) == set(per_block)
    for b, accs in per_block.items():
        for p, acc in accs.items():
            np.testing.assert_allclose(charged[b][p][budget.index], acc._rdp[budget.index], rtol=1e-9)
            assert acc._rdp[budget.index] <= budget.rdp
    assert max(acc._rdp[budget.index] for acc in one_pot.values()) > budget.rdp
    assert {e.status for e in entries if e.kind == "grant"} == {"trimmed"}


def test_a_killed_train_task_is_retried_and_resumes_from_its_checkpoint(airflow, sched_backfill):
    _, killed, _ = sched_backfill
    train = airflow.tasks("ppmlops_sched", killed)["train"]
    assert train["state"] == "success" and train["try_number"] == 2
    ctx = airflow.context(SCHED, killed)
    progress = (ctx.store.root / "progress.log").read_text()
    # it was killed after epoch 1 finished: the retry resumed from that checkpoint or a newer one
    assert re.search(r"resumed from the checkpoint of epoch [1-9]", progress), progress
    assert progress.count(f"epoch 1/{EPOCHS}") == 1  # epoch 1 ran once
    usage = Ledger(airflow.env["PPMLOPS_DB_URL"]).entries("sched_events", killed, kind="usage")
    keys = [e.key for e in usage]
    assert sorted(keys) == sorted(set(keys))  # no step charged twice
    assert {k for k in keys if k.startswith("train/")} == {f"train/epoch-{i}" for i in range(1, EPOCHS + 1)}


def test_only_a_production_deploy_moves_the_production_alias(airflow, sched_backfill):
    from ppmlops.registry.store import Registry

    registry = Registry(airflow.settings.registry_dir)
    versions = registry.versions("sched_churn")
    assert len(versions) == len(WEEKS)
    assert registry.alias("sched_churn", "production") is not None
    assert registry.alias("sched_churn", "development") is None


# --------------------------------------------------------------------------- tight


def test_concurrent_plans_never_overspend_and_the_policy_refuses_once_spent(airflow):
    dag_id = "ppmlops_tight"
    # a setting changed in Airflow while it runs reaches the next tasks, without a restart
    airflow.ok("POST", "/api/v2/variables", json={
        "key": "ppmlops_settings", "value": json.dumps({"PPMLOPS_QUARANTINE_RETENTION_DAYS": "7"})})
    backfill(airflow, dag_id, max_active_runs=3, starts=DAYS)
    runs = wait_for("the tight backfill to finish", settled(airflow, dag_id, 3), 900, airflow, every_s=2)
    for r in runs:
        staged = airflow.context(TIGHT, r["dag_run_id"]).store.read(StagedData).result
        assert staged.quarantine_retention_days == 7
    states = {r["dag_run_id"]: airflow.tasks(dag_id, r["dag_run_id"]) for r in runs}
    planned = [run for run, tis in states.items() if tis["plan"]["state"] == "success"]
    refused = [run for run, tis in states.items() if tis["plan"]["state"] == "failed"]
    assert planned and refused, {run: {t: ti["state"] for t, ti in tis.items()} for run, tis in states.items()}
    ledger = Ledger(airflow.env["PPMLOPS_DB_URL"])
    budget = ledger.budget("tight_events")
    assert budget.share_used(ledger.charged_curves("tight_events")) <= 1
    # a refused plan was refused without retries and reserved nothing
    for run in refused:
        assert states[run]["plan"]["try_number"] == 1
        assert not ledger.entries("tight_events", run, kind="grant")

    # Now the budget is gone: a manual run is refused before it trains, with the reason in the
    # failed task's log: by the ledger at assess if even its noisy counts no longer fit, else by
    # the policy at plan.
    manual = airflow.ok("POST", f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None})["dag_run_id"]
    wait_for("the manual run to finish", lambda: airflow.ok("GET", f"/api/v2/dags/{dag_id}/dagRuns/{manual}")
             ["state"] in ("success", "failed"), 600, airflow, every_s=2)
    tis = airflow.tasks(dag_id, manual)
    [stopped] = [t for t in ("assess", "plan") if tis[t]["state"] == "failed"]
    assert tis["train"]["state"] == "upstream_failed" and tis[stopped]["try_number"] == 1
    log = json.dumps(airflow.ok("GET", f"/api/v2/dags/{dag_id}/dagRuns/{manual}/taskInstances/{stopped}/logs/1"))
    # at assess: by the ledger, or by the policy's pre-check on public facts before any release
    reasons = ("over its lifetime budget", "budget spent", "budget is spent") if stopped == "assess" else ("budget spent",)
    assert any(reason in log for reason in reasons), log[-3000:]
    assert budget.share_used(ledger.charged_curves("tight_events")) <= 1


# --------------------------------------------------------------------------- late


def test_a_refused_trigger_that_unpaused_the_dag_spends_nothing(airflow):
    """The trigger form unpauses the DAG (its default), then Airflow refuses the trigger (400: a
    cap above the spec's): the scheduler starts the past hour's run on its own. The policy refuses
    that run, started half an hour after its interval ended, before anything is charged."""
    dag_id = "ppmlops_late"
    airflow.ok("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})  # the form's "unpause on trigger"
    refused = airflow.api("POST", f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": {"epsilon_cap": 5}})
    assert refused.status_code == 400, refused.text
    [run] = wait_for("the scheduled run to finish", lambda: [r for r in airflow.runs(dag_id) if r["state"] in ("success", "failed")]
                     or None, 600, airflow, every_s=2)
    assert run["run_type"] == "scheduled" and run["state"] == "failed"
    tis = airflow.tasks(dag_id, run["dag_run_id"])
    assert tis["assess"]["state"] == "failed" and tis["assess"]["try_number"] == 1 and tis["plan"]["state"] == "upstream_failed"
    refusal = airflow.context(late_doc(), run["dag_run_id"]).store.read(Refusal)
    assert refusal.stage == "assess" and any(re.search(r"this scheduled run started \d+ minutes after its interval ended", r)
                                             for r in refusal.reasons), refusal.reasons
    assert Ledger(airflow.env["PPMLOPS_DB_URL"]).entries("late_events") == []  # nothing charged, not even its counts
    airflow.ok("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": True})


# --------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_stops_every_component(airflow):
    import psutil

    group = [p for p in psutil.process_iter(["pid"]) if _in_group(p, airflow.process.pid)]
    assert len(group) >= 4  # the API server, scheduler, DAG processor and triggerer at least
    os.killpg(airflow.process.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C
    assert airflow.process.wait(timeout=180) is not None  # a generous wait: components drain in turn
    wait_for("every component to exit", lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                                                          for p in group), 60)
    assert not _healthy(airflow.url)


def _in_group(process, pgid: int) -> bool:
    import psutil

    try:
        return os.getpgid(process.pid) == pgid
    except (ProcessLookupError, psutil.NoSuchProcess):
        return False
