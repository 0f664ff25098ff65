"""The epoch loop every rank runs, independent of Ray (Ray Train only supplies the process group
and the checkpoint storage; ppmlops.training.ray_worker adapts them).

Per epoch:
1. Rank 0 asks the tuner for the epoch's settings (it sees only DP-released history and what the
   run's filter has left), asks the run's PrivacySession to admit the epoch (the training
   partition's filter, at every Renyi order) and writes the usage row ahead of the steps. A
   refusal stops every rank cleanly; an error on rank 0 is broadcast so no rank waits forever.
2. Every rank trains `steps` DP-SGD steps with exactly the broadcast settings, on its own Poisson
   samples (masks from the run's CSPRNG); rank 0 adds the noise, and the audit's gradient
   canaries before it (their running scores are checkpointed with the epoch).
3. Rank 0 releases what the tuner reads (noisy holdout accuracy under the holdout grant; the
   noisy clipped fraction inside the step's own noise), checkpoints, and only then completes the
   epoch's usage rows: a crash before the checkpoint leaves them reserved, and the re-run of the
   epoch adopts them (nothing the crashed attempt drew was ever released).
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np
import torch
import torch.distributed as dist

from ppmlops.errors import BudgetExceeded, TrainingError
from ppmlops.privacy.accountant import Segment, segment_rdp
from ppmlops.privacy.ledger import HOLDOUT, TRAIN, Ledger
from ppmlops.privacy.randomness import Randomness
from ppmlops.privacy.session import PrivacySession
from ppmlops.run.grant import grant_of
from ppmlops.training.worker_job import WorkerJob
from ppmlops.training.progress import append_epoch
from ppmlops.training.factory import job_net
from ppmlops.training.tasks import predict, scores, target_dtype
from ppmlops.training.sampling import LockstepPoissonSampler
from ppmlops.tuning import signals
from ppmlops.tuning.protocol import BudgetView, EpochSettings, Tuner, affordable_floor

if TYPE_CHECKING:  # Opacus is imported where a model is wrapped: the driver reads checkpoints without it
    from ppmlops.training.private_model import PrivateModel

MODEL_FILE, OPTIMIZER_FILE, STATE_FILE, INIT_FILE = "model.pt", "optimizer.pt", "state.json", "init.pt"


class Comm:
    """Rank 0's decisions to every rank, and every rank's report to all: torch.distributed."""

    def __init__(self, device: torch.device):
        self.rank, self.world, self.device = dist.get_rank(), dist.get_world_size(), device

    def broadcast(self, obj: Any) -> Any:
        box = [obj]
        # NCCL moves objects through the current CUDA device; gloo through the CPU.
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def gather(self, obj: Any) -> list:
        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


@dataclass
class LoopState:
    """What a checkpoint holds besides weights; enough to resume after the last saved epoch."""

    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    tuner: dict | None = None
    stopped_reason: str = "completed"
    usage_entries: list[int] = field(default_factory=list)
    search: dict | None = None  # a private search's progress (ppmlops.training.search_loop): PRIVATE
    # The audit's per-canary scores so far (rank 0): functions of the noise and the canaries'
    # coins and sampling only, since no real row's gradient reaches the canary coordinates.
    canary_scores: list[float] | None = None


@dataclass
class Restored:
    state: LoopState
    weights: dict
    optimizer: dict
    init: dict | None = None  # a search's chosen trial's initial weights


class Checkpoints(Protocol):
    def restore(self) -> Restored | None: ...

    def save(self, metrics: dict, directory: str | None) -> None:
        """Every rank calls it (a barrier); rank 0 passes the checkpoint directory."""


class DirectoryCheckpoints:
    """Checkpoints in one folder, for a process group started without Ray (one machine)."""

    def __init__(self, root: str | os.PathLike):
        self.root = os.fspath(root)

    def restore(self) -> Restored | None:
        latest = os.path.join(self.root, "latest")
        return read_checkpoint(latest) if os.path.exists(os.path.join(latest, STATE_FILE)) else None

    def save(self, metrics: dict, directory: str | None) -> None:
        import shutil

        if dist.is_initialized():
            dist.barrier()
        if directory is not None:
            tmp = os.path.join(self.root, ".incoming")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(directory, tmp)
            latest = os.path.join(self.root, "latest")
            shutil.rmtree(latest, ignore_errors=True)
            os.replace(tmp, latest)


@dataclass
class Arrays:
    X: np.ndarray  # training rows (and the canaries the coins let in), encoded
    y: np.ndarray
    X_holdout: np.ndarray  # the held-out partition: only rank 0 reads it, for noisy releases
    y_holdout: np.ndarray
    # True: X and y are this rank's own rows only (ppmlops.training.shards); False: every rank
    # holds every row and samples rows rank::world of them.
    sharded: bool = False
    # Zero input columns after the features, where the gradient canaries' weights sit: appended to
    # each batch as it is used, not stored with every row (16,384 canaries on 32 units are 512
    # columns: 2 KiB a row, five times the Adult features).
    canary_columns: int = 0

    def sampler(self, plan, comm: "Comm") -> LockstepPoissonSampler:
        """The rank's Poisson sampler: over its own shard, or over its rows of the whole table."""
        rank, world = (0, 1) if self.sharded else (comm.rank, comm.world)
        return LockstepPoissonSampler(total_size=len(self.X), sample_rate=plan.sample_rate,
                                      steps=plan.steps_per_epoch, rank=rank, world_size=world)


