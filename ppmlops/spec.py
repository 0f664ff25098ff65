"""Pipeline specs: one YAML file under dags/pipelines/ describes one retraining DAG.

Feature encodings are declared (numeric ranges, category lists) rather than learned from the
data, because min/max, means and category sets computed on private rows are themselves releases
that the training epsilon does not cover.
"""

from __future__ import annotations

import math
import os
from datetime import datetime, timedelta, timezone
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Iterable, Literal

import yaml
from pydantic import (
    BaseModel, ConfigDict, Field, JsonValue, PrivateAttr, ValidationError, field_serializer, field_validator,
    model_validator,
)

from ppmlops.errors import SpecError

# The one list of tuner names (the spec, the DAG's Param and ppmlops.tuning.registry all read it):
# here, in the foundation, so that the spec needs no engine.
TUNER_NAMES: tuple[str, ...] = ("fixed", "rule", "bayes")

Regulation = Literal["gdpr", "hipaa", "ccpa", "none"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticSource(_Model):
    """Make the demo table at `path` when it does not exist (see ppmlops.data.synthetic)."""

    rows: int = Field(6000, ge=100)
    seed: int = 7
    consent_detail: bool = False  # add consent_purposes and consent_expires columns (see synthetic.generate)
    # Add an `event_time` column spread over this many weeks up to the day the table is made
    # (for windowed pipelines: each run then reads its own weeks).
    event_weeks: int | None = Field(None, ge=1, le=520)


Encoding = Literal["utf-8", "latin-1", "cp1252"]


class Source(_Model):
    """A file (`path`) or a SQL query (`sql`, with `connection` or `url`: see ppmlops.data.sql_source)."""

    path: str | None = None
    format: Literal["csv", "parquet", "npz"] | None = None
    # NPZ only: a CSV file of per-row columns (the label, say) for the arrays of `path`, row i of
    # the file belonging to index i of the arrays' first axis (see ppmlops.data.reading). Without
    # it, the label is one of the NPZ's one-dimensional arrays.
    labels: str | None = None
    generate: SyntheticSource | None = None
    # CSV only. UTF-8 is strict (a stray byte is an error naming its line) because guessing an
    # encoding can silently change values; legacy exports declare latin-1 or cp1252.
    encoding: Encoding = "utf-8"
    delimiter: str | None = None  # None: detected from the first lines among , ; tab |
    # A SQL source: one SELECT (a WITH ... SELECT), read through `connection` (an Airflow
    # Connection's id) or `url` (a SQLAlchemy URL); exactly one of the two. A password in `url`
    # is never shown: the field is left out of repr and dumped redacted (secrets are better kept
    # in the connection, or in libpq's ~/.pgpass).
    sql: str | None = None
    connection: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    url: str | None = Field(None, repr=False)

    @field_serializer("url")
    def _redacted_url(self, v: str | None) -> str | None:
        from ppmlops.db import redact

        return None if v is None else redact(v)

    @model_validator(mode="after")
    def _file_or_query(self) -> "Source":
        if (self.path is None) == (self.sql is None):
            raise ValueError("a source is exactly one of: path (a CSV or Parquet file) or sql (a SELECT query with "
                             "connection or url)")
        if self.sql is None:
            given = [k for k in ("connection", "url") if getattr(self, k) is not None]
            if given:
                raise ValueError(f"source.{given[0]} goes with source.sql (a query), not with a file path")
            if self.labels is not None and (self.format or _suffix_format(self.path)) != "npz":
                raise ValueError("source.labels goes with an NPZ source (source.format: npz, or a .npz path)")
            return self
        file_only = [k for k in ("format", "generate", "delimiter", "labels") if getattr(self, k) is not None]
        file_only += ["encoding"] if self.encoding != "utf-8" else []
        if file_only:
            raise ValueError(f"source.{file_only[0]} is for files; a SQL source (source.sql) has none")
        if (self.connection is None) == (self.url is None):
            raise ValueError("a SQL source (source.sql) names exactly one of source.connection (an Airflow "
                             "Connection id) or source.url (a SQLAlchemy URL)")
        from ppmlops.sql_query import select_problem

        problem = select_problem(self.sql)
        if problem is not None:
            raise ValueError(f"source.sql: {problem}")
        if self.url is not None:
            from ppmlops.sql_query import url_problem

            problem = url_problem(self.url)
            if problem is not None:
                raise ValueError(f"source.url: {problem}")
        return self

    @property
    def is_sql(self) -> bool:
        return self.sql is not None

    @field_validator("delimiter")
    @classmethod
    def _one_char(cls, v: str | None) -> str | None:
        if v is not None and (len(v) != 1 or v in {'"', "\r", "\n"}):
            raise ValueError(f"delimiter must be one character other than a quote or newline, got {v!r}")
        return v

    # Set by PipelineSpec: the spec's declared variables and where in the spec this source is.
    _variables: dict[str, str] = PrivateAttr(default_factory=dict)
    _field: str = PrivateAttr(default="source.path")

    def resolved_path(self, interval=None) -> Path:
        """The path with variables expanded, {start:...}/{end:...} formatted for a partitioned
        window's `interval` (ppmlops.window.DataInterval), symlinks and `..` resolved, inside
        the data roots."""
        expanded = self._expanded()
        if interval is not None:
            from ppmlops.window import format_partition

            try:
                expanded = Path(format_partition(str(expanded), interval))
            except (KeyError, ValueError, IndexError) as err:
                raise SpecError(f"{self._field}: cannot format the partition template for the run's interval: "
                                f"{err}; use {{start:FORMAT}} or {{end:FORMAT}} with strftime codes") from None
        return confine(expanded, self._field)

    def _expanded(self) -> Path:
        if self.path is None:
            raise SpecError(f"{self._field.rsplit('.', 1)[0]}: a SQL source has no file path")
        return Path(expand_env(self.path, self._variables, self._field)).expanduser()

    def resolved_format(self) -> str:
        if self.sql is not None:
            return "sql"  # no file suffix to go by
        if self.format:
            return self.format
        found = _suffix_format(str(self._expanded()))
        if found is None:
            raise SpecError(f"cannot tell the format of {self.path!r} from its suffix; set source.format")
        return found

    def labels_path(self, interval=None) -> Path | None:
        """An NPZ source's label file, expanded and confined like the path (None: none declared)."""
        if self.labels is None:
            return None
        expanded = Path(expand_env(self.labels, self._variables, f"{self._field.rsplit('.', 1)[0]}.labels"))
        if interval is not None:
            from ppmlops.window import format_partition

            expanded = Path(format_partition(str(expanded.expanduser()), interval))
        return confine(expanded.expanduser(), f"{self._field.rsplit('.', 1)[0]}.labels")


def _suffix_format(path: str) -> str | None:
    suffix = Path(path).suffix.lower()
    if suffix in {".parquet", ".pq"}:
        return "parquet"
    if suffix in {".csv", ".txt", ".data"}:
        return "csv"
    return "npz" if suffix == ".npz" else None


class NumericFeature(_Model):
    name: str
    type: Literal["numeric"]
    range: tuple[float, float]
    log: bool = False  # log1p before scaling, for heavy tails such as capital gains

    @field_validator("range")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(math.isfinite(x) for x in v):
            # Scaling by an infinite width would encode every value as 0: the feature would vanish.
            raise ValueError(f"range must be two finite numbers [low, high], got {list(v)}")
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


# Element types a tensor feature may declare: what the staged snapshot stores and what the served
# model's signature names. The integer types' limits bound the declared range.
TensorDtype = Literal["float32", "float64", "uint8", "int8", "uint16", "int16", "int32", "int64"]
# Enough for a 3-channel 1024x1024 image; a row larger than this is not one row's worth of features.
MAX_TENSOR_ELEMENTS = 1 << 22


class TensorFeature(_Model):
    """A fixed-shape array per row (an image, a spectrum, a window of a signal): the model's input.

        - {name: pixels, type: tensor, shape: [1, 8, 8], range: [0, 16], dtype: float32}

    `name`   the column: in Parquet a list or fixed_size_list column (nested lists too); in an NPZ
             source an array whose first axis is the row (source.format npz); in CSV a cell
             holding a JSON array of numbers
    `shape`  the row's shape, 1 to 4 dimensions (channels first for images: [C, H, W]); a row is
             its prod(shape) numbers in C order, flat or nested to exactly this shape (a
             dimension of size 1 may be left out of the nesting)
    `range`  [low, high]: every value is clipped to it and scaled to [0, 1] from it, so the
             encoding never looks at the data (a min or max of private pixels would be a release)
    `dtype`  the element type staged and named in the served model's signature (default float32);
             an integer type refuses a value it cannot hold (a fraction, beyond its limits)

    A row whose array has another number of values, a null (the array or one value), a value
    that is not a finite number, or a value its dtype cannot hold is quarantined ("invalid value",
    the reason naming the column and the element's position, never a value). A tensor feature
    is the whole input: it is listed alone under dataset.features. It is never a quasi-identifier
    (k-anonymity over raw arrays is meaningless: nearly every row is unique); DP-SGD protects it.
    The model factory is called with `input_shape` (the shape) besides n_features (prod(shape))
    and n_outputs, and its module receives each batch flat, (batch, n_features): reshape with
    x.reshape(len(x), *input_shape). The built-in logistic and mlp take the flat rows as they are.
    """

    name: str
    type: Literal["tensor"]
    shape: list[int] | None = None
    range: tuple[float, float] | None = None
    dtype: TensorDtype = "float32"

    @model_validator(mode="after")
    def _declared(self) -> "TensorFeature":
        where = f"tensor feature {self.name!r}"
        if self.shape is None:
            raise ValueError(f"{where} needs shape: the row's dimensions, e.g. shape: [1, 8, 8]")
        if not 1 <= len(self.shape) <= 4 or any(d < 1 for d in self.shape):
            raise ValueError(f"{where}: shape must be 1 to 4 positive integers (e.g. [1, 8, 8]), got {self.shape}")
        if self.size > MAX_TENSOR_ELEMENTS:
            raise ValueError(f"{where}: shape {self.shape} has {self.size} values a row, more than {MAX_TENSOR_ELEMENTS}")
        if self.range is None:
            raise ValueError(f"{where} needs range: [low, high], the values' declared range (encoding clips to it "
                             "and scales from it, never from the data)")
        lo, hi = self.range
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"{where}: range must be two finite numbers [low, high] with low < high, got "
                             f"{list(self.range)}")
        limits = dtype_limits(self.dtype)
        if limits is not None and not (limits[0] <= lo and hi <= limits[1]):
            raise ValueError(f"{where}: range {list(self.range)} lies outside what dtype {self.dtype} holds "
                             f"[{limits[0]}, {limits[1]}]")
        return self

    @property
    def size(self) -> int:
        """Values a row: the product of the shape."""
        return math.prod(self.shape or ())


