"""assess's pre-check: refuse a run that cannot train BEFORE its noisy counts are charged.

The plan asks the policy (data.ppmlops.train and data.ppmlops.budget) only after assess released
and charged the run's counts, so a run whose cap, regulation, randomness or ledger rules out any
training used to spend its counts' epsilon and then be refused. Here the same two rules are asked
first, on an input built like the plan's (ppmlops.stages.plan.policy_input) from public facts
only: the spec, the run's params, the policy's profile, the ledger's charges. Every number the
plan would read from a private release is set to the value most favourable to training:

* rows 1 (the delta rule `delta * rows >= factor` is then the weakest it can be), consent
  coverage 1, and both classes plentiful in both partitions;
* risk score 0 and 1, each asked (the risk factor `1 - discount * score` is linear in the score,
  so the planned epsilon is largest at one of the two ends, whatever the profile's discount);
* what the run's counts will cost: the lowest epsilon their noise can have
  (ppmlops.run.context.count_release_floor), charged in the ledger as the highest noise it can;
* what the ledger has left in the blocks the run reads: for the held-out rows as the plan computes
  it (their releases have a public shape: q = 1, units from epochs and tuner); for the training
  rows, whose sampling depends on the private row count, an upper bound: the room the plan sizes
  the run to (each block's unlocked share and the pipeline's part of it, run_rooms) at the
  dataset's order, and a run's epsilon is at most that RDP converted at that order (epsilon is a
  minimum over orders), and nothing at all when nothing is left after the counts.

The policy is asked for every extreme; the run is refused only when every answer refuses, so
with a policy whose rules refuse more as those inputs get worse (all of policies.rego's do) a run
refused here is one the plan would refuse too: nothing that could train is stopped. A policy
edited to reward a worse input could be stopped wrongly, never let through: the plan still asks.
Two refusals of the plan that need no policy are checked as well: a held-out split that differs
from the dataset's earlier runs (split_conflict), and a cap or holdout_epsilon the counts use up.

The hypothetical decisions are not audited one by one (they are not decisions about the run's
data); the one that refused the run is recorded, with its input, at stage "assess".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from ppmlops.compliance.documents import TrainPolicyInput
from ppmlops.compliance.engine import Decision, evaluate, policy_engine, read_policy
from ppmlops.errors import PolicyRefused
from ppmlops.privacy.accountant import ORDERS, Segment, calibrate_noise, segment_rdp
from ppmlops.privacy.blocks import unlock_horizon
from ppmlops.privacy.ledger import HOLDOUT, TRAIN, BlockRoom, Ledger
from ppmlops.privacy.lifetime import LifetimeBudget, epsilon_at, expected_budget
from ppmlops.privacy.planning import EVALUATION_WEIGHT, split_conflict
from ppmlops.run.context import FLOOR_SLACK, RunContext, count_release_floor
from ppmlops.run.records import CountsRelease, Staged
from ppmlops.tuning.registry import wants_holdout_accuracy

# The risk scores asked: the ends of the range the risk score lies in (ppmlops.risk.score).
RISK_EXTREMES = (0.0, 1.0)
# "Plenty" of rows of each class: above any utility.min_class_rows a policy would set.
PLENTY = 1e12


@dataclass(frozen=True)
class PublicFacts:
    """What the pre-check knew about the run before its counts: public numbers only."""

    dataset_id: str
    registered: bool
    epsilon_budget: float
    delta: float
    counts_epsilon: float  # a lower bound on the counts' epsilon (each partition)
    train_epsilon_bound: float  # an upper bound on the run's epsilon on the training rows
    holdout_epsilon_left: float  # what the held-out rows could still get after the counts
    share_used: float
    epsilon_spent: float
    order: float
    reasons: list[str] = field(default_factory=list)  # refusals that need no policy


def _zeros() -> np.ndarray:
    return np.zeros(len(ORDERS))


def _counts_rdp(ctx: RunContext) -> np.ndarray:
    """The counts' RDP at the most noise they can have (the least RDP): favourable to training."""
    p = ctx.spec.privacy
    sigma = calibrate_noise(p.stats_epsilon, p.delta, 1.0, 1) * (1 + FLOOR_SLACK)
    return segment_rdp(Segment(sigma, 1.0, 1))