def as_tensor(a: np.ndarray, dtype) -> torch.Tensor:
    """The rows as a tensor sharing the array's memory where it can: a copy would double what a
    worker holds (its shard is most of its memory). Read-only arrays (Ray's object store) are
    copied: torch may not alias memory it must not write."""
    a = np.ascontiguousarray(a, dtype=dtype)
    return torch.from_numpy(a) if a.flags.writeable else torch.tensor(a)


@dataclass
class WorkerTimes:
    """Where rank 0's time went (seconds), for the train stage's breakdown (benchmarks/e2e.py)."""

    started_at: float = 0.0  # time.time() when the worker entered the loop
    setup: float = 0.0  # restore the checkpoint, build and wrap the model, open the privacy session
    epochs: float = 0.0  # decisions, DP-SGD steps and releases
    checkpoints: float = 0.0  # write and report the per-epoch checkpoints
    finished_at: float = 0.0


def say(line: str) -> None:
    # Not print(): Ray Train patches print to log as well as echo, so the line would show twice.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def write_checkpoint(directory: str, model: PrivateModel, state: LoopState) -> None:
    import json

    torch.save({k: v.detach().cpu() for k, v in model.net.state_dict().items()}, os.path.join(directory, MODEL_FILE))
    torch.save(model.optimizer.original_optimizer.state_dict(), os.path.join(directory, OPTIMIZER_FILE))
    with open(os.path.join(directory, STATE_FILE), "w", encoding="utf-8") as f:
        json.dump(asdict(state), f, indent=1, sort_keys=True)


def read_checkpoint(directory: str) -> Restored:
    import json

    with open(os.path.join(directory, STATE_FILE), encoding="utf-8") as f:
        state = LoopState(**json.load(f))
    weights = torch.load(os.path.join(directory, MODEL_FILE), map_location="cpu", weights_only=True)
    optimizer = torch.load(os.path.join(directory, OPTIMIZER_FILE), map_location="cpu", weights_only=False)
    init_path = os.path.join(directory, INIT_FILE)
    init = torch.load(init_path, map_location="cpu", weights_only=True) if os.path.exists(init_path) else None
    return Restored(state, weights, optimizer, init)


