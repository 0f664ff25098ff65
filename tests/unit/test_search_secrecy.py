"""A private search's trial count K stays private (issue 26, item 1): Papernot & Steinke's bound
holds only while K is secret, so nothing outside the run's private/ folder, and no log line, may
count its trials: not Ray Train's checkpoints or their count, not its run snapshot, not its logs.

The search worker runs for real: in a gloo process group of one (fast), and once through Ray
Train on the local runtime (marked `ray`), walking everything a run and Ray leave behind.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from plans import make_job, synthetic
from ppmlops.errors import TrainingError
from ppmlops.privacy.search import TrialCount
from ppmlops.run.store import RunStore
from ppmlops.training.worker_job import SEARCH_STATE_FILE
from ppmlops.training.loop import STATE_FILE, Comm, DirectoryCheckpoints, read_checkpoint
from ppmlops.training.progress import PROGRESS_FILE, append
from ppmlops.training.search_loop import SearchProgress, run_search_worker

CPU = torch.device("cpu")
TRIALS = TrialCount(4.0, 1.0)
REPO = Path(__file__).resolve().parents[2]


def _k(job) -> int:
    return TRIALS.draw(float(job.draws().source("search-count").uniform(1)[0]))


def _search_job(run_dir: Path, seed: int | None = None, **kw):
    """A search job of a run folder laid out as the train stage lays it out (storage under private/),
    with a seed whose K is at least 3 (so one report cannot be K by chance)."""
    store = RunStore(run_dir).ensure()
    for s in ([seed] if seed is not None else range(200)):
        job = make_job(f"sqlite:///{run_dir.parent / f'ledger-{run_dir.name}-{s}.db'}", synthetic(),
                       run_id="search-secret", epochs=1, seed=s, search=TRIALS, **kw)
        if _k(job) >= 3:
            return store, replace(job, storage_path=str(store.ray_storage()),
                                  progress_path=str(store.root / PROGRESS_FILE),
                                  init_path=str(store.private_dir / "model_init.pt"))
    raise AssertionError("no seed below 200 draws K >= 3")


class _Reports(DirectoryCheckpoints):
    """The real folder checkpoints, counting the reports (Ray Train's report count)."""

    def __init__(self, root):
        super().__init__(root)
        self.reports = 0

    def save(self, metrics, directory):
        super().save(metrics, directory)
        self.reports += 1


def _echo(job):
    return lambda line: append(job.progress_path, line)  # as ray_worker's echo: the public progress file


def _public_files(run_dir: Path) -> list[Path]:
    private = run_dir / "private"
    return [p for p in run_dir.rglob("*") if p.is_file() and private not in p.parents]


def _counts_k(text: str, k: int) -> list[str]:
    """What in a text would tell K: the search state's keys, a report or checkpoint index equal to
    K, or "K trials"."""
    found = re.findall(r'"(?:trials|done)":\s*\d', text)  # the search state's (the card's "trials" is words)
    found += re.findall(rf"(?:current_report_index\W+{k}\b|Reporting training result {k}\b|\b{k} trials\b)", text)
    return found


def test_a_search_reports_once_and_keeps_k_in_a_private_file(tmp_path, gloo_world_of_one):
    store, job = _search_job(tmp_path / "run")
    k = _k(job)
    ckpt = _Reports(Path(job.storage_path) / job.run_id)
    run_search_worker(job, synthetic(), Comm(CPU), ckpt, CPU, echo=_echo(job))
    assert ckpt.reports == 1  # not one per trial: Ray's report and checkpoint count would be K
    reported = read_checkpoint(os.path.join(ckpt.root, "latest"))
    assert reported.state.search.keys() == {"best"} and reported.state.epoch == job.plan.epochs
    assert '"trials"' not in (Path(ckpt.root) / "latest" / STATE_FILE).read_text()
    # K and the progress are in one private file, the owner's only
    path = Path(job.search_state_path)
    assert path.name == SEARCH_STATE_FILE and store.private_dir in path.parents
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    state, best = SearchProgress(str(path)).load()
    assert state.search["trials"] == state.search["done"] == k and best is not None
    for folder in (store.private_dir, Path(job.storage_path)):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    # nothing outside private/ counts the trials; the progress file has a line at the start and the end
    public = _public_files(store.root)
    assert [p.name for p in public] == [PROGRESS_FILE]
    for p in public:
        assert _counts_k(p.read_text(errors="replace"), k) == [], p
    assert len(Path(job.progress_path).read_text().splitlines()) == 2


class _Crashing(SearchProgress):
    """The real private progress file; the worker dies once trial `crash_at_trial` is saved."""

    def __init__(self, path, crash_at_trial: int | None = None):
        super().__init__(path)
        self.crash_at_trial, self.trials_saved = crash_at_trial, 0

    def save(self, state, best):
        super().save(state, best)
        self.trials_saved += state.search["done"] > 0
        if state.search["done"] == self.crash_at_trial:
            raise RuntimeError("the worker died")


def test_a_search_resumed_after_a_crash_keeps_k_and_reports_once(tmp_path, gloo_world_of_one):
    store, job = _search_job(tmp_path / "run")
    k = _k(job)
    root = Path(job.storage_path) / job.run_id
    first = _Reports(root)
    with pytest.raises(RuntimeError, match="worker died"):
        run_search_worker(job, synthetic(), Comm(CPU), first, CPU, echo=_echo(job),
                          progress=_Crashing(job.search_state_path, 2))
    assert first.reports == 0
    # the retry: the same storage path, a fresh draw would be another K (the file holds the first)
    again, kept = _Reports(root), _Crashing(job.search_state_path)
    trained: list[str] = []
    run_search_worker(job, synthetic(), Comm(CPU), again, CPU, echo=trained.append, progress=kept)
    assert again.reports == 1 and kept.trials_saved == k - 2  # no trial ran twice
    state, _ = SearchProgress(job.search_state_path).load()
    assert state.search["trials"] == state.search["done"] == k
    assert len(trained) == 1 and "search done" in trained[0]  # resumed: no new "trials drawn" line


def test_an_unreadable_search_progress_file_fails_naming_it_and_never_draws_k_again(tmp_path, gloo_world_of_one):
    store, job = _search_job(tmp_path / "run")
    path = Path(job.search_state_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a torch file")
    with pytest.raises(TrainingError, match=re.escape(str(path))):
        run_search_worker(job, synthetic(), Comm(CPU), _Reports(path.parent), CPU, echo=lambda line: None)


def test_the_run_store_keeps_ray_storage_private_and_private_records_0600(tmp_path):
    from typing import ClassVar

    from ppmlops.run.records import Record

    class Secret(Record):
        FILE: ClassVar[str] = "secret.json"
        PRIVATE: ClassVar[bool] = True
        value: int

    store = RunStore(tmp_path / "run")
    storage = store.ray_storage()
    assert storage == store.private_dir / "ray"
    assert stat.S_IMODE(store.private_dir.stat().st_mode) == stat.S_IMODE(storage.stat().st_mode) == 0o700
    store.write(Secret(value=11))
    assert stat.S_IMODE(store.path_of(Secret).stat().st_mode) == 0o600
    # an older run's private folder is tightened, not moved
    older = RunStore(tmp_path / "older")
    older.private_dir.mkdir(parents=True, mode=0o755)
    os.chmod(older.private_dir, 0o755)
    older.ensure()
    assert stat.S_IMODE(older.private_dir.stat().st_mode) == 0o700


def test_a_ray_search_without_storage_is_refused(tmp_path):
    from ppmlops.training.launch import train_on_ray

    _, job = _search_job(tmp_path / "run")
    with pytest.raises(TrainingError, match="a private search needs storage_path"):
        train_on_ray(replace(job, storage_path=""), synthetic())


# The search through Ray Train on the local runtime, in a process of its own with --verbose (every
# line Ray forwards to the driver is printed): what the terminal, the task log and Ray's files show.
_RAY_SEARCH = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from dataclasses import replace
from plans import make_job, synthetic
from ppmlops.privacy.search import TrialCount
from ppmlops.run.store import RunStore
from ppmlops.training.launch import private_temp_root, ray_temp_dir, shutdown_local_ray, train_on_ray
run = Path(sys.argv[1])
store = RunStore(run).ensure()
seed = int(sys.argv[3])
job = make_job(f"sqlite:///{run.parent / 'ledger.db'}", synthetic(), run_id="ray-search-secret", epochs=1,
               seed=seed, search=TrialCount(4.0, 1.0))
# an MLP, clipped as the product clips it (ghost clipping)
job = replace(job, storage_path=str(store.ray_storage()), progress_path=str(run / "progress.log"), model_kind="mlp",
              hidden=(8,), clipping="ghost")
try:
    weights, outcome = train_on_ray(job, synthetic())
finally:
    shutdown_local_ray()
print("OUTCOME", json.dumps({"search": outcome.search, "temp": str(ray_temp_dir()), "root": str(private_temp_root())}))
"""


@pytest.mark.ray
def test_a_search_on_ray_leaves_no_count_of_its_trials_outside_private(tmp_path):
    store, job = _search_job(tmp_path / "run")
    k = _k(job)
    env = {**os.environ, "PPMLOPS_VERBOSE": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", _RAY_SEARCH, str(store.root), str(REPO / "tests"), str(job.seed)],
                         capture_output=True, text=True, timeout=400, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.split("OUTCOME ", 1)[1])
    assert result["search"]["noise_multiplier"] == job.plan.noise_multiplier
    # the terminal (the task log on a cluster) has no report lines and no count of the trials
    output = out.stdout + out.stderr
    assert "Reporting training result" not in output and _counts_k(output, k) == []
    # Ray Train's storage is under private/ and counts one report, whatever K was
    storage = store.private_dir / "ray" / "ray-search-secret"
    assert stat.S_IMODE((store.private_dir / "ray").stat().st_mode) == 0o700
    snapshots = [json.loads(p.read_text()) for p in storage.glob("checkpoint_manager_snapshot*.json")]
    assert [s["current_report_index"] for s in snapshots] == [1], snapshots
    assert len(list(storage.glob("checkpoint_*/"))) == 1
    for p in _public_files(store.root):
        assert _counts_k(p.read_text(errors="replace"), k) == [], p
    # Ray's own session folder is inside one only this user enters (Ray makes its own 0777), not
    # /tmp/ray, and its logs do not count trials
    temp, root = Path(result["temp"]), Path(result["root"])
    assert root in temp.parents and root.stat().st_uid == os.getuid()
    assert stat.S_IMODE(root.stat().st_mode) == 0o700  # as the run left it, Ray running or not
    logs = [p for p in temp.rglob("*") if p.is_file() and "logs" in p.parts and not p.is_symlink()]
    assert logs, f"Ray wrote no logs under {temp}"
    for p in logs:
        text = p.read_text(errors="replace")
        assert "Reporting training result" not in text and _counts_k(text, k) == [], p
    shared = Path("/tmp/ray")
    if shared.is_dir():  # another user's runtime may use it: none of this run's lines are there
        for p in shared.rglob("*"):
            if p.is_file() and not p.is_symlink() and p.stat().st_size < 50_000_000:
                try:
                    assert "ray-search-secret" not in p.read_text(errors="replace"), p
                except PermissionError:
                    continue


def test_a_search_runs_card_says_its_duration_is_a_timing_channel_the_bound_does_not_cover(tmp_path):
    from ppmlops.run.records import SearchResult, TrainRecord
    from ppmlops.stages.card import _search

    _, job = _search_job(tmp_path / "run")
    chosen = SearchResult(noise_multiplier=job.plan.noise_multiplier, learning_rate=0.5, max_grad_norm=1.0,
                          holdout_accuracy_noisy=0.9)
    trained = TrainRecord(model_path="model.pt", n_features=6, epochs_completed=1, stopped_reason="completed",
                          history=[], usage_entries=[], tuner="fixed", randomness="reproducible", epsilon_used={},
                          search=chosen)
    block = _search(job.plan, trained)
    assert "wall-clock duration" in block["not_covered"] and "does not cover" in block["not_covered"]
    assert "secret" in block["trials"]