def _others(ledger: Ledger, dataset_id: str, run_id: str, blocks: list[str]) -> dict[str, np.ndarray]:
    """The charged curves of the worst of the run's blocks without this run's own (a retried
    assess already charged its counts: they are counted once, as this run's, not twice). Only
    the blocks the run reads (ingest left the retired ones out): a spent block elsewhere in the
    dataset's life says nothing about what this run can have."""
    everything = ledger.charged_curves(dataset_id, blocks=blocks)
    own = ledger.charged_curves(dataset_id, run_id)
    return {p: c - own.get(p, _zeros()) for p, c in everything.items()}


def public_facts(ctx: RunContext, ledger: Ledger) -> PublicFacts:
    from ppmlops.privacy.accountant import epsilon_from_rdp

    spec = ctx.spec
    budget = ledger.budget(spec.dataset.id)
    registered = budget is not None
    if budget is None:  # first run: the budget register() is about to fix, with nothing charged
        budget = expected_budget(spec)
    staged = ctx.store.read(Staged)
    others = _others(ledger, spec.dataset.id, ctx.run_id, staged.blocks) if registered else {}
    counts = _counts_rdp(ctx)
    floor = count_release_floor(spec)
    with_counts = {p: others.get(p, _zeros()) + counts for p in (TRAIN, HOLDOUT)}
    i = budget.index

    # The run's whole curve (counts and training) fits in what is left at the order, so its
    # epsilon is at most that RDP converted at the order; with nothing left after the counts,
    # training adds nothing and the run's epsilon is its counts'. What is left is what the plan
    # will size the run to: each block's unlocked share and this pipeline's part of it (a second
    # run in the same week finds nothing unlocked and is refused here, before its counts).
    room = budget.rdp - float(others.get(TRAIN, _zeros())[i])
    if registered:
        room = min([room] + [r.room(TRAIN) for r in run_rooms(ctx, ledger, budget, staged)])
    train_bound = floor if room - float(counts[i]) <= 0 else max(floor, epsilon_at(room, budget.delta, budget.order))

    units = (ctx.params.epochs if wants_holdout_accuracy(ctx.tuner) else 0) + EVALUATION_WEIGHT
    sigma = budget.min_noise(with_counts, HOLDOUT, 1.0, units)
    holdout_left = 0.0 if not math.isfinite(sigma) else max(
        0.0, epsilon_from_rdp(counts + segment_rdp(Segment(sigma, 1.0, units)), budget.delta)[0] - floor)

    reasons = []
    conflict = split_conflict(ledger.entries(spec.dataset.id), staged.split) if registered else None
    if conflict:
        reasons.append(conflict)
    for what, target in ((f"epsilon_cap {ctx.params.epsilon_cap:g}", ctx.params.epsilon_cap),
                         (f"privacy.holdout_epsilon {spec.privacy.holdout_epsilon:g}", spec.privacy.holdout_epsilon)):
        if target <= floor:
            reasons.append(f"{what} is used up by the run's noisy counts alone (epsilon {floor:.4g}, "
                           f"privacy.stats_epsilon {spec.privacy.stats_epsilon:g}): nothing would be left to "
                           f"train or evaluate on dataset {spec.dataset.id!r}")
    return PublicFacts(spec.dataset.id, registered, budget.epsilon, budget.delta, floor, train_bound, holdout_left,
                       budget.share_used(others), budget.spent_epsilon(others), budget.order, reasons)


def run_rooms(ctx: RunContext, ledger: Ledger, budget: LifetimeBudget, staged: Staged) -> list[BlockRoom]:
    """Each block the run reads as its pipeline sees it at the window's end (the unlocked share,
    the pipelines sharing it): what the plan sizes the run to."""
    spec = ctx.spec
    end = staged.window.end or datetime.now(timezone.utc)
    lookback = spec.dataset.window.lookback if spec.dataset.window else None
    return ledger.block_rooms(spec.dataset.id, staged.blocks, pipeline=spec.name, end=end,
                              horizon=unlock_horizon(budget.calendar, lookback))