class Controller:
    """Rank 0's side of the loop: tuner, privacy session, releases, history."""

    def __init__(self, job: WorkerJob, arrays: Arrays, randomness: Randomness, state: LoopState,
                 tuner: Tuner | None, echo: Callable[[str], None] = say):
        self.job, self.plan, self.randomness, self.state, self.tuner, self.echo = (
            job, job.plan, randomness, state, tuner, echo)
        self.X_holdout = as_tensor(arrays.X_holdout, np.float32)
        self.canary_columns = arrays.canary_columns
        self.y_holdout = np.asarray(arrays.y_holdout, dtype=target_dtype(job.task))
        self.session = PrivacySession.open(Ledger(job.ledger_url), grant_of(self.plan))
        self.pending: list = []  # admissions to complete once the epoch is checkpointed
        if tuner is not None and state.tuner:
            tuner.load_state_dict(state.tuner)
        self._complete_checkpointed()
        # Usage rows an earlier attempt left reserved (it died inside an epoch). Only this process
        # writes the run's rows from here on, so one read now stands for the whole attempt: the
        # tuner's budget view then costs no ledger query per epoch.
        self._stale = {e.key: e for e in self.session.ledger.entries(self.plan.dataset_id, self.plan.run_id,
                                                                     kind="usage") if e.status == "reserved"}

    def _complete_checkpointed(self) -> None:
        for entry in self.state.usage_entries:
            self.session.ledger.complete(entry)  # a crash may have left them reserved

    def budget_view(self, epoch: int) -> BudgetView:
        """What the tuner may plan with; a row reserved for this very epoch (below) is not yet spent."""
        remaining = self.session.remaining(TRAIN)
        row = self._reserved_row(epoch)
        if row is not None:
            remaining = remaining + segment_rdp(row.segment)
        return BudgetView(tuple(float(x) for x in remaining), self.plan.sample_rate,
                          self.plan.steps_per_epoch, self.plan.epochs - epoch + 1, self.plan.delta)

    def _reserved_row(self, epoch: int):
        return self._stale.get(f"train/epoch-{epoch}")

    def decide(self, epoch: int, current: EpochSettings) -> dict:
        """The epoch's broadcast: settings to train with, a stop reason, or an error."""
        try:
            note, t0 = None, time.perf_counter()
            if self.tuner is not None:
                view = self.budget_view(epoch)
                if not math.isfinite(affordable_floor(view)):
                    return {"stop": f"privacy filter refused epoch {epoch}: the run's budget is spent (used epsilon "
                                    f"{self.session.used_epsilon(TRAIN):.4g} of {self.session.budget_epsilon(TRAIN):.4g})"}
                proposal = self.tuner.propose(epoch, list(self.state.history), current, view)
                current = proposal.settings
                note = {"tuner": self.tuner.name, "why": proposal.why, "saw": proposal.details.pop("saw", {}),
                        "details": proposal.details}
            tuner_seconds = time.perf_counter() - t0
            current = self._as_reserved(epoch, current, note).checked()
            segment = Segment(current.noise_multiplier, self.plan.sample_rate, self.plan.steps_per_epoch)
            if not self.session.admits(TRAIN, segment, key=f"train/epoch-{epoch}"):
                return {"stop": f"privacy filter refused epoch {epoch}: its noise multiplier "
                                f"{current.noise_multiplier:.4g} no longer fits the run's fixed budget "
                                f"(used epsilon {self.session.used_epsilon(TRAIN):.4g} of "
                                f"{self.session.budget_epsilon(TRAIN):.4g})"}
            sigma_b = signals.count_noise(current.noise_multiplier) if self.wants_clipped_fraction else None
            admission = self.session.spend(
                TRAIN, segment, key=f"train/epoch-{epoch}",
                note=signals.train_note(epoch, current.noise_multiplier, current.max_grad_norm, sigma_b))
            self.pending = [admission]
            return {"settings": asdict(current), "count_noise": sigma_b, "entry": admission.entry_id,
                    "tuner": note, "tuner_seconds": tuner_seconds}
        except BudgetExceeded as err:
            return {"stop": f"privacy filter refused epoch {epoch}: {err}"}
        except Exception as err:  # every rank must learn of it, or the others wait forever
            return {"error": f"rank 0 could not start epoch {epoch}: {type(err).__name__}: {err}"}

    def _as_reserved(self, epoch: int, current: EpochSettings, note: dict | None) -> EpochSettings:
        """An attempt that died inside this epoch wrote its usage row ahead (reserved: nothing it
        drew was released). The epoch keeps that row's noise so the row is adopted, not charged
        twice; clip norm and learning rate are the tuner's new choice (they cost nothing)."""
        row = self._reserved_row(epoch)
        if row is None or row.noise_multiplier == current.noise_multiplier:
            return current
        if note is not None:
            note["why"] += f"; noise kept at {row.noise_multiplier:.4g}, as reserved by the attempt that stopped"
        return replace(current, noise_multiplier=row.noise_multiplier)

    @property
    def wants_clipped_fraction(self) -> bool:
        return bool(getattr(self.tuner, "wants_clipped_fraction", False))

    def release_holdout_accuracy(self, epoch: int, net: torch.nn.Module) -> tuple[float | None, int | None]:
        sigma = self.plan.holdout_sigma
        if sigma is None or not len(self.y_holdout):
            return None, None
        segment = Segment(sigma, 1.0, 1)
        if not self.session.admits(HOLDOUT, segment, key=f"holdout/epoch-{epoch}"):
            self.echo(f"[run {self.plan.run_id}] no holdout accuracy after epoch {epoch}: the holdout budget is spent")
            return None, None
        admission = self.session.spend(HOLDOUT, segment, key=f"holdout/epoch-{epoch}",
                                       note=signals.holdout_note(epoch, sigma), mechanism="gaussian")
        predicted = predict(net, self.X_holdout, self.job.task, zero_columns=self.canary_columns)
        signal = signals.noisy_signal(self.job.task, scores(self.job.task, predicted, self.y_holdout), sigma,
                                      self.randomness.source("holdout", epoch))
        self.pending.append(admission)
        return signal, admission.entry_id

    def after_epoch(self, epoch: int, decision: dict, net, reports: list[dict], seconds: float) -> dict:
        """Record the epoch (history, progress line) and return the metrics Ray reports."""
        settings = EpochSettings(**decision["settings"])
        acc, holdout_entry = self.release_holdout_accuracy(epoch, net)
        clipped = None
        if decision["count_noise"]:
            clipped = signals.noisy_clipped_fraction(
                sum(r["counts"][0] for r in reports), sum(r["counts"][1] for r in reports),
                decision["count_noise"], self.plan.steps_per_epoch, self.randomness.source("clipped", epoch))
        used = self.session.used_epsilon(TRAIN)
        record = {
            "epoch": epoch, **asdict(settings), "steps": self.plan.steps_per_epoch,
            "sample_rate": self.plan.sample_rate, "epsilon_used": used, "holdout_accuracy_noisy": acc,
            "clipped_fraction_noisy": clipped, "count_noise": decision["count_noise"],
            "gradient_noise": reports[0]["gradient_noise"], "seconds": seconds,
            "tuner_seconds": decision["tuner_seconds"], "usage_entry": decision["entry"],
            "holdout_entry": holdout_entry, "tuner": decision["tuner"],
            "ranks": [{k: r[k] for k in ("rank", "node", "device", "steps")} for r in reports],
        }
        self.state.history.append(record)
        self.state.epoch = epoch
        self.state.usage_entries += [a.entry_id for a in self.pending]
        self.state.tuner = self.tuner.state_dict() if self.tuner is not None else None
        self.echo(progress_line(self.plan, record, self.session.budget_epsilon(TRAIN)))
        if self.job.progress_path:
            append_epoch(self.job.progress_path, record)
        return {"epoch": epoch, "epsilon_used": used, **asdict(settings),
                **({} if acc is None else {"holdout_accuracy_noisy": acc})}

    def checkpointed(self) -> None:
        for admission in self.pending:
            self.session.complete(admission)
        self.pending = []


