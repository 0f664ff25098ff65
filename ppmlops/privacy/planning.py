"""A run's privacy plan from public facts only: the spec, the noisy counts, the ledger.

Nothing here sees a private row. The size a run is sized by is the noisy training-row count
released at assess; the update divisor, the sampling rate and the steps follow from it, so they
are post-processing of a charged release (an exact n would be an unbounded release under
add/remove adjacency).

Two constraints fix each partition's noise, and the plan takes the larger noise:
* the run's own guarantee: its fixed curve (this run's count release plus its grant) must convert
  to at most the epsilon the policy granted (training rows) or the spec's holdout_epsilon (held-
  out rows), at the run's delta, at the curve's best order (valid: the curve is fixed before the
  run starts);
* the dataset's lifetime filter: the grant must fit what the partition has left at the dataset's
  order.

The lifetime filter's remainder is the most a run may take; with privacy blocks the plan takes less
(`Room`): each touched block's unlocked share, less what the pipelines reading the dataset keep
for each other by dominant share, minus what is spent there (ppmlops.privacy.ledger.BlockRoom), the tightest block deciding. That
is a scheduling rule so that later runs still find budget; the ledger's filter is the guarantee.

The unit of privacy (privacy.unit: one person with at most k rows; ppmlops.privacy.unit) enters
in one place: each charge is `unit_scaled(Segment(sigma, q, n), k)`; the plan calibrates the
person-level noise multiplier at the person-level rate 1 - (1 - q)^k and draws with k times it
per row (unit.row_noise). With k = 1 every number is what it was.

Held-out rows pay for the tuner's per-epoch noisy accuracy (when the tuner uses it) and for the
final noisy evaluation; the evaluation gets half the noise of a tuner release (four times its
RDP), because the deploy gate reads it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from ppmlops.errors import BudgetExceeded
from ppmlops.privacy.accountant import (
    ORDERS, Segment, calibrate_noise, epsilon_from_rdp, least_noise, segment_rdp, step_rdp,
)
from ppmlops.privacy.ledger import HOLDOUT, SEARCH, TRAIN, Charge, charge_curves
from ppmlops.privacy.lifetime import LifetimeBudget
from ppmlops.privacy.search import TrialCount
from ppmlops.privacy.unit import row_noise, unit_sample_rate, unit_scaled

# The final evaluation costs as much as this many tuner releases (noise sigma / 2).
EVALUATION_WEIGHT = 4
# Every holdout grant's note ends with the split it was made under (see split_conflict).
SPLIT_MARK = "; split "


@dataclass(frozen=True)
class EpochShape:
    """Poisson sampling of a run, from public numbers."""

    sample_rate: float
    steps: int  # per epoch
    divisor: float  # the expected batch: a public constant the noisy gradient sum is divided by

    @classmethod
    def of(cls, rows_estimate: float, canaries: int, batch_size: int) -> "EpochShape":
        # Canaries join with probability 1/2 each; their expected number is public.
        expected = max(1.0, float(rows_estimate)) + canaries / 2
        steps = max(1, math.ceil(expected / batch_size))
        q = 1.0 / steps
        return cls(q, steps, expected * q)


@dataclass(frozen=True)
class RunRequest:
    dataset_id: str
    delta: float
    epochs: int
    shape: EpochShape
    tuner_signals: bool  # release a noisy holdout accuracy after every epoch
    holdout_epsilon: float
    run_stats: Mapping[str, np.ndarray]  # this run's count release, per partition (already charged)
    split: str  # how the held-out rows were chosen
    window: str = ""  # which rows the run read (its data window), for the grant's note
    unit_rows: int = 1  # k: the unit of privacy is one person with at most k rows (1: one row)

    def charged(self, segment: Segment) -> Segment:
        """What the ledger charges for a row-level Segment under the run's unit of privacy."""
        return unit_scaled(segment, self.unit_rows)

    def unit_note(self) -> str:
        k = self.unit_rows
        return "" if k == 1 else f"; unit one person (<= {k} rows): charged as noise / {k} at rate 1-(1-q)^{k}"


