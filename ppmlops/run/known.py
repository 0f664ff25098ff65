"""What earlier runs of a pipeline released about their settings, for the next run's tuner (warm start).

A weekly retrain should begin near the best configuration known, not at the spec's defaults.
Everything read here is a public record of an earlier run (ppmlops.run.records): the settings
each epoch used with the noisy holdout accuracy released after it, a search's chosen trial with
its noisy score, and the noisy final evaluation with the settings the run ended at. Each was
charged to the ledger when it was released; reading them again is post-processing, so starting
from them costs nothing. Choosing a run's settings from earlier releases is adaptivity across runs,
which the dataset's lifetime filter allows (Feldman & Zrnic 2021).

Torch-free: the plan stage reads it; the tuners get the results (ppmlops.tuning.protocol.PriorResult).
"""

from __future__ import annotations

import math
from pathlib import Path

from ppmlops.errors import PpmlopsError
from ppmlops.run.records import EpochRecord, EvaluationRecord, KnownResult, PlanRecord, SearchResult, TrainRecord
from ppmlops.run.store import RunStore

# The newest results only: the data drifts between retrains, and the GP's cost grows with points.
MAX_RESULTS = 40


def _of_run(store: RunStore) -> list[KnownResult]:
    try:
        trained, evaluated = store.read_optional(TrainRecord), store.read_optional(EvaluationRecord)
        plan = store.read_optional(PlanRecord)
    except PpmlopsError:  # a record from another version: that run teaches nothing here
        return []
    if trained is None or plan is None:
        return []
    return released_results(plan.privacy.run_id, plan.privacy.epochs, trained.history, trained.search,
                            evaluated.accuracy if evaluated is not None else None)


def released_results(run_id: str, epochs: int, history: list[EpochRecord], search: SearchResult | None,
                     evaluation_accuracy: float | None = None) -> list[KnownResult]:
    """A run's released results: each epoch's settings with the noisy accuracy after it, a search's
    chosen trial (its epochs and its score), and the noisy evaluation at the settings it ended at."""
    epochs = max(1, epochs)
    out = [KnownResult(run_id=run_id, learning_rate=h.learning_rate, max_grad_norm=h.max_grad_norm,
                       progress=h.epoch / epochs, accuracy_noisy=h.holdout_accuracy_noisy,
                       what=f"epoch {h.epoch} of {epochs}")
           for h in history if h.holdout_accuracy_noisy is not None]
    if search is not None:
        out += [KnownResult(run_id=run_id, learning_rate=e.learning_rate, max_grad_norm=e.max_grad_norm,
                            progress=e.epoch / epochs, accuracy_noisy=e.holdout_accuracy_noisy,
                            what=f"search's chosen trial, epoch {e.epoch} of {epochs}")
                for e in search.schedule[:-1]]  # its last epoch is the score, just below
        lr, clip = search.learning_rate, search.max_grad_norm
        out.append(KnownResult(run_id=run_id, learning_rate=lr, max_grad_norm=clip, progress=1.0,
                               accuracy_noisy=search.holdout_accuracy_noisy, what="search"))
    elif history:
        lr, clip = history[-1].learning_rate, history[-1].max_grad_norm
    else:
        return out
    if evaluation_accuracy is not None and math.isfinite(evaluation_accuracy):
        out.append(KnownResult(run_id=run_id, learning_rate=lr, max_grad_norm=clip, progress=1.0,
                               accuracy_noisy=evaluation_accuracy, what="evaluation"))
    return out


def known_results(runs_dir: Path, pipeline: str, *, exclude_run: str | None = None) -> list[KnownResult]:
    """The newest MAX_RESULTS released results of the pipeline's earlier runs, oldest first
    (reading back from the newest run, so a long-lived pipeline's plan reads a few folders only)."""
    newest_first: list[list[KnownResult]] = []
    for store in reversed(RunStore.of_pipeline(runs_dir, pipeline)):
        results = _of_run(store)
        if results and results[0].run_id != exclude_run:
            newest_first.append(results)
        if sum(map(len, newest_first)) >= MAX_RESULTS:
            break
    return [r for results in reversed(newest_first) for r in results][-MAX_RESULTS:]


def best_known(results: list[KnownResult]) -> KnownResult | None:
    """The best end-of-run result (a run's evaluation or a search's chosen trial)."""
    ends = [r for r in results if r.progress >= 1.0]
    return max(ends, key=lambda r: r.accuracy_noisy, default=None)