def progress_line(plan, record: dict, budget: float) -> str:
    acc = record["holdout_accuracy_noisy"]
    tuner = record.get("tuner")
    return (f"[run {plan.run_id}] epoch {record['epoch']}/{plan.epochs} | sigma {record['noise_multiplier']:.2f} "
            f"clip {record['max_grad_norm']:.2f} lr {record['learning_rate']:.3g} | epsilon used "
            f"{record['epsilon_used']:.2f} of the run's {budget:.2f} (delta {plan.delta:g}) | noisy holdout acc "
            f"{'not released' if acc is None else f'{acc:.3f}'} | {record['seconds']:.1f}s"
            + (f" | tuner: {tuner['why']}" if tuner else ""))


def train_epoch(model: PrivateModel, sampler: LockstepPoissonSampler, X: torch.Tensor, y: torch.Tensor,
                source, device: torch.device, counts: list[int] | None = None, pad: int = 0) -> int:
    """One pass of `steps` DP-SGD steps on this rank's Poisson samples; returns steps taken."""
    model.module.train()
    taken = 0
    for idx in sampler.batches(source):
        model.step(padded(X[idx], pad).to(device, non_blocking=True), y[idx].to(device, non_blocking=True), counts)
        taken += 1
    return taken


def padded(X: torch.Tensor, columns: int) -> torch.Tensor:
    """X with `columns` zero columns appended (the canaries' inputs: zero on every real row)."""
    return torch.nn.functional.pad(X, (0, columns)) if columns else X


