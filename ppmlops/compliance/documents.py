"""The documents the policy decides on and the card a model is registered with, as typed models.

`TrainPolicyInput` is the input of data.ppmlops.train and data.ppmlops.budget (built by
ppmlops.stages.plan.policy_input, and by ppmlops.stages.precheck with every private number at
its most favourable value); `DeployManifest` is the input of data.ppmlops.deploy and the run
folder's manifest.json (ppmlops.stages.card.manifest); `ModelCard` is the card registered with
the model (ppmlops.stages.card.model_card, plus the gate's decision and the approval at deploy).
Their JSON schemas are docs/schemas/*.json (docs/write_schemas.py writes them, a test checks
they are current, and another that every `input.*` path policies.rego reads is in a schema).

Each document serializes exactly as the dicts it replaced did (`document()`): a key the builder
leaves out stays out (a pre-check input has no blocks, a card no approval until one is given),
and a number keeps its type (`Num`: an int stays an int), so audit records, manifests and cards
written before and after read the same. Every value is public: spec, policy, a charged noisy
release or post-processing of one.
"""

from __future__ import annotations

from typing import Any, Union

from pydantic import BaseModel, ConfigDict

from ppmlops.compliance.utility_inputs import ClassifierMetrics, RegressionMetrics
from ppmlops.run.records import CanaryAudit, RetiredBlock

# A JSON number as the builder made it: pydantic's smart union keeps an int an int and a float a
# float, so the serialized document is byte for byte what the dict was.
Num = Union[int, float]


class Document(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def document(self) -> dict[str, Any]:
        """The JSON-ready dict the policy, the run folder and the registry get: only the keys the
        builder set."""
        return self.model_dump(exclude_unset=True)

    @classmethod
    def of(cls, doc: dict[str, Any]):
        """The document, validated: a missing or unknown key, or a value of the wrong type, raises."""
        return cls.model_validate(doc)


# -- shared sections ----------------------------------------------------------------------------

class DatasetFacts(Document):
    id: str
    regulation: str
    rows: int  # noisy training rows, at least 1
    epsilon_budget: Num
    delta: Num
    public: bool


class RiskSummary(Document):
    score: Num
    level: str


# -- data.ppmlops.train / data.ppmlops.budget ---------------------------------------------------

class LedgerFacts(Document):
    epsilon_spent: Num
    share_used: Num
    epsilon_remaining: Num
    epsilon_released: Num
    holdout_epsilon_remaining: Num
    accounting_order: Num


class RiskFacts(RiskSummary):
    direct_identifiers_in_features: list[str]


class ConsentFacts(Document):
    rows_in: int
    rows_refused: int
    coverage: Num


class TriggerFacts(Document):
    """How Airflow started the run (ppmlops.run.context.RunTrigger): policies.rego's scheduled_runs."""
    kind: str
    late_s: Num
    grace_s: Num
    cleared: bool = False  # a person cleared the run to run it again


class RequestFacts(Document):
    run_epsilon: Num
    epsilon_cap: Num | None
    environment: str
    randomness: str
    trigger: TriggerFacts


class ClassCounts(Document):
    positive: Num  # noisy rows (the pre-check's input puts a float "plenty" here)
    negative: Num
    smallest: Num
    by_class: dict[str, int] | None = None  # multiclass and regression only


class PlanClasses(Document):
    label: str
    sigma: Num
    confidence: Num
    task: str | None = None  # absent for a binary label: the policy reads a missing task as binary
    train: ClassCounts
    holdout: ClassCounts


class BlockFacts(Document):
    id: str
    share_used: Num
    unlocked: Num
    pipeline_share_used: Num
    pipelines: int


class TrainPolicyInput(Document):
    dataset: DatasetFacts
    ledger: LedgerFacts
    risk: RiskFacts
    consent: ConsentFacts
    request: RequestFacts
    classes: PlanClasses | None  # None: a counts release from before class counts (the policy refuses)
    blocks: list[BlockFacts] = []  # absent in the pre-check's input
    learnability: dict[str, Any] | None = None  # ppmlops.training.learnability's model, dumped; absent when not asked


# -- data.ppmlops.deploy ------------------------------------------------------------------------

class RunFacts(Document):
    id: str
    environment: str


class PrivacyFacts(Document):
    accountant: str
    filter: bool
    randomness: str
    epsilon: Num
    epsilon_granted: Num
    epsilon_used: Num
    delta: Num
    dataset_share_used: Num
    noise_multiplier: Num
    sample_rate: Num
    steps: int


class EpochSetting(Document):
    epoch: int
    noise_multiplier: Num
    max_grad_norm: Num
    learning_rate: Num


class PolicyDecisionNote(Document):
    decision_id: str
    outcome: str
    reasons: list[str]
    policy_hash: str
    engine: str


class ModelCard(Document):
    """The card a model version is registered with. `model`, `search`, `data_window`,
    `data_queries` and `metrics` have one shape per kind of model, search, window, source and
    task: they stay mappings here (their builders in ppmlops.stages.card say what is in them)."""

    model_name: str
    pipeline: str
    run_id: str
    dataset_id: str
    data_fingerprint: str
    data_window: dict[str, Any]
    data_queries: list[dict[str, Any]]
    rows_train: int
    rows_holdout: int
    rows_note: str
    model: dict[str, Any]
    epsilon: Num
    delta: Num
    epsilon_by_partition: dict[str, Num]
    epsilon_note: str
    epsilon_used: dict[str, Num]
    run_epsilon_granted: Num
    dataset_share_used: Num
    accounting_order: Num
    privacy_blocks: list[str]
    retired_blocks: list[RetiredBlock]
    blocks_note: str
    privacy_unit: str
    unit_note: str
    accountant: str
    privacy_filter: bool
    sampling: str
    randomness: str
    noise_multiplier: Num
    sample_rate: Num
    steps: int
    epochs: int
    stopped_reason: str
    epoch_settings: list[EpochSetting]
    tuner: str
    search: dict[str, Any] | None
    metrics: dict[str, Any]
    metrics_note: str
    privacy_audit: CanaryAudit
    intended_use: str
    # Set at deploy: the gate's decision, and a person's approval when one was needed.
    policy_decision: PolicyDecisionNote | None = None
    approval: dict[str, Any] | None = None


class DeployManifest(Document):
    run: RunFacts
    dataset: DatasetFacts
    risk: RiskSummary
    privacy: PrivacyFacts
    metrics: ClassifierMetrics | RegressionMetrics
    audit: CanaryAudit
    model_card: ModelCard

    def document(self) -> dict[str, Any]:
        # The metrics are utility_inputs' own document (a binary one without task and macro_f1).
        return super().document() | {"metrics": self.metrics.document()}


SCHEMAS: dict[str, type[Document]] = {
    "train_policy_input": TrainPolicyInput, "deploy_manifest": DeployManifest, "model_card": ModelCard,
}
