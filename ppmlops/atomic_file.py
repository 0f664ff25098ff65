"""Files written whole or not at all: a temporary file in the target's folder, then os.replace
(atomic within one filesystem), so a reader, or a second writer doing the same, never sees half a
file; on any error the temporary file is removed and the target is left as it was."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def replace_with(path: Path | str, write: Callable[[Path], None], mode: int | None = None) -> Path:
    """Call `write` on a temporary path beside `path` (parents created), then move it into place.
    `mode`: the file's permissions (mkstemp makes 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path | str, doc: Any, mode: int | None = None, *, newline: bool = True) -> Path:
    """`doc` as indented JSON (values JSON cannot hold as their str)."""
    text = json.dumps(doc, indent=2, default=str) + ("\n" if newline else "")
    return replace_with(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), mode)


def write_csv(path: Path | str, frame: Any) -> Path:
    """A pandas frame as CSV, without its index, with \\n line ends."""
    return replace_with(path, lambda tmp: frame.to_csv(tmp, index=False, lineterminator="\n"))