def dtype_limits(dtype: str) -> tuple[int, int] | None:
    """An integer dtype's [min, max]; None for a float type."""
    import numpy as np

    kind = np.dtype(dtype)
    return (int(np.iinfo(kind).min), int(np.iinfo(kind).max)) if kind.kind in "iu" else None


Feature = Annotated[NumericFeature | CategoricalFeature | TensorFeature, Field(discriminator="type")]


def tensor_of(features) -> "TensorFeature | None":
    """The tensor feature of a feature list (a tensor is listed alone), or None."""
    return next((f for f in features if isinstance(f, TensorFeature)), None)


Task = Literal["binary", "multiclass", "regression"]
TASKS: tuple[str, ...] = ("binary", "multiclass", "regression")


class Label(_Model):
    """What the model predicts. Everything here is declared, never learned from the rows: the class
    list and the range are public, so the model's shape and every release's sensitivity are too.

    binary      `positive` is class 1, every other value among `values` class 0
    multiclass  `classes` in declared order (class i is the i-th); a row with another value is
                quarantined as an invalid label, like a binary label outside `values`
    regression  a number in the declared `range` [low, high] (outside it: quarantined); the model
                predicts it scaled to [0, 1] by that range, and every error is clipped to it, so
                the evaluation's sensitivity is the range's width, never a property of the data
    """

    column: str
    task: Task = "binary"
    positive: str | None = None  # binary: the value that means class 1
    values: list[str] | None = Field(None, min_length=2)  # binary: all allowed label values
    classes: list[str] | None = Field(None, min_length=2)  # multiclass: the classes, in order
    range: tuple[float, float] | None = None  # regression: [low, high]

    @model_validator(mode="after")
    def _fields_of_task(self) -> "Label":
        wanted = {"binary": ("positive", "values"), "multiclass": ("classes",), "regression": ("range",)}[self.task]
        missing = [f for f in wanted if getattr(self, f) is None]
        if missing:
            raise ValueError(f"label.task {self.task} needs label.{' and label.'.join(missing)}")
        stray = [f for f in ("positive", "values", "classes", "range") if f not in wanted and getattr(self, f) is not None]
        if stray:
            raise ValueError(f"label.{' and label.'.join(stray)} do not apply to label.task {self.task}")
        if self.task == "binary" and self.positive not in self.values:
            raise ValueError(f"label.positive {self.positive!r} is not among label.values {self.values}")
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            raise ValueError("label.classes must be unique")
        if self.range is not None:
            lo, hi = self.range
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"label.range must be two finite numbers [low, high] with low < high, got {list(self.range)}")
        return self

    @property
    def allowed(self) -> list[str] | None:
        """The label values a row may have (others are quarantined); None: a number in `range`."""
        return self.values if self.task == "binary" else self.classes

    @property
    def n_outputs(self) -> int:
        """The model's outputs: two logits for binary (as always), one per class, one number."""
        if self.task == "regression":
            return 1
        return len(self.classes) if self.task == "multiclass" else 2

    @property
    def class_names(self) -> list[str]:
        """Class i's name: binary's 0 and 1 are "negative" and label.positive."""
        if self.task == "multiclass":
            return list(self.classes)
        return ["negative", str(self.positive)] if self.task == "binary" else []


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


