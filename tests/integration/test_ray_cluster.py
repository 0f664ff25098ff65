"""Training on a real two-node Ray cluster: `ray start --head` plus a second node joining it.

Each node offers one CPU, so a 2-worker run can only be placed with one worker on each node.
Both ways a task can use a cluster are run: as the Ray driver (RAY_ADDRESS, TrainJob.ray_address)
and through a Ray Jobs submission (PPMLOPS_RAY_JOBS_URL) that the task follows to the end.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest
from synthetic_jobs import BATCH, DELTA, N_TRAIN, data, ledger_url, make_job  # noqa: F401 (fixtures)

from ppmlops import pipeline
from ppmlops.errors import TrainingError
from ppmlops.privacy.accountant import Segment, epsilon_from_rdp
from ppmlops.privacy.filter import plan_budget
from ppmlops.privacy.ledger import Ledger
from ppmlops.spec import load_spec
from ppmlops.training.launch import sample_rate_for, shutdown_local_ray, train_on_ray
from ppmlops.training.local_cluster import start_local_cluster

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster():
    import ray

    shutdown_local_ray()
    assert not ray.is_initialized(), "an earlier test left this process connected to a Ray"
    with start_local_cluster(nodes=2, cpus_per_node=1) as c:
        assert len(c.node_ids) == 2
        yield c
        ray.shutdown()
    host, port = c.address.split(":")
    with pytest.raises(OSError):  # the cluster is gone, not left running behind the tests
        socket.create_connection((host, int(port)), timeout=2).close()


def _nodes_per_epoch(history) -> list[set[str]]:
    return [{r["node"] for r in h["ranks"]} for h in history]


def test_driver_on_the_cluster_trains_one_worker_per_node(cluster, data, ledger_url, tmp_path):
    q, steps = sample_rate_for(N_TRAIN, BATCH, 2)
    budget = plan_budget([Segment(1.0, q, steps)] * 2)
    job = make_job(data, ledger_url, tmp_path, "run-cluster", epochs=2, budget=budget, ray_address=cluster.address)
    result = train_on_ray(job)

    assert result.stopped_reason == "completed" and result.epochs_completed == 2
    assert _nodes_per_epoch(result.history) == [cluster.node_ids] * 2
    entries = Ledger(ledger_url).entries(dataset_id="synth", run_id="run-cluster")
    assert [e.status for e in entries] == ["completed", "completed"]
    assert [(e.steps, e.sample_rate, e.noise_multiplier) for e in entries] == [(steps, q, 1.0)] * 2
    eps_ledger = Ledger(ledger_url).epsilon_spent("synth", run_id="run-cluster")
    assert result.history[-1]["epsilon_spent"] == pytest.approx(eps_ledger, rel=1e-9)
    assert eps_ledger == pytest.approx(epsilon_from_rdp(result.rdp_spent, DELTA)[0], rel=1e-9)


# ------------------------------------------------------------------------------ Ray Jobs path


@pytest.fixture(scope="module")
def jobs_home(cluster):
    """The e2e pipeline in a home of its own (its own ledger), trained through the job server."""
    import ray

    ray.shutdown()  # the job is the driver now; this process only follows it
    home = Path(tempfile.mkdtemp(prefix="ppmlops-jobs-"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PPMLOPS_HOME", str(home))
        mp.setenv("PPMLOPS_RAY_JOBS_URL", cluster.jobs_url)
        mp.delenv("RAY_ADDRESS", raising=False)
        yield home
    shutil.rmtree(home, ignore_errors=True)


def _context(run_id: str) -> pipeline.RunContext:
    spec = load_spec(Path(os.environ["PPMLOPS_PIPELINES"]) / "e2e_small.yaml")
    return pipeline.RunContext(spec, run_id, pipeline.RunParams.from_mapping(spec, {"epochs": 2, "workers": 2}))


def test_job_submission_trains_on_the_cluster_and_streams_progress(cluster, jobs_home, capsys):
    ctx = _context("jobs-ok")
    for stage in (pipeline.ingest, pipeline.validate, pipeline.assess, pipeline.plan):
        stage(ctx)
    record = pipeline.train(ctx)
    out = capsys.readouterr().out

    assert record["ray_job"]["submission_id"] == "ppmlops-e2e_small-jobs-ok"
    assert record["ray_job"]["jobs_url"] == cluster.jobs_url
    # the task's log carries the job's per-epoch progress lines as they come
    assert "epoch 1/2" in out and "epoch 2/2" in out and "[ray job ppmlops-e2e_small-jobs-ok]" in out
    assert record["epochs_completed"] == 2 and record["stopped_reason"] == "completed"
    assert _nodes_per_epoch(record["history"]) == [cluster.node_ids] * 2
    # the job wrote the ledger this task reads: what the task reports is what was spent
    ledger = Ledger(ctx.settings.db_url)
    entries = ledger.entries(ctx.spec.dataset.id, run_id="jobs-ok")
    assert [e.id for e in entries if e.partition == "train"] == record["ledger_entries"]
    assert record["run_epsilon_spent"] == pytest.approx(ledger.epsilon_spent(ctx.spec.dataset.id, run_id="jobs-ok"))
    assert Path(record["model_path"]).exists()
    # the rest of the run carries on from the job's record
    assert pipeline.evaluate(ctx)["accuracy"] > 0.5

    # a retried task follows the job its last attempt ran instead of training again
    again = pipeline.train(ctx)
    assert again["ray_job"]["submission_id"] == record["ray_job"]["submission_id"]
    assert len(Ledger(ctx.settings.db_url).entries(ctx.spec.dataset.id, run_id="jobs-ok")) == len(entries)


def test_a_failed_job_fails_the_task_with_its_error(cluster, jobs_home):
    ok = _context("jobs-ok")
    ctx = _context("jobs-broken")
    staged = json.loads((ok.run_dir / "ingest.json").read_text())
    staged["snapshot_train"] = str(ctx.run_dir / "missing.parquet")  # the job cannot read its data
    ctx.write("ingest", staged)
    ctx.write("plan", json.loads((ok.run_dir / "plan.json").read_text()))

    with pytest.raises(TrainingError, match=r"(?s)Ray job ppmlops-e2e_small-jobs-broken FAILED.*missing\.parquet"):
        pipeline.train(ctx)
    assert not (ctx.run_dir / "train.json").exists()


def test_unreachable_job_server_names_it(monkeypatch):
    monkeypatch.setenv("PPMLOPS_RAY_JOBS_URL", "http://127.0.0.1:1")
    with pytest.raises(TrainingError, match=r"127\.0\.0\.1:1.*PPMLOPS_RAY_JOBS_URL"):
        pipeline.train(_context("jobs-unreachable"))