def policy_input(ctx: RunContext, facts: PublicFacts, risk_score: float) -> TrainPolicyInput:
    """The plan's policy input with every private number at its most favourable value."""
    spec = ctx.spec
    plenty = {"positive": PLENTY, "negative": PLENTY, "smallest": PLENTY}
    return TrainPolicyInput.of({
        "dataset": {"id": spec.dataset.id, "regulation": spec.dataset.regulation, "rows": 1,
                    "epsilon_budget": facts.epsilon_budget, "delta": facts.delta, "public": spec.dataset.public},
        "ledger": {"epsilon_spent": facts.epsilon_spent, "share_used": facts.share_used,
                   "epsilon_remaining": facts.train_epsilon_bound, "epsilon_released": facts.counts_epsilon,
                   "holdout_epsilon_remaining": facts.holdout_epsilon_left, "accounting_order": facts.order},
        "risk": {"score": risk_score, "level": "not assessed yet (pre-check before the noisy counts)",
                 "direct_identifiers_in_features": []},
        "consent": {"rows_in": 1, "rows_refused": 0, "coverage": 1.0},
        "request": ctx.request_facts(),
        "classes": {"label": spec.dataset.label.column, "sigma": 1.0, "confidence": spec.deploy.confidence,
                    "train": plenty, "holdout": plenty},
    })


def _ask(ctx: RunContext, doc: dict[str, Any]) -> Decision | None:
    """The decision that refuses training on `doc` (train first, then budget), or None."""
    for query in ("data.ppmlops.train", "data.ppmlops.budget"):
        decision = evaluate(query, doc, policy_path=ctx.settings.policy_path, cfg=ctx.settings)
        if not decision.allowed:
            return decision
    return None


def refusal(ctx: RunContext, ledger: Ledger) -> tuple[list[str], Decision | None]:
    """(reasons, the policy decision that refused) when the run cannot train; ([], None) otherwise."""
    facts = public_facts(ctx, ledger)
    if facts.reasons:
        return facts.reasons, None
    refused = [_ask(ctx, policy_input(ctx, facts, score).document()) for score in RISK_EXTREMES]
    if all(d is not None for d in refused):
        return refused[0].reasons, refused[0]
    return [], None


def run(ctx: RunContext, ledger: Ledger) -> None:
    """Raise PolicyRefused (assess writes the Refusal at stage "assess") when the run cannot
    train; a retried assess whose counts are already released has nothing left to protect."""
    if ctx.store.read_optional(CountsRelease) is not None:
        return
    reasons, decision = refusal(ctx, ledger)
    if not reasons:
        return
    if decision is not None:
        from ppmlops.audit.log import AuditLog

        log = AuditLog(ctx.settings.db_url)
        try:
            log.record(decision, run_id=ctx.run_id, dataset_id=ctx.spec.dataset.id, stage="assess")
        finally:
            log.close()
    raise PolicyRefused("train", [f"before any release, on public facts: {r}" for r in reasons],
                        by="the pre-check" if decision is None else "policy")


def policy_minimum(regulation: str, cfg=None) -> float | None:
    """The policy's minimum run epsilon for `regulation` (profiles[...].min_epsilon in
    policies.rego), asked of the configured engine; None when it cannot say (no policy, no
    engine, no such profile), so that a caller falls back to the count-release floor alone."""
    from ppmlops import settings as settings_mod

    try:
        cfg = cfg or settings_mod.load()
        text, digest = read_policy(cfg.policy_path)
        query = "data.ppmlops.profiles"
        defined, value = policy_engine(cfg).evaluate(cfg.policy_path, text, digest, query, {})
        found = value.get(regulation, {}).get("min_epsilon") if defined and isinstance(value, dict) else None
    except Exception:  # noqa: BLE001 - a form or a check without a readable policy keeps the public floor
        return None
    if isinstance(found, bool) or not isinstance(found, (int, float)) or not math.isfinite(found) or found < 0:
        return None
    return float(found)
