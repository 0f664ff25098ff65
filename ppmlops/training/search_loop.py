"""A private hyperparameter search on the Ray Train workers (ppmlops.privacy.search).

Rank 0 draws K from the plan's trial-count distribution with the run's CSPRNG, then for each
trial a learning rate and clip norm, log-uniform over the spec's ranges, independently of the
data. Every rank trains the trial (fresh weights, the plan's epochs at the plan's noise), rank 0
scores it with a noisy accuracy on the held-out rows and keeps the best. With the plan's search
tuner `bayes`, rank 0's tuner steers each trial's clip norm and learning rate after every epoch
on the trial's own noisy accuracies (drawn so that together they cost what one score does); the
trial is then one draw of an adaptive mechanism with a fixed curve, which the bound allows. Only the best trial's
settings, weights and score leave the run folder; the search's whole cost was granted at plan.

K is secret, so nothing the search leaves where others may look counts its trials. K, the trials
done and the best trial so far are kept in one private file (`SearchProgress`, in the run's Ray
Train folder under private/), rewritten in place after each trial: a retried task continues the
same search with the same K (drawing K again after a failure would change its distribution). Ray
Train gets one report, with the chosen trial's checkpoint, when the search ends: a report per trial
would put K in Ray's checkpoint count, its run snapshot and its log lines. No line in the task log
says how many trials ran or which one won. The search's duration still grows with K: a timing
channel that the bound does not cover (the model card says so).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import asdict
from typing import Callable

import numpy as np
import torch

from ppmlops.errors import TrainingError
from ppmlops.privacy.search import TrialCount
from ppmlops.training.worker_job import WorkerJob
from ppmlops.training.loop import (
    INIT_FILE, MODEL_FILE, OPTIMIZER_FILE, STATE_FILE, Arrays, Checkpoints, Comm, LoopState, WorkerTimes,
    as_tensor, say, train_epoch,
)
from ppmlops.training.factory import job_net
from ppmlops.training.tasks import predict, scores, target_dtype
from ppmlops.training.sampling import LockstepPoissonSampler
from ppmlops.tuning import signals
from ppmlops.tuning.protocol import BudgetView, EpochSettings
from ppmlops.tuning.protocol import SIGNAL

def _draw_settings(job: WorkerJob, source) -> dict[str, float]:
    """One trial's settings, from the plan's public distribution only (never from the data)."""
    s = job.plan.search
    u = source.uniform(3)
    if s.grid:
        lr, clip = s.grid[min(int(u[0] * len(s.grid)), len(s.grid) - 1)]
        return {"learning_rate": float(lr), "max_grad_norm": float(clip)}
    near = s.centre is not None and u[2] < 0.5

    def log_uniform(lo_hi: tuple[float, float], x: float, centre: float | None) -> float:
        lo, hi = (math.log(v) for v in lo_hi)
        if near and centre is not None:  # within a factor of 2 of the best known, inside the range
            c = min(max(math.log(centre), lo), hi)
            lo, hi = max(lo, c - math.log(2)), min(hi, c + math.log(2))
        return float(math.exp(lo + (hi - lo) * x))

    centre = s.centre or (None, None)
    return {"learning_rate": log_uniform(s.learning_rate, u[0], centre[0]),
            "max_grad_norm": log_uniform(s.max_grad_norm, u[1], centre[1])}


def _noisy_accuracy(X_holdout: torch.Tensor, y_holdout: np.ndarray, net: torch.nn.Module, sigma: float,
                    source, task: str = "binary") -> float:
    """The task's noisy held-out signal (ppmlops.tuning.signals.noisy_signal): for a classifier
    (correct, wrong) plus the discrete Gaussian of scale `sigma`."""
    if not len(y_holdout):
        return 0.5
    return signals.noisy_signal(task, scores(task, predict(net, X_holdout, task), y_holdout), sigma, source)


def _release_sigma(plan) -> float:
    """Each noisy accuracy a trial releases. A fixed trial releases one, at the planned score
    sigma; a tuned trial one after each of its E epochs at sqrt(E) times it: E Gaussian releases
    at sigma sqrt(E) have exactly the Renyi curve of one at sigma, so the plan's bound holds."""
    return plan.search.score_sigma * (math.sqrt(plan.epochs) if plan.search.tuner != "fixed" else 1.0)


def _trial_tuner(job: WorkerJob, settings: dict, trial: int):
    from ppmlops.tuning.registry import make_tuner

    if job.plan.search.tuner == "fixed":
        return None
    return make_tuner(job.plan.search.tuner, seed=job.seed * 1000 + trial, learning_rate=settings["learning_rate"],
                      max_grad_norm=settings["max_grad_norm"], prior=job.warm_start,
                      anchor=job.tuning_anchor or (job.learning_rate, job.max_grad_norm), trial=True)