def _start(job: WorkerJob, width: int, randomness: Randomness, restored: Restored | None,
           device: torch.device, features: int | None = None) -> tuple[PrivateModel, EpochSettings]:
    """The model (restored or freshly initialised) wrapped for DP-SGD, and the settings to start from."""
    from ppmlops.training.private_model import make_private_model

    torch.manual_seed(randomness.torch_seed("init"))  # no private row is involved in initialisation
    net = job_net(job, width, features)
    settings = EpochSettings(job.plan.noise_multiplier, job.max_grad_norm, job.learning_rate)
    if restored is not None:
        net.load_state_dict(restored.weights)
        if restored.state.history:
            last = restored.state.history[-1]
            settings = EpochSettings(last["noise_multiplier"], last["max_grad_norm"], last["learning_rate"])
    model = make_private_model(net, noise_multiplier=settings.noise_multiplier, max_grad_norm=settings.max_grad_norm,
                               learning_rate=settings.learning_rate, momentum=job.momentum,
                               divisor=job.plan.divisor, device=device, clipping=job.clipping,
                               physical_batch=job.physical_batch, task=job.task,
                               per_layer=job.per_layer, precision=job.precision)
    if restored is not None:
        model.optimizer.original_optimizer.load_state_dict(restored.optimizer)
    elif job.init_path and dist.get_rank() == 0:
        # Rank 0's weights are the ones DPDDP broadcast: the start every rank trained from.
        torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, job.init_path)
    return model, settings.checked()


def _attach_canaries(job: WorkerJob, model: PrivateModel, state: LoopState):
    """Rank 0's gradient canaries, their scores restored from the checkpoint (None without canaries)."""
    if job.canaries is None or not job.canaries.included:
        return None
    from ppmlops.audit.canary import CanarySet
    from ppmlops.training.canary_scores import GradientCanaries

    try:
        layer = model.net.get_submodule(job.canaries.layer) if job.canaries.layer is not None else None
    except AttributeError:
        layer = None
    if not isinstance(layer, torch.nn.Linear):
        raise TrainingError(f"the canaries' layer {job.canaries.layer!r} is not an nn.Linear of the model")
    tracker = GradientCanaries(CanarySet.of(job.canaries), layer.weight, job.plan.sample_rate, state.canary_scores)
    model.attach_canaries(tracker)
    return tracker


def _save(checkpoints: Checkpoints, metrics: dict, model: PrivateModel, state: LoopState | None,
          times: WorkerTimes, canaries=None, scores_path: str = "") -> None:
    t0 = time.perf_counter()
    if state is None:
        checkpoints.save(metrics, None)
    else:
        if canaries is not None:
            state.canary_scores = canaries.scores.tolist()
        with tempfile.TemporaryDirectory(prefix="ppmlops-ckpt-") as tmp:
            write_checkpoint(tmp, model, state)
            checkpoints.save(metrics, tmp)
        if canaries is not None:  # after the checkpoint: the file never runs ahead of the model
            canaries.save(scores_path)
    times.checkpoints += time.perf_counter() - t0


