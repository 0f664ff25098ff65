"""A dataset's own random keys under PPMLOPS_HOME/keys (quarantine HMAC, the per-person bound).

Created on first use with mode 0600 in a 0700 folder, by an exclusive create so two processes
never write different keys; read back as hex afterwards. Never derived from data, never logged.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from ppmlops.errors import DataError

KEY_BYTES = 32


def dataset_key(home: Path, dataset_id: str, purpose: str, *, what: str, fix: str) -> bytes:
    """The key `<home>/keys/<dataset_id>.<purpose>.key`; `what` names it in errors, `fix` says what
    to do when it cannot be read or created."""
    folder = Path(home) / "keys"
    path = folder / f"{dataset_id}.{purpose}.key"
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            key = bytes.fromhex(path.read_text().strip())
        else:
            key = secrets.token_bytes(KEY_BYTES)
            with os.fdopen(fd, "w") as fh:
                fh.write(key.hex() + "\n")
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read or create the {what} {path}: {getattr(err, 'strerror', None) or err}; "
                        f"{fix}") from None
    if len(key) != KEY_BYTES:
        raise DataError(f"the {what} {path} is damaged (wrong length); delete it to make a new one")
    return key
