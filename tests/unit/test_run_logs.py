"""Library log records go to the run's files, not to the task log a person reads."""

from __future__ import annotations

import logging

from ppmlops.run.logs import library_logs


def test_library_records_go_to_the_run_folder_at_their_own_level(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("PPMLOPS_VERBOSE", raising=False)
    gx = logging.getLogger("great_expectations.core")
    ours = logging.getLogger("ppmlops.run")
    with caplog.at_level(logging.DEBUG), library_logs(tmp_path, "gx"):
        gx.info("Validating batch of 4,500 rows")
        gx.warning("deprecated decorator")
        ours.info("validate: suite demo passed")
    text = (tmp_path / "logs" / "gx.log").read_text()
    assert "INFO great_expectations.core: Validating batch" in text
    assert "WARNING great_expectations.core: deprecated decorator" in text
    assert [r.getMessage() for r in caplog.records] == ["validate: suite demo passed"]
    # afterwards the library logs as before
    with caplog.at_level(logging.INFO):
        gx.info("after")
    assert "after" in [r.getMessage() for r in caplog.records]


def test_verbose_leaves_library_records_where_they_were(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PPMLOPS_VERBOSE", "1")
    with caplog.at_level(logging.INFO), library_logs(tmp_path, "ray"):
        logging.getLogger("ray.train").info("worker group started")
    assert "worker group started" in [r.getMessage() for r in caplog.records]
    assert not (tmp_path / "logs").exists()


def test_the_job_log_forwarded_to_the_task_log_drops_ray_trains_report_counting_lines():
    from ppmlops.training.jobs import forwarded

    # as Ray Train 2.60's worker logs them (one per report: per trial, a search's K)
    assert not forwarded("\x1b[36m(RayTrainWorker pid=15856)\x1b[0m Reporting training result 11: TrainingReport("
                         "checkpoint=Checkpoint(filesystem=local, path=/x/checkpoint_2026-12-06), metrics={'epoch': 0}, "
                         "validation=False) from rank 0")
    assert not forwarded("(RayTrainWorker pid=1) Checkpoint successfully created at: Checkpoint(filesystem=local)")
    assert forwarded("(RayTrainWorker pid=1) [run r1] private search done: chosen learning rate 1.28, clip 0.335")
    assert forwarded("[run r1] epoch 2/3: noise 1.1, clip 1, lr 0.5; epsilon used 0.41 of 1")
