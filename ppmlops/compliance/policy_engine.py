"""The one interface both OPA engines implement (ppmlops.compliance.engine explains them and
chooses between them: `policy_engine(cfg)`).

Both answer one query over the policy text the caller read and hashed (so the decision is tied
to that hash), in the same argument order: (path, text, digest, query, input_doc). This module
imports neither engine: each imports it, and is imported only when chosen (the embedded engine
starts a Go worker, the HTTP one loads requests and the OPA client).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

ENGINE_EMBEDDED = "embedded-opa"
ENGINE_OPA = "opa-http"


class PolicyEngine(Protocol):
    name: str  # recorded with each decision (ENGINE_EMBEDDED or ENGINE_OPA)

    def evaluate(self, path: Path, text: str, digest: str, query: str, input_doc: Any) -> tuple[bool, Any]:
        """(defined, value) of `query` over the policy `text` (sha256 `digest`) read from `path`;
        PolicyError when no answer can be had."""
        ...
