"""The risk report: score, itemized components, findings, and the text a compliance officer reads."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ppmlops.errors import PpmlopsError
from ppmlops.risk.categories import DIRECT, looks_like_consent


class IdentifierInFeatures(PpmlopsError):
    """A direct identifier is a training column: the run must stop before training."""

    def __init__(self, dataset_id: str, findings: list[dict[str, Any]], report: "RiskReport | None" = None):
        self.columns = sorted({f["column"] for f in findings})
        self.report = report
        detail = "; ".join(f"{f['column']} ({f['kind'].replace('_', ' ')}, detected by {'+'.join(f['detected_by'])})"
                           for f in findings)
        super().__init__(
            f"dataset {dataset_id}: direct identifier(s) in training columns: {detail}. Training stops here. "
            "Remove the column from dataset.features and list it under dataset.identifiers (dropped, or "
            "pseudonymized with dataset.pseudonymize); if the detection is wrong, declare the column under "
            "dataset.not_sensitive (the override is shown in the risk report)")


@dataclass
class RiskReport:
    dataset_id: str
    score: float
    level: str
    components: list[dict[str, Any]]
    # One per (column, category): column, kind, category, in_features, declared, detected_by, share
    # (of sampled non-empty values that match, for value evidence; of sampled rows filled, for
    # name or declaration alone), confidence, masked_examples, kinds, hipaa, basis, ...
    findings: list[dict[str, Any]]
    k: int = 5
    quasi_identifiers: list[str] = field(default_factory=list)  # the features k-anonymity was computed over
    sample_rows: int = 0  # usable (consented, well-formed) source rows whose values were inspected
    regulation: str = "gdpr"
    delta: float | None = None
    reidentification: dict[str, Any] = field(default_factory=dict)  # k-anonymity and uniqueness
    consent: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)  # files scanned: encoding, delimiter, rows, malformed lines
    overridden: list[dict[str, Any]] = field(default_factory=list)  # detections a declaration overrode
    dismissed: list[dict[str, Any]] = field(default_factory=list)  # name-only detections the values contradict
    # Tensor features (ppmlops.risk.assess.tensor_columns): never quasi-identifiers, values not scanned.
    tensor_columns: list[dict[str, Any]] = field(default_factory=list)
    # With no consent column declared: columns whose name says consent (opt_in, gdpr_ok, ...).
    possible_consent_columns: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.possible_consent_columns and self.consent and not self.consent.get("declared"):
            self.possible_consent_columns = [c for c in self.source.get("columns", []) if looks_like_consent(c)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def identifiers_in_features(self) -> list[dict[str, Any]]:
        return [f for f in self.findings if f["category"] == DIRECT and f["in_features"]]

    def raise_if_identifiers_in_features(self) -> None:
        """Stop a run whose training columns hold a direct identifier (IdentifierInFeatures)."""
        leaked = self.identifiers_in_features()
        if leaked:
            raise IdentifierInFeatures(self.dataset_id, leaked, self)

    def summary(self) -> str:
        lines = [f"PRAM risk assessment of dataset {self.dataset_id}: score {self.score:.3f} ({self.level})",
                 "components (points = weight x value):"]
        for c in self.components:
            lines.append(f"  {c['name']:<19}{c['weight']:.2f} x {c['value']:.3f} = {c['points']:.3f}  {c['reason']}")
        lines.append(f"  {'total':<19}{sum(c['points'] for c in self.components):.3f}")
        if any(c["name"] == "identifiers" and c["value"] >= 1.0 for c in self.components):
            lines.append("  level is high because a direct identifier reaches a training column")
        lines.append(f"findings ({len(self.findings)}; values sampled from {self.sample_rows} usable rows):")
        for f in self.findings:
            if f["category"] == DIRECT:
                where = "IN TRAINING COLUMNS" if f["in_features"] else (
                    "pseudonymized, not trained on" if f.get("pseudonymized") else "not trained on")
            else:
                where = "a training column" if f["in_features"] else "not trained on"
            how = "+".join(f["detected_by"])
            share = (f"{f['share']:.0%} of sampled values match" if any(h.startswith("values") for h in f["detected_by"])
                     else f"{f['share']:.0%} of sampled rows filled")
            line = (f"  {f['column']}: {f['kind'].replace('_', ' ')}, {f['category'].replace('_', ' ')}, {where} "
                    f"(detected by {how}; {share}; confidence {f.get('confidence', 1.0):.2f})")
            if (f.get("kinds") and len(f["kinds"]) > 1) or f["kind"] == "free_text":
                line += " kinds " + ", ".join(f"{k} {v:.0%}" for k, v in f["kinds"].items())
            if f.get("basis"):
                line += f" [{f['basis']}]"
            if f.get("hipaa"):
                line += f" [HIPAA {f['hipaa'].split(')')[0]})]"
            if f["masked_examples"]:
                line += f", e.g. {', '.join(f['masked_examples'])}"
            lines.append(line)
        for o in self.overridden:
            lines.append(f"  override: {o['column']} was detected as {o['category'].replace('_', ' ')} "
                         f"({o['kind']}, by {'+'.join(o['detected_by'])}); the spec declares it {o['declared']}")
        for d in self.dismissed:
            lines.append(f"  dismissed: {d['column']}: {d['reason']}")
        for t in self.tensor_columns:
            lines.append(f"  tensor: {t['column']} (shape {t['shape']}, range {t['range']}, {t['dtype']}): {t['note']}")
        r = self.reidentification
        if r:
            lines.append(f"re-identification: k={r['k']} over {r['quasi_identifiers']}: {r['rows_below_k']} of "
                         f"{r['rows']} rows ({r['share_below_k']:.1%}) below k, {r['unique_rows']} unique "
                         f"({r['uniqueness']:.1%}), {r['classes']} classes")
        if self.consent.get("declared"):
            c = self.consent
            lines.append(f"consent: {c.get('rows_refused', 0)} of {c.get('rows_in', 0)} rows refused "
                         f"{c.get('refusals', {})}" + (f" as of {c['as_of']}" if c.get("as_of") else ""))
        elif self.consent:
            lines.append("consent: no consent column declared")
            for c in self.possible_consent_columns:
                lines.append(f"  possible consent column: {c}: declare it in dataset.consent "
                             f"(ppmlops risk scan: --consent-column {c})")
        if self.source.get("files"):
            for s in self.source["files"]:
                bad = (f", {s['rows_malformed']} malformed line(s) e.g. {s['malformed_lines'][:5]}"
                       if s.get("rows_malformed") else "")
                enc = f", {s['encoding']}, delimiter {s['delimiter']!r}" if s.get("encoding") else ""
                lines.append(f"source: {s['path']} ({s['format']}{enc}): {s['rows_in']} rows{bad}")
        return "\n".join(lines)
