"""assess: PRAM's exact report (private), the run's noisy counts (charged), the public risk score.

The counts are one release (ppmlops.privacy.releases), charged to every partition before it is
drawn: every source row falls in exactly one bin of (training, held out, quarantined for each
reason), so that histogram has sensitivity 1, and so has the staged rows' (partition, class)
one; the rows in equivalence classes smaller than k over the public quasi-identifiers move by at
most k - 1 when one row is added or removed. The bins are fixed by the code, never by the data,
so which reasons occurred is not revealed either. With a person unit (privacy.unit: at most
max_rows = m rows per person, ppmlops.privacy.unit) one person moves each of these by m times
as much: the release is charged as unit_scaled(segment, m) and drawn with m times the noise;
rows the person bound dropped are in no bin. This is also where a dataset is first
registered in the ledger: its first charge. Before it, a model of the spec's own (model.factory) is
built and checked on public inputs (ppmlops.training.model_check): one that cannot train is refused
with nothing charged.
"""

from __future__ import annotations

from ppmlops.data import ingest as ingest_mod, read_progress
from ppmlops.errors import PpmlopsError
from ppmlops.privacy.accountant import calibrate_noise, epsilon_from_rdp
from ppmlops.privacy.identity import claim_source
from ppmlops.privacy.ledger import HOLDOUT, TRAIN, Charge, Ledger, PrivacyUnit
from ppmlops.privacy.blocks import calendar_of
from ppmlops.privacy.lifetime import LifetimeBudget, spec_run_curve
from ppmlops.privacy.releases import CountGroup, noisy_counts, release_segment, sigmas_for
from ppmlops.privacy.unit import row_noise, unit_scaled
from ppmlops.risk.categories import DIRECT
from ppmlops.risk.classify import Classification
from ppmlops.risk.public import public_assessment, public_classification, quasi_identifier_features
from ppmlops.risk.report import IdentifierInFeatures
from ppmlops.risk.score import K_BY_REGULATION
from ppmlops.run.records import CountsRelease, ExactRisk, RiskAssessment, Staged, StagedData
from ppmlops.stages import precheck
from ppmlops.run.context import RunContext
from ppmlops.stages.context import timed
from ppmlops.stages.refusal import refuse, refuses

# Quarantine bins, fixed in code: a bin per reason whatever the data holds.
REASONS = (ingest_mod.NO_CONSENT, ingest_mod.INVALID_LABEL, ingest_mod.INVALID_VALUE,
           ingest_mod.UNKNOWN_CATEGORY, ingest_mod.MALFORMED_LINE)
OTHER = "other"


def unit_of(privacy) -> PrivacyUnit:
    """The spec's unit of privacy as the ledger records it (one row when none is named)."""
    u = privacy.unit
    return PrivacyUnit() if u is None else PrivacyUnit(u.column, u.max_rows)


def register(ctx: RunContext, ledger: Ledger, split_rule: str | None = None) -> LifetimeBudget:
    """The dataset's lifetime budget, blocks and split rule (fixed on first use; a changed spec is
    refused, not applied). `split_rule` is the rule the run's ingest used (None: before ingest)."""
    spec = ctx.spec
    claim_source(ctx.settings.db_url, spec, ctx.settings.source_urls)  # a new id over another dataset's rows would reset their budget
    return ledger.register_dataset(spec.dataset.id, epsilon_budget=spec.privacy.epsilon, delta=spec.privacy.delta,
                                   order=spec.privacy.accounting_order, run_curve=spec_run_curve(spec),
                                   calendar=calendar_of(spec.privacy), unit=unit_of(spec.privacy),
                                   split_rule=split_rule)


def _exact_counts(result, k_unsafe: int | None) -> dict[str, dict[str, int]]:
    quarantined = {r: 0 for r in REASONS} | {OTHER: 0}
    for reason, n in result.quarantine_reasons.items():
        quarantined[reason if reason in REASONS else OTHER] += int(n)
    rows = {"train": result.rows_train, "holdout": result.rows_test} | {f"quarantine:{r}": n for r, n in quarantined.items()}
    return {"rows": rows} | ({"k": {"k_unsafe": k_unsafe}} if k_unsafe is not None else {})


def _label_counts(result, label) -> dict[str, int]:
    """Exact rows by partition and class (private; released only with noise, for the plan's check
    that neither partition holds a single class). Binary: the positive and negative rows, as
    always; multiclass: one count per declared class; regression: the rows below and at or above
    the declared range's midpoint (a public threshold: a spread the plan's report shows)."""
    import pandas as pd

    out = {}
    for part, path in (("train", result.snapshot_train), ("holdout", result.snapshot_test)):
        values = pd.read_parquet(path, columns=[label.column])[label.column].astype("string")
        if label.task == "binary":
            positive = int((values == label.positive).sum())
            out |= {f"{part}:positive": positive, f"{part}:negative": len(values) - positive}
        elif label.task == "multiclass":
            out |= {f"{part}:{c}": int((values == c).sum()) for c in label.classes}
        else:
            mid = (label.range[0] + label.range[1]) / 2
            high = int((pd.to_numeric(values, errors="coerce") >= mid).sum())
            out |= {f"{part}:low": len(values) - high, f"{part}:high": high}
    return out


def _k_unsafe(snapshot: str, qi: list[str], k: int) -> int | None:
    if not qi:
        return None
    import pandas as pd

    from ppmlops.risk.kanon import class_stats

    return int(class_stats(pd.read_parquet(snapshot, columns=qi), qi, k).rows_below_k)


