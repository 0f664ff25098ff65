"""PRAM (privacy risk assessment module): find sensitive data, score the risk, explain every point.

Three entry points run the same assessment on different inputs:

  assess(spec, ingest)   the pipeline's assess stage: the spec's source files (re-read in a
                         streaming scan, and checked to be the bytes ingestion staged), consented
                         rows only, k-anonymity on the training snapshot
  assess_spec(spec)      `ppmlops risk scan SPEC.yaml`: the same before any ingestion, k-anonymity
                         over the consented source rows
  assess_file(path)      `ppmlops risk scan FILE`: any CSV or Parquet file; without a feature
                         list every column but the consent columns counts as a training column,
                         so the report says what training on the file as it stands would expose

Detection (ppmlops.risk.detectors, .categories, .classify) looks at column names and at a
uniform sample of up to SAMPLE_ROWS usable rows; k-anonymity and the counts cover every row.
A tensor feature (ppmlops.spec.TensorFeature: an array per row, e.g. an image) is set aside:
its values are not read as text (an array's numbers would pass for phone numbers or dates), it
is never a quasi-identifier (k-anonymity over raw arrays is meaningless: nearly every row is
unique, and DP-SGD is what protects it), and the report says so (`tensor_columns`). Declaring it
a special category (a face is biometric data) still counts.

The score (ppmlops.risk.score) is a weighted sum of six components whose weights and values are
documented there and in docs/pram.md. The report never holds a raw value: examples are masked.

A direct identifier among the training columns makes the level high and the identifiers
component 1.0; `RiskReport.raise_if_identifiers_in_features()` turns that into the error that
stops the run (the pipeline calls it after writing the report, so the report survives).
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any, Sequence

from ppmlops.data.consent import today
from ppmlops.data.ingest import IngestResult, source_sha256
from ppmlops.data.reading import SourceReader, detect_encoding
from ppmlops.errors import DataError
from ppmlops.risk import detectors
from ppmlops.risk.categories import DIRECT, QUASI, name_matches
from ppmlops.risk.classify import TENSOR_NOTE, Classification, Declarations, classify_columns, set_tensors_aside
from ppmlops.risk.kanon import ClassStats, class_stats
from ppmlops.risk.report import IdentifierInFeatures, RiskReport
from ppmlops.risk.scan import ScanData, SourceInput, class_stats_of, scan_sources
from ppmlops.risk.score import (
    K_BY_REGULATION, WEIGHTS, consent_component, identifiers_component, k_anonymity_component, level_of,
    regulation_component, size_component, special_component,
)
from ppmlops.spec import Consent, PipelineSpec, Source, TensorFeature

__all__ = ["assess", "assess_spec", "assess_file", "value_kind", "RiskReport", "IdentifierInFeatures",
           "WEIGHTS", "K_BY_REGULATION", "SAMPLE_ROWS"]

SAMPLE_ROWS = 10_000


def value_kind(value: str) -> str | None:
    """The kind of personal data one value looks like, or None (ppmlops.risk.detectors.classify)."""
    return detectors.classify(value)


def _input(source: Source, partition=None, *, connections=None, window=None, interval=None):
    """What the scan reads: a file's SourceInput, or a SQL source's reader (the window pushed down
    when `interval` is the one ingest read)."""
    if source.is_sql:
        from ppmlops.data.sql_source import open_reader

        return open_reader(source, connections=connections, window=window, interval=interval)
    return SourceInput(source.resolved_path(partition), source.resolved_format(), source.encoding, source.delimiter,
                       source.labels_path(partition))


# ---------------------------------------------------------------------------------------------- pipeline


def assess(spec: PipelineSpec, ingest: IngestResult, *, sample_rows: int = SAMPLE_ROWS,
           partition=None, connections=None, scan=scan_sources) -> RiskReport:
    """`partition`: the interval a partitioned window read (the files ingestion staged from).
    A SQL source's query is run again over the window ingest read (`connections`: its Airflow
    Connections' URLs), and must give the same rows. `scan` reads the sources (scan_sources'
    arguments and ScanData; ppmlops.risk.ray_scan's on a cluster)."""
    ds = spec.dataset
    pushed = dict(connections=connections, window=ds.window,
                  interval=ingest.window.interval() if ingest.window.mode == "column" else None)
    sources = [_input(ds.source, partition, **pushed)]
    sources += [_input(ds.test_source, partition, **pushed)] if ds.test_source else []
    as_of = date.fromisoformat(ingest.consent_as_of) if ingest.consent_as_of else today()
    data = scan(sources, consent=ds.consent, as_of=as_of, sample_rows=sample_rows)
    digest = source_sha256(data.files)
    if digest != ingest.source_sha256:
        raise DataError(f"{', '.join(str(f.path) for f in data.files)}: source changed since ingestion "
                        f"(sha256 {digest[:12]}..., ingested {ingest.source_sha256[:12]}...); re-run ingest")
    training = {f.name for f in ds.features} | {ds.label.column}
    tensors = _tensors(ds.features)
    found = set_tensors_aside(classify_columns(data.header, _unread(data.sample, tensors), training,
                                                Declarations.of_dataset(ds), as_of), tensors)
    k = K_BY_REGULATION[ds.regulation]
    qi = _quasi_features(found, [f.name for f in ds.features])
    stats = _snapshot_classes(ingest.snapshot_train, qi, k)
    consent = {"declared": ds.consent is not None, "rows_in": ingest.rows_in,
               "rows_refused": ingest.quarantine_reasons.get("no consent", 0),
               "refusals": dict(ingest.consent_refusals), "as_of": ingest.consent_as_of}
    return _report(ds.id, found, stats, consent, ingest.rows_train, spec.privacy.delta, ds.regulation, data, tensors)


