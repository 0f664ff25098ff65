"""Typed records: what each stage of a run hands to the next, and what leaves the run.

Each record is one JSON file in the run's folder (ppmlops.run.store.RunStore reads and writes
them). The boundary that matters for privacy is drawn here:

* PRIVATE records (exact counts, the exact risk report, the canaries' coins) live under the
  folder's ``private/`` and never leave it: no card, manifest, XCom, log line, MLflow run or
  dashboard page reads them.
* Every other record is PUBLIC: it holds only values that are public (the spec, schema, policy
  text), DP releases that were charged to the ledger (noisy counts, noisy metrics), or
  functions of those and of the DP-trained model (post-processing).

So a reviewer checks one thing per field: is it public, charged, or post-processing.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from ppmlops.data.ingest import IngestResult
from ppmlops.window import RowWindow

Outcome = Literal["allow", "deny", "needs_approval"]


class Record(BaseModel):
    """A stage's output. FILE names it in the run folder; PRIVATE records stay in private/."""

    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")
    FILE: ClassVar[str]
    PRIVATE: ClassVar[bool] = False

    seconds: float | None = None  # the stage's wall time, set when the stage ends


class Part(BaseModel):
    """A piece of a record (not a file of its own)."""

    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")


# ------------------------------------------------------------------------------------ identity

class RunIdentity(Record):
    """PUBLIC. Which run a folder holds, as Airflow names it (folder names are sanitised), written
    before the first stage's record so even a run stopped at ingest has its real id."""

    FILE: ClassVar[str] = "run.json"
    run_id: str
    pipeline: str
    dag_id: str
    dataset_id: str


# --------------------------------------------------------------------------------------- ingest

class StagedData(Record):
    """PRIVATE. What ingestion staged, with the exact row counts and the snapshot paths."""

    FILE: ClassVar[str] = "ingest.json"
    PRIVATE: ClassVar[bool] = True
    result: IngestResult


class RetiredBlock(Part):
    """PUBLIC. A privacy block of the run's window left out of the run (its bounds come from the
    calendar; `why` from its public ledger share)."""

    block: str
    start: str  # ISO, UTC
    end: str
    why: str


class SourceQuery(Part):
    """PUBLIC. A SQL source as lineage records it: the spec's query (normalized) and its hash, the
    connection id or the URL with its password hidden, and the server; never a row or a count."""

    field: str  # dataset.source or dataset.test_source
    sql: str
    query_sha256: str
    connection: str | None = None
    url: str | None = None  # redacted
    server: str  # host:port/database
    window_pushed_down: bool = False


class Staged(Record):
    """PUBLIC. That the data was staged, and which (no counts: those are released at assess).

    The fingerprint is an HMAC of the snapshot under the deployment's lineage key: a plain
    SHA-256 of private rows would let anyone who knows all rows but one test guesses for it.
    """

    FILE: ClassVar[str] = "staged.json"
    data_fingerprint: str
    columns: list[str]
    sources: list[str]
    split: str
    consent_as_of: str = ""
    window: RowWindow = Field(default_factory=RowWindow)  # the rows this run read
    # The privacy blocks the run reads and is charged to (["all"]: a dataset without blocks), and
    # the blocks of its window it left out because they cannot afford a run (rows quarantined).
    blocks: list[str] = Field(default_factory=lambda: ["all"])
    retired_blocks: list[RetiredBlock] = Field(default_factory=list)
    queries: list[SourceQuery] = Field(default_factory=list)  # the SQL sources, if any


class Validated(Record):
    """PUBLIC. The suite passed (GX's report with counts and examples is private/validation.json)."""

    FILE: ClassVar[str] = "validated.json"
    suite: str
    suite_path: str
    evaluated: int
    great_expectations_version: str


# -------------------------------------------------------------------------------------- assess