def release_counts(ctx: RunContext, ledger: Ledger, found: Classification) -> CountsRelease:
    """Charge, draw and record the run's counts; a retried stage reuses what it released."""
    done = ctx.store.read_optional(CountsRelease)
    if done is not None:
        for entry in done.ledger_entries:
            ledger.complete(entry)
        return done
    spec, result = ctx.spec, ctx.store.read(StagedData).result
    k = K_BY_REGULATION[spec.dataset.regulation]
    exact = (_exact_counts(result, _k_unsafe(result.snapshot_train, quasi_identifier_features(spec, found), k))
             | {"labels": _label_counts(result, spec.dataset.label)})
    # Under a person unit (privacy.unit) one person moves every count by up to max_rows times its
    # per-row sensitivity: the noise grows k-fold so that the release still costs stats_epsilon.
    unit = spec.privacy.unit_rows
    sigma = row_noise(calibrate_noise(spec.privacy.stats_epsilon, spec.privacy.delta, 1.0, 1), unit)
    names = list(exact)
    sens = [k - 1 if g == "k" else 1 for g in names]
    # The row counts size the run and decide the consent check: they get most of the release's
    # precision (the class counts, which only need to show both classes, and the k-anonymity count
    # each contribute a quarter of the rows' RDP).
    weights = [{"rows": 1.0, "labels": 2.0}.get(g, 2.0 * (k - 1)) for g in names]
    groups = {g: CountGroup(s, n) for g, s, n in zip(names, sigmas_for(sigma, weights, sens), sens)}
    segment = unit_scaled(release_segment(list(groups.values())), unit)
    note = f"noisy row counts by partition (and class) and quarantine reason{', and k-anonymity' if 'k' in groups else ''}"
    draws = ctx.draws()  # refuses a replayable mode on real data before anything is charged or drawn
    entries = ledger.charge(dataset_id=spec.dataset.id, run_id=ctx.run_id, kind="release", key="counts",
                            charges=[Charge(p, segment, "gaussian", note) for p in (TRAIN, HOLDOUT)],
                            randomness=ctx.randomness, blocks=ctx.store.read(Staged).blocks)
    noisy = noisy_counts(exact, groups, draws.source("counts"))
    rows = noisy.values["rows"]
    record = ctx.store.write(CountsRelease(
        rows_train=rows["train"], rows_holdout=rows["holdout"],
        quarantined={r: rows[f"quarantine:{r}"] for r in (*REASONS, OTHER)}, k=k,
        k_unsafe_rows=noisy.values["k"]["k_unsafe"] if "k" in noisy.values else None,
        sigma_rows=groups["rows"].sigma, sigma_k=groups["k"].sigma if "k" in groups else None,
        noise_multiplier=segment.noise_multiplier, ledger_entries=entries,
        labels=noisy.values["labels"], sigma_labels=groups["labels"].sigma,
        epsilon=epsilon_from_rdp(Charge(TRAIN, segment).rdp(), spec.privacy.delta)[0]))
    for entry in entries:
        ledger.complete(entry)
    return record


def check_model(ctx: RunContext) -> None:
    """The spec's own model (model.factory), built and checked on public inputs alone, and its
    pretrained weights and frozen parameters (model.init, model.trainable)
    (ppmlops.training.model_check; torch is imported for it only); a plain built-in needs none."""
    model = ctx.spec.model
    if model.own is not None or model.init is not None or model.trainable:
        from ppmlops.training.model_check import check_pretrained, checked

        check_pretrained(ctx)
        check = checked(ctx)
        if check is not None and check.clipping != "linear":
            from ppmlops.errors import ModelError
            from ppmlops.training.private_model import per_layer_refusal, precision_refusal

            if ctx.spec.training.per_layer_clipping:
                raise ModelError(f"model.factory {check.factory!r}: {per_layer_refusal(check.clipping)}")
            if ctx.spec.training.precision == "bf16":
                raise ModelError(f"model.factory {check.factory!r}: {precision_refusal(check.clipping)}")


def _exact_report(ctx: RunContext) -> None:
    """The officer's detailed report, with value-based findings: private, in the run folder only."""
    from ppmlops.risk.assess import assess

    staged = ctx.store.read(StagedData).result
    # A partitioned window read the files of its interval: the report must scan the same ones.
    partition = staged.window.interval() if staged.window.mode == "partition" else None
    scan = {}
    if ctx.settings.ray_address and ctx.settings.ray_ingest:  # on the cluster, as ingest read it
        from functools import partial

        from ppmlops.risk.ray_scan import scan_on_cluster

        scan = {"scan": partial(scan_on_cluster, address=ctx.settings.ray_address)}
    with read_progress.in_task_log("assess: risk scan of the source"):
        report = assess(ctx.spec, staged, partition=partition, connections=ctx.settings.source_urls, **scan)
    ctx.store.write_private_text("risk.txt", report.summary())
    ctx.store.write(ExactRisk(report=report.to_dict()))


@timed
def run(ctx: RunContext) -> RiskAssessment:
    result = ctx.store.read(StagedData).result
    found = public_classification(ctx.spec, result.columns + result.dropped_columns)
    leaked = [f for f in found.findings if f["category"] == DIRECT and f["in_features"]]
    _exact_report(ctx)
    if leaked:
        err = IdentifierInFeatures(ctx.spec.dataset.id, leaked)
        refuse(ctx, "assess", [str(err)], err)
    ledger = Ledger(ctx.settings.db_url)
    try:
        check_model(ctx)  # a model that cannot train is refused before anything is charged
        precheck.run(ctx, ledger)  # a run that cannot train is refused before its counts are charged
        register(ctx, ledger, result.split_rule or None)
        counts = release_counts(ctx, ledger, found)
    except PpmlopsError as err:  # a changed budget in the spec, or a lifetime budget that is spent
        if not refuses(err):
            raise
        refuse(ctx, "assess", [str(err)], err)
    return public_assessment(ctx.spec, found, counts)
