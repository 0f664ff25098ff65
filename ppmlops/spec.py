"""Pipeline specs: one YAML file under dags/pipelines/ describes one retraining DAG.

Feature encodings are declared (numeric ranges, category lists) rather than learned from the
data, because min/max, means and category sets computed on private rows are themselves releases
that the training epsilon does not cover.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ppmlops.errors import SpecError

Regulation = Literal["gdpr", "hipaa", "ccpa", "none"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticSource(_Model):
    """Make the demo table at `path` when it does not exist (see ppmlops.data.synthetic)."""

    rows: int = Field(6000, ge=100)
    seed: int = 7
    consent_detail: bool = False  # add consent_purposes and consent_expires columns (see synthetic.generate)


Encoding = Literal["utf-8", "latin-1", "cp1252"]


class Source(_Model):
    path: str
    format: Literal["csv", "parquet"] | None = None
    generate: SyntheticSource | None = None
    # CSV only. UTF-8 is strict (a stray byte is an error naming its line) because guessing an
    # encoding can silently change values; legacy exports declare latin-1 or cp1252.
    encoding: Encoding = "utf-8"
    delimiter: str | None = None  # None: detected from the first lines among , ; tab |

    @field_validator("delimiter")
    @classmethod
    def _one_char(cls, v: str | None) -> str | None:
        if v is not None and (len(v) != 1 or v in {'"', "\r", "\n"}):
            raise ValueError(f"delimiter must be one character other than a quote or newline, got {v!r}")
        return v

    def resolved_path(self) -> Path:
        return Path(expand_env(self.path)).expanduser()

    def resolved_format(self) -> str:
        if self.format:
            return self.format
        suffix = self.resolved_path().suffix.lower()
        if suffix in {".parquet", ".pq"}:
            return "parquet"
        if suffix in {".csv", ".txt", ".data"}:
            return "csv"
        raise SpecError(f"cannot tell the format of {self.path!r} from its suffix; set source.format")


class NumericFeature(_Model):
    name: str
    type: Literal["numeric"]
    range: tuple[float, float]
    log: bool = False  # log1p before scaling, for heavy tails such as capital gains

    @field_validator("range")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not v[0] < v[1]:
            raise ValueError(f"range must be [low, high] with low < high, got {list(v)}")
        return v


class CategoricalFeature(_Model):
    name: str
    type: Literal["categorical"]
    categories: list[str] = Field(min_length=1)

    @field_validator("categories")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("categories must be unique")
        return v


Feature = Annotated[NumericFeature | CategoricalFeature, Field(discriminator="type")]


class Label(_Model):
    column: str
    positive: str  # the value that means class 1; every other allowed value is class 0
    values: list[str] = Field(min_length=2)  # all allowed label values; other values are quarantined

    @model_validator(mode="after")
    def _positive_allowed(self) -> "Label":
        if self.positive not in self.values:
            raise ValueError(f"label.positive {self.positive!r} is not among label.values {self.values}")
        return self


class Consent(_Model):
    """Which rows may be used. A row is used only if every rule that is configured holds.

    column           the consent flag; a value among `granted` (case-insensitive) means given
    purposes_column  the purposes the person consented to, separated by , ; or | (case-insensitive);
                     `purpose` must be among them
    expiry_column    the last day (ISO 8601 date, or a datetime whose date is taken) on which the
                     consent holds; a row whose date lies before the run's date is refused, an
                     unreadable date is refused, an empty one means "no expiry" unless
                     `expiry_required`
    """

    column: str
    granted: list[str] = ["true", "yes", "1", "y"]  # values (case-insensitive) that mean consent given
    purposes_column: str | None = None
    purpose: str = Field("training", min_length=1)
    expiry_column: str | None = None
    expiry_required: bool = False

    @model_validator(mode="after")
    def _distinct_columns(self) -> "Consent":
        cols = [c for c in (self.column, self.purposes_column, self.expiry_column) if c is not None]
        if len(set(cols)) != len(cols):
            raise ValueError(f"consent column, purposes_column and expiry_column must differ, got {cols}")
        if self.expiry_required and self.expiry_column is None:
            raise ValueError("expiry_required needs an expiry_column")
        return self

    def columns(self) -> list[str]:
        return [c for c in (self.column, self.purposes_column, self.expiry_column) if c is not None]


class Dataset(_Model):
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    source: Source
    test_source: Source | None = None  # a separate held-out file; else test_fraction of the rows
    label: Label
    features: list[Feature] = Field(min_length=1)
    consent: Consent | None = None
    identifiers: list[str] = []  # direct identifiers present in the source; never trained on
    # Identifiers to stage as keyed pseudonyms (HMAC-SHA256, key from the environment variable
    # named by pseudonym_key_env) in a column `<name>_pseudonym` of the snapshot, for joins and
    # de-duplication; never a feature. The others in `identifiers` are dropped.
    pseudonymize: list[str] = []
    pseudonym_key_env: str = Field("PPMLOPS_PSEUDONYM_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # Category declarations for the risk assessment; a declaration beats what the scan detects.
    quasi_identifiers: list[str] = []  # counted in k-anonymity when they are features
    special_categories: list[str] = []  # GDPR Art. 9 data or protected characteristics
    not_sensitive: list[str] = []  # reviewed: none of the above whatever the scan says (kept in the report)
    regulation: Regulation = "gdpr"
    public: bool = False

    @model_validator(mode="after")
    def _columns_disjoint(self) -> "Dataset":
        names = [f.name for f in self.features]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"features listed twice: {sorted(dupes)}")
        clash = set(names) & (set(self.identifiers) | {self.label.column})
        if clash:
            raise ValueError(f"columns {sorted(clash)} are features and also identifiers or the label")
        for field_name in ("identifiers", "pseudonymize", "quasi_identifiers", "special_categories", "not_sensitive"):
            values = getattr(self, field_name)
            twice = sorted({v for v in values if values.count(v) > 1})
            if twice:
                raise ValueError(f"{field_name} lists {twice} more than once")
        stray = sorted(set(self.pseudonymize) - set(self.identifiers))
        if stray:
            raise ValueError(f"pseudonymize lists {stray}, which are not among identifiers")
        pseudonyms = {f"{c}_pseudonym" for c in self.pseudonymize}
        taken = sorted(pseudonyms & (set(names) | {self.label.column}))
        if taken:
            raise ValueError(f"pseudonym column(s) {taken} would clash with a feature or the label")
        declared = set(self.identifiers) | set(self.quasi_identifiers) | set(self.special_categories)
        contradicted = sorted(set(self.not_sensitive) & declared)
        if contradicted:
            raise ValueError(f"columns {contradicted} are declared not_sensitive and also identifiers, "
                             "quasi-identifiers or special categories")
        if self.consent is not None:
            used = set(self.consent.columns()) & (set(names) | {self.label.column})
            if used:
                raise ValueError(f"consent column(s) {sorted(used)} are also features or the label")
        return self


class Privacy(_Model):
    epsilon: float = Field(gt=0, le=100)  # the dataset's lifetime budget, all runs composed
    delta: float = Field(gt=0, lt=1)
    run_epsilon: float = Field(gt=0, le=100)  # the most one run may spend
    # What one run may spend on the held-out partition for the tuner's noisy accuracy (0: nothing
    # is released about those rows). Parallel to training: the dataset's epsilon is the worse of the two.
    holdout_epsilon: float = Field(0.5, ge=0, le=100)

    @model_validator(mode="after")
    def _run_within_dataset(self) -> "Privacy":
        if self.run_epsilon > self.epsilon:
            raise ValueError(f"run_epsilon {self.run_epsilon} exceeds the dataset epsilon {self.epsilon}")
        return self


class ModelSpec(_Model):
    kind: Literal["logistic", "mlp"] = "mlp"
    hidden: list[Annotated[int, Field(ge=1)]] = [64]


class Training(_Model):
    epochs: int = Field(5, ge=1, le=1000)
    batch_size: int = Field(256, ge=1)  # expected batch size under Poisson sampling
    learning_rate: float = Field(0.5, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)
    tuner: Literal["fixed", "rule", "bayes"] = "bayes"  # ANOM: how settings change between epochs
    test_fraction: float = Field(0.2, gt=0, lt=1)
    seed: int = 0
    secure_rng: bool = False  # production runs set true (policy checks it); tests may not


class RayConfig(_Model):
    workers: int = Field(2, ge=1, le=256)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1, gt=0)
    max_failures: int = Field(2, ge=0, le=100)  # Ray Train restarts from the last epoch checkpoint


class Deploy(_Model):
    model_name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    min_accuracy: float = Field(0.0, ge=0, le=1)


class PipelineSpec(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    schedule: str | None = None
    dataset: Dataset
    privacy: Privacy
    model: ModelSpec = ModelSpec()
    training: Training = Training()
    ray: RayConfig = RayConfig()
    validation_suite: str | None = None  # path under expectations/; default expectations/<dataset id>.json
    deploy: Deploy

    @property
    def dag_id(self) -> str:
        return f"ppmlops_{self.name}"

    def suite_path(self, repo_root: Path) -> Path:
        rel = self.validation_suite or f"expectations/{self.dataset.id}.json"
        path = Path(expand_env(rel))
        return path if path.is_absolute() else repo_root / path


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str) -> str:
    """Expand ${VAR} and ${VAR:-default}; an unset variable without a default is an error."""

    def sub(m: re.Match[str]) -> str:
        value = os.environ.get(m.group(1))
        if value:
            return value
        if m.group(2) is not None:
            return m.group(2)
        if m.group(1) == "PPMLOPS_HOME":
            from ppmlops import settings

            return str(settings.load().home)
        raise SpecError(f"environment variable {m.group(1)} is not set (used in {text!r})")

    return _ENV.sub(sub, text)


def _format_errors(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid pipeline spec"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        lines.append(f"  {loc or '(top level)'}: {e['msg']}")
    return "\n".join(lines)


def parse_spec(data: object, path: Path | str = "<spec>") -> PipelineSpec:
    path = Path(path)
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a pipeline spec must be a mapping, got {type(data).__name__}")
    try:
        return PipelineSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(_format_errors(path, err)) from None


def load_spec(path: Path | str) -> PipelineSpec:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: pipeline spec not found") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {err}") from None
    return parse_spec(data, path)


def load_specs(folder: Path | str) -> list[tuple[Path, PipelineSpec]]:
    """Every *.yaml under `folder`, sorted; raises on the first invalid one."""
    return [(p, load_spec(p)) for p in sorted(Path(folder).glob("*.yaml"))]
