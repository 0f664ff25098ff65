"""plan: the policy decides whether to train and the run's epsilon from public inputs only; the
run's privacy is fixed (ppmlops.privacy.planning) and its grant reserved in the ledger.

With privacy blocks the run is sized to the blocks it reads (DPF, Luo et al. OSDI 2021): each
block's budget unlocks over the runs its lookback implies, the pipelines registered on the dataset
share the unlocked part by dominant share (ppmlops.privacy.ledger.BlockRoom), and the tightest
block limits the run (planning.Room). The policy
sees each block (`blocks`: id, share_used, unlocked, pipeline_share_used, pipelines) and
`ledger.epsilon_remaining` is what that room allows.

Everything the policy sees here is public or a charged release: the spec, the regulation, the
ledger, the noisy counts and the risk score computed from them. A plan already recorded for
this run is returned as it is (a retried task must not plan on a budget its own grant reduced).
"""

from __future__ import annotations

from typing import Any

from ppmlops.compliance.documents import TrainPolicyInput
from ppmlops.compliance.utility_inputs import plan_classes
from ppmlops.errors import BudgetExceeded, PolicyRefused, PpmlopsError
from ppmlops.privacy.ledger import HOLDOUT, TRAIN, BlockRoom, Ledger
from ppmlops.privacy.lifetime import LifetimeBudget
from ppmlops.privacy.planning import (
    EpochShape, PlannedRun, Room, RunRequest, affordable, plan_run, plan_search, released, runs_left, split_conflict,
)
from ppmlops.privacy.search import TrialCount
from ppmlops.privacy.session import reserve
from ppmlops.registry import tracking
from ppmlops.run.grant import charge_records, grant_of
from ppmlops.run.records import (
    BlockShare, CountsRelease, PlanRecord, PrivacyPlan, RiskAssessment, SearchPlan, Staged,
)
from ppmlops.run.context import RunContext
from ppmlops.stages.context import timed
from ppmlops.stages.decide import decide
from ppmlops.stages.precheck import run_rooms
from ppmlops.stages.refusal import refuse
from ppmlops.tuning.registry import wants_holdout_accuracy



def _refuse(ctx: RunContext, reasons: list[str], decision_id: str | None = None, action: str = "train",
            by: str = "policy"):
    refuse(ctx, "plan", reasons, PolicyRefused(action, reasons, by), decision_id=decision_id)


def canaries_for(ctx: RunContext, counts: CountsRelease) -> int:
    # Gradient canaries are not rows (ppmlops.audit.canary): no share of the data caps them.
    return ctx.spec.audit.canaries


def block_shares(rooms: list[BlockRoom]) -> list[BlockShare]:
    return [BlockShare(id=r.block, share_used=r.share_used, unlocked=r.unlocked,
                       pipeline_share_used=r.pipeline_share_used, pipelines=r.pipelines) for r in rooms]


def learnability(ctx: RunContext, rows: float, budget: LifetimeBudget, charged, req: RunRequest,
                 room: Room | None):
    """Whether the run could learn at the most epsilon it could get (ppmlops.training.learnability),
    from public facts and the noisy counts; None when no training fits at all (the budget rules
    refuse that run). The train policy reads it, so a run that cannot learn is refused before its
    grant."""
    from ppmlops.data.features import feature_names
    from ppmlops.run.records import ModelCheck, Pretrained
    from ppmlops.training.learnability import builtin_parameters, estimate

    spec = ctx.spec
    best = min(ctx.params.epsilon_cap, affordable(budget, charged, req, room)[TRAIN])
    try:
        planned = plan_run(budget, charged, req, best, room)
    except BudgetExceeded:
        return None
    check = ctx.store.read_optional(ModelCheck) if spec.model.own is not None else None
    tuned = ctx.store.read_optional(Pretrained)  # only the trainable parameters get noise
    parameters = (tuned.trainable_parameters if tuned is not None else check.parameters if check is not None
                  else builtin_parameters(spec.model.kind, len(feature_names(spec)), spec.model.hidden or (),
                                     spec.dataset.label.n_outputs))
    return estimate(rows=rows, parameters=parameters, steps=req.shape.steps * req.epochs, epochs=req.epochs,
                    expected_batch=req.shape.divisor, noise_multiplier=planned.noise_multiplier,
                    learning_rate=spec.training.learning_rate, max_grad_norm=spec.training.max_grad_norm, epsilon=best)