class Window(_Model):
    """How a run selects its rows for its data interval (see ppmlops.window)."""

    column: str | None = None  # a timestamp column: rows in [start, end)
    lookback: timedelta | None = None  # with column: rows in [end - lookback, end), e.g. P56D
    partition: bool = False  # the source path holds {start:FORMAT} / {end:FORMAT}
    whole_table: bool = False  # every row, whatever the interval

    @model_validator(mode="after")
    def _one_mode(self) -> "Window":
        modes = [m for m, on in (("column", self.column is not None), ("partition", self.partition),
                                 ("whole_table", self.whole_table)) if on]
        if len(modes) != 1:
            raise ValueError("a window is exactly one of: column (a timestamp column), partition (the source "
                             f"path holds {{start:%Y-%m-%d}} placeholders) or whole_table: true; got {modes or 'none'}")
        if self.lookback is not None and self.column is None:
            raise ValueError("lookback needs a window column")
        if self.lookback is not None and self.lookback <= timedelta(0):
            raise ValueError(f"lookback must be positive, got {self.lookback}")
        return self


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
    # Synthetic or test data whose privacy nobody relies on. Only such a dataset may run with
    # randomness "reproducible": its draws can be replayed from the public seed and run id, so
    # every noisy count it releases is as good as exact (ppmlops.run.context.check_randomness).
    test_data: bool = False
    # A public, approximate row count (e.g. the size of a published extract). Only used to fix
    # the dataset's accounting order at registration; the run is sized by a noisy count.
    expected_rows: int | None = Field(None, ge=1)
    # Which rows a run reads for its data interval; required when the pipeline has a schedule.
    window: Window | None = None

    @model_validator(mode="after")
    def _columns_disjoint(self) -> "Dataset":
        names = [f.name for f in self.features]
        tensor = tensor_of(self.features)
        if tensor is not None and len(self.features) > 1:
            raise ValueError(f"tensor feature {tensor.name!r} is the model's whole input: list it alone under "
                             "dataset.features (tabular columns beside a tensor are not supported)")
        if tensor is not None and tensor.name in self.quasi_identifiers:
            raise ValueError(f"quasi_identifiers lists tensor feature {tensor.name!r}: an array per row is not a "
                             "quasi-identifier (k-anonymity over raw arrays is meaningless; DP-SGD protects it); "
                             "declare it under special_categories if it shows a face or other biometric data")
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


