"""deploy: register the model with its card and move the environment's alias to it.

Only an allowed decision, or a needs-approval decision a person approved, deploys; the DAG
branches around this stage, and this guard holds for every other caller. A production run moves
`production`; every other environment moves its own alias (`staging`, ...), never production's.
"""

from __future__ import annotations

from pathlib import Path

from ppmlops.errors import PolicyRefused
from ppmlops.registry.store import Registry
from ppmlops.run.records import ApprovalRecord, DeployRecord, GateRecord, TrainRecord
from ppmlops.stages.card import model_card
from ppmlops.stages.context import RunContext, timed


def deployable(gate: GateRecord, approval: ApprovalRecord | None) -> bool:
    """Allowed by policy, or held for approval and approved by a person: both conditions exact."""
    approved = gate.outcome == "needs_approval" and approval is not None and approval.approved
    return gate.allowed or approved


def alias_for(environment: str) -> str:
    return "production" if environment == "production" else environment


@timed
def run(ctx: RunContext) -> DeployRecord:
    gate = ctx.store.read(GateRecord)
    approval = ctx.store.read_optional(ApprovalRecord)
    if not deployable(gate, approval):
        waiting = ["awaiting a person's approval"] if gate.outcome == "needs_approval" and approval is None else []
        raise PolicyRefused("deploy", gate.reasons + waiting)
    card = model_card(ctx)
    card["policy_decision"] = {"decision_id": gate.decision_id, "outcome": gate.outcome, "reasons": gate.reasons,
                               "policy_hash": gate.policy_hash, "engine": gate.engine}
    if approval is not None and approval.approved:
        card["approval"] = approval.model_dump(exclude={"seconds"})
    name = ctx.spec.deploy.model_name
    registry = Registry(ctx.settings.registry_dir)
    version = registry.register(name, Path(ctx.store.read(TrainRecord).model_path), card)
    alias = alias_for(ctx.params.environment)
    registry.set_alias(name, alias, version)
    return DeployRecord(model_name=name, version=version, alias=alias, path=str(registry.model_path(name, version)))