def policy_input(ctx: RunContext, counts: CountsRelease, risk: RiskAssessment, budget: LifetimeBudget,
                 charged, req: RunRequest, room: Room | None = None,
                 blocks: list[BlockShare] | None = None, learn=None) -> TrainPolicyInput:
    spec, refused = ctx.spec, max(0, counts.quarantined.get("no consent", 0))
    afford, already = affordable(budget, charged, req, room), released(req)
    return TrainPolicyInput.of({
        "dataset": {"id": spec.dataset.id, "regulation": spec.dataset.regulation, "rows": max(1, counts.rows_train),
                    "epsilon_budget": budget.epsilon, "delta": budget.delta, "public": spec.dataset.public},
        "ledger": {"epsilon_spent": budget.spent_epsilon(charged), "share_used": budget.share_used(charged),
                   "epsilon_remaining": afford[TRAIN], "epsilon_released": already[TRAIN],
                   "holdout_epsilon_remaining": max(0.0, afford[HOLDOUT] - already[HOLDOUT]),
                   "accounting_order": budget.order},
        "risk": {"score": risk.score, "level": risk.level,
                 "direct_identifiers_in_features": sorted({f.column for f in risk.findings
                                                           if f.category == "direct_identifier" and f.in_features})},
        "consent": {"rows_in": max(1, counts.rows_in), "rows_refused": refused,
                    "coverage": max(0.0, 1.0 - refused / max(1, counts.rows_in))},
        "request": ctx.request_facts(),
        # Noisy rows per class and partition: a partition with one class cannot be evaluated.
        "classes": plan_classes(counts, spec.dataset.label.column, spec.deploy.confidence,
                                spec.dataset.label.task),
        # Each block the run reads (public: the calendar and the ledger): shares of its lifetime
        # budget used by every run and by this pipeline, and unlocked at the run's window end.
        "blocks": [{"id": b.id, "share_used": b.share_used, "unlocked": b.unlocked,
                    "pipeline_share_used": b.pipeline_share_used, "pipelines": b.pipelines} for b in blocks or []],
        # Can the run learn at the most epsilon it could get (ppmlops.training.learnability)?
        **({"learnability": learn.model_dump()} if learn is not None else {}),
    })


def _budget(ctx: RunContext, doc: dict[str, Any]) -> tuple[float, list[str], list[str]]:
    """(run epsilon, reasons, decision ids) from the train and budget rules, or a refusal."""
    train = decide(ctx, "data.ppmlops.train", doc, stage="plan")
    if not train.allowed:
        _refuse(ctx, train.reasons, train.id)
    budget = decide(ctx, "data.ppmlops.budget", doc, stage="plan")
    if not budget.allowed or not isinstance(budget.result, dict) or "epsilon" not in budget.result:
        _refuse(ctx, budget.reasons or ["budget decision undefined"], budget.id, action="set a budget")
    return float(budget.result["epsilon"]), budget.reasons, [train.id, budget.id]


