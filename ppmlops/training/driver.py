"""The train stage as the Ray driver: encode the staged rows, add the canaries the coins let in,
run the workers, save the DP model. Used in-process and by the Ray job entry point."""

from __future__ import annotations

import contextlib
import logging
import os

import numpy as np

from ppmlops.audit.canary import CanarySet, make_canaries
from ppmlops.errors import TrainingError
from ppmlops.privacy.ledger import Ledger
from ppmlops.privacy.randomness import Randomness
from ppmlops.privacy.session import PrivacySession
from ppmlops.run.grant import grant_of
from ppmlops.run.logs import library_logs
from ppmlops.run.records import Canaries, EpochRecord, PlanRecord, SearchResult, StagedData, TrainRecord
from ppmlops.run.context import RunContext
from ppmlops.training.job import WorkerJob
from ppmlops.training.loop import Arrays
from ppmlops.training.progress import PROGRESS_FILE, followed


def encoded(ctx: RunContext, snapshot: str):
    import pandas as pd

    from ppmlops.data.features import encode

    return encode(pd.read_parquet(snapshot), ctx.spec)


INIT_FILE, FULL_MODEL_FILE = "model_init.pt", "model_with_canaries.pt"


def canaries(ctx: RunContext, count: int, n_features: int) -> CanarySet:
    """The run's canaries, drawn once (a retried task reuses them: the coins must not change)."""
    kept = ctx.store.read_optional(Canaries)
    if kept is None:
        randomness = (Randomness.secure() if ctx.randomness == "secure"
                      else Randomness.reproducible(ctx.params.seed, ctx.run_id))
        made = make_canaries(count, n_features, randomness.source("canaries"))
        kept = ctx.store.write(Canaries(n_features=n_features, scale=made.scale, labels=made.labels.tolist(),
                                        included=made.included.tolist()))
    return CanarySet(kept.n_features, np.asarray(kept.labels, dtype=np.int64), np.asarray(kept.included, dtype=bool),
                     kept.scale)


def worker_job(ctx: RunContext, planned: PlanRecord) -> WorkerJob:
    """The run's job; an adaptive tuner starts from the best configuration earlier runs released."""
    from ppmlops.run.known import best_known

    spec, p, plan = ctx.spec, ctx.params, planned.privacy
    warm = tuple(planned.warm_start)
    lr, clip = spec.training.learning_rate, spec.training.max_grad_norm
    best = best_known(list(warm))
    if best is not None and ctx.tuner != "fixed":
        lr, clip = best.learning_rate, best.max_grad_norm
    return WorkerJob(plan=plan, ledger_url=ctx.settings.db_url, model_kind=spec.model.kind,
                     hidden=tuple(spec.model.hidden), learning_rate=lr, warm_start=warm,
                     tuning_anchor=(spec.training.learning_rate, spec.training.max_grad_norm),
                     momentum=spec.training.momentum, max_grad_norm=clip, tuner=ctx.tuner,
                     seed=p.seed, workers=p.workers, use_gpu=p.use_gpu, cpus_per_worker=spec.ray.cpus_per_worker,
                     storage_path=str(ctx.store.root / "ray"), ray_address=ctx.settings.ray_address,
                     max_failures=spec.ray.max_failures, init_path=str(ctx.store.private_dir / INIT_FILE),
                     progress_path=str(ctx.store.root / PROGRESS_FILE))


progress = logging.getLogger("ppmlops.progress")


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


def train_here(ctx: RunContext) -> TrainRecord:
    import torch

    from ppmlops.training.launch import train_on_ray

    planned = ctx.store.read(PlanRecord)
    plan = planned.privacy
    result = ctx.store.read(StagedData).result
    X, y, names = encoded(ctx, result.snapshot_train)
    X_holdout, y_holdout, _ = encoded(ctx, result.snapshot_test)
    audit_set = canaries(ctx, plan.canaries, X.shape[1])
    members, member_labels = audit_set.members
    arrays = Arrays(np.vstack([audit_set.pad(X), members]), np.concatenate([y, member_labels]),
                    audit_set.pad(X_holdout), y_holdout)
    session = PrivacySession.open(Ledger(ctx.settings.db_url), grant_of(plan))  # a released grant is reserved again
    job = worker_job(ctx, planned)
    try:
        with _turn(ctx), library_logs(ctx.store.private_dir, "ray"), followed(job.progress_path, progress.info):
            weights, outcome = train_on_ray(job, arrays)
    except TrainingError:
        session.recover().close()  # released when the run used none of it, kept otherwise
        raise
    from ppmlops.training.canary_scores import without_canary_columns

    torch.save(weights, ctx.store.private_dir / FULL_MODEL_FILE)  # the audit scores its canary columns
    torch.save({"state_dict": without_canary_columns(weights, len(names)), "kind": ctx.spec.model.kind,
                "hidden": list(ctx.spec.model.hidden), "features": names}, ctx.store.model_path)
    session.recover()
    # A search's grant is never trimmed to usage (ppmlops.privacy.ledger): all of it is used.
    used = session.budget_epsilon if plan.search else session.used_epsilon
    return TrainRecord(
        model_path=str(ctx.store.model_path), n_features=len(names), epochs_completed=outcome.epochs_completed,
        stopped_reason=outcome.stopped_reason, history=[EpochRecord(**h) for h in outcome.history],
        usage_entries=outcome.usage_entries, tuner=ctx.tuner, randomness=plan.randomness,
        epsilon_used={p: used(p) for p in sorted(session.filters)}, timings=outcome.timings,
        search=SearchResult(**outcome.search) if outcome.search else None)
