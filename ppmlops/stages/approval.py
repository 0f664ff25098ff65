"""A person's answer to a needs-approval gate, in the run and in the hash-chained audit log.

The record takes the shape of a policy decision so that `ppmlops audit verify|show` cover it
like any other; its engine names the channel the answer came through.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from ppmlops.audit.log import AuditLog
from ppmlops.errors import PpmlopsError
from ppmlops.registry import tracking
from ppmlops.run.records import ApprovalRecord, GateRecord
from ppmlops.run.context import RunContext


# A comment is a person's why, not a document: longer ones are cut (and say so).
COMMENT_CHARS = 2000


def record_approval(ctx: RunContext, *, approved: bool, user: str, responded_at: str, channel: str,
                    comment: str = "") -> ApprovalRecord:
    gate = ctx.store.read(GateRecord)
    if gate.outcome != "needs_approval":
        raise PpmlopsError(f"run {ctx.run_id}: the deploy gate said {gate.outcome!r}; there is nothing to approve")
    outcome = "approved" if approved else "rejected"
    comment = comment.strip()
    if len(comment) > COMMENT_CHARS:
        comment = comment[:COMMENT_CHARS] + " [cut]"
    record = ApprovalRecord(approved=approved, outcome=outcome, by=user, at=responded_at, channel=channel,
                            gate_decision_id=gate.decision_id, gate_reasons=gate.reasons, comment=comment)
    AuditLog(ctx.settings.db_url).record({
        "id": uuid.uuid4().hex, "time": datetime.now(timezone.utc).isoformat(), "query": "human approval of deploy",
        "input": {"gate_decision_id": gate.decision_id, "reasons": gate.reasons},
        "result": record.model_dump(exclude={"seconds"}), "outcome": outcome, "allowed": approved,
        "reasons": [f"{outcome} by {user} at {responded_at}" + (f": {comment}" if comment else "")], "engine": channel,
        "policy_hash": gate.policy_hash, "error": None,
    }, run_id=ctx.run_id, dataset_id=ctx.spec.dataset.id, stage="approval")
    written = ctx.store.write(record)
    tracking.sync_quietly(ctx)  # a rejection ends the MLflow run; an approval is logged before deploy
    return written
