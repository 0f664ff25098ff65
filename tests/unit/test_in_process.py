"""One worker without a cluster trains in the calling process (issue 28, item 6).

ppmlops.training.in_process runs the same loop as a Ray worker, with its checkpoints in the run's
storage folder: these tests check that it trains and charges as planned, that a task killed
mid-run resumes from the newest whole checkpoint without a second charge, and that the caller's
process (an Airflow task) gets its thread count, umask and process group back.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from plans import make_job, synthetic
from ppmlops.errors import TrainingError
from ppmlops.privacy.ledger import Ledger
from ppmlops.training.in_process import StorageCheckpoints, train_in_process


def _job(tmp_path, epochs=3, **kw):
    arrays = synthetic()
    job = make_job(f"sqlite:///{tmp_path / 'l.db'}", arrays, epochs=epochs, **kw)
    return dataclasses.replace(job, storage_path=str(tmp_path / "private" / "ray"),
                               progress_path=str(tmp_path / "progress.log")), arrays


def test_it_trains_charges_as_planned_and_gives_the_process_back(tmp_path):
    job, arrays = _job(tmp_path)
    threads, mask = torch.get_num_threads(), os.umask(0o022)
    os.umask(mask)
    weights, outcome = train_in_process(job, arrays)
    assert outcome.epochs_completed == 3 and outcome.stopped_reason == "completed"
    usage = Ledger(job.ledger_url).entries("synthetic", job.run_id, kind="usage")
    assert [(e.key, e.status) for e in usage] == [(f"train/epoch-{i}", "completed") for i in (1, 2, 3)]
    assert all(isinstance(v, torch.Tensor) for v in weights.values())  # a state dict
    root = tmp_path / "private" / "ray" / job.run_id
    kept = sorted(p.name for p in root.iterdir())
    assert kept == ["checkpoint_000001", "checkpoint_000002"]  # the two newest of three
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    progress = (tmp_path / "progress.log").read_text()
    assert "epoch 3/3" in progress
    assert progress.index("rank 0 set up in") < progress.index("epoch 1/3")  # the start-up phase first
    assert torch.get_num_threads() == threads and not dist.is_initialized()
    assert os.umask(mask) == mask  # the umask it found is back
    assert outcome.timings.epochs > 0 and outcome.timings.ray_start == 0


class _DiesAfter(StorageCheckpoints):
    """Checkpoints whose save of epoch 2 dies half way: the copy is there, the rename is not."""

    def save(self, metrics, directory):
        if metrics.get("epoch") == 2 and directory is not None:
            os.makedirs(self.root, exist_ok=True)
            import shutil

            shutil.copytree(directory, os.path.join(self.root, f".incoming-{os.getpid()}"))
            raise RuntimeError("the task was killed")
        super().save(metrics, directory)


def test_a_killed_task_resumes_from_its_newest_whole_checkpoint_without_a_second_charge(tmp_path, monkeypatch):
    from ppmlops.training import in_process

    job, arrays = _job(tmp_path)
    monkeypatch.setattr(in_process, "StorageCheckpoints", _DiesAfter)
    with pytest.raises(RuntimeError, match="killed"):
        train_in_process(job, arrays)
    assert not dist.is_initialized()  # the group of one was torn down on the way out
    monkeypatch.setattr(in_process, "StorageCheckpoints", StorageCheckpoints)
    ledger = Ledger(job.ledger_url)
    # epoch 2 ran and is charged (its row stays reserved until a checkpoint holds it)
    assert [e.status for e in ledger.entries("synthetic", job.run_id, kind="usage")] == ["completed", "reserved"]
    _, outcome = train_in_process(job, arrays)
    usage = ledger.entries("synthetic", job.run_id, kind="usage")
    assert [(e.key, e.status) for e in usage] == [(f"train/epoch-{i}", "completed") for i in (1, 2, 3)]
    assert outcome.epochs_completed == 3
    assert "resumed from the checkpoint of epoch" in (tmp_path / "progress.log").read_text()


def test_a_half_written_checkpoint_is_never_restored(tmp_path):
    ckpt = StorageCheckpoints(tmp_path / "c")
    os.makedirs(tmp_path / "c" / "checkpoint_000007")  # a folder a crash left empty
    assert ckpt.restore() is None


def test_more_than_one_worker_is_refused(tmp_path):
    job, arrays = _job(tmp_path)
    with pytest.raises(TrainingError, match="one worker"):
        train_in_process(dataclasses.replace(job, workers=2), arrays)


def test_it_never_imports_ray(tmp_path):
    """One worker, no cluster: Ray is not loaded at all (a fresh process trains, then lists what it
    imported), as a Ray worker's quiet loggers once imported Ray Train for a logger's name."""
    script = textwrap.dedent(f"""
        import dataclasses, json, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
        from plans import make_job, synthetic
        from ppmlops.training.in_process import train_in_process

        arrays = synthetic()
        job = make_job({f"sqlite:///{tmp_path / 'l.db'}"!r}, arrays, epochs=1)
        job = dataclasses.replace(job, storage_path={str(tmp_path / "ray")!r})
        _, outcome = train_in_process(job, arrays)
        print(json.dumps([outcome.epochs_completed, sorted(m for m in sys.modules if m.split(".")[0] == "ray")]))
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[2], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    epochs, ray_modules = json.loads(out.stdout.strip().splitlines()[-1])
    assert epochs == 1 and ray_modules == []
