"""Fingerprints of private data: keyed, so they prove lineage to the operator and nothing to others.

A plain SHA-256 of a snapshot is a deterministic function of the private rows: whoever knows all
rows but one could test guesses for the last one against it. The fingerprint on cards and in
records is HMAC-SHA256 of the snapshot's content hash under a deployment secret kept under
PPMLOPS_HOME (created on first use, mode 0600); the operator recomputes it with
`ppmlops lineage fingerprint <sha256>`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

KEY_FILE = "keys/lineage.key"


def lineage_key(home: Path) -> bytes:
    path = Path(home) / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(32))
    return path.read_bytes()


def fingerprint(home: Path, content_sha256: str) -> str:
    key = lineage_key(home)
    key_id = hashlib.sha256(key).hexdigest()[:8]
    mac = hmac.new(key, content_sha256.encode("ascii"), hashlib.sha256).hexdigest()
    return f"hmac-sha256:{key_id}:{mac}"
