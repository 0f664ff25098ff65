"""Exit codes and error printing shared by the `ppmlops` command groups.

A bad argument is a usage error (2, like argparse's own); a problem with the data or state the
command works on is reported in one line, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from ppmlops.errors import PpmlopsError

DATA_ERROR, USAGE_ERROR = 1, 2


class BadArgument(Exception):
    def __init__(self, argument: str, message: str):
        super().__init__(f"argument {argument}: {message}")


def whole_number(text: str, argument: str, minimum: int) -> int:
    """`text` as an int of at least `minimum`, or a BadArgument naming `argument`."""
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise BadArgument(argument, f"{text!r} is not a whole number") from None
    if value < minimum:
        raise BadArgument(argument, f"must be >= {minimum}, got {text}")
    return value


def guarded(func: Callable[[argparse.Namespace], int], prog: str, *, data_error: int = DATA_ERROR,
            one_line: bool = False) -> Callable[[argparse.Namespace], int]:
    """`func` with BadArgument and PpmlopsError turned into `prog: error: ...` and an exit code."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except BadArgument as err:
            print(f"{prog}: error: {err}", file=sys.stderr)
            return USAGE_ERROR
        except PpmlopsError as err:
            text = " ".join(str(err).split()) if one_line else str(err)
            print(f"{prog}: error: {text}", file=sys.stderr)
            return data_error

    run.__name__ = func.__name__
    run.__doc__ = func.__doc__
    return run
