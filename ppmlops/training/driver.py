"""The train stage as the Ray driver: encode the staged rows, draw the audit's canary coins, run
the workers (on Ray Train, or in this process for one worker without a cluster:
ppmlops.training.in_process), save the DP model. Used in-process and by the Ray job entry point."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os


from ppmlops.audit.canary import make_canaries
from ppmlops.errors import TrainingError
from ppmlops.privacy.ledger import Ledger
from ppmlops.privacy.session import PrivacySession
from ppmlops.run.grant import grant_of
from ppmlops.run.logs import library_logs
from ppmlops.run.records import Canaries, EpochRecord, PlanRecord, SearchResult, StagedData, TrainRecord
from ppmlops.run.context import RunContext
from ppmlops.training.worker_job import WorkerJob
from ppmlops.training.progress import followed


INIT_FILE, CANARY_SCORES_FILE = "model_init.pt", "canary_scores.npy"
# Canary columns are zeros in every row the workers hold, so they cost rows x columns floats:
# at most this many (16384 canaries on 32 hidden units; a logistic model's 2 units carry 1024).
MAX_CANARY_COLUMNS = 512


def first_layer_units(kind: str, hidden: list[int] | tuple[int, ...], n_outputs: int = 2) -> int:
    """The output width of build_model's first layer: where the gradient canaries live."""
    return int(n_outputs) if kind == "logistic" else int(hidden[0])


def canary_layer(ctx: RunContext) -> tuple[str | None, int]:
    """(the layer whose weight carries the canaries, its units): a built-in's first layer, or
    where the model's check placed them (None: the model has no layer that can; no canaries)."""
    if ctx.spec.model.own is None:
        trainable = ctx.spec.model.trainable
        if trainable and not any(t in ("0", "0.weight") for t in trainable):
            return None, 0  # the first layer is frozen: no real gradient reaches it, nor would a canary's
        return "0", first_layer_units(ctx.spec.model.kind, ctx.spec.model.hidden, ctx.spec.dataset.label.n_outputs)
    from ppmlops.training.model_check import checked

    check = checked(ctx)
    return check.canary_layer, check.canary_units


def canaries(ctx: RunContext, count: int, n_features: int) -> Canaries:
    """The run's canaries, drawn once (a retried task reuses them: the coins must not change).
    A private search trains several trials from fresh weights and does not carry canaries yet:
    it gets none, and its audit says so (0 canaries, no bound); so does a model whose check found
    no layer that can carry them (the card says why)."""
    kept = ctx.store.read_optional(Canaries)
    if kept is None:
        randomness = ctx.draws()
        layer, units = canary_layer(ctx)
        if layer is None or ctx.store.read(PlanRecord).privacy.search:
            count = 0
        count = min(count, units * MAX_CANARY_COLUMNS)
        made = make_canaries(count, n_features, max(units, 1), randomness.source("canaries"))
        # units 1 without a layer: a CanarySet needs one, and with no canaries it adds no column.
        kept = ctx.store.write(Canaries(n_features=n_features, units=max(units, 1), included=made.included.tolist(),
                                        layer=layer))
    return kept


def worker_job(ctx: RunContext, planned: PlanRecord) -> WorkerJob:
    """The run's job; an adaptive tuner starts from the best configuration earlier runs released."""
    from ppmlops.run.known import best_known

    spec, p, plan = ctx.spec, ctx.params, planned.privacy
    warm = tuple(planned.warm_start)
    lr, clip = spec.training.learning_rate, spec.training.max_grad_norm
    best = best_known(list(warm))
    if best is not None and ctx.tuner != "fixed":
        lr, clip = best.learning_rate, best.max_grad_norm
    return WorkerJob(plan=plan, ledger_url=ctx.settings.db_url, model_kind=spec.model.kind or "",
                     hidden=tuple(spec.model.hidden or ()), factory=spec.model.own, learning_rate=lr, warm_start=warm,
                     tuning_anchor=(spec.training.learning_rate, spec.training.max_grad_norm),
                     momentum=spec.training.momentum, max_grad_norm=clip, tuner=ctx.tuner,
                     seed=p.seed, workers=p.workers, use_gpu=p.use_gpu, cpus_per_worker=spec.ray.cpus_per_worker,
                     storage_path=str(ctx.store.ray_storage()), ray_address=ctx.settings.ray_address,
                     max_failures=spec.ray.max_failures, init_path=str(ctx.store.private_path(INIT_FILE)),
                     progress_path=str(ctx.store.progress_path), physical_batch=spec.training.max_physical_batch,
                     task=spec.dataset.label.task, n_outputs=spec.dataset.label.n_outputs,
                     pretrained=str(spec.model.init_path()) if spec.model.init is not None else None,
                     trainable=tuple(spec.model.trainable) if spec.model.trainable else None,
                     per_layer=spec.training.per_layer_clipping, precision=spec.training.precision)


