"""Keyed pseudonyms for direct identifiers: HMAC-SHA256 with a secret key from the environment.

A plain hash of an e-mail address or phone number is no protection: the space of such values is
small enough to hash every candidate and look the result up. A keyed MAC cannot be recomputed
without the key, yet gives the same pseudonym for the same value on every run with that key,
so staged rows can still be joined or de-duplicated. The key lives only in the environment
(never in the spec, the run directory or the logs); without it, pseudonymization fails rather
than falling back to anything weaker.

A value is stripped of surrounding whitespace before hashing; an empty value stays empty, so
that all rows missing the identifier do not share one pseudonym. Pseudonyms are personal data
still (GDPR Recital 26); they are staged for joins, never as features.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from ppmlops.errors import DataError

MIN_KEY_BYTES = 16
# Domain separation: the same key used elsewhere never yields these MACs.
_CONTEXT = b"ppmlops-pseudonym-v1\x00"


def load_key(env_var: str) -> bytes:
    value = os.environ.get(env_var)
    if not value:
        raise DataError(f"pseudonymization needs a secret key in the environment variable {env_var}, "
                        "which is not set (it is never read from the spec; a plain hash is not used instead)")
    key = value.encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        raise DataError(f"the pseudonymization key in {env_var} is {len(key)} bytes; use at least "
                        f"{MIN_KEY_BYTES} random bytes (e.g. `openssl rand -hex 32`)")
    return key


def pseudonym(key: bytes, value: str) -> str:
    text = value.strip()
    if not text:
        return ""
    return hmac.new(key, _CONTEXT + text.encode("utf-8"), hashlib.sha256).hexdigest()


def pseudonym_column(column: str) -> str:
    return f"{column}_pseudonym"