class CountsRelease(Record):
    """PUBLIC. The run's noisy counts (one discrete-Gaussian release, charged at assess)."""

    FILE: ClassVar[str] = "counts.json"
    rows_train: int
    rows_holdout: int
    quarantined: dict[str, int]
    k: int
    k_unsafe_rows: int | None  # noisy rows in equivalence classes smaller than k (None: no quasi-identifiers)
    sigma_rows: float
    sigma_k: float | None
    noise_multiplier: float  # the release's effective Gaussian noise multiplier (what the ledger charged)
    ledger_entries: list[int]
    epsilon: float  # the release alone, at the run's delta
    # Noisy rows by partition and class ("train:positive", "holdout:negative", ...): the plan refuses
    # a partition that may hold a single class (AUC undefined). None: released before they existed.
    labels: dict[str, int] | None = None
    sigma_labels: float | None = None

    @property
    def rows_quarantined(self) -> int:
        return sum(self.quarantined.values())

    @property
    def rows_in(self) -> int:
        return self.rows_train + self.rows_holdout + self.rows_quarantined


class RiskComponent(Part):
    name: str
    weight: float
    value: float
    points: float
    reason: str


class PublicFinding(Part):
    column: str
    category: str
    kind: str
    by: list[str]
    in_features: bool


class RiskAssessment(Record):
    """PUBLIC. PRAM's score from public facts (spec, schema, declared categories) and the noisy counts."""

    FILE: ClassVar[str] = "risk.json"
    score: float
    level: str
    components: list[RiskComponent]
    findings: list[PublicFinding]
    k: int
    quasi_identifiers: list[str]
    regulation: str


class ExactRisk(Record):
    """PRIVATE. PRAM's full report with value-based detections and exact statistics."""

    FILE: ClassVar[str] = "assess.json"
    PRIVATE: ClassVar[bool] = True
    report: dict[str, Any]


# ---------------------------------------------------------------------------------------- plan

class ChargeRecord(Part):
    partition: str
    mechanism: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    note: str = ""
    trials_mean: float | None = None  # private_search: the trial count's mean and shape
    trials_shape: float | None = None


class SearchPlan(Part):
    """A private search's public plan: how many trials on average (K itself is secret), the
    space each trial's settings are drawn from, and the noise of each trial's score."""

    trials_mean: float
    trials_shape: float
    distribution: str
    learning_rate: tuple[float, float]
    max_grad_norm: tuple[float, float]
    score_sigma: float
    grid: list[tuple[float, float]] | None = None  # (learning rate, clip norm) pairs, drawn uniformly
    # The best (learning rate, clip norm) earlier runs released: half the trials are drawn within a
    # factor of 2 of it (inside the ranges), half from the whole ranges.
    centre: tuple[float, float] | None = None
    # What steers each trial's epochs: "fixed" (the drawn settings throughout) or "bayes" (the
    # trial starts at its drawn settings and the tuner adapts clip norm and learning rate after
    # each epoch on the trial's own noisy held-out accuracy; the noise stays the search's).
    tuner: str = "fixed"


class BlockShare(Part):
    """PUBLIC. A privacy block the run reads, as its plan saw it (shares of the block's lifetime
    RDP budget at the dataset's order, worst partition)."""

    id: str
    share_used: float  # by every run, before this run's grant (its count release included)
    unlocked: float  # unlocked at the run's window end (DPF: over the runs its lookback implies)
    pipeline_share_used: float  # by this pipeline's runs
    pipelines: int  # pipelines sharing the unlocked budget (each one's fair part: 1/pipelines)


