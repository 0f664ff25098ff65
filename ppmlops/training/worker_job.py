"""What the train stage hands the Ray Train workers: one typed job (torch-free).

The privacy part is the run's PrivacyPlan record itself (the one copy in plan.json), never a
re-keyed dict. Rows never travel with it: each worker reads its shard of the snapshot
(`snapshot`), or a caller's arrays go through Ray's object store.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ppmlops.privacy.randomness import Randomness
from ppmlops.run.records import Canaries, KnownResult, PrivacyPlan, TrainTimings
from ppmlops.spec import FactoryRef

# Per-row clipping (ppmlops.training.clipping): auto = closed-form norms for linear stacks, else
# Opacus's ghost clipping; hooks = Opacus's per-row gradients. The privacy guarantee is the same.
CLIPPING_MODES = ("auto", "linear", "ghost", "hooks")
# A private search's progress between trials (ppmlops.training.search_loop), in the run's Ray
# Train folder: storage every node reaches, under the run's private/ (ppmlops.run.store).
SEARCH_STATE_FILE = "ppmlops_search.pt"


@dataclass(frozen=True)
class Snapshot:
    """Where the workers read their rows (ppmlops.training.shards reads them): the run's Parquet
    snapshots, on storage every node reaches, and the spec, whose public declarations are all
    the encoding needs."""

    train: str
    holdout: str
    spec_json: str  # the PipelineSpec as JSON

    @classmethod
    def of(cls, spec, train: str, holdout: str) -> "Snapshot":
        return cls(str(train), str(holdout), spec.model_dump_json())

    def spec(self):
        from ppmlops.spec import PipelineSpec

        return PipelineSpec.model_validate_json(self.spec_json)


@dataclass(frozen=True)
class WorkerJob:
    plan: PrivacyPlan
    ledger_url: str
    model_kind: str
    hidden: tuple[int, ...]
    learning_rate: float
    momentum: float
    max_grad_norm: float
    tuner: str
    seed: int
    workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    storage_path: str = ""  # Ray Train storage (checkpoints); shared by every node on a cluster
    ray_address: str | None = None
    max_failures: int = 2  # worker-group restarts from the last checkpoint before the run fails
    init_path: str = ""  # rank 0 saves the initial weights here (the canary audit's reference point)
    progress_path: str = ""  # rank 0 appends its per-epoch lines here (ppmlops.training.progress)
    clipping: str = "auto"  # one of CLIPPING_MODES
    per_layer: bool = False  # training.per_layer_clipping
    precision: str = "fp32"  # training.precision
    physical_batch: int | None = None  # training.max_physical_batch: rows per forward and backward
    warm_start: tuple[KnownResult, ...] = ()  # earlier runs' released results (the plan's)
    # The spec's (learning rate, clip norm): where the bayes box is centred, whatever the warm
    # start moved `learning_rate` and `max_grad_norm` to.
    tuning_anchor: tuple[float, float] | None = None
    # The audit's gradient canaries (PRIVATE coins; rank 0 injects them) and where rank 0 keeps
    # their per-step scores (ppmlops.training.canary_scores).
    canaries: Canaries | None = None
    canary_scores_path: str = ""
    # Where each worker reads its own rows (ppmlops.training.shards); None: the caller hands the
    # rows over as arrays (tests, benchmarks).
    snapshot: Snapshot | None = None
    # The spec's own model (model.factory): built by it instead of model_kind and hidden
    # (ppmlops.training.factory); its module must be importable on every worker.
    factory: FactoryRef | None = None
    # The spec's label.task and the model's outputs (ppmlops.training.tasks): the loss, the
    # targets' dtype and the tuner's held-out signal follow them.
    task: str = "binary"
    n_outputs: int = 2
    # Fine-tuning (model.init, model.trainable; ppmlops.training.factory.pretrained): the weights
    # file every worker reads (a path the workers can read, like a source), and the parameter-
    # name prefixes DP-SGD updates (None: all).
    pretrained: str | None = None
    trainable: tuple[str, ...] | None = None

    @property
    def run_id(self) -> str:
        return self.plan.run_id

    def draws(self) -> Randomness:
        """The run's randomness on the workers: the plan's mode, keyed as the stages key it."""
        return Randomness.for_run(self.plan.randomness, self.seed, self.run_id)

    @property
    def search_state_path(self) -> str:
        """Where a private search keeps K and its progress: the same file on every attempt."""
        return os.path.join(self.storage_path, self.run_id, SEARCH_STATE_FILE) if self.storage_path else ""


@dataclass(frozen=True)
class TrainOutcome:
    """What the workers leave in their last checkpoint, read back by the driver."""

    epochs_completed: int
    stopped_reason: str
    history: list[dict]
    usage_entries: list[int]
    path: str = ""
    timings: TrainTimings | None = None
    search: dict | None = None  # a private search's chosen trial (settings and noisy score), nothing else