@tracking.tracked  # the MLflow run opens here, once the run's privacy is fixed
@timed
def run(ctx: RunContext) -> PlanRecord:
    done = ctx.store.read_optional(PlanRecord)
    if done is not None:
        return done
    spec, store = ctx.spec, ctx.store
    counts, risk, staged = store.read(CountsRelease), store.read(RiskAssessment), store.read(Staged)
    ledger = Ledger(ctx.settings.db_url)
    budget = ledger.budget(spec.dataset.id)
    if budget is None:
        raise PpmlopsError(f"dataset {spec.dataset.id!r} is not registered: the assess stage has not run")
    conflict = split_conflict(ledger.entries(spec.dataset.id), staged.split)
    if conflict:
        _refuse(ctx, [conflict])
    canaries = canaries_for(ctx, counts)
    req = RunRequest(spec.dataset.id, budget.delta, ctx.params.epochs,
                     EpochShape.of(counts.rows_train, 0, spec.training.batch_size),
                     wants_holdout_accuracy(ctx.tuner), spec.privacy.holdout_epsilon,
                     ledger.charged_curves(spec.dataset.id, ctx.run_id), staged.split, staged.window.text(),
                     unit_rows=spec.privacy.unit_rows)
    # The worst of the blocks the run reads (its retired ones left out): its grant is charged to each.
    charged = ledger.charged_curves(spec.dataset.id, blocks=staged.blocks)
    # Registered before the rooms are read, so that this run's count release counts as its
    # pipeline's and the pipeline counts among those sharing the blocks.
    ledger.register_run(spec.dataset.id, ctx.run_id, spec.name, staged.window.end)
    rooms = run_rooms(ctx, ledger, budget, staged)
    room, shares = Room.of_blocks(budget, rooms), block_shares(rooms)
    doc = policy_input(ctx, counts, risk, budget, charged, req, room, shares,
                       learnability(ctx, max(1, counts.rows_train), budget, charged, req, room)).document()
    run_epsilon, reasons, decisions = _budget(ctx, doc)
    warm = _warm_start(ctx)
    try:
        planned = (plan_search(budget, charged, req, run_epsilon, _trials(ctx), room) if ctx.params.search
                   else plan_run(budget, charged, req, run_epsilon, room))
    except BudgetExceeded as err:
        _refuse(ctx, [str(err)])
    privacy = PrivacyPlan(
        dataset_id=spec.dataset.id, run_id=ctx.run_id, delta=budget.delta, randomness=ctx.randomness,
        accounting_order=budget.order, run_epsilon=run_epsilon, epsilon=planned.epsilon,
        epsilon_by_partition=planned.epsilon_by_partition, noise_multiplier=planned.noise_multiplier,
        unit_rows=spec.privacy.unit_rows,
        sample_rate=req.shape.sample_rate, steps_per_epoch=req.shape.steps, epochs=req.epochs,
        divisor=req.shape.divisor, rows_estimate=float(max(1, counts.rows_train)), canaries=canaries,
        holdout_sigma=planned.holdout_sigma, evaluation_sigma=planned.evaluation_sigma,
        grant=charge_records(planned.charges), dataset_share_before=budget.share_used(charged),
        dataset_share_after=budget.share_used(_plus(charged, planned.charges)), search=_search_plan(ctx, planned, warm),
        blocks=staged.blocks, retired_blocks=staged.retired_blocks, pipeline=spec.name, block_shares=shares,
        runs_left=runs_left(budget, _plus(charged, planned.charges), _plus(req.run_stats, planned.charges)))
    try:
        reserve(ledger, grant_of(privacy))
    except BudgetExceeded as err:  # a concurrent run took the rest between our read and our write
        _refuse(ctx, [f"{err} (a run planned at the same time reserved the rest first)"], by="the ledger")
    return PlanRecord(privacy=privacy, tuner=ctx.tuner, reasons=reasons, decisions=decisions, policy_input=doc,
                      warm_start=warm)


def _warm_start(ctx: RunContext) -> list:
    """Earlier runs' released results, for a tuner or search that adapts (the fixed baseline does not)."""
    from ppmlops.run.known import known_results

    if ctx.tuner == "fixed" and not ctx.params.search:
        return []
    return known_results(ctx.settings.runs_dir, ctx.spec.name, exclude_run=ctx.run_id)


def _trials(ctx: RunContext) -> TrialCount:
    return TrialCount(ctx.spec.search.trials, ctx.spec.search.shape)


def _search_plan(ctx: RunContext, planned: PlannedRun, warm: list) -> SearchPlan | None:
    from ppmlops.run.known import best_known

    if planned.score_sigma is None:
        return None
    s, best = ctx.spec.search, best_known(warm)
    return SearchPlan(trials_mean=s.trials, trials_shape=s.shape, distribution=_trials(ctx).describe(),
                      learning_rate=s.learning_rate, max_grad_norm=s.max_grad_norm, score_sigma=planned.score_sigma,
                      grid=s.grid, centre=(best.learning_rate, best.max_grad_norm) if best else None, tuner=s.tuner)


def _plus(charged, charges):
    from ppmlops.privacy.ledger import charge_curves

    out = dict(charged)
    for partition, curve in charge_curves(charges).items():
        out[partition] = out[partition] + curve if partition in out else curve
    return out
