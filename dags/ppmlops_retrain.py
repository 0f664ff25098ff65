"""One retraining DAG per pipeline spec in dags/pipelines/*.yaml.

Thin wiring only: each task calls one stage of ppmlops.pipeline. Run one DAG in-process with
    python dags/ppmlops_retrain.py demo_churn
which is Airflow's `dag.test()` on the configured metadata database (SQLite by default).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pendulum
from airflow.providers.standard.operators.hitl import HITLBranchOperator
from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from ppmlops import pipeline
from ppmlops.errors import PpmlopsError
from ppmlops.spec import PipelineSpec, load_specs

log = logging.getLogger(__name__)
# PPMLOPS_PIPELINES points a deployment (or the test suite) at another folder of specs.
PIPELINES = Path(os.environ.get("PPMLOPS_PIPELINES") or Path(__file__).parent / "pipelines")


def _context(spec: PipelineSpec) -> pipeline.RunContext:
    ctx = get_current_context()
    params = pipeline.RunParams.from_mapping(spec, dict(ctx["params"]))
    return pipeline.RunContext(spec=spec, run_id=ctx["run_id"], params=params)


def _stage(spec: PipelineSpec, fn):
    """Run a stage; a problem the user can act on fails the task without retries."""
    try:
        return fn(_context(spec))
    except PpmlopsError as err:
        raise AirflowFailException(str(err)) from err


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
        ctx = _context(self.spec)
        gate = ctx.read("gate")
        self.body = ("The deploy policy asks for a person's approval:\n\n"
                     + "\n".join(f"- {r}" for r in gate["reasons"])
                     + f"\n\nRun {ctx.run_id}; manifest: {ctx.run_dir / 'manifest.json'}")
        return super().execute(context)

    def execute_complete(self, context, event):
        if "error" not in event:
            user = event.get("responded_by_user") or {}
            at = event.get("responded_at")
            pipeline.record_approval(
                _context(self.spec), approved=event["chosen_options"] == [self.APPROVE],
                user=str(user.get("name") or user.get("id") or "unknown"),
                responded_at=at.isoformat() if hasattr(at, "isoformat") else str(at), channel="airflow-hitl")
        return super().execute_complete(context, event)


def build_dag(spec: PipelineSpec):
    defaults = pipeline.RunParams.defaults(spec)

    @dag(
        dag_id=spec.dag_id,
        description=spec.description or None,
        schedule=spec.schedule,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,  # runs of one dataset share its budget: never plan two at once
        tags=["ppmlops", spec.dataset.id, spec.dataset.regulation],
        params={
            "epsilon_cap": Param(defaults.epsilon_cap, type="number", exclusiveMinimum=0,
                                 maximum=spec.privacy.run_epsilon,
                                 description="Most epsilon this run may spend (the policy may grant less)."),
            "epochs": Param(defaults.epochs, type="integer", minimum=1, maximum=1000),
            "workers": Param(defaults.workers, type="integer", minimum=1, maximum=256,
                             description="Ray Train workers"),
            "use_gpu": Param(defaults.use_gpu, type="boolean",
                             description="one GPU per Ray Train worker (NCCL); the cluster needs GPU nodes"),
            "seed": Param(defaults.seed, type="integer", minimum=0),
            "environment": Param(defaults.environment, type="string", enum=["development", "test", "staging", "production"],
                                 description="production runs must use secure RNG (policy)"),
            "tuner": Param(spec.training.tuner, type="string", enum=["fixed", "rule", "bayes"],
                           description="ANOM: how noise, clip norm and learning rate change between epochs"),
        },
        default_args={"retries": 0},
        doc_md=__doc__,
    )
    def retrain():
        @task
        def ingest():
            return _stage(spec, pipeline.ingest)

        @task
        def validate():
            return _stage(spec, pipeline.validate)

        @task
        def assess():
            return _stage(spec, pipeline.assess)

        @task
        def plan():
            return _stage(spec, pipeline.plan)

        @task
        def train():
            return _stage(spec, pipeline.train)

        @task
        def evaluate():
            return _stage(spec, pipeline.evaluate)

        @task.branch
        def gate():
            decision = _stage(spec, pipeline.gate)
            if decision["allowed"]:
                return "deploy"
            return "approve" if decision["outcome"] == "needs_approval" else "withhold"

        # Reached from the gate (allow) or from a person's approval: one success is enough.
        @task(trigger_rule="none_failed_min_one_success")
        def deploy():
            out = _stage(spec, pipeline.deploy)
            log.info("\n%s", pipeline.format_summary(pipeline.summary(_context(spec))))
            return out

        @task
        def withhold():
            ctx = _context(spec)
            decision = ctx.read("gate")
            log.info("\n%s", pipeline.format_summary(pipeline.summary(ctx)))
            # Fail the run so a denied or unapproved model is visible, not a quiet green run.
            raise AirflowFailException(
                f"deployment {decision['outcome']} by policy: " + "; ".join(decision["reasons"]))

        @task
        def rejected():
            ctx = _context(spec)
            answer = ctx.read("approval")
            log.info("\n%s", pipeline.format_summary(pipeline.summary(ctx)))
            raise AirflowFailException(f"deployment rejected by {answer['by']} at {answer['at']}")

        decided = ingest() >> validate() >> assess() >> plan() >> train() >> evaluate() >> gate()
        approve = DeployApproval(task_id="approve", spec=spec)
        deployed = deploy()
        decided >> [deployed, withhold(), approve]
        approve >> [deployed, rejected()]

    return retrain()


for _path, _spec in load_specs(PIPELINES):
    globals()[_spec.dag_id] = build_dag(_spec)


if __name__ == "__main__":
    import argparse
    import json

    from ppmlops.spec import load_spec

    parser = argparse.ArgumentParser(description="Run one retraining DAG in-process (dag.test()).")
    parser.add_argument("pipeline", help="spec name (e.g. demo_churn) or path to a spec file")
    parser.add_argument("--conf", default="{}", help="run conf as JSON, e.g. '{\"epochs\": 2}'")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args()

    candidate = Path(args.pipeline)
    if candidate.exists():
        spec = load_spec(candidate)
    else:
        matches = [s for _, s in load_specs(PIPELINES) if args.pipeline in (s.name, s.dag_id)]
        if not matches:
            raise SystemExit(f"no pipeline named {args.pipeline!r} in {PIPELINES}")
        spec = matches[0]
    run = globals()[spec.dag_id].test(run_conf=json.loads(args.conf))
    ctx = pipeline.RunContext(spec=spec, run_id=run.run_id,
                              params=pipeline.RunParams.from_mapping(spec, json.loads(args.conf)))
    result = pipeline.summary(ctx)
    result["dag_run_state"] = str(run.state)
    print(json.dumps(result, indent=2, default=str) if args.json else pipeline.format_summary(result)
          + f"\n  DAG run state: {run.state}")
    raise SystemExit(0 if str(run.state) == "success" else 1)
