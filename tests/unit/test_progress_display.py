"""ProgressDisplay: periodic plain lines (rows, rows/s, percent) when not on a terminal, a rich bar
on one, and a mode that shows no count at all (for private row counts)."""

from __future__ import annotations

import io

from ppmlops.progress_display import ProgressDisplay


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_every_few_seconds_with_rows_rate_and_percent():
    clock, lines = Clock(), []
    with ProgressDisplay("risk scan", total=1_000_000, every_s=5, emit=lines.append, clock=clock) as shown:
        for _ in range(10):  # 100,000 rows a second, one report a second
            clock.now += 1
            shown.advance(100_000)
    assert lines == [
        "risk scan: 500,000 rows, 100,000 rows/s, 50% (of 1,000,000), about 5s left, after 5s",
        "risk scan: 1,000,000 rows, 100,000 rows/s, 100% (of 1,000,000), after 10s",
        "risk scan: 1,000,000 rows, 100,000 rows/s, 100% (of 1,000,000), done in 10s",
    ]


def test_unknown_total_and_no_counts():
    clock, lines = Clock(), []
    shown = ProgressDisplay("ingest", emit=lines.append, every_s=1, clock=clock)
    clock.now += 2
    shown.update(1234)
    shown.close()
    shown.close()  # once
    assert lines == ["ingest: 1,234 rows, 617 rows/s, after 2s", "ingest: 1,234 rows, 617 rows/s, done in 2s"]

    lines.clear()
    hidden = ProgressDisplay("ingest", total=4096, unit="bytes", show_counts=False, emit=lines.append, every_s=1,
                             clock=clock)
    clock.now += 3
    hidden.update(1024)
    hidden.close()
    assert lines == ["ingest: 25%, about 9s left, after 3s", "ingest: 25%, done in 3s"]
    assert not any(ch.isdigit() for ch in "".join(lines).replace("25%", "").replace("9s", "").replace("3s", ""))


def test_default_goes_to_stderr_as_lines_when_not_a_terminal(capsys):
    with ProgressDisplay("scan", total=10, every_s=0) as shown:
        shown.advance(10)
    out, err = capsys.readouterr()
    assert out == "" and "scan: 10 rows" in err and "100% (of 10)" in err and "\x1b[" not in err


def test_a_terminal_gets_a_bar():
    stream = io.StringIO()
    with ProgressDisplay("risk scan", total=200, stream=stream, terminal=True) as shown:
        shown.advance(50)
        shown.advance(150)
    text = stream.getvalue()
    assert "risk scan" in text and "100%" in text and "200/200" in text and "\x1b[" in text  # drawn, with colour