@dataclass(frozen=True)
class PlannedRun:
    noise_multiplier: float
    holdout_sigma: float | None
    evaluation_sigma: float
    charges: tuple[Charge, ...]
    epsilon_by_partition: dict[str, float]
    score_sigma: float | None = None  # a private search: each trial's noisy held-out accuracy

    @property
    def epsilon(self) -> float:
        return max(self.epsilon_by_partition.values())


@dataclass(frozen=True)
class Room:
    """Per partition, the RDP at the dataset's order that this run's grant may still add (its
    count release, already charged, is spent), and which block decides it."""

    order_index: int
    rdp: Mapping[str, float]
    tightest: Mapping[str, str] = field(default_factory=dict)  # partition -> block (blocked datasets)

    @classmethod
    def lifetime(cls, lifetime: LifetimeBudget, charged: Mapping[str, np.ndarray]) -> "Room":
        """What the lifetime filter leaves: today's rule, and a whole-table dataset's."""
        return cls(lifetime.index, {p: lifetime.remaining_rdp(charged, p) for p in (TRAIN, HOLDOUT)})

    @classmethod
    def of_blocks(cls, lifetime: LifetimeBudget, rooms) -> "Room":
        """The tightest of the touched blocks (ppmlops.privacy.ledger.BlockRoom), per partition."""
        rooms = list(rooms)
        if not rooms:
            raise BudgetExceeded(f"dataset {lifetime.dataset_id!r}: a run must read at least one privacy block")
        rdp, tightest = {}, {}
        for p in (TRAIN, HOLDOUT):
            worst = min(rooms, key=lambda r: r.room(p))
            rdp[p], tightest[p] = worst.room(p), worst.block
        return cls(lifetime.index, rdp, tightest)

    def min_noise(self, partition: str, sample_rate: float, steps: int) -> float:
        """The smallest noise multiplier whose `steps` steps fit the partition's room (inf: none)."""
        room = self.rdp.get(partition, 0.0)
        if room <= 0:
            return math.inf
        return least_noise(lambda sigma: steps * float(step_rdp(sigma, sample_rate)[self.order_index]) <= room)

    def admits(self, partition: str, curve: np.ndarray) -> bool:
        return float(curve[self.order_index]) <= self.rdp.get(partition, 0.0)


def runs_left(lifetime: LifetimeBudget, charged: Mapping[str, np.ndarray], run_cost: Mapping[str, np.ndarray]) -> int:
    """How many more runs of this run's cost (its count release and grant, RDP at the order) the
    worst block's lifetime budget holds after it, the worst partition deciding."""
    left = []
    for p, cost in run_cost.items():
        c = float(cost[lifetime.index])
        if c > 0:
            left.append(math.floor(lifetime.remaining_rdp(charged, p) / c))
    return max(0, min(left)) if left else 0


def _zeros() -> np.ndarray:
    return np.zeros(len(ORDERS))


def _holdout_units(req: RunRequest) -> int:
    return (req.epochs if req.tuner_signals else 0) + EVALUATION_WEIGHT


def released(req: RunRequest) -> dict[str, float]:
    """Per partition, the epsilon of what this run already released (its noisy counts)."""
    return {p: epsilon_from_rdp(req.run_stats.get(p, _zeros()), req.delta)[0] for p in (TRAIN, HOLDOUT)}


def affordable(lifetime: LifetimeBudget, charged: Mapping[str, np.ndarray], req: RunRequest,
               room: Room | None = None) -> dict[str, float]:
    """Per partition, the largest epsilon this run could still reach there, its count release
    included (its own releases are in `charged` already); 0 when nothing more fits. Compare it
    with `released`: the difference is what is left for training or for the held-out releases.
    `room`: what the run may add (None: the lifetime filter's remainder of `charged`)."""
    room = room if room is not None else Room.lifetime(lifetime, charged)
    steps = req.shape.steps * req.epochs
    out = {}
    # Person-level (ppmlops.privacy.unit): the unit's sampling rate and multiplier.
    for partition, q, n in ((TRAIN, unit_sample_rate(req.shape.sample_rate, req.unit_rows), steps),
                            (HOLDOUT, 1.0, _holdout_units(req))):
        sigma = room.min_noise(partition, q, n)
        if not math.isfinite(sigma):
            out[partition] = 0.0
            continue
        curve = req.run_stats.get(partition, _zeros()) + segment_rdp(Segment(sigma, q, n))
        out[partition] = epsilon_from_rdp(curve, req.delta)[0]
    return out