class PrivacyPlan(Part):
    """Everything that fixes the run's privacy before the first step; the one copy every later
    stage (and the Ray workers) reads."""

    dataset_id: str
    run_id: str
    delta: float
    randomness: Literal["secure", "reproducible"]
    accounting_order: float
    run_epsilon: float  # what the policy granted the run
    epsilon: float  # the run's guarantee: its fixed curves (grant + its releases), worst partition
    epsilon_by_partition: dict[str, float]
    noise_multiplier: float
    sample_rate: float
    steps_per_epoch: int
    epochs: int
    divisor: float  # a public constant: the noisy gradient sum is divided by it (expected batch)
    rows_estimate: float  # the noisy training-row count q and steps come from
    canaries: int
    holdout_sigma: float | None  # per-epoch noisy holdout accuracy for the tuner; None: not released
    evaluation_sigma: float  # the final noisy evaluation on the held-out rows
    grant: list[ChargeRecord]
    dataset_share_before: float  # of the dataset's lifetime budget (RDP at its order), before this grant
    dataset_share_after: float
    search: SearchPlan | None = None  # a private hyperparameter search run
    blocks: list[str] = Field(default_factory=lambda: ["all"])  # every charge of the run counts against each
    retired_blocks: list[RetiredBlock] = Field(default_factory=list)  # left out of the run (see Staged)
    # k of the unit of privacy (spec privacy.unit, ppmlops.privacy.unit): 1 is one row; the grant's
    # charges are person-level, noise_multiplier and the sigmas are the per-row draws.
    unit_rows: int = Field(1, ge=1)
    pipeline: str | None = None  # the spec's name: pipelines on one dataset share its blocks
    block_shares: list[BlockShare] = Field(default_factory=list)  # each of `blocks` at plan
    runs_left: int | None = None  # runs of this run's cost the worst block's lifetime budget still holds


class KnownResult(Part):
    """A DP-released result of an earlier run of the pipeline: settings and the noisy accuracy
    after them (ppmlops.run.known). Reading it again is post-processing: free."""

    run_id: str
    learning_rate: float
    max_grad_norm: float
    progress: float  # epochs done / epochs when the accuracy was released (1: the run's end)
    accuracy_noisy: float
    what: str  # "epoch 2 of 4", "search", "evaluation"


class PlanRecord(Record):
    FILE: ClassVar[str] = "plan.json"
    privacy: PrivacyPlan
    tuner: str
    reasons: list[str]
    decisions: list[str]
    policy_input: dict[str, Any]
    warm_start: list[KnownResult] = Field(default_factory=list)  # what the tuner starts from


class Refusal(Record):
    FILE: ClassVar[str] = "refused.json"
    stage: str
    reasons: list[str]
    decision_id: str | None = None


# --------------------------------------------------------------------------------------- train

class RankReport(Part):
    rank: int
    node: str
    device: str
    steps: int


class TunerNote(Part):
    tuner: str
    why: str
    saw: dict[str, Any] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict)


class EpochRecord(Part):
    epoch: int
    noise_multiplier: float
    max_grad_norm: float
    learning_rate: float
    steps: int
    sample_rate: float
    epsilon_used: float  # of the run's training budget, so far (the guarantee is the plan's epsilon)
    holdout_accuracy_noisy: float | None = None
    clipped_fraction_noisy: float | None = None
    count_noise: float | None = None
    gradient_noise: float | None = None  # the noise multiplier the gradient sum got (sigma_g when counts share it)
    seconds: float = 0.0
    tuner_seconds: float = 0.0
    usage_entry: int | None = None
    holdout_entry: int | None = None
    ranks: list[RankReport] = Field(default_factory=list)
    tuner: TunerNote | None = None


class TrainTimings(Part):
    """Where the train stage's wall time went, in seconds (benchmarks/e2e.py prints them)."""

    ray_start: float = 0.0  # ray.init of the local runtime (0 when one was already up)
    worker_start: float = 0.0  # trainer.fit() until rank 0 runs: controller, placement group, worker processes
    worker_boot: float = 0.0  # of worker_start: rank 0's process start until its train function runs
    worker_imports: float = 0.0  # the train function's imports and arguments on rank 0
    setup: float = 0.0  # restore a checkpoint, build and wrap the model, open the privacy session
    epochs: float = 0.0  # DP-SGD steps, tuner decisions and releases
    checkpoints: float = 0.0  # writing and reporting the per-epoch checkpoints
    worker_stop: float = 0.0  # rank 0 done until fit() returns (the controller notices, tears down)
    fit: float = 0.0  # trainer.fit() as a whole


