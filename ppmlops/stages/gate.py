"""gate: CMFM, the deploy policy on the manifest; every decision is recorded with its input."""

from __future__ import annotations

from ppmlops.audit.log import chain_head
from ppmlops.registry import tracking
from ppmlops.run.records import GateRecord
from ppmlops.run.store import MANIFEST_FILE
from ppmlops.stages.card import manifest
from ppmlops.run.context import RunContext
from ppmlops.stages.context import timed
from ppmlops.stages.decide import decide



@tracking.tracked  # the MLflow run gets everything released up to the decision
@timed
def run(ctx: RunContext) -> GateRecord:
    doc = manifest(ctx).document()
    decision = decide(ctx, "data.ppmlops.deploy", doc, stage="gate")
    ctx.store.write_document(MANIFEST_FILE, doc)
    # The audit log's head right after this decision, kept outside the database: `ppmlops audit
    # verify --anchor` with it catches a log cut back to before this run.
    head = chain_head(ctx.settings.db_url)
    return GateRecord(outcome=decision.outcome, allowed=decision.allowed, reasons=decision.reasons,
                      decision_id=decision.id, policy_hash=decision.policy_hash, engine=decision.engine,
                      error=decision.error, audit_head=head.to_dict() if head else None)


def next_task(decision: GateRecord) -> str:
    """The DAG's branch after the gate: deploy only what the policy allowed; a needs-approval
    decision goes to a person first; anything else is withheld."""
    if decision.allowed:
        return "deploy"
    return "approve" if decision.outcome == "needs_approval" else "withhold"