def _check_room(req: RunRequest, run_epsilon: float) -> None:
    """BudgetExceeded when a partition's target is used up by the run's own noisy counts."""
    before = released(req)
    for partition, target, what in ((TRAIN, run_epsilon, "the run's epsilon"),
                                    (HOLDOUT, req.holdout_epsilon, "privacy.holdout_epsilon")):
        if target <= before[partition]:
            raise BudgetExceeded(
                f"{what} {target:.4g} leaves nothing for the {partition} rows after the run's noisy counts "
                f"(epsilon {before[partition]:.4g}): raise it, or lower privacy.stats_epsilon")


def plan_run(lifetime: LifetimeBudget, charged: Mapping[str, np.ndarray], req: RunRequest,
             run_epsilon: float, room: Room | None = None) -> PlannedRun:
    """The run's noise and grant; BudgetExceeded naming the partition when it cannot fit.
    `room`: what the run may add (None: the lifetime filter's remainder of `charged`)."""
    room = room if room is not None else Room.lifetime(lifetime, charged)
    steps = req.shape.steps * req.epochs
    q = req.shape.sample_rate
    _check_room(req, run_epsilon)
    # Calibrated person-level (the unit's rate and multiplier); drawn per row k times larger below.
    q_unit = unit_sample_rate(q, req.unit_rows)
    sigma = max(
        calibrate_noise(run_epsilon, req.delta, q_unit, steps, prior_rdp=req.run_stats.get(TRAIN)),
        room.min_noise(TRAIN, q_unit, steps),
    )
    units = _holdout_units(req)
    scale = max(
        calibrate_noise(req.holdout_epsilon, req.delta, 1.0, units, prior_rdp=req.run_stats.get(HOLDOUT)),
        room.min_noise(HOLDOUT, 1.0, units),
    )
    for partition, value in ((TRAIN, sigma), (HOLDOUT, scale)):
        if not math.isfinite(value):
            raise BudgetExceeded(f"dataset {req.dataset_id!r} has no budget left on its {partition} rows "
                                 f"for a run of {req.epochs} epochs{_where(room, partition)}")
    sigma, scale = row_noise(sigma, req.unit_rows), row_noise(scale, req.unit_rows)
    # One piece per epoch and per release, in the order the run spends them: the run's filter then
    # adds exactly the same floats for its budget as for its spend, so a run that follows its plan
    # to the last step is admitted with an exact comparison.
    per_epoch = req.shape.steps
    charges = [Charge(TRAIN, req.charged(Segment(sigma, q, per_epoch)), "subsampled_gaussian",
                      f"grant: epoch {e} of {req.epochs}, {per_epoch} DP-SGD steps at Poisson rate {q:.6g}, "
                      f"noise multiplier {sigma:.6g}" + req.unit_note() + (f"; rows {req.window}" if req.window else ""))
               for e in range(1, req.epochs + 1)]
    if req.tuner_signals:
        charges += [Charge(HOLDOUT, req.charged(Segment(scale, 1.0, 1)), "gaussian",
                           f"grant: noisy holdout accuracy after epoch {e} (discrete Gaussian, sigma {scale:.6g})"
                           + req.unit_note() + SPLIT_MARK + req.split) for e in range(1, req.epochs + 1)]
    charges.append(Charge(HOLDOUT, req.charged(Segment(scale / 2, 1.0, 1)), "gaussian",
                          f"grant: the final noisy evaluation (discrete Gaussian, effective sigma {scale / 2:.6g})"
                          + req.unit_note() + SPLIT_MARK + req.split))
    grant = charge_curves(charges)
    by_partition = {p: epsilon_from_rdp(req.run_stats.get(p, _zeros()) + grant[p], req.delta)[0]
                    for p in sorted(grant)}
    return PlannedRun(sigma, scale if req.tuner_signals else None, scale / 2, tuple(charges), by_partition)


