"""Ask the policy and record the decision in the hash-chained audit log (every outcome)."""

from __future__ import annotations

from typing import Any

from ppmlops.audit.log import AuditLog
from ppmlops.compliance.engine import Decision, evaluate
from ppmlops.run.context import RunContext


def decide(ctx: RunContext, query: str, policy_input: dict[str, Any], *, stage: str) -> Decision:
    decision = evaluate(query, policy_input, policy_path=ctx.settings.policy_path, cfg=ctx.settings)
    AuditLog(ctx.settings.db_url).record(decision, run_id=ctx.run_id, dataset_id=ctx.spec.dataset.id, stage=stage)
    return decision