class PrivacyUnit(_Model):
    """The unit of privacy: one person, named by `column`, with at most `max_rows` rows per run.

    Each run keeps at most max_rows rows per person, chosen by a keyed hash that reads no value
    but the person id (ppmlops.data.person_bound), and every charge is accounted for adding or
    removing one person's rows (ppmlops.privacy.unit). The column is used for the bound and the
    split, then dropped (or pseudonymised when listed under dataset.pseudonymize): never a feature.
    """

    column: str = Field(min_length=1)
    max_rows: int = Field(ge=1, le=10_000)


class Privacy(_Model):
    epsilon: float = Field(gt=0, le=100)  # the dataset's lifetime budget, all runs composed
    delta: float = Field(gt=0, lt=1)
    run_epsilon: float = Field(gt=0, le=100)  # the most one run may spend on its training rows
    # What one run may spend on the held-out partition: the final noisy evaluation and, for tuners
    # that read it, a noisy accuracy after every epoch. Parallel to training: the dataset's
    # epsilon is the worse of the two partitions.
    holdout_epsilon: float = Field(0.5, gt=0, le=100)
    # The run's noisy row counts (rows by partition and quarantine reason, k-anonymity) released
    # at assess, which size the run and feed the risk score: this epsilon alone, every partition.
    stats_epsilon: float = Field(0.2, gt=0, le=10)
    # The Renyi order of the dataset's lifetime filter; default: chosen at registration from the
    # spec's run shape and dataset.expected_rows (see ppmlops.privacy.lifetime).
    accounting_order: float | None = Field(None, gt=1)
    # Privacy blocks (ppmlops.privacy.blocks): the rows divided by event time (the window column)
    # into blocks of this length, each with the lifetime budget above, e.g. P7D. Without it the
    # dataset is one block: every run charges the same budget. Needs dataset.window.column.
    blocks: timedelta | None = None
    # Where block 0 starts: a fixed PUBLIC instant (never derived from the data); a Monday at
    # 00:00 UTC by default, so weekly blocks run Monday to Monday. Without a zone: UTC.
    block_origin: datetime = datetime(2000, 1, 3, tzinfo=timezone.utc)
    # The unit of privacy (see PrivacyUnit); None: one row, as neighbouring datasets were always
    # defined here.
    unit: PrivacyUnit | None = None

    @property
    def unit_rows(self) -> int:
        """k: the most rows one unit of privacy has in a run (1: the unit is one row)."""
        return 1 if self.unit is None else self.unit.max_rows

    @model_validator(mode="after")
    def _run_within_dataset(self) -> "Privacy":
        if self.run_epsilon > self.epsilon:
            raise ValueError(f"run_epsilon {self.run_epsilon} exceeds the dataset epsilon {self.epsilon}")
        if self.blocks is not None and self.blocks <= timedelta(0):
            raise ValueError(f"privacy.blocks must be a positive duration (e.g. P7D), got {self.blocks}")
        return self

    @field_validator("block_origin")
    @classmethod
    def _utc_origin(cls, v: datetime) -> datetime:
        return v.replace(tzinfo=timezone.utc) if v.tzinfo is None else v.astimezone(timezone.utc)


# "package.module:callable" (dotted names on both sides): what importlib and getattr can resolve.
FACTORY_PATTERN = r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$"
# Passed by ppmlops to every factory: the encoded feature count and the number of model outputs.
# With a tensor feature, also `input_shape` (its declared shape).
FACTORY_KEYWORDS = ("n_features", "n_outputs", "input_shape")