def _where(room: Room, partition: str) -> str:
    block = room.tightest.get(partition)
    return (f" (privacy block {block!r} has none of its unlocked share left for this pipeline; its budget "
            "unlocks as later weeks arrive)") if block is not None and block != "all" else ""


def plan_search(lifetime: LifetimeBudget, charged: Mapping[str, np.ndarray], req: RunRequest,
                run_epsilon: float, trials: TrialCount, room: Room | None = None) -> PlannedRun:
    """A private search's noise and grant: each trial is `req.epochs` epochs of DP-SGD at one
    noise multiplier, then one noisy held-out accuracy (the trial's score); the grant is the
    search's bound over K trials (ppmlops.privacy.search) per partition, plus the final noisy
    evaluation of the chosen model on the held-out rows."""
    room = room if room is not None else Room.lifetime(lifetime, charged)
    steps, q = req.shape.steps * req.epochs, req.shape.sample_rate
    _check_room(req, run_epsilon)
    split = SPLIT_MARK + req.split

    def train(sigma: float) -> list[Charge]:
        return [Charge(TRAIN, req.charged(Segment(sigma, q, steps)), SEARCH,
                       f"grant: private search over K trials ({trials.describe()}), each {req.epochs} epochs of "
                       f"{req.shape.steps} DP-SGD steps at Poisson rate {q:.6g}, noise multiplier {sigma:.6g}; only "
                       "the best trial is released" + req.unit_note() + (f"; rows {req.window}" if req.window else ""),
                       trials)]

    def holdout(scale: float) -> list[Charge]:
        return [Charge(HOLDOUT, req.charged(Segment(scale, 1.0, 1)), SEARCH,
                       f"grant: each trial's noisy held-out accuracy (discrete Gaussian, sigma {scale:.6g}), best of "
                       f"K trials ({trials.describe()})" + req.unit_note() + split, trials),
                Charge(HOLDOUT, req.charged(Segment(scale / 2, 1.0, 1)), "gaussian",
                       f"grant: the final noisy evaluation (discrete Gaussian, effective sigma {scale / 2:.6g})"
                       + req.unit_note() + split)]

    def least(partition: str, target: float, pieces) -> float:
        prior = req.run_stats.get(partition, _zeros())

        def fits(x: float) -> bool:
            curve = charge_curves(pieces(x))[partition]
            return (epsilon_from_rdp(prior + curve, req.delta)[0] <= target
                    and lifetime.refusal(charged, {partition: curve}) is None and room.admits(partition, curve))

        return least_noise(fits)

    sigma, scale = least(TRAIN, run_epsilon, train), least(HOLDOUT, req.holdout_epsilon, holdout)
    for partition, value in ((TRAIN, sigma), (HOLDOUT, scale)):
        if not math.isfinite(value):
            raise BudgetExceeded(f"dataset {req.dataset_id!r} has no budget left on its {partition} rows for a "
                                 f"private search of {req.epochs}-epoch trials{_where(room, partition)}")
    charges = train(sigma) + holdout(scale)
    grant = charge_curves(charges)
    by_partition = {p: epsilon_from_rdp(req.run_stats.get(p, _zeros()) + grant[p], req.delta)[0]
                    for p in sorted(grant)}
    return PlannedRun(sigma, None, scale / 2, tuple(charges), by_partition, score_sigma=scale)


def split_conflict(entries, split: str) -> str | None:
    """Why a run must be refused when earlier holdout charges of the dataset used another split.

    Parallel composition of the training and held-out partitions holds only while every row
    stays in one of them for life, that is, while the split is the same for every run.
    """
    for e in entries:
        if e.partition == HOLDOUT and SPLIT_MARK in (e.note or ""):
            earlier = e.note.split(SPLIT_MARK, 1)[1]
            if earlier != split:
                return (f"the held-out partition changed (earlier runs: {earlier!r}, this run: {split!r}); "
                        "parallel composition of the train and holdout partitions needs the same split for "
                        "every run of a dataset: restore the spec's seed, test_fraction or test_source. A new "
                        "dataset id over the same rows does not reset their budget: it is refused unless a "
                        "compliance officer approves a separate budget (`ppmlops ledger link`, audited)")
    return None