class SearchEpoch(Part):
    epoch: int
    learning_rate: float
    max_grad_norm: float
    holdout_accuracy_noisy: float


class SearchResult(Part):
    """What a private search releases: the chosen trial's settings and noisy score, nothing of
    the others and not how many there were."""

    noise_multiplier: float
    learning_rate: float  # the chosen trial's settings at its end
    max_grad_norm: float
    holdout_accuracy_noisy: float
    # A tuned trial's epochs (its settings and the noisy accuracy after each): part of the chosen
    # trial's output, which the search's bound covers; nothing of any other trial.
    schedule: list[SearchEpoch] = []


class ModelCode(Part):
    """Which code a factory model came from: the module's file as it was when the run was checked."""

    module: str
    sha256: str | None  # of the module's source file; None: the module has no file (built into Python)
    distribution: str | None = None  # the installed distribution providing the module's top-level package
    version: str | None = None


class ModelCheck(Record):
    """PUBLIC. The spec's own model (model.factory) as checked at assess, before anything was
    charged (ppmlops.training.model_check). Built from the spec and the code alone: its inputs were
    zeros and seeded draws, never a row."""

    FILE: ClassVar[str] = "model.json"
    factory: str
    args: dict[str, Any]
    fix_batchnorm: bool
    n_features: int  # the encoded features (ppmlops.data.features.feature_names)
    n_outputs: int
    parameters: int
    code: ModelCode
    clipping: Literal["linear", "ghost"]  # the path clipping="auto" takes (ppmlops.training.clipping)
    replaced: list[str] = []  # "layer: BatchNorm1d -> GroupNorm", by model.fix_batchnorm
    canary_layer: str | None  # the nn.Linear on the raw features whose weight carries the canaries
    canary_units: int  # its out_features (0 without a canary layer)
    canary_note: str  # where the canaries live, or why the audit runs without any
    trainable: list[str] | None = None  # model.trainable the check froze the rest by


class Pretrained(Record):
    """PUBLIC. Fine-tuning (model.init, model.trainable) as checked at assess, before anything was
    charged: the pretrained weights are public by declaration (the spec's author says they were
    not learned from this dataset's rows); names and counts come from the file and the spec."""

    FILE: ClassVar[str] = "pretrained.json"
    init: str | None  # model.init as the spec writes it
    sha256: str | None  # of the file read
    loaded: list[str]  # tensors the file set
    kept: list[str]  # the model's tensors the file lacks: the builder's initialisation
    trainable: list[str]  # parameters DP-SGD updates
    frozen: list[str]
    trainable_parameters: int
    frozen_parameters: int
    note: str = ("pretrained weights are public by declaration: ppmlops charges nothing for them and "
                 "relies on the spec's author that no row of this dataset shaped them")


class TrainRecord(Record):
    FILE: ClassVar[str] = "train.json"
    model_path: str
    n_features: int
    epochs_completed: int
    stopped_reason: str
    history: list[EpochRecord]
    usage_entries: list[int]
    tuner: str
    randomness: str
    epsilon_used: dict[str, float]
    ray_job: dict[str, str] | None = None
    timings: TrainTimings | None = None
    search: SearchResult | None = None


class Canaries(Record):
    """PRIVATE. The audit's canaries and the secret coins that put each in training or not."""

    FILE: ClassVar[str] = "canaries.json"
    PRIVATE: ClassVar[bool] = True
    n_features: int
    units: int  # the first layer's width: canary i is its weight (i % units, n_features + i // units)
    included: list[bool]
    # The nn.Linear whose weight carries them, by module name ("0": a built-in's first layer);
    # None: the model has no layer that can (ModelCheck.canary_note says why) and there are none.
    layer: str | None = "0"


# ------------------------------------------------------------------------------------ evaluate

