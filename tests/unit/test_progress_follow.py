"""The train task's log follows the run's progress file, and says so when it goes quiet."""

from __future__ import annotations

import time

from ppmlops.training.progress import append, followed


def test_lines_appended_while_following_are_emitted_once_in_order(tmp_path):
    path, seen = tmp_path / "progress.log", []
    append(path, "before")  # already there when following starts: not emitted again
    with followed(path, seen.append, poll_s=0.02):
        append(path, "one")
        time.sleep(0.1)
        append(path, "two")
    assert seen == ["one", "two"]


def test_a_quiet_stretch_is_reported_and_a_new_line_resets_it(tmp_path):
    path, seen = tmp_path / "progress.log", []
    with followed(path, seen.append, poll_s=0.02, quiet_after_s=0.2):
        time.sleep(0.5)
        quiet = [line for line in seen if line.startswith("still working: no progress line for")]
        assert 1 <= len(quiet) <= 3, seen
        append(path, "epoch 1/2")
        time.sleep(0.1)  # shorter than the quiet stretch: nothing more
    assert seen[len(quiet):] == ["epoch 1/2"]


def test_no_quiet_lines_unless_asked(tmp_path):
    """A private search follows without them: how many it printed would grow with its secret K."""
    path, seen = tmp_path / "progress.log", []
    with followed(path, seen.append, poll_s=0.02):
        time.sleep(0.3)
    assert seen == []
