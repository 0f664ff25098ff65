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