def run_worker(job: WorkerJob, arrays: Arrays, comm: Comm, checkpoints: Checkpoints, device: torch.device,
               *, tuner: Tuner | None = None, node: str = "", echo: Callable[[str], None] = say) -> WorkerTimes:
    """Train the run's remaining epochs on this rank (every rank calls this); returns its timings."""
    times, t_setup = WorkerTimes(started_at=time.time()), time.perf_counter()
    plan, randomness = job.plan, job.draws()
    X, y = as_tensor(arrays.X, np.float32), as_tensor(arrays.y, target_dtype(job.task))
    restored = checkpoints.restore()
    state = restored.state if restored is not None else LoopState()
    model, settings = _start(job, X.shape[1] + arrays.canary_columns, randomness, restored, device, X.shape[1])
    sampler = arrays.sampler(plan, comm)
    ctl = Controller(job, arrays, randomness, state, tuner, echo) if comm.rank == 0 else None
    first = plan.epochs + 1 if state.stopped_reason != "completed" else state.epoch + 1  # a refusal is final
    canaries = _attach_canaries(job, model, state) if comm.rank == 0 else None
    if restored is not None and state.epoch and comm.rank == 0:
        echo(f"[run {plan.run_id}] resumed from the checkpoint of epoch {state.epoch}")
    times.setup = time.perf_counter() - t_setup
    if comm.rank == 0 and first <= plan.epochs:
        echo(f"[run {plan.run_id}] rank 0 set up in {times.setup:.1f} s (model built, checkpoints looked up); "
             f"training epochs {first} to {plan.epochs}")
    if restored is not None and first > plan.epochs:
        # Nothing left to train: report the restored checkpoint again, so the run's result is
        # the newest one (Ray's own record of "latest" may lag behind it, see RayCheckpoints).
        _save(checkpoints, {"epoch": state.epoch}, model, ctl.state if ctl else None, times, canaries,
              job.canary_scores_path)
    for epoch in range(first, plan.epochs + 1):
        t0 = time.perf_counter()
        decision = comm.broadcast(ctl.decide(epoch, settings) if ctl else None)
        if "error" in decision:
            raise TrainingError(decision["error"])
        if "stop" in decision:
            if ctl:
                echo(f"[run {plan.run_id}] {decision['stop']}")
                ctl.state.stopped_reason = decision["stop"]
            times.epochs += time.perf_counter() - t0
            _save(checkpoints, {"epoch": epoch - 1, "stopped": 1}, model, ctl.state if ctl else None, times,
                  canaries, job.canary_scores_path)
            break
        settings = EpochSettings(**decision["settings"])
        model.set_epoch(noise_multiplier=signals.gradient_noise(settings.noise_multiplier, decision["count_noise"]),
                        max_grad_norm=settings.max_grad_norm, learning_rate=settings.learning_rate,
                        noise_source=randomness.source("noise", epoch) if comm.rank == 0 else None)
        counts = [0, 0] if decision["count_noise"] else None
        taken = train_epoch(model, sampler, X, y, randomness.source("sample", epoch, comm.rank), device, counts,
                            pad=arrays.canary_columns)
        reports = comm.gather({"rank": comm.rank, "node": node, "device": str(device), "steps": taken,
                               "counts": counts, "gradient_noise": float(model.optimizer.noise_multiplier)})
        if any(r["steps"] != plan.steps_per_epoch for r in reports):
            raise TrainingError(f"epoch {epoch}: planned {plan.steps_per_epoch} DP-SGD steps per rank but ranks took "
                                f"{[(r['rank'], r['steps']) for r in reports]}; the usage row stays reserved")
        metrics = ctl.after_epoch(epoch, decision, model.net, reports, time.perf_counter() - t0) if ctl else {}
        times.epochs += time.perf_counter() - t0
        _save(checkpoints, metrics or {"epoch": epoch}, model, ctl.state if ctl else None, times, canaries,
              job.canary_scores_path)
        if ctl:
            ctl.checkpointed()
    times.finished_at = time.time()
    return times