class FactoryRef(_Model):
    """A model of the user's own: `target(n_features=..., n_outputs=..., **args)` returns the
    nn.Module (ppmlops.training.factory builds it, ppmlops.training.model_check checks it)."""

    target: str = Field(pattern=FACTORY_PATTERN)
    args: dict[str, JsonValue] = {}
    # Opacus's ModuleValidator.fix: BatchNorm (which mixes rows) becomes GroupNorm.
    fix_batchnorm: bool = False
    # A tensor feature's declared shape, passed to the factory as `input_shape` (None: a table's
    # columns, and the factory is called as it always was).
    input_shape: list[int] | None = None


class ModelSpec(_Model):
    """`kind` (a built-in: logistic or mlp with `hidden` sizes), or `factory` with its `args`."""

    kind: Literal["logistic", "mlp"] | None = None
    hidden: list[Annotated[int, Field(ge=1)]] | None = None
    factory: str | None = None
    args: dict[str, JsonValue] = {}
    fix_batchnorm: bool = False
    # Fine-tuning: pretrained weights from a local file (a state dict, public by declaration: they
    # must not come from this dataset's rows) and the parameter-name prefixes DP-SGD updates (the
    # rest frozen); None: every parameter trains.
    init: str | None = None
    trainable: list[Annotated[str, Field(min_length=1)]] | None = None

    # Set by PipelineSpec: the spec's declared variables (for `init`) and a tensor feature's shape.
    _variables: dict[str, str] = PrivateAttr(default_factory=dict)
    _input_shape: list[int] | None = PrivateAttr(default=None)

    def init_path(self) -> Path | None:
        """`init` with variables expanded and symlinks resolved, inside the data roots."""
        if self.init is None:
            return None
        return confine(Path(expand_env(self.init, self._variables, "model.init")).expanduser(), "model.init")

    @field_validator("factory")
    @classmethod
    def _importable_name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(FACTORY_PATTERN, v):
            raise ValueError(f"model.factory must be 'package.module:callable' (an importable module, a colon, "
                             f"then the callable's name), got {v!r}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _one_way(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data
        if data.get("factory") is None:
            # A built-in: the defaults every existing spec relies on.
            return {"kind": "mlp", "hidden": [64]} | {k: v for k, v in data.items() if v is not None}
        given = [k for k in ("kind", "hidden") if data.get(k) is not None]
        if given:
            raise ValueError(f"model.factory names the whole model: remove model.{' and model.'.join(given)} "
                             "(those are for the built-in models)")
        return data

    @field_validator("trainable")
    @classmethod
    def _some_trainable(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("model.trainable lists at least one parameter-name prefix (leave it out to train "
                             "every parameter)")
        return v

    @model_validator(mode="after")
    def _factory_fields(self) -> "ModelSpec":
        if self.factory is None and (self.args or self.fix_batchnorm):
            raise ValueError("model.args and model.fix_batchnorm go with model.factory")
        passed = sorted(set(self.args) & set(FACTORY_KEYWORDS))
        if passed:
            raise ValueError(f"model.args may not set {passed}: ppmlops passes n_features (the encoded feature "
                             "count), n_outputs and, for a tensor feature, input_shape itself")
        bad = [k for k in self.args if not k.isidentifier()]
        if bad:
            raise ValueError(f"model.args keys must be Python keyword names, got {bad}")
        return self

    @property
    def own(self) -> FactoryRef | None:
        """The user's factory, or None for a built-in model."""
        if self.factory is None:
            return None
        return FactoryRef(target=self.factory, args=self.args, fix_batchnorm=self.fix_batchnorm,
                          input_shape=self._input_shape)


class Training(_Model):
    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: object) -> object:
        if isinstance(data, dict) and "secure_rng" in data:
            raise ValueError("training.secure_rng was replaced by training.randomness: 'secure' (the default: a "
                             "CSPRNG seeded from OS entropy) or 'reproducible' (tests and benchmarks only; its "
                             "models cannot be deployed)")
        return data

    epochs: int = Field(5, ge=1, le=1000)
    batch_size: int = Field(256, ge=1)  # expected batch size under Poisson sampling
    learning_rate: float = Field(0.5, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)
    # The most rows one forward and backward takes (a GPU's memory, say): a larger Poisson batch is
    # clipped in pieces whose clipped sums are added, with one noise draw and one step (virtual
    # steps: the sampling and the accounting are unchanged). None: the whole batch at once.
    max_physical_batch: int | None = Field(None, ge=1)
    # Clip each layer's per-row gradient to max_grad_norm / sqrt(layers) instead of the whole
    # gradient to max_grad_norm: the same bound on a row's gradient, so the same noise and
    # accounting, but a layer with large gradients no longer shrinks the others' (the closed-form
    # path only: a Sequential of Linear layers and row-wise activations).
    per_layer_clipping: bool = False
    # bf16: the forward and backward in bfloat16 under torch.autocast (on a GPU, about half the
    # memory and more speed); per-row norms, clipping, sums and noise stay float32, so the bound
    # and the accounting are fp32's (the closed-form path only).
    precision: Literal["fp32", "bf16"] = "fp32"
    tuner: Literal[TUNER_NAMES] = "bayes"  # ANOM: how settings change between epochs
    test_fraction: float = Field(0.2, gt=0, lt=1)
    seed: int = 0
    # secure: every draw that touches private rows from a CSPRNG keyed by the OS, never recorded.
    # reproducible: keyed from (seed, run id); replayable by anyone, so never deployable.
    randomness: Literal["secure", "reproducible"] = "secure"


class Search(_Model):
    """A private hyperparameter search run (the trigger form's `search`; ppmlops.privacy.search):
    K trials, K drawn from the truncated negative binomial of mean `trials` and shape `shape`
    (1: geometric, 0: logarithmic); each trial trains with a learning rate and clip norm drawn
    log-uniformly from the ranges, at the plan's noise, and is scored by a noisy accuracy on the
    held-out rows; only the best trial is released, and the search's whole cost is charged."""

    trials: float = Field(5.0, gt=1, le=50)
    shape: float = Field(1.0, ge=0, le=10)
    learning_rate: tuple[float, float] = (0.1, 4.0)
    max_grad_norm: tuple[float, float] = (0.05, 2.0)
    # What steers each trial's epochs: fixed (its drawn settings throughout) or bayes (it starts at
    # them and adapts clip norm and learning rate on its own noisy held-out accuracy, at the same cost).
    tuner: Literal["fixed", "bayes"] = "fixed"
    # Instead of the ranges: each trial takes one of these (learning rate, clip norm) pairs, uniformly.
    grid: list[tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]]] | None = Field(None, min_length=1)

    @field_validator("learning_rate", "max_grad_norm")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not 0 < lo <= hi:
            raise ValueError(f"a search range must be (low, high) with 0 < low <= high, got {list(v)}")
        return v