progress = logging.getLogger("ppmlops.progress")
# A line in the task log when training has said nothing for this long (Ray and worker start-up
# included), so that a slow start reads as one and a hung one is noticed. Not in a private search:
# how many such lines it printed would grow with its secret trial count.
QUIET_AFTER_S = 30.0


def _unchanged_code(ctx: RunContext):
    """The factory module's version (None for a built-in), refused if it changed since assess
    checked the model: the check, the canaries' layer and the card would describe other code."""
    if ctx.spec.model.own is None:
        return None
    from ppmlops.training.factory import code_of
    from ppmlops.training.model_check import checked

    check = checked(ctx)
    now = code_of(check.factory)
    if now.sha256 != check.code.sha256:
        raise TrainingError(f"model.factory {check.factory!r}: module {now.module} changed after the run's model "
                            f"was checked at assess (sha256 {check.code.sha256} then, {now.sha256} now); start a "
                            "new run so that the model is checked again")
    return check.code


@contextlib.contextmanager
def _turn(ctx: RunContext):
    """On the embedded runtime, one run trains at a time on this machine (local_ray_turn), and
    the local Ray it starts is stopped when it is done, so the next run's process starts its own."""
    import ray

    from ppmlops.training.launch import local_ray_turn, shutdown_local_ray

    if ctx.settings.ray_address or os.environ.get("RAY_ADDRESS") or ray.is_initialized():
        yield  # a cluster, or a Ray this process's caller set up: theirs to manage
        return
    with local_ray_turn(ctx.settings.home / "locks" / "local-ray.lock", progress.warning):
        try:
            yield
        finally:
            shutdown_local_ray()


def in_process(ctx: RunContext, job: WorkerJob) -> bool:
    """Whether this run trains in this process (ppmlops.training.in_process) rather than on Ray
    Train: `ray.in_process`, by default when the run has one worker and no cluster is named."""
    chosen = ctx.spec.ray.in_process
    if chosen is not None:
        if chosen and job.workers != 1:
            raise TrainingError(f"run {ctx.run_id!r}: ray.in_process trains one worker; this run asks for {job.workers}")
        return chosen
    return job.workers == 1 and not (ctx.settings.ray_address or os.environ.get("RAY_ADDRESS"))


def train_here(ctx: RunContext) -> TrainRecord:
    import torch

    from ppmlops.training.in_process import train_in_process
    from ppmlops.training.launch import train_on_ray

    from ppmlops.data.features import feature_names
    from ppmlops.training.worker_job import Snapshot

    planned = ctx.store.read(PlanRecord)
    plan = planned.privacy
    result = ctx.store.read(StagedData).result
    # The workers read and encode their own rows (ppmlops.training.shards): this process holds
    # none. The encoded columns come from the spec's declarations alone.
    names = feature_names(ctx.spec)
    kept = canaries(ctx, plan.canaries, len(names))
    session = PrivacySession.open(Ledger(ctx.settings.db_url), grant_of(plan))  # a released grant is reserved again
    job = dataclasses.replace(worker_job(ctx, planned), canaries=kept,
                              canary_scores_path=str(ctx.store.private_path(CANARY_SCORES_FILE)),
                              snapshot=Snapshot.of(ctx.spec, result.snapshot_train, result.snapshot_test))
    here = in_process(ctx, job)
    try:
        code = _unchanged_code(ctx)
        if here:
            progress.info(f"[run {ctx.run_id}] training in this process (one worker, no Ray: ray.in_process)")
        with (contextlib.nullcontext() if here else _turn(ctx)), library_logs(ctx.store.private_dir, "ray"), \
                followed(job.progress_path, progress.info, quiet_after_s=None if plan.search else QUIET_AFTER_S):
            weights, outcome = (train_in_process if here else train_on_ray)(job)
    except TrainingError:
        session.recover().close()  # released when the run used none of it, kept otherwise
        raise
    from ppmlops.training.canary_scores import without_canary_columns
    from ppmlops.training.factory import saved_model

    state = without_canary_columns(weights, len(names), kept.layer)
    label = ctx.spec.dataset.label
    torch.save(saved_model(state, ctx.spec.model.kind, ctx.spec.model.hidden, names, ctx.spec.model.own, code,
                           label.task, label.n_outputs),
               ctx.store.model_path)
    session.recover()
    # A search's grant is never trimmed to usage (ppmlops.privacy.ledger): all of it is used.
    used = session.budget_epsilon if plan.search else session.used_epsilon
    return TrainRecord(
        model_path=str(ctx.store.model_path), n_features=len(names), epochs_completed=outcome.epochs_completed,
        stopped_reason=outcome.stopped_reason, history=[EpochRecord(**h) for h in outcome.history],
        usage_entries=outcome.usage_entries, tuner=ctx.tuner, randomness=plan.randomness,
        epsilon_used={p: used(p) for p in sorted(session.filters)}, timings=outcome.timings,
        search=SearchResult(**outcome.search) if outcome.search else None)
