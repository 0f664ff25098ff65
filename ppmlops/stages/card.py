"""The model card and the deploy manifest, each built once from the run's PUBLIC records.

Every number here is public (spec, policy), a charged DP release (noisy counts, noisy metrics),
or post-processing of those and of the DP model (the canary audit). The epsilon is the run's
fixed budget curve's (its guarantee under adaptive tuning), not what the epochs happened to use.
"""

from __future__ import annotations

from typing import Any

from ppmlops.compliance.documents import DeployManifest, ModelCard
from ppmlops.compliance.utility_inputs import deploy_metrics
from ppmlops.run.task_metrics import card_metrics
from ppmlops.run.records import (
    CountsRelease, EvaluationRecord, ModelCheck, PlanRecord, Pretrained, RiskAssessment, Staged, TrainRecord,
)
from ppmlops.run.context import RunContext


def run_randomness(ctx: RunContext, plan) -> str:
    """The run's weakest randomness mode over its plan AND every ledger entry it made.

    The plan's mode alone is not enough: a stage retried under another PPMLOPS_RANDOMNESS, or a
    release drawn before the plan, would hide behind a secure plan. One replayable entry makes the
    whole run's guarantee void, so the gate sees "reproducible" (or "unrecorded") then.
    """
    from ppmlops.privacy.ledger import Ledger

    modes = {e.randomness for e in Ledger(ctx.settings.db_url).entries(ctx.spec.dataset.id, run_id=ctx.run_id)}
    weaker = sorted((modes | {plan.randomness}) - {"secure"})
    return weaker[0] if weaker else "secure"


def _records(ctx: RunContext):
    s = ctx.store
    return (s.read(Staged), s.read(CountsRelease), s.read(PlanRecord).privacy, s.read(TrainRecord),
            s.read(EvaluationRecord), s.read(RiskAssessment))


def model_card(ctx: RunContext) -> ModelCard:
    staged, counts, plan, trained, evaluated, _ = _records(ctx)
    spec = ctx.spec
    return ModelCard.of({
        "model_name": spec.deploy.model_name, "pipeline": spec.name, "run_id": ctx.run_id,
        "dataset_id": spec.dataset.id, "data_fingerprint": staged.data_fingerprint, "data_window": staged.model_dump(mode="json")["window"],
        "data_queries": [q.model_dump(mode="json", exclude_none=True) for q in staged.queries],
        "rows_train": counts.rows_train, "rows_holdout": counts.rows_holdout,
        "rows_note": f"noisy counts (discrete Gaussian, sigma {counts.sigma_rows:.3g}), charged at assess",
        "model": model_section(ctx, trained),
        "epsilon": plan.epsilon, "delta": plan.delta, "epsilon_by_partition": plan.epsilon_by_partition,
        "epsilon_note": ("the run's fixed RDP budget curve (the privacy filter's guarantee), its count release "
                         "included; the epochs may have used less"),
        "epsilon_used": trained.epsilon_used, "run_epsilon_granted": plan.run_epsilon,
        "dataset_share_used": plan.dataset_share_after, "accounting_order": plan.accounting_order,
        "privacy_blocks": list(plan.blocks), "retired_blocks": [r.model_dump() for r in plan.retired_blocks],
        "blocks_note": ("each block of event time has its own lifetime budget; the run is charged to every block it "
                        "read and to no other; retired blocks (their budget could not afford the run) were left out"
                        if plan.blocks != ["all"] else "one block: the whole dataset shares one lifetime budget"),
        "privacy_unit": unit_text(spec, plan.unit_rows), "unit_note": unit_note(spec, plan.unit_rows),
        "accountant": "rdp", "privacy_filter": True, "sampling": "poisson", "randomness": run_randomness(ctx, plan),
        "noise_multiplier": plan.noise_multiplier, "sample_rate": plan.sample_rate, "steps": plan.steps_per_epoch,
        "epochs": trained.epochs_completed, "stopped_reason": trained.stopped_reason,
        "epoch_settings": [{"epoch": h.epoch, "noise_multiplier": h.noise_multiplier, "max_grad_norm": h.max_grad_norm,
                            "learning_rate": h.learning_rate} for h in trained.history],
        "tuner": trained.tuner, "search": _search(plan, trained),
        "metrics": card_metrics(evaluated),
        "metrics_note": (f"noisy releases on the held-out partition (discrete Gaussian, effective sigma "
                         f"{evaluated.sigma:.3g}), charged to the ledger"),
        "privacy_audit": evaluated.audit.model_dump(),
        "intended_use": spec.description or f"{spec.name} retraining",
    })


def model_section(ctx: RunContext, trained: TrainRecord) -> dict[str, Any]:
    """What was trained: a built-in's kind, or the spec's factory with its args and the code's
    version, as checked before the run spent anything (ModelCheck)."""
    spec = ctx.spec
    tuned = ctx.store.read_optional(Pretrained)
    fine_tuning = ({"fine_tuning": {
        "init": tuned.init, "sha256": tuned.sha256, "loaded": len(tuned.loaded), "kept": tuned.kept,
        "trainable": tuned.trainable, "trainable_parameters": tuned.trainable_parameters,
        "frozen_parameters": tuned.frozen_parameters, "note": tuned.note}} if tuned is not None else {})
    if tuned is not None and spec.model.own is None and "0.weight" not in tuned.trainable:
        fine_tuning["fine_tuning"]["canaries"] = ("none: the first layer, where the canaries would live, is "
                                                  "frozen (model.trainable), so the audit gives no bound")
    return model_of(ctx, trained) | input_of(spec) | fine_tuning


