"""The deploy gate's needs-approval branch: a person approves or rejects in the Airflow UI."""

from __future__ import annotations

from airflow.providers.standard.operators.hitl import HITLBranchOperator

from ppmlops.airflow.tasks import run_context
from ppmlops.dashboard.links import run_page_path
from ppmlops.run.records import GateRecord
from ppmlops.spec import PipelineSpec
from ppmlops.stages.approval import record_approval

APPROVAL_EXTRA_TRIES = 3


class DeployApproval(HITLBranchOperator):
    """The needs-approval branch of the deploy gate: a person approves or rejects in the UI.

    The policy's reasons become the request's body, and the answer is written to the run and the
    audit log before the branch is taken, so a deployed model always names who approved it.
    """

    APPROVE, REJECT = "Approve", "Reject"

    def __init__(self, *, spec: PipelineSpec, **kwargs):
        super().__init__(
            subject=f"Deploy {spec.deploy.model_name} trained on {spec.dataset.id}?",
            options=[self.APPROVE, self.REJECT],
            options_mapping={self.APPROVE: "deploy", self.REJECT: "rejected"},
            **kwargs,
        )
        self.spec = spec

    def execute(self, context):
        ctx = run_context(self.spec)
        gate = ctx.store.read(GateRecord)
        self.body = ("The deploy policy asks for a person's approval:\n\n"
                     + "\n".join(f"- {r}" for r in gate.reasons)
                     + f"\n\nRun {ctx.run_id}: [its privacy summary and checks]"
                     f"({run_page_path(self.spec.name, ctx.run_id)}); manifest: {ctx.run_dir / 'manifest.json'}")
        return super().execute(context)

    def execute_complete(self, context, event):
        if "error" not in event:
            user = event.get("responded_by_user") or {}
            at = event.get("responded_at")
            record_approval(
                run_context(self.spec), approved=event["chosen_options"] == [self.APPROVE],
                user=str(user.get("name") or user.get("id") or "unknown"),
                responded_at=at.isoformat() if hasattr(at, "isoformat") else str(at), channel="airflow-hitl")
        return super().execute_complete(context, event)