def _train_trial(job: WorkerJob, settings: dict, X, y, holdout, comm: Comm, device, randomness, trial: int,
                 sampler: LockstepPoissonSampler):
    """One trial from fresh weights; returns (initial weights, trained net, its epochs) on every
    rank. A tuned trial's epochs (rank 0's tuner, broadcast) hold each epoch's settings and the
    noisy held-out accuracy after it; the last one is the trial's score."""
    from ppmlops.training.private_model import make_private_model

    plan = job.plan
    torch.manual_seed(randomness.torch_seed("init", trial))
    net = job_net(job, X.shape[1])
    init = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    model = make_private_model(net, noise_multiplier=plan.noise_multiplier, max_grad_norm=settings["max_grad_norm"],
                               learning_rate=settings["learning_rate"], momentum=job.momentum,
                               divisor=plan.divisor, device=device, clipping=job.clipping,
                               physical_batch=job.physical_batch, task=job.task,
                               per_layer=job.per_layer, precision=job.precision)
    tuner = _trial_tuner(job, settings, trial) if comm.rank == 0 else None
    current = EpochSettings(plan.noise_multiplier, settings["max_grad_norm"], settings["learning_rate"])
    epochs: list[dict] = []
    for epoch in range(1, plan.epochs + 1):
        if plan.search.tuner != "fixed":
            if tuner is not None:
                # No budget view: the trial's noise is the search's, whatever the tuner would like.
                view = BudgetView((), plan.sample_rate, plan.steps_per_epoch, plan.epochs - epoch + 1, plan.delta)
                proposed = tuner.propose(epoch, epochs, current, view).settings
                current = EpochSettings(plan.noise_multiplier, proposed.max_grad_norm, proposed.learning_rate)
            current = EpochSettings(**comm.broadcast(asdict(current) if comm.rank == 0 else None))
        model.set_epoch(noise_multiplier=plan.noise_multiplier, max_grad_norm=current.max_grad_norm,
                        learning_rate=current.learning_rate,
                        noise_source=randomness.source("noise", trial, epoch) if comm.rank == 0 else None)
        train_epoch(model, sampler, X, y, randomness.source("sample", trial, epoch, comm.rank), device)
        if tuner is not None:
            acc = _noisy_accuracy(*holdout, model.net, _release_sigma(plan),
                                  randomness.source("search-score", trial, epoch), job.task)
            epochs.append({"epoch": epoch, "learning_rate": current.learning_rate,
                           "max_grad_norm": current.max_grad_norm, SIGNAL: acc})
    return init, model.net, epochs