class CanaryAudit(Part):
    """Steinke, Nasr & Jagielski 2023: an epsilon lower bound from canaries alone."""

    canaries: int
    guesses: int
    correct: int
    epsilon_lower_bound: float
    confidence: float
    delta: float


class EvaluationRecord(Record):
    """PUBLIC. Noisy utility on the held-out partition (charged under the grant) and the audit."""

    FILE: ClassVar[str] = "evaluate.json"
    accuracy: float | None  # None for regression (label.task), which has mae and rmse instead
    auc: float | None
    majority_baseline: float | None
    rows: int  # noisy number of held-out rows evaluated
    sigma: float
    partition: str = "holdout"
    ledger_entry: int
    audit: CanaryAudit
    # Post-processing of the noisy counts (ppmlops.stages.evaluate.confidence_bounds), each a lower
    # confidence bound at `confidence` covering the noise and the held-out sample's own error.
    # None: an evaluation recorded before they existed (the gate then denies for a missing input).
    positives: int | None = None  # noisy held-out rows of the positive class
    negatives: int | None = None
    cell_sigma: float | None = None  # the noise std of each (prediction, label) count
    confidence: float | None = None
    advantage_lower: float | None = None  # of accuracy - majority rate, on the population
    rows_lower: float | None = None  # of the held-out rows evaluated
    class_rows_lower: float | None = None  # of the smaller class's held-out rows
    # label.task and its own releases (ppmlops.stages.task_evaluation); a binary record is as it was.
    task: Literal["binary", "multiclass", "regression"] = "binary"
    macro_f1: float | None = None  # multiclass
    confusion: list[list[int]] | None = None  # multiclass: noisy counts, rows true class, columns predicted
    classes: list[str] | None = None  # multiclass: the declared classes, in the matrix's order
    mae: float | None = None  # regression, in the label's units
    rmse: float | None = None
    baseline_mean: float | None = None  # regression: the noisy mean of the held-out labels
    baseline_rmse: float | None = None  # regression: RMSE of always predicting that mean
    label_range: tuple[float, float] | None = None  # regression: the declared range errors are clipped to


# ---------------------------------------------------------------------------------- gate, deploy

class GateRecord(Record):
    FILE: ClassVar[str] = "gate.json"
    outcome: Outcome
    allowed: bool
    reasons: list[str]
    decision_id: str
    policy_hash: str
    engine: str
    error: str | None = None
    audit_head: dict[str, Any] | None = None


class ApprovalRecord(Record):
    FILE: ClassVar[str] = "approval.json"
    approved: bool
    outcome: Literal["approved", "rejected"]
    by: str
    at: str
    channel: str
    gate_decision_id: str
    gate_reasons: list[str]
    comment: str = ""  # the person's why, from the approval form (none in records written before it)


class DeployRecord(Record):
    FILE: ClassVar[str] = "deploy.json"
    model_name: str
    version: int
    alias: str
    path: str  # the version's MLflow model URI (models:/<name>/<version>)
    card_sha256: str | None = None  # as recorded in the audit log (ppmlops.registry.card_check)


class TrackedRun(Record):
    """PUBLIC. The run's MLflow run: where it is, and which stages' public records it holds."""

    FILE: ClassVar[str] = "mlflow.json"
    tracking_uri: str  # as shown: never with credentials
    experiment_id: str
    mlflow_run_id: str
    logged: list[str] = Field(default_factory=list)
    links: dict[str, str] = Field(default_factory=dict)  # airflow, dashboard, mlflow (when served)


PUBLIC_RECORDS: tuple[type[Record], ...] = (
    RunIdentity, Staged, Validated, CountsRelease, RiskAssessment, ModelCheck, Pretrained, PlanRecord, Refusal,
    TrainRecord, EvaluationRecord, GateRecord, ApprovalRecord, DeployRecord, TrackedRun,
)
PRIVATE_RECORDS: tuple[type[Record], ...] = (StagedData, ExactRisk, Canaries)
