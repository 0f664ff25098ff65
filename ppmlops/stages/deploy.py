"""deploy: register the model in MLflow with its card and move the environment's alias to it.

Only an allowed decision, or a needs-approval decision a person approved, deploys; the DAG
branches around this stage, and this guard holds for every other caller. A production run moves
`production`; every other environment moves its own alias (`staging`, ...), never production's.
"""

from __future__ import annotations

from pathlib import Path

from ppmlops.audit.log import AuditLog
from ppmlops.compliance.documents import ModelCard
from ppmlops.errors import PolicyRefused
from ppmlops.registry import tracking
from ppmlops.registry.card_check import card_sha256, registration
from ppmlops.registry.store import Registry
from ppmlops.run.records import ApprovalRecord, DeployRecord, GateRecord, ModelCheck, TrainRecord
from ppmlops.stages.card import model_card
from ppmlops.run.context import RunContext
from ppmlops.stages.context import timed


def deployable(gate: GateRecord, approval: ApprovalRecord | None) -> bool:
    """Allowed by policy, or held for approval and approved by a person: both conditions exact."""
    approved = gate.outcome == "needs_approval" and approval is not None and approval.approved
    return gate.allowed or approved


def alias_for(environment: str) -> str:
    return "production" if environment == "production" else environment


def encoding(ctx: RunContext) -> dict:
    """What the deployed model needs to encode raw rows: the spec's declared features and label."""
    ds = ctx.spec.dataset
    return {"features": [f.model_dump(mode="json") for f in ds.features], "label": ds.label.model_dump(mode="json")}


def factory_requirements(ctx: RunContext) -> list[str]:
    """The distribution that provides a model.factory's module, pinned: the served model builds
    itself with the factory, so wherever it is served must install it."""
    check = ctx.store.read_optional(ModelCheck) if ctx.spec.model.own is not None else None
    if check is None or not check.code.distribution:
        return []
    code = check.code
    return [f"{code.distribution}=={code.version}" if code.version else code.distribution]


@tracking.tracked
@timed
def run(ctx: RunContext) -> DeployRecord:
    gate = ctx.store.read(GateRecord)
    approval = ctx.store.read_optional(ApprovalRecord)
    if not deployable(gate, approval):
        waiting = ["awaiting a person's approval"] if gate.outcome == "needs_approval" and approval is None else []
        raise PolicyRefused("deploy", gate.reasons + waiting)
    card = model_card(ctx).document()
    card["policy_decision"] = {"decision_id": gate.decision_id, "outcome": gate.outcome, "reasons": gate.reasons,
                               "policy_hash": gate.policy_hash, "engine": gate.engine}
    if approval is not None and approval.approved:
        card["approval"] = approval.model_dump(exclude={"seconds"})
    card = ModelCard.of(card).document()  # the card as registered: its schema, docs/schemas/model_card.json
    name = ctx.spec.deploy.model_name
    registry = Registry(ctx.settings.registry_dir)
    mlflow_run = tracking.sync(ctx)  # the version links to the run (the gate's sync made it)
    version = registry.register(name, Path(ctx.store.read(TrainRecord).model_path), card, encoding=encoding(ctx),
                                run_id=mlflow_run.mlflow_run_id, requirements=factory_requirements(ctx))
    alias = alias_for(ctx.params.environment)
    # The card as MLflow holds it, hashed into the audit log before the alias moves to it: `ppmlops
    # audit verify` then names a card edited in MLflow afterwards.
    sha = card_sha256(registry.card(name, version))
    log = AuditLog(ctx.settings.db_url)
    try:
        log.record(registration(name, version, sha, alias, gate.decision_id, gate.policy_hash), run_id=ctx.run_id,
                   dataset_id=ctx.spec.dataset.id, stage="deploy")
    finally:
        log.close()
    registry.set_alias(name, alias, version)
    return DeployRecord(model_name=name, version=version, alias=alias, path=f"models:/{name}/{version}",
                        card_sha256=sha)
