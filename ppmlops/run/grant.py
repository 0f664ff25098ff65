"""A run's grant as the privacy package sees it, from the plan record (torch-free)."""

from __future__ import annotations

from ppmlops.privacy.accountant import Segment
from ppmlops.privacy.ledger import Charge
from ppmlops.privacy.search import TrialCount
from ppmlops.privacy.session import Grant
from ppmlops.run.records import ChargeRecord, PrivacyPlan


def grant_of(plan: PrivacyPlan) -> Grant:
    return Grant(plan.dataset_id, plan.run_id, plan.delta, plan.randomness,
                 tuple(Charge(c.partition, Segment(c.noise_multiplier, c.sample_rate, c.steps), c.mechanism, c.note,
                              TrialCount(c.trials_mean, c.trials_shape) if c.trials_mean is not None else None)
                       for c in plan.grant), tuple(plan.blocks), plan.unit_rows)


def charge_records(charges) -> list[ChargeRecord]:
    return [ChargeRecord(partition=c.partition, mechanism=c.mechanism, noise_multiplier=c.segment.noise_multiplier,
                         sample_rate=c.segment.sample_rate, steps=c.segment.steps, note=c.note,
                         trials_mean=c.trials.mean if c.trials else None,
                         trials_shape=c.trials.eta if c.trials else None) for c in charges]