class SearchProgress:
    """K, the trials done and the best trial so far (its settings, score, weights and initial
    weights): one file, rewritten in place (a new file renamed over the old, mode 0600) on rank 0
    after each trial. PRIVATE: it lives in the run's private Ray Train folder."""

    def __init__(self, path: str):
        self.path = path

    def load(self) -> tuple[LoopState, dict | None] | None:
        if not self.path or not os.path.exists(self.path):
            return None
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
            state = LoopState(**json.loads(saved["state"]))
        except Exception as e:  # noqa: BLE001 - never start over: a new K would change its distribution
            raise TrainingError(f"the private search's progress file {self.path} cannot be read "
                                f"({type(e).__name__}); restore it or start the run under a new run id") from None
        return state, saved["best"]

    def save(self, state: LoopState, best: dict | None) -> None:
        if not self.path:
            # A process group started without Ray and without storage (benchmarks): nothing restarts
            # it. Ray runs must name storage (ppmlops.training.launch refuses a search without it).
            return
        folder = os.path.dirname(self.path)
        os.makedirs(folder, mode=0o700, exist_ok=True)
        tmp = os.path.join(folder, f".{os.path.basename(self.path)}.tmp")
        if os.path.exists(tmp):
            os.unlink(tmp)  # a crashed write's leftover; os.open's mode applies to new files only
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            torch.save({"state": json.dumps(asdict(state)), "best": best}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def _report(checkpoints: Checkpoints, plan, state: LoopState | None, best: dict | None, times: WorkerTimes) -> None:
    """The search's one report to Ray Train, when it ends (every rank calls it: a barrier). Rank 0's
    checkpoint holds the chosen trial only: its weights, initial weights and released settings."""
    t0 = time.perf_counter()
    metrics = {"epoch": plan.epochs}  # the same on every rank and for every K
    if state is None or best is None:  # not rank 0
        checkpoints.save(metrics, None)
    else:
        chosen = LoopState(epoch=plan.epochs, search={"best": state.search["best"]})
        with tempfile.TemporaryDirectory(prefix="ppmlops-search-") as tmp:
            torch.save(best["weights"], os.path.join(tmp, MODEL_FILE))
            torch.save(best["init"], os.path.join(tmp, INIT_FILE))
            torch.save({}, os.path.join(tmp, OPTIMIZER_FILE))
            with open(os.path.join(tmp, STATE_FILE), "w", encoding="utf-8") as f:
                json.dump(asdict(chosen), f, indent=1, sort_keys=True)
            checkpoints.save(metrics, tmp)
    times.checkpoints += time.perf_counter() - t0


def run_search_worker(job: WorkerJob, arrays: Arrays, comm: Comm, checkpoints: Checkpoints, device: torch.device,
                      *, echo: Callable[[str], None] = say, progress: SearchProgress | None = None) -> WorkerTimes:
    """Run (or continue) the run's private search on this rank; returns its timings. `progress`
    defaults to the job's private search file (WorkerJob.search_state_path)."""
    times, t0 = WorkerTimes(started_at=time.time()), time.perf_counter()
    plan, randomness = job.plan, job.draws()
    progress = progress or SearchProgress(job.search_state_path)
    X, y = as_tensor(arrays.X, np.float32), as_tensor(arrays.y, target_dtype(job.task))
    X_holdout, y_holdout = as_tensor(arrays.X_holdout, np.float32), np.asarray(arrays.y_holdout)
    state, best = (progress.load() or (None, None)) if comm.rank == 0 else (None, None)
    if comm.rank == 0 and state is None:
        k = TrialCount(plan.search.trials_mean, plan.search.trials_shape).draw(
            float(randomness.source("search-count").uniform(1)[0]))
        state = LoopState(epoch=0, search={"trials": k, "done": 0, "best": None})
        progress.save(state, best)  # K is fixed before the first trial: a retry never draws it again
        steer = "" if plan.search.tuner == "fixed" else f", steered by {plan.search.tuner} on its own noisy accuracy"
        echo(f"[run {plan.run_id}] private search: trials drawn from the {plan.search.distribution} distribution, "
             f"each {plan.epochs} epochs at noise multiplier {plan.noise_multiplier:.3g}{steer}; how many ran and "
             "every trial but the chosen one stay private")
    todo = comm.broadcast((state.search["trials"], state.search["done"]) if comm.rank == 0 else None)
    times.setup = time.perf_counter() - t0
    for trial in range(todo[1] + 1, todo[0] + 1):
        t1 = time.perf_counter()
        settings = comm.broadcast(_draw_settings(job, randomness.source("search-trial", trial))
                                  if comm.rank == 0 else None)
        init, net, epochs = _train_trial(job, settings, X, y, (X_holdout, y_holdout), comm, device, randomness, trial,
                                         arrays.sampler(job.plan, comm))
        if comm.rank == 0:
            if epochs:  # a tuned trial: its last noisy accuracy is its score, its settings those it ended at
                settings = {"learning_rate": epochs[-1]["learning_rate"], "max_grad_norm": epochs[-1]["max_grad_norm"]}
                score = epochs[-1][SIGNAL]
            else:
                score = _noisy_accuracy(X_holdout, y_holdout, net, _release_sigma(plan),
                                        randomness.source("search-score", trial), job.task)
            kept = state.search["best"]
            if kept is None or score > kept["holdout_accuracy_noisy"]:
                state.search["best"] = {**settings, "holdout_accuracy_noisy": score,
                                        "noise_multiplier": plan.noise_multiplier, "schedule": epochs}
                best = {"weights": {k: v.detach().cpu() for k, v in net.state_dict().items()}, "init": init}
            state.search["done"] = trial
            if trial == todo[0]:
                state.epoch = plan.epochs
            t2 = time.perf_counter()
            progress.save(state, best)
            times.checkpoints += time.perf_counter() - t2
        times.epochs += time.perf_counter() - t1
    # One report however many trials ran (a search resumed after its last trial reports it again).
    _report(checkpoints, plan, state if comm.rank == 0 else None, best, times)
    if comm.rank == 0:
        if job.init_path:
            torch.save(best["init"], job.init_path)
        chosen = state.search["best"]
        echo(f"[run {plan.run_id}] private search done: chosen learning rate {chosen['learning_rate']:.3g}, clip "
             f"{chosen['max_grad_norm']:.3g}; its noisy held-out accuracy {chosen['holdout_accuracy_noisy']:.3f}")
    times.finished_at = time.time()
    return times
