"""CLI tables (ppmlops.terminal): plain text when stdout is not a terminal (one line per row,
whole cells, ASCII, no colour, no trailing blanks), rich's styling on a terminal."""

from __future__ import annotations

import io

from ppmlops.terminal import print_table, render

NOTE = "a reason long enough to wrap on any terminal " * 4


def test_plain_tables_keep_whole_rows():
    text = render(["id", "run", "steps", "note"], [[1, "run-1", 500, NOTE.strip()], [12, "run-2", 20, "-"]],
                  sections=[0])
    lines = text.splitlines()
    assert lines[0].split() == ["id", "run", "steps", "note"] and set(lines[1]) == {"-"}
    assert lines[2].endswith(NOTE.strip()) and len(lines) == 5 and set(lines[3]) == {"-"}  # a rule after row 0
    assert all(line == line.rstrip() for line in lines) and "\x1b[" not in text
    # numbers right-aligned: the short id ends where the long one does
    assert lines[2].index("1 ") == lines[4].index("12") + 1


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_richs_table(capsys):
    stream = Tty()
    print_table(["id", "run"], [[1, "run-1"]], stream=stream)
    assert "─" in stream.getvalue() and "\x1b[" in stream.getvalue()
    print_table(["id", "run"], [[1, "run-1"]])  # pytest's captured stdout is not a terminal
    assert capsys.readouterr().out == "id   run\n----------\n 1   run-1\n"


def test_audit_show_is_a_table_one_line_per_decision(tmp_path, capsys):
    from ppmlops import cli
    from ppmlops.audit import AuditLog
    from ppmlops.compliance.engine import evaluate

    url = f"sqlite:///{tmp_path / 'audit.db'}"
    log = AuditLog(url)
    log.record(evaluate("data.ppmlops.deploy", {"environment": "production"}), run_id="run-1", dataset_id="d",
               stage="gate")
    assert cli.main(["audit", "show", "--db-url", url]) == 0
    lines = capsys.readouterr().out.splitlines()
    [record] = log.records()
    assert lines[0].split() == ["seq", "recorded", "run", "stage", "query", "outcome", "reasons"]
    assert len(lines) == 3 and lines[2].split()[:6] == ["1", record["recorded_at"], "run-1", "gate",
                                                          "data.ppmlops.deploy", "deny"]
    assert lines[2].endswith("; ".join(record["decision"]["reasons"]))
