"""The deploy gate's needs-approval branch: a person approves or rejects in the Airflow UI."""

from __future__ import annotations

from airflow.providers.standard.operators.hitl import HITLBranchOperator
from airflow.sdk import Param
from airflow.sdk.definitions.param import ParamsDict

from ppmlops.airflow.tasks import run_context
from ppmlops.dashboard.links import run_page_path
from ppmlops.pipeline import stage_line
from ppmlops.run.records import EvaluationRecord, GateRecord, PlanRecord, TrainRecord
from ppmlops.spec import PipelineSpec
from ppmlops.stages.approval import COMMENT_CHARS, record_approval

APPROVAL_EXTRA_TRIES = 3


class DeployApproval(HITLBranchOperator):
    """The needs-approval branch of the deploy gate: a person approves or rejects in the UI.

    The policy's reasons become the request's body, and the answer is written to the run and the
    audit log before the branch is taken, so a deployed model always names who approved it.
    """

    APPROVE, REJECT = "Approve", "Reject"

    def __init__(self, *, spec: PipelineSpec, params=None, **kwargs):
        # The answer's why, kept with it in the run and the audit log: the form's one field. Airflow
        # hands the DAG's Params in here too (source "dag"); the request's form shows the task's only.
        params = ParamsDict(params or {})
        params["comment"] = Param("", type="string", maxLength=COMMENT_CHARS, title="Comment", source="task",
                                  description="Why you approve or reject (kept in the run and the audit log)")
        super().__init__(
            subject=f"Deploy {spec.deploy.model_name} trained on {spec.dataset.id}?",
            options=[self.APPROVE, self.REJECT],
            options_mapping={self.APPROVE: "deploy", self.REJECT: "rejected"},
            params=params,
            **kwargs,
        )
        self.spec = spec

    def execute(self, context):
        self.body = approval_body(run_context(self.spec))
        return super().execute(context)

    def execute_complete(self, context, event):
        if "error" not in event:
            user = event.get("responded_by_user") or {}
            at = event.get("responded_at")
            record_approval(
                run_context(self.spec), approved=event["chosen_options"] == [self.APPROVE],
                user=str(user.get("name") or user.get("id") or "unknown"),
                responded_at=at.isoformat() if hasattr(at, "isoformat") else str(at), channel="airflow-hitl",
                comment=str((event.get("params_input") or {}).get("comment") or ""))
        return super().execute_complete(context, event)


def approval_body(ctx) -> str:
    """What the person deciding reads (Markdown): the policy's reasons, then the run's key numbers,
    each a public record's one-line summary (noised and charged values only), and where to look."""
    gate = ctx.store.read(GateRecord)
    numbers = [stage_line(name, record) for name, record in
               (("plan", ctx.store.read_optional(PlanRecord)), ("train", ctx.store.read_optional(TrainRecord)),
                ("evaluate", ctx.store.read_optional(EvaluationRecord))) if record is not None]
    return ("The deploy policy asks for a person's approval:\n\n"
            + "\n".join(f"- {r}" for r in gate.reasons)
            + "\n\nKey numbers (noisy, already charged):\n\n" + "\n".join(f"- {line}" for line in numbers)
            + f"\n\nRun {ctx.run_id}: [its privacy summary and checks]"
            f"({run_page_path(ctx.spec.name, ctx.run_id)}); manifest: {ctx.store.manifest_path}")