def input_of(spec) -> dict[str, Any]:
    """A tensor feature's declaration (public): what the model takes and how it was scaled."""
    from ppmlops.spec import tensor_of

    tensor = tensor_of(spec.dataset.features)
    if tensor is None:
        return {}
    return {"input": {"tensor": tensor.name, "shape": list(tensor.shape), "dtype": tensor.dtype,
                      "range": list(tensor.range),
                      "note": ("each value clipped to the declared range and scaled to [0, 1] from it (never from the "
                               "data); the model received each row flat, prod(shape) values in C order")}}


def model_of(ctx: RunContext, trained: TrainRecord) -> dict[str, Any]:
    spec = ctx.spec
    if spec.model.own is None:
        return {"kind": spec.model.kind, "hidden": list(spec.model.hidden or []), "n_features": trained.n_features}
    check = ctx.store.read_optional(ModelCheck)
    if check is None:  # not checked: nothing trained (assess checks before anything is charged)
        return {"factory": spec.model.factory, "args": dict(spec.model.args), "n_features": trained.n_features}
    plan = ctx.store.read_optional(PlanRecord)
    searched = plan is not None and plan.privacy.search is not None
    out = {"factory": check.factory, "args": check.args, "n_features": trained.n_features,
           "n_outputs": check.n_outputs, "parameters": check.parameters, "code": check.code.model_dump(),
           "code_note": ("sha256 of the factory's module file when the run was checked; code it imports is "
                         "covered by its distribution's version only"),
           "clipping": check.clipping,
           "canaries": ("none: a private search carries no canaries (an audit of 0 canaries gives no bound)"
                        if searched else check.canary_note)}
    if check.replaced:
        out["fix_batchnorm"] = {"replaced": check.replaced,
                                "note": ("model.fix_batchnorm: Opacus's ModuleValidator.fix replaced these layers "
                                         "(BatchNorm mixes rows) before training; the model trained and served is "
                                         "the factory's model with those replacements")}
    return out


def unit_text(spec, k: int) -> str:
    """The unit of privacy the run was accounted for (ppmlops.privacy.unit), as the card says it."""
    from ppmlops.privacy.unit import describe

    unit = spec.privacy.unit
    return "unit: " + describe(k, unit.column if unit is not None else None)


def unit_note(spec, k: int) -> str:
    unit = spec.privacy.unit
    if unit is None:
        return ("neighbouring datasets differ by one row: the epsilon protects each row; a person with several rows "
                "is protected only as far as their rows' losses add up (group privacy)")
    return (f"neighbouring datasets differ by one person's rows (column {unit.column}): each run kept at most {k} "
            f"row{'s' if k != 1 else ''} per person, chosen by a keyed hash of the person id and never by a value "
            "(the rest quarantined, in no count), and was charged for all of them at once. A person with rows in "
            "several privacy blocks is protected per block: their loss across blocks composes (adds up over the "
            "blocks they have rows in), as it does over the runs that read the same block")


def _search(plan, trained: TrainRecord) -> dict[str, Any] | None:
    if plan.search is None or trained.search is None:
        return None
    s = plan.search
    return {"trials": f"random, {s.distribution}; how many ran is secret",
            "space": ({"grid (learning_rate, max_grad_norm)": [list(g) for g in s.grid]} if s.grid else
                      {"learning_rate": list(s.learning_rate), "max_grad_norm": list(s.max_grad_norm), "scale": "log"}),
            "trial_tuner": s.tuner, "chosen": trained.search.model_dump(), "epsilon": plan.epsilon,
            "note": ("Papernot & Steinke 2022: the best of K trials, each scored by a noisy held-out accuracy "
                     f"(discrete Gaussian, sigma {s.score_sigma:.3g}"
                     + ("" if s.tuner == "fixed" else f", released as one after each of the trial's {plan.epochs} "
                        f"epochs at sigma {s.score_sigma * plan.epochs ** 0.5:.3g}: the same Renyi curve")
                     + "); the epsilon covers the whole search"),
            # The bound needs K secret; the files and logs keep it so, a clock does not.
            "not_covered": ("the search's wall-clock duration grows with how many trials ran (the train task's "
                            "duration and the train record's timings show it): a timing channel this epsilon "
                            "does not cover")}


def manifest(ctx: RunContext) -> DeployManifest:
    """The deploy gate's input (data.ppmlops.deploy)."""
    staged, counts, plan, trained, evaluated, risk = _records(ctx)
    spec = ctx.spec
    return DeployManifest.of({
        "run": {"id": ctx.run_id, "environment": ctx.params.environment},
        "dataset": {"id": spec.dataset.id, "regulation": spec.dataset.regulation, "rows": max(1, counts.rows_train),
                    "epsilon_budget": spec.privacy.epsilon, "delta": plan.delta, "public": spec.dataset.public},
        "risk": {"score": risk.score, "level": risk.level},
        "privacy": {
            "accountant": "rdp", "filter": True, "randomness": run_randomness(ctx, plan),
            "epsilon": plan.epsilon, "epsilon_granted": plan.run_epsilon,
            "epsilon_used": max(trained.epsilon_used.values(), default=0.0), "delta": plan.delta,
            "dataset_share_used": plan.dataset_share_after, "noise_multiplier": plan.noise_multiplier,
            "sample_rate": plan.sample_rate, "steps": plan.steps_per_epoch,
        },
        "metrics": deploy_metrics(evaluated, spec.deploy),
        "audit": evaluated.audit.model_dump(),
        "model_card": model_card(ctx),
    })
