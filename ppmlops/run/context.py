"""One run as every stage and the training job see it: spec, run id, Params, settings, run folder."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ppmlops import settings as settings_mod
from ppmlops.errors import PpmlopsError
from ppmlops.privacy.randomness import Randomness
from ppmlops.window import DataInterval
from ppmlops.run.store import RunStore
from ppmlops.spec import PipelineSpec


@dataclass(frozen=True)
class RunParams:
    """What a person may change for one manual run or backfill (the Airflow trigger form)."""

    epsilon_cap: float
    epochs: int
    workers: int
    seed: int
    environment: str = "development"
    tuner: str = ""  # "" follows the spec's training.tuner
    use_gpu: bool = False
    search: bool = False  # a private hyperparameter search run (the spec's search section)

    @classmethod
    def defaults(cls, spec: PipelineSpec) -> "RunParams":
        return cls(epsilon_cap=spec.privacy.run_epsilon, epochs=spec.training.epochs, workers=spec.ray.workers,
                   seed=spec.training.seed, use_gpu=spec.ray.use_gpu, environment=spec.deploy.environment)

    @classmethod
    def from_mapping(cls, spec: PipelineSpec, values: dict[str, Any] | None,
                     min_epsilon: float = 0.0) -> "RunParams":
        base = asdict(cls.defaults(spec))
        for key, value in (values or {}).items():
            if key in base and value is not None:
                if isinstance(base[key], bool) and isinstance(value, str):
                    # `bool("false")` is True: a --conf or API caller may send strings
                    value = value.strip().lower() in {"1", "true", "yes", "on"}
                base[key] = type(base[key])(value)
        out = cls(**base)
        out.check(spec, min_epsilon)
        return out

    def check(self, spec: PipelineSpec, min_epsilon: float = 0.0) -> None:
        """Refuse values outside the trigger form's bounds (a --conf or an API caller that got past
        Airflow's Param check): a run never quietly uses another value than the one asked for.

        A cap that the run's own noisy counts (released at assess, before any training) use up
        can never train: the plan would refuse it after those counts were charged. It is refused
        here, before anything is spent. `min_epsilon` is the policy's minimum run epsilon for the
        dataset's regulation when the caller knows it (the policy lives above this layer; the
        assess pre-check, ppmlops.stages.precheck, asks it for every run)."""
        cap = spec.privacy.run_epsilon
        floor = count_release_floor(spec)
        problems = [msg for bad, msg in (
            (not 0 < self.epsilon_cap <= cap, f"epsilon_cap {self.epsilon_cap:g} is not above 0 and at most {cap:g} "
                                              "(the spec's privacy.run_epsilon)"),
            (0 < self.epsilon_cap <= cap and self.epsilon_cap < floor + min_epsilon,
             f"epsilon_cap {self.epsilon_cap:g} cannot train on dataset {spec.dataset.id!r}: the run's noisy counts "
             f"alone cost epsilon {floor:.4g} (privacy.stats_epsilon {spec.privacy.stats_epsilon:g})"
             + (f" and training needs at least the policy's {spec.dataset.regulation} minimum {min_epsilon:g} more"
                if min_epsilon > 0 else "") + f": ask for at least {floor + min_epsilon:.4g}"),
            (self.epochs < 1, f"epochs {self.epochs} is below 1"),
            (self.workers < 1, f"workers {self.workers} is below 1"),
            (self.seed < 0, f"seed {self.seed} is negative"),
        ) if bad]
        if problems:
            raise PpmlopsError("invalid run parameters: " + "; ".join(problems))


# The count release's sigma is nudged up from its target by float steps of 1e-12 relative
# (ppmlops.privacy.releases.sigmas_for), so its epsilon may be a hair below the target's: the
# floor is taken this much lower, so that it never refuses a cap the plan would accept.
FLOOR_SLACK = 1e-9


def count_release_floor(spec: PipelineSpec) -> float:
    """A lower bound on the epsilon (at the spec's delta, on each partition) of the noisy counts
    every run releases at assess: public, from the spec alone. A run's epsilon includes them,
    so a run epsilon at or below this leaves nothing for training."""
    from ppmlops.privacy.accountant import Segment, calibrate_noise, epsilon_from_rdp, segment_rdp

    p = spec.privacy
    sigma = calibrate_noise(p.stats_epsilon, p.delta, 1.0, 1) * (1 + FLOOR_SLACK)
    return epsilon_from_rdp(segment_rdp(Segment(sigma, 1.0, 1)), p.delta)[0] * (1 - FLOOR_SLACK)


# How late a scheduled run may start after its interval ended: a tenth of the interval, and at
# least five minutes (Airflow's own rule for whether an unpaused DAG runs its latest past
# interval: CronTriggerTimetable's run_immediately=None).
LATE_SHARE, LATE_FLOOR_S = 0.1, 300.0


@dataclass(frozen=True)
class RunTrigger:
    """How the run was started: Airflow's own public metadata about it, for the policy.

    When a DAG is unpaused, Airflow's scheduler starts the latest interval that ended while it was
    paused (catchup off), whoever unpaused it and why: the trigger form's "unpause" default does it
    even for a trigger Airflow then refuses, and that run spends budget nobody asked to spend. Such
    a run starts late, long after its interval ended, which a run the scheduler started on time
    never does: the policy reads `late_s` against `grace_s` (policies.rego, scheduled_runs).
    """

    kind: str = "cli"  # Airflow's run type (scheduled, manual, backfill, asset_triggered), or cli outside Airflow
    late_s: float = 0.0  # a scheduled run: seconds from its interval's end to its start
    grace_s: float = LATE_FLOOR_S  # how late it may start
    # A person cleared the run to run it again (Airflow's clear_number): its new start is theirs,
    # not the scheduler's catching up, however late.
    cleared: bool = False

    @classmethod
    def of_airflow(cls, run_type: str, started, run_after, interval_start, interval_end,
                   cleared: bool = False) -> "RunTrigger":
        if run_type != "scheduled" or started is None or run_after is None:
            return cls(kind=run_type, cleared=cleared)
        span = (interval_end - interval_start).total_seconds() if interval_start and interval_end else 0.0
        return cls(kind=run_type, late_s=max(0.0, (started - run_after).total_seconds()),
                   grace_s=max(LATE_FLOOR_S, LATE_SHARE * span), cleared=cleared)


@dataclass
class RunContext:
    spec: PipelineSpec
    run_id: str
    params: RunParams
    settings: settings_mod.Settings = field(default_factory=settings_mod.load)
    # The run's data interval (Airflow's, for scheduled runs and backfills); None: up to now.
    interval: DataInterval | None = None
    trigger: RunTrigger = field(default_factory=RunTrigger)

    def request_facts(self) -> dict[str, Any]:
        """The policy input's `request`: what this run asks for and how it was started (public)."""
        return {"run_epsilon": self.spec.privacy.run_epsilon, "epsilon_cap": self.params.epsilon_cap,
                "environment": self.params.environment, "randomness": self.randomness,
                "trigger": asdict(self.trigger)}

    @property
    def store(self) -> RunStore:
        return RunStore.of(self.settings.runs_dir, self.spec.name, self.run_id).ensure()

    @property
    def run_dir(self):
        return self.store.root

    @property
    def tuner(self) -> str:
        # A search's own tuner is its spec's search.tuner, inside each trial (the search's bound
        # needs the same privacy curve for every trial); the run as a whole adapts nothing.
        if self.params.search:
            return "fixed"
        return self.params.tuner or self.spec.training.tuner

    @property
    def randomness(self) -> str:
        """The spec's mode, unless PPMLOPS_RANDOMNESS forces one (benchmarks)."""
        return self.settings.randomness or self.spec.training.randomness

    def check_randomness(self) -> None:
        """Refuse a replayable mode on data whose privacy matters, before anything is released.

        In reproducible mode every draw is keyed from public parts (the seed and the run id), so
        anyone can subtract the noise from a noisy count: the release is the exact count. The deploy
        gate refuses such models, but by then assess has published its counts: the refusal has to
        come first, at ingest, and again wherever a release is drawn (`draws`).
        """
        if self.randomness != "secure" and not self.spec.dataset.test_data:
            origin = ("PPMLOPS_RANDOMNESS" if self.settings.randomness
                      else f"training.randomness in the spec of pipeline {self.spec.name}")
            raise ReplayableRandomness(
                f"randomness {self.randomness!r} (set by {origin}) lets anyone who knows the seed and run id "
                f"replay every noise draw, so the run's noisy counts and metrics would be its exact ones: "
                f"refused before any release. Use randomness 'secure' (the default) for dataset "
                f"{self.spec.dataset.id!r}; 'reproducible' is only for synthetic or test data declared "
                f"with dataset.test_data: true")

    def draws(self) -> Randomness:
        """The Randomness every release of this run draws from (the one place that chooses it)."""
        self.check_randomness()
        return Randomness.for_run(self.randomness, self.params.seed, self.run_id)


class ReplayableRandomness(PpmlopsError):
    """A reproducible (replayable) randomness mode on a dataset not declared as test data."""
