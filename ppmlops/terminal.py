"""Tables for the command line, drawn by rich.

On a terminal a table gets rich's styling and wraps to the window. Anywhere else (a pipe, a
file, a task log, a test capturing stdout) it is plain text: no colour or control codes, ASCII
rules, one line per row however long (nothing wraps or is cut, so grep and diff see whole
rows), no trailing blanks. The console is made at each call, on the sys.stdout of that moment.
"""

from __future__ import annotations

import io
import sys
from typing import Any, Sequence, TextIO

from rich import box
from rich.console import Console
from rich.table import Table

# rich's SIMPLE_HEAD (a rule under the header, and under a row that ends a section) in ASCII,
# for plain output.
PLAIN_HEAD = box.Box("    \n    \n -- \n    \n -- \n    \n    \n    \n", ascii=True)
# Wide enough that no row of a table wraps when the output is not a terminal.
UNWRAPPED = 100_000


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)())


def _numeric(cells: Sequence[str]) -> bool:
    def number(text: str) -> bool:
        try:
            float(text.rstrip("%"))
        except ValueError:
            return False
        return True

    filled = [c for c in cells if c not in ("", "-")]
    return bool(filled) and all(number(c) for c in filled)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, sections: Sequence[int] = (),
          terminal: bool = False) -> Table:
    """A table of `rows` (cells as text); columns whose every cell is a number are right-aligned.
    `sections`: row indexes after which a rule is drawn (a total row below it)."""
    cells = [[("" if c is None else str(c)) for c in row] for row in rows]
    t = Table(box=box.SIMPLE_HEAD if terminal else PLAIN_HEAD, show_edge=False, pad_edge=False,
              header_style="bold" if terminal else "", highlight=False)
    for i, h in enumerate(headers):
        column = [r[i] for r in cells]
        # Plain output is as wide as its widest row (UNWRAPPED), so no cell is ever cut there.
        t.add_column(h, justify="right" if _numeric(column) else "left", no_wrap=not terminal,
                     overflow="fold")
    for i, row in enumerate(cells):
        t.add_row(*row, end_section=i in sections)
    return t


def render(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, sections: Sequence[int] = ()) -> str:
    """The table as plain text (what `print_table` writes when stdout is not a terminal)."""
    buffer = io.StringIO()
    Console(file=buffer, width=UNWRAPPED, color_system=None, force_terminal=False, highlight=False,
            soft_wrap=False).print(table(headers, rows, sections=sections))
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, sections: Sequence[int] = (),
                stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    if is_terminal(stream):
        Console(file=stream, highlight=False).print(table(headers, rows, sections=sections, terminal=True))
    else:
        print(render(headers, rows, sections=sections), file=stream)