def _snapshot_classes(snapshot: str, qi: list[str], k: int) -> ClassStats:
    import pandas as pd

    if not qi:
        return class_stats(pd.DataFrame(), [], k)
    try:
        df = pd.read_parquet(snapshot, columns=qi)
    except Exception as err:  # pyarrow raises several types for a missing or damaged file
        raise DataError(f"{snapshot}: cannot read the training snapshot for k-anonymity: {err}") from None
    return class_stats(df, qi, k)


# ---------------------------------------------------------------------------------------------- scans


def assess_spec(spec: PipelineSpec, *, sample_rows: int = SAMPLE_ROWS, as_of: date | None = None) -> RiskReport:
    """The assessment of a spec's source before ingestion (k-anonymity over consented source rows)."""
    ds = spec.dataset
    sources = [_input(ds.source)] + ([_input(ds.test_source)] if ds.test_source else [])
    for s, src in zip(sources, [ds.source, ds.test_source]):
        if src is not None and src.generate is not None:
            from ppmlops.data.synthetic import ensure_demo

            ensure_demo(s.path, src.generate)
    features = [f.name for f in ds.features]
    return _scan_report(ds.id, sources, features + [ds.label.column], features, Declarations.of_dataset(ds),
                        ds.consent, as_of or today(), ds.regulation, spec.privacy.delta, None, sample_rows, None,
                        _tensors(ds.features))


def assess_file(path: Path | str, *, fmt: str | None = None, encoding: str = "auto", delimiter: str | None = None,
                label: str | None = None, features: Sequence[str] | None = None, consent: Consent | None = None,
                declarations: Declarations = Declarations(), regulation: str = "gdpr", delta: float | None = None,
                k: int | None = None, sample_rows: int = SAMPLE_ROWS, as_of: date | None = None,
                quarantine: Path | None = None, dataset_id: str | None = None) -> RiskReport:
    """The assessment of any CSV or Parquet file (see the module docstring for what counts as training)."""
    source = SourceInput.of(path, fmt, encoding, delimiter)
    if source.format == "csv" and source.encoding == "auto":
        # Decided once here: detection reads the whole file, and the scan must not do it again.
        source = SourceInput(source.path, "csv", detect_encoding(source.path), source.delimiter)
    data_header = SourceReader(source.path, source.format, source.encoding, source.delimiter).header
    if label is not None and label not in data_header:
        raise DataError(f"{source.path}: label column {label!r} is not in the file (columns: {data_header})")
    excluded = set(consent.columns()) if consent is not None else set()
    if features is not None:
        unknown = [c for c in features if c not in data_header]
        if unknown:
            raise DataError(f"{source.path}: feature column(s) {unknown} are not in the file (columns: {data_header})")
        feature_list = list(features)
    else:
        feature_list = [c for c in data_header if c not in excluded and c != label]
    training = feature_list + ([label] if label else [])
    return _scan_report(dataset_id or source.path.stem, [source], training, feature_list, declarations, consent,
                        as_of or today(), regulation, delta, k, sample_rows, quarantine)