class Audit(_Model):
    """The canary audit (Steinke, Nasr & Jagielski 2023) run on every trained model."""

    # Gradient canaries (ppmlops.audit.canary): 16384 lets the audit catch a demo-shaped run whose
    # real epsilon is 4x its claim. At most 512 per unit of the first layer are used.
    canaries: int = Field(16384, ge=0, le=100_000)
    confidence: float = Field(0.95, gt=0, lt=1)


class RayConfig(_Model):
    workers: int = Field(2, ge=1, le=256)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1, gt=0)
    max_failures: int = Field(2, ge=0, le=100)  # Ray Train restarts from the last epoch checkpoint
    # One worker and no Ray cluster: train in the task's own process (ppmlops.training.in_process)
    # instead of starting Ray for it. None: do so whenever a run has one worker and no cluster is
    # configured; false: always through Ray Train; true: insist (a run with more workers is refused).
    in_process: bool | None = None

    @model_validator(mode="after")
    def _one_worker_in_process(self) -> "RayConfig":
        if self.in_process and self.workers != 1:
            raise ValueError(f"ray.in_process trains one worker in the task's process; ray.workers is {self.workers}")
        return self


Environment = Literal["development", "test", "staging", "production"]


class Deploy(_Model):
    model_name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    min_accuracy: float = Field(0.0, ge=0, le=1)
    # How much the model must beat always guessing the majority class (accuracy points), at the
    # evaluation's confidence; the policy's own min_margin is a floor this can only raise.
    min_margin: float | None = Field(None, ge=0, le=1)
    # Confidence of the evaluation's lower bounds (the gate's baseline, size and class checks).
    confidence: float = Field(0.95, ge=0.5, lt=1)
    # Where scheduled runs deploy (a manual run may pick another); each has its own alias.
    environment: Environment = "development"


class Retries(_Model):
    """Airflow's retries for a task that failed on a fault that may pass (Ray, the database);
    a problem the user must fix fails at once whatever this says."""

    count: int = Field(2, ge=0, le=10)
    delay: timedelta = timedelta(minutes=1)

    @field_validator("delay")
    @classmethod
    def _positive(cls, v: timedelta) -> timedelta:
        if v <= timedelta(0):
            raise ValueError(f"retries.delay must be positive, got {v}")
        return v


