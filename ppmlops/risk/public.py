"""PRAM's score from public facts and noisy counts: the score that may steer the plan.

The exact report (ppmlops.risk.assess: value-based detections on sampled rows, exact
k-anonymity and consent shares) stays in the run's private folder. What leaves it, and what the
policy scales the run's epsilon by, is computed here from:

* public facts: the source's column names, the spec's declarations and regulation, and for each
  categorical feature its DECLARED category list (ingestion quarantines every other value, so the
  declared list is exactly what can reach training): the same classifier, fed those instead of
  sampled rows;
* the run's noisy counts (ppmlops.run.records.CountsRelease): training rows, rows refused for
  consent, rows in equivalence classes smaller than k over the public quasi-identifiers.

A direct identifier among the features found this way stops the run, and that decision reveals
nothing about any row.
"""

from __future__ import annotations

from ppmlops.risk.categories import DIRECT, QUASI
from ppmlops.risk.classify import Classification, Declarations, classify_columns, set_tensors_aside
from ppmlops.risk.score import (
    K_BY_REGULATION, component, consent_component, identifiers_component, level_of, regulation_component,
    size_component, special_component,
)
from ppmlops.run.records import CountsRelease, PublicFinding, RiskAssessment, RiskComponent
from ppmlops.spec import CategoricalFeature, PipelineSpec, TensorFeature


def public_classification(spec: PipelineSpec, header: list[str]) -> Classification:
    ds = spec.dataset
    declared_values = {f.name: list(f.categories) for f in ds.features if isinstance(f, CategoricalFeature)}
    training = {f.name for f in ds.features} | {ds.label.column}
    # A tensor feature is never a quasi-identifier (ppmlops.risk.classify.TENSOR_NOTE).
    tensors = [f for f in ds.features if isinstance(f, TensorFeature)]
    return set_tensors_aside(classify_columns(header, declared_values, training, Declarations.of_dataset(ds)), tensors)


def quasi_identifier_features(spec: PipelineSpec, found: Classification) -> list[str]:
    quasi = {f["column"] for f in found.findings if f["category"] == QUASI}
    direct = {f["column"] for f in found.findings if f["category"] == DIRECT}
    # A column that is a direct identifier singles people out alone; k-anonymity over it says nothing more.
    return [f.name for f in spec.dataset.features if f.name in quasi and f.name not in direct]


def identifiers_in_features(found: Classification) -> list[str]:
    return sorted({f["column"] for f in found.findings if f["category"] == DIRECT and f["in_features"]})


def _k_component(counts: CountsRelease, qi: list[str]):
    if not qi or counts.k_unsafe_rows is None:
        return component("k_anonymity", 0.0, "no quasi-identifier among the features")
    rows = max(counts.rows_train, 1)
    share = min(1.0, max(0, counts.k_unsafe_rows) / rows)
    return component("k_anonymity", share,
                     f"about {max(0, counts.k_unsafe_rows)} of about {counts.rows_train} training rows ({share:.1%}) "
                     f"fall in equivalence classes smaller than k={counts.k} over quasi-identifiers {qi} "
                     f"(noisy counts, sigma {counts.sigma_k:.3g} and {counts.sigma_rows:.3g})")


def public_assessment(spec: PipelineSpec, found: Classification, counts: CountsRelease) -> RiskAssessment:
    ds = spec.dataset
    qi = quasi_identifier_features(spec, found)
    refused = max(0, counts.quarantined.get("no consent", 0))
    components = [
        identifiers_component(found.findings, ds.regulation),
        special_component(found.findings),
        _k_component(counts, qi),
        consent_component(ds.consent is not None, max(1, counts.rows_in), refused, {"all rules, noisy count": refused}),
        size_component(max(1, counts.rows_train), spec.privacy.delta),
        regulation_component(ds.regulation),
    ]
    score = sum(c["points"] for c in components)
    return RiskAssessment(
        score=score, level=level_of(score, components),
        components=[RiskComponent(**c) for c in components],
        findings=[PublicFinding(column=f["column"], category=f["category"], kind=f["kind"], by=f["detected_by"],
                                in_features=f["in_features"]) for f in found.findings],
        k=K_BY_REGULATION[ds.regulation], quasi_identifiers=qi, regulation=ds.regulation)