def _scan_report(dataset_id: str, sources: list[SourceInput], training: list[str], features: list[str],
                 declarations: Declarations, consent: Consent | None, as_of: date, regulation: str,
                 delta: float | None, k: int | None, sample_rows: int, quarantine: Path | None,
                 tensors: Sequence[TensorFeature] = ()) -> RiskReport:
    k = k or K_BY_REGULATION[regulation]
    # The quasi-identifiers are known for sure only after the values are classified; count classes
    # in the same pass over those the names and declarations give, and pass again only if the
    # values add or remove one.
    guess = [c for c in features if (name_matches(c).get(QUASI) or c in declarations.quasi_identifiers)
             and c not in declarations.not_sensitive and c not in {t.name for t in tensors}]
    data = scan_sources(sources, consent=consent, as_of=as_of, sample_rows=sample_rows, qi_columns=guess or None,
                        k=k, quarantine=quarantine)
    found = set_tensors_aside(classify_columns(data.header, _unread(data.sample, tensors), set(training),
                                                declarations, as_of), tensors)
    qi = _quasi_features(found, features)
    if qi == guess:
        stats = data.classes if qi else class_stats(_empty_frame(), [], k)
    else:
        stats = class_stats_of(sources, qi, k, consent=consent, as_of=as_of) if qi else class_stats(_empty_frame(), [], k)
    consent_info = {"declared": consent is not None, "rows_in": data.rows_in, "rows_refused": data.rows_refused,
                    "refusals": data.refusals(), "as_of": as_of.isoformat() if consent is not None else ""}
    return _report(dataset_id, found, stats, consent_info, data.rows_used, delta, regulation, data, tensors)


def _empty_frame():
    import pandas as pd

    return pd.DataFrame()


# ---------------------------------------------------------------------------------------------- assembly


def _tensors(features) -> list[TensorFeature]:
    return [f for f in features if isinstance(f, TensorFeature)]


def _unread(sample: dict[str, list[str]], tensors: Sequence[TensorFeature]) -> dict[str, list[str]]:
    """The sample without the tensor columns' values: an array's numbers read as text would pass
    for phone numbers, card numbers or dates; only the name and the declarations speak for it."""
    names = {t.name for t in tensors}
    return {c: ([] if c in names else v) for c, v in sample.items()}


def tensor_columns(tensors: Sequence[TensorFeature]) -> list[dict[str, Any]]:
    """What the report says of each tensor feature (public: the spec's declarations)."""
    return [{"column": t.name, "shape": list(t.shape), "range": list(t.range), "dtype": t.dtype,
             "quasi_identifier": False, "note": TENSOR_NOTE} for t in tensors]


def _quasi_features(found: Classification, features: list[str]) -> list[str]:
    quasi = {f["column"] for f in found.findings if f["category"] == QUASI}
    direct = {f["column"] for f in found.findings if f["category"] == DIRECT}
    # A column that is a direct identifier singles people out alone; k-anonymity over it says nothing more.
    return [c for c in features if c in quasi and c not in direct]


def _report(dataset_id: str, found: Classification, stats: ClassStats, consent: dict[str, Any], rows: int,
            delta: float | None, regulation: str, data: ScanData,
            tensors: Sequence[TensorFeature] = ()) -> RiskReport:
    components = [
        identifiers_component(found.findings, regulation),
        special_component(found.findings),
        k_anonymity_component(stats),
        consent_component(consent["declared"], consent["rows_in"], consent["rows_refused"], consent["refusals"]),
        size_component(rows, delta),
        regulation_component(regulation),
    ]
    score = sum(c["points"] for c in components)
    return RiskReport(
        dataset_id=dataset_id, score=score, level=level_of(score, components), components=components,
        findings=found.findings, k=stats.k, quasi_identifiers=list(stats.quasi_identifiers),
        sample_rows=data.sample_rows, regulation=regulation, delta=delta,
        reidentification=stats.to_dict() if stats.quasi_identifiers else {},
        consent=consent,
        source={"files": [f.to_dict() for f in data.files], "rows_in": data.rows_in, "rows_used": data.rows_used,
                "rows_malformed": data.rows_malformed, "columns": data.header},
        overridden=found.overridden, dismissed=found.dismissed, tensor_columns=tensor_columns(tensors),
    )