class PipelineSpec(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    schedule: str | None = None
    # Names a spec may use as ${NAME} besides PPMLOPS_DATA and PPMLOPS_HOME, with their defaults;
    # an environment variable of the same name overrides the default (see expand_env).
    variables: dict[str, str] = {}
    dataset: Dataset
    privacy: Privacy
    model: ModelSpec = ModelSpec()
    training: Training = Training()
    ray: RayConfig = RayConfig()
    audit: Audit = Audit()
    search: Search = Search()
    validation_suite: str | None = None  # path under expectations/; default expectations/<dataset id>.json
    deploy: Deploy
    retries: Retries = Retries()

    @field_validator("variables")
    @classmethod
    def _variable_names(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            why = _unusable_variable(name)
            if why:
                raise ValueError(f"variable {name!r} cannot be declared: {why}")
        return v

    @model_validator(mode="after")
    def _window_declared(self) -> "PipelineSpec":
        window, ds = self.dataset.window, self.dataset
        if self.schedule is not None and window is None:
            raise ValueError("a scheduled pipeline must say which rows each run reads: dataset.window with a "
                             "timestamp column, a partitioned source path, or whole_table: true (every run "
                             "then trains on the same table)")
        if self.privacy.blocks is not None and (window is None or window.column is None):
            raise ValueError("privacy.blocks divides the rows by event time and needs dataset.window.column (a "
                             "timestamp column); without one the dataset is one block: remove privacy.blocks")
        unit = self.privacy.unit
        if unit is not None:
            used = {f.name for f in ds.features} | {ds.label.column} | set(ds.consent.columns() if ds.consent else [])
            used |= {window.column} if window is not None and window.column is not None else set()
            if unit.column in used:
                raise ValueError(f"privacy.unit.column {unit.column!r} is also a feature, the label, a consent column "
                                 "or the window column; the person column is used for the per-person bound and then "
                                 "dropped, never trained on")
            if ds.test_source is not None:
                raise ValueError("privacy.unit needs the held-out rows chosen by person (a keyed hash of the person "
                                 "id), not a separate dataset.test_source: a person with rows in both files would be "
                                 "in both partitions, and their train and holdout charges would add up")
        if window is not None and window.column is not None:
            taken = {f.name for f in ds.features} | {ds.label.column} | set(ds.consent.columns() if ds.consent else [])
            if window.column in taken:
                raise ValueError(f"dataset.window.column {window.column!r} is also a feature, the label or a "
                                 "consent column")
        if window is not None and window.partition:
            from ppmlops.window import partition_template_problem

            sql = [f for f, s in (("dataset.source", ds.source), ("dataset.test_source", ds.test_source))
                   if s is not None and s.is_sql]
            if sql:
                raise ValueError(f"dataset.window.partition formats a file path; {sql[0]} is a SQL query: use "
                                 "dataset.window.column (the interval is pushed into the query)")
            paths = [("dataset.source.path", ds.source.path)]
            paths += [("dataset.test_source.path", ds.test_source.path)] if ds.test_source else []
            for field_name, path in paths:
                if "{start" not in path and "{end" not in path:
                    raise ValueError(f"dataset.window.partition needs {{start:FORMAT}} or {{end:FORMAT}} in the "
                                     f"source path ({field_name}, e.g. events/{{start:%Y-%m-%d}}.csv)")
                # ${NAME} variables are expanded before the template is formatted: not fields.
                problem = partition_template_problem(_VAR.sub("", path))
                if problem is not None:
                    raise ValueError(f"{field_name}: partition template: {problem}")
        return self

    @model_validator(mode="after")
    def _variables_known(self) -> "PipelineSpec":
        sources = [("dataset.source.path", self.dataset.source)]
        if self.dataset.test_source is not None:
            sources.append(("dataset.test_source.path", self.dataset.test_source))
        templated = [(f, s.path) for f, s in sources if s.path is not None]
        templated += [(f.replace(".path", ".labels"), s.labels) for f, s in sources if s.labels is not None]
        if self.validation_suite is not None:
            templated.append(("validation_suite", self.validation_suite))
        if self.model.init is not None:
            templated.append(("model.init", self.model.init))
        for field_name, text in templated:
            for m in _VAR.finditer(text):
                if m.group(1) not in BUILTIN_VARIABLES and m.group(1) not in self.variables:
                    raise ValueError(_unknown_variable(m.group(1), field_name))
            if _VAR.sub("", text).count("$"):
                raise ValueError(f"{field_name}: a '$' that is not part of ${{NAME}} or ${{NAME:-default}}")
        for field_name, source in sources:
            source._variables = dict(self.variables)
            source._field = field_name
        self.model._variables = dict(self.variables)
        tensor = tensor_of(self.dataset.features)
        self.model._input_shape = list(tensor.shape) if tensor is not None else None
        return self

    @property
    def dag_id(self) -> str:
        return dag_id_of(self.name)

    def suite_path(self, repo_root: Path) -> Path:
        rel = self.validation_suite or f"expectations/{self.dataset.id}.json"
        path = Path(expand_env(rel, self.variables, "validation_suite"))
        return path if path.is_absolute() else repo_root / path


# ${NAME} or ${NAME:-default}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
BUILTIN_VARIABLES = ("PPMLOPS_DATA", "PPMLOPS_HOME")
# A spec is not a place to route secrets through: a path with a key in it ends up in task logs.
_SECRET_LIKE = re.compile(r"KEY|SECRET|TOKEN|PASS|PWD|CREDENTIAL|PRIVATE|AUTH|CERT|COOKIE|SESSION|DSN|_URL$|_URI$",
                          re.IGNORECASE)


def _unusable_variable(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        return "a name is letters, digits and _ and does not start with a digit"
    if name in BUILTIN_VARIABLES:
        return "it is built in (set it in the environment)"
    if name.upper().startswith(("PPMLOPS_", "AIRFLOW", "RAY_")):
        return "names starting with PPMLOPS_, AIRFLOW or RAY_ are settings, not spec variables"
    if _SECRET_LIKE.search(name):
        return "its name looks like a secret's (key, token, password, URL...); secrets never go into a spec"
    return ""


def _unknown_variable(name: str, field_name: str) -> str:
    return (f"{field_name}: ${{{name}}} is not a variable this spec may use: use PPMLOPS_DATA or "
            f"PPMLOPS_HOME, or declare it under the top-level `variables:` with a default "
            f"(other environment variables are never read)")


def expand_env(text: str, variables: dict[str, str] | None = None, field_name: str = "path") -> str:
    """Expand ${NAME} and ${NAME:-default} in a spec field, from an allowlist only.

    NAME is PPMLOPS_DATA, PPMLOPS_HOME (default: the settings' home) or a name the spec declares
    under `variables:` (the environment variable of that name, else the declared default). Any
    other name is a SpecError naming it and the field: the environment is never read for it,
    and no message shows a variable's value.
    """
    variables = variables or {}

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name not in BUILTIN_VARIABLES and name not in variables:
            raise SpecError(_unknown_variable(name, field_name))
        value = os.environ.get(name)
        if value:
            return value
        if default is not None:
            return default
        if name in variables:
            return variables[name]
        if name == "PPMLOPS_HOME":
            from ppmlops import settings

            return str(settings.load().home)
        raise SpecError(f"{field_name}: uses ${{{name}}}, and the environment variable {name} is not set; "
                        f"set it to the folder it names, or give a default with ${{{name}:-/some/folder}}")

    return _VAR.sub(sub, text)


def data_roots() -> list[Path]:
    """Folders spec sources must lie in: PPMLOPS_DATA_ROOTS (os.pathsep-separated) if set, else
    PPMLOPS_DATA, PPMLOPS_HOME and the project root; each with symlinks resolved."""
    from ppmlops import settings

    raw = os.environ.get("PPMLOPS_DATA_ROOTS")
    if raw:
        roots = [Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip()]
    else:
        s = settings.load()
        roots = [r for r in (s.data_dir, s.home, s.project_root) if r is not None]
    return [r.resolve() for r in roots]


def confine(path: Path, field_name: str = "path") -> Path:
    """`path` with symlinks and `..` resolved, or a SpecError if that lies outside every data root.

    Resolved first, so neither a symlink nor `..` can lead out of a root. The error names the
    path and the setting, never what the file holds.
    """
    resolved = path.resolve()
    roots = data_roots()
    if any(resolved == r or resolved.is_relative_to(r) for r in roots):
        return resolved
    shown = os.pathsep.join(str(r) for r in roots)
    via = f" (via {path})" if resolved != path.absolute() else ""
    raise SpecError(
        f"{field_name}: {resolved}{via} is outside the data roots ({shown}); sources must lie under "
        f"PPMLOPS_DATA, PPMLOPS_HOME or the project root, or under a folder listed in PPMLOPS_DATA_ROOTS "
        f"(os.pathsep-separated; setting it replaces those defaults)")


def _format_errors(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid pipeline spec"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"]
        if not loc and msg.startswith("Value error, "):
            lines.append(f"  {msg.removeprefix('Value error, ')}")  # names its own field
        else:
            lines.append(f"  {loc or '(top level)'}: {msg}")
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


DAG_ID_PREFIX = "ppmlops_"


def dag_id_of(pipeline: str) -> str:
    """The DAG id of the pipeline named `pipeline` (one DAG per spec): also for a spec that does not
    validate, whose DAG says what is wrong under the same id."""
    return DAG_ID_PREFIX + pipeline


def pipeline_of(dag_id: str) -> str:
    """The pipeline name in a DAG id (dag_id_of's inverse); any other id as it is."""
    return dag_id.removeprefix(DAG_ID_PREFIX)


def pipelines_folder() -> Path:
    """Where the specs are: PPMLOPS_PIPELINES (a deployment, the test suite), else the project's dags/pipelines."""
    from ppmlops import settings

    return Path(os.environ.get("PPMLOPS_PIPELINES") or settings.load().project_root / "dags" / "pipelines")


def load_specs(folder: Path | str) -> list[tuple[Path, PipelineSpec]]:
    """Every *.yaml under `folder`, sorted; raises on the first invalid one."""
    return [(p, load_spec(p)) for p in sorted(Path(folder).glob("*.yaml"))]


@dataclass(frozen=True)
class SpecLoad:
    """One spec file's outcome: the spec, or the error; `name` is the file's `name:` field when
    it is a usable pipeline name even though the spec is invalid (so its DAG id stays known)."""

    path: Path
    spec: PipelineSpec | None
    error: SpecError | None
    name: str | None = None


def load_each(paths: Iterable[Path | str]) -> list[SpecLoad]:
    """Load every file on its own: one invalid spec never stops the others from loading."""
    out = []
    for path in map(Path, paths):
        try:
            spec = load_spec(path)
            out.append(SpecLoad(path, spec, None, spec.name))
        except SpecError as err:
            out.append(SpecLoad(path, None, err, _raw_name(path)))
    return out


def _raw_name(path: Path) -> str | None:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    name = doc.get("name") if isinstance(doc, dict) else None
    return name if isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_.-]+", name) else None
