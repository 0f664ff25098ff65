"""The DP-SGD loop that runs on every Ray Train worker.

Privacy mechanics, and why each piece is the way it is:

* Sampling. Each rank owns the rows ``rank::world`` of the training set and includes every one
  of them in a step independently with probability ``q = 1 / steps_per_epoch``, so every record
  is Poisson-sampled with rate q on exactly one rank: the subsampled Gaussian mechanism the
  ledger accounts for. We build this loader ourselves and hand it to ``make_private`` with
  ``poisson_sampling=False``: Opacus's own distributed sampler
  (``DistributedUniformWithReplacementSampler``) silently skips a rank's empty batches, so the
  ranks would run different numbers of steps and pair the wrong all-reduces (or hang). Ours
  yields every batch, empty ones included, and Opacus steps on an empty batch (clip of nothing,
  noise added) exactly as the analysis assumes.
* Noise. The model is wrapped in Opacus's ``DifferentiallyPrivateDistributedDataParallel``; its
  ``DistributedDPOptimizer`` adds the Gaussian noise on rank 0 only and sums the clipped
  gradients of all ranks, so each step releases sum(clipped grads) + N(0, (sigma*C)^2) once.
  The update is divided by ``int(n * q)`` (see :func:`opacus_divisor`).
* Adaptivity. Rank 0 decides every epoch's noise, clip and learning rate (the tuner may change
  them) and broadcasts the decision, so all ranks step with the same settings. Before an epoch
  runs, rank 0 asks the run's privacy filter (Feldman & Zrnic 2021) whether the epoch fits the
  budget fixed before training, writes the spend to the ledger (write-ahead), and only then
  lets the ranks train; a refusal stops every rank cleanly.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from opacus.utils.uniform_sampler import DistributedUniformWithReplacementSampler
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ppmlops.errors import BudgetExceeded, TrainingError

MODEL_FILE = "model.pt"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------

def sample_rate_for(n_train: int, batch_size: int, workers: int) -> tuple[float, int]:
    """(q, steps_per_epoch) for `n_train` rows at an expected global batch of `batch_size`.

    steps = ceil(n / batch_size) and q = 1 / steps, the same numbers Opacus derives from a
    DataLoader(batch_size=batch_size) over the rows (``1 / len(data_loader)``), so the planner
    can calibrate noise before training. The worker asserts that Opacus sees exactly this q.
    `workers` does not change q (each record lives on one rank) but every rank needs a row.
    """
    for name, value in (("n_train", n_train), ("batch_size", batch_size), ("workers", workers)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise TrainingError(f"{name} must be a positive integer, got {value!r}")
    if n_train < workers:
        raise TrainingError(f"{n_train} training rows cannot be shared among {workers} workers: each needs at least one")
    steps = math.ceil(int(n_train) / int(batch_size))
    q = 1.0 / steps
    if opacus_divisor(int(n_train), q) < 1:
        # Happens for batch_size 1 when n * (1/n) rounds below 1 (n = 49, for one).
        raise TrainingError(
            f"{n_train} rows at batch size {batch_size} give q = 1/{steps}, and Opacus would divide every "
            f"update by int(n * q) = 0; use a batch size of at least 2")
    return q, steps


def opacus_divisor(n_train: int, sample_rate: float) -> int:
    """What Opacus divides a step's noised gradient sum by: ``int(len(dataset) * q)``.

    make_private sets ``expected_batch_size = int(len(dataset) * q) / world_size`` per worker,
    each DistributedDPOptimizer divides by that, then the all-reduce sums the ranks and divides
    by world_size again, so the net divisor is int(n * q) (floor; n*q need not be the batch
    size asked for). The noise std in a parameter update is lr * sigma * C / this.
    """
    return int(n_train * sample_rate)


class LockstepPoissonSampler(DistributedUniformWithReplacementSampler):
    """Poisson sampling over this rank's rows (``rank::world_size``) that yields every batch.

    Subclasses Opacus's sampler so Opacus recognises it (``switch_generator`` swaps in the
    secure RNG in secure mode) but never skips an empty batch: every rank runs exactly `steps`
    steps per epoch, which the all-reduce inside each step requires.
    """

    def __init__(self, *, total_size: int, sample_rate: float, steps: int, rank: int, world_size: int,
                 generator=None):
        # Opacus's __init__ reads rank and world size from torch.distributed; taking them as
        # arguments keeps the sampler usable (and testable) on its own. Same attributes.
        if not 0 <= rank < world_size:
            raise TrainingError(f"rank {rank} is outside a world of {world_size}")
        if total_size < world_size:
            raise TrainingError(f"{total_size} rows cannot be shared among {world_size} ranks")
        if not 0 < sample_rate <= 1 or steps < 1:
            raise TrainingError(f"need 0 < sample_rate <= 1 and steps >= 1, got {sample_rate!r}, {steps!r}")
        self.total_size, self.sample_rate, self.generator = int(total_size), float(sample_rate), generator
        self.num_replicas, self.rank = int(world_size), int(rank)
        self.epoch, self.shuffle, self.shuffle_seed = 0, False, 0
        self.num_batches = int(steps)
        self.rows = torch.arange(self.rank, self.total_size, self.num_replicas)
        self.num_samples = len(self.rows)

    def __iter__(self):
        for _ in range(self.num_batches):
            mask = torch.rand(self.num_samples, generator=self.generator) < self.sample_rate
            yield self.rows[mask]

    def __len__(self) -> int:
        return self.num_batches


class TensorRows(Dataset):
    """Rows of (X, y) tensors, fetched a whole batch at a time (empty batches included)."""

    def __init__(self, X: torch.Tensor, y: torch.Tensor):
        if len(X) != len(y):
            raise TrainingError(f"X has {len(X)} rows but y has {len(y)}")
        self.X, self.y = X, y

    def __len__(self) -> int:
        return len(self.X)

    def __getitem__(self, i):
        return self.X[i], self.y[i]

    def __getitems__(self, indices):
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.X[idx], self.y[idx]


def _batch_as_is(batch):
    # TensorRows.__getitems__ already returns the stacked batch.
    return batch


def lockstep_loader(X: torch.Tensor, y: torch.Tensor, *, sample_rate: float, steps: int, rank: int,
                    world_size: int, generator=None) -> DataLoader:
    """A DataLoader over all rows whose batches are this rank's Poisson samples.

    The dataset is the full training set on every rank (only this rank's rows are ever drawn):
    Opacus computes its gradient divisor from ``len(data_loader.dataset)``.
    """
    sampler = LockstepPoissonSampler(total_size=len(X), sample_rate=sample_rate, steps=steps, rank=rank,
                                     world_size=world_size, generator=generator)
    return DataLoader(TensorRows(X, y), batch_sampler=sampler, collate_fn=_batch_as_is, num_workers=0)


# ---------------------------------------------------------------------------------------------
# Opacus setup
# ---------------------------------------------------------------------------------------------

def secure_rng_available() -> bool:
    try:
        import torchcsprng  # noqa: F401
    except ImportError:
        return False
    return True


def make_privacy_engine(secure_mode: bool):
    """An RDP-accounting PrivacyEngine; a clear TrainingError if secure mode cannot work here."""
    from opacus import PrivacyEngine

    if secure_mode and not secure_rng_available():
        raise TrainingError(
            "secure_rng is on but Opacus's secure mode needs the torchcsprng package, which is not "
            "installed in this worker environment (and has no build for this torch version); "
            "refusing to train with a non-cryptographic RNG. Install torchcsprng on the workers or "
            "turn secure_rng off (PPMLOPS_SECURE_RNG=0) for a non-production run.")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        return PrivacyEngine(accountant="rdp", secure_mode=secure_mode)


def derived_seed(*parts: object) -> int:
    """A 63-bit seed from the parts, so that no two (run, epoch, rank, role) share a stream.

    The run id is always among the parts: two runs with the same spec seed on the same rows
    must not draw the same noise, or their releases would not compose as the ledger assumes.
    """
    digest = hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass
class PrivateParts:
    module: nn.Module  # Opacus GradSampleModule around DPDDP around `net`
    optimizer: Any  # opacus DistributedDPOptimizer
    loader: DataLoader
    engine: Any  # opacus PrivacyEngine (its RDP accountant records what Opacus saw)
    sampler: LockstepPoissonSampler
    noise_generator: torch.Generator | None


def make_private_ddp(net: nn.Module, X: torch.Tensor, y: torch.Tensor, *, sample_rate: float, steps: int,
                     noise_multiplier: float, max_grad_norm: float, learning_rate: float, momentum: float,
                     secure_mode: bool, device: torch.device | None = None) -> PrivateParts:
    """Wrap `net` for distributed DP-SGD; torch.distributed must already be initialised.

    Generators are created unseeded here; :func:`seed_epoch` seeds them before each epoch.
    """
    from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP

    if not dist.is_available() or not dist.is_initialized():
        raise TrainingError("distributed DP-SGD needs torch.distributed initialised (Ray Train does this)")
    device = device or torch.device("cpu")
    engine = make_privacy_engine(secure_mode)
    net.to(device)
    # DPDDP broadcasts rank 0's weights; gradients are reduced by the DP optimizer, not hooks.
    ddp = DPDDP(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=learning_rate, momentum=momentum)
    sample_gen = None if secure_mode else torch.Generator()
    loader = lockstep_loader(X, y, sample_rate=sample_rate, steps=steps, rank=dist.get_rank(),
                             world_size=dist.get_world_size(), generator=sample_gen)
    noise_gen = None if secure_mode else torch.Generator(device=device)
    module, dp_optimizer, dp_loader = engine.make_private(
        module=ddp, optimizer=optimizer, data_loader=loader,
        noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
        # Our loader already Poisson-samples in lockstep; Opacus's would skip empty batches.
        poisson_sampling=False, noise_generator=noise_gen)
    # make_private only forbids accumulation when it does the sampling itself; a second
    # forward/backward before a step would change the effective sampling rate.
    module.forbid_grad_accumulation()
    sampler = dp_loader.batch_sampler
    if not isinstance(sampler, LockstepPoissonSampler):
        raise TrainingError(f"Opacus replaced the lockstep Poisson sampler with {type(sampler).__name__}")
    opacus_q = 1.0 / len(dp_loader)
    if opacus_q != sample_rate or len(dp_loader) != steps:
        raise TrainingError(
            f"sample rate mismatch: the plan used q={sample_rate!r} and {steps} steps per epoch but "
            f"Opacus sees q=1/len(data_loader)={opacus_q!r} ({len(dp_loader)} steps); the ledger would be wrong")
    world = dist.get_world_size()
    divisor = dp_optimizer.expected_batch_size * world
    if not math.isclose(divisor, opacus_divisor(len(X), sample_rate), rel_tol=1e-12):
        raise TrainingError(f"Opacus divides updates by {divisor}, expected int(n*q)={opacus_divisor(len(X), sample_rate)}")
    return PrivateParts(module, dp_optimizer, dp_loader, engine, sampler, noise_gen)


def seed_epoch(parts: PrivateParts, *, seed: int, run_id: str, epoch: int, rank: int) -> None:
    """Seed this epoch's sampling and noise streams (non-secure mode only).

    Seeding per epoch rather than once makes a resumed run draw fresh randomness for the
    epochs it has not run, never a replay of the ones it has.
    """
    if parts.sampler.generator is not None and not parts.engine.secure_mode:
        parts.sampler.generator.manual_seed(derived_seed("sample", seed, run_id, epoch, rank))
    if parts.noise_generator is not None:
        parts.noise_generator.manual_seed(derived_seed("noise", seed, run_id, epoch, rank))


def opacus_steps(engine) -> int:
    """Steps Opacus's own accountant has recorded (every noised optimizer step)."""
    return sum(int(n) for _, _, n in engine.accountant.history)


def train_epoch(parts: PrivateParts, device: torch.device, counts: list[int] | None = None) -> int:
    """One pass of `steps` DP-SGD steps; returns the optimizer steps actually taken.

    With `counts` ([clipped, unclipped]), adds this rank's exact per-row clipping counts: the
    caller noises their epoch sum before anything leaves the worker (tuning.signals)."""
    parts.module.train()
    taken = 0
    with warnings.catch_warnings():
        # Inputs never require grad, so torch notes that Opacus's full backward hooks fire on
        # outputs only; that is exactly what per-sample gradients need.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        for xb, yb in parts.loader:
            taken += _step(parts, xb, yb, device, counts)
    return taken


def _step(parts: PrivateParts, xb: torch.Tensor, yb: torch.Tensor, device: torch.device,
          counts: list[int] | None = None) -> int:
    """One DP-SGD step on a (possibly empty) batch; 1 if Opacus took it."""
    xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
    parts.optimizer.zero_grad(set_to_none=True)
    out = parts.module(xb)
    # The mean loss, but 0 rather than NaN on an empty batch; Opacus rescales by the batch size.
    loss = F.cross_entropy(out, yb, reduction="sum") / max(len(yb), 1)
    loss.backward()
    if counts is not None and len(yb):
        clipped = int((per_sample_norms(parts.optimizer) > parts.optimizer.max_grad_norm).sum())
        counts[0] += clipped
        counts[1] += len(yb) - clipped
    parts.optimizer.step()
    return 0 if parts.optimizer._is_last_step_skipped else 1


def per_sample_norms(optimizer) -> torch.Tensor:
    """Each row's gradient norm before clipping, as Opacus's clipping computes it."""
    norms = [g.reshape(len(g), -1).norm(2, dim=-1) for g in optimizer.grad_samples]
    return torch.stack(norms, dim=1).norm(2, dim=1)


# ---------------------------------------------------------------------------------------------
# Per-epoch decisions
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EpochSettings:
    """What rank 0 broadcasts before an epoch: every rank trains with exactly these."""

    noise_multiplier: float
    max_grad_norm: float
    learning_rate: float

    def checked(self) -> "EpochSettings":
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise TrainingError(f"epoch setting {name} must be a finite number > 0, got {value!r}")
        return EpochSettings(float(self.noise_multiplier), float(self.max_grad_norm), float(self.learning_rate))


# A tuner sees the epoch about to run (1-based), the history so far (noised model's metrics and
# spend only) and the current settings, and returns the next epoch's settings. It runs on rank 0.
Tuner = Callable[[int, list, EpochSettings], EpochSettings]


def _broadcast(obj: Any, device: torch.device) -> Any:
    box = [obj]
    # NCCL moves objects through the current CUDA device; gloo through CPU.
    dist.broadcast_object_list(box, src=0, device=device if device.type == "cuda" else None)
    return box[0]


def _gather(obj: Any) -> list:
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _curve_list(curve) -> list[float]:
    return [float(v) for v in np.asarray(curve, dtype=np.float64)]


def _refusal_reason(epoch: int, spent: np.ndarray, need: np.ndarray, budget: np.ndarray, delta: float) -> str:
    from ppmlops.privacy.accountant import ORDERS, epsilon_from_rdp

    after = spent + need
    with np.errstate(divide="ignore", invalid="ignore"):
        excess = np.where(after > budget, (after - budget) / np.maximum(budget, np.finfo(float).tiny), -np.inf)
    i = int(np.argmax(excess))  # the binding order: largest relative overshoot
    eps_spent, _ = epsilon_from_rdp(spent, delta)
    eps_budget, _ = epsilon_from_rdp(budget, delta)
    return (f"privacy filter refused epoch {epoch}: it would take RDP at order {ORDERS[i]:g} to "
            f"{after[i]:.6g}, over the run budget {budget[i]:.6g} "
            f"(spent so far epsilon {eps_spent:.4g} of {eps_budget:.4g} at delta {delta:g})")


# ---------------------------------------------------------------------------------------------
# The per-worker entry point
# ---------------------------------------------------------------------------------------------

def _say(line: str) -> None:
    # Not print(): Ray Train patches print to log as well as echo, so the line would show twice.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _resolve(value):
    import ray

    return ray.get(value) if isinstance(value, ray.ObjectRef) else value


def _tensor(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    # Arrays from the object store are read-only; torch needs its own writable copy.
    return torch.tensor(np.asarray(a), dtype=dtype)


def _save_checkpoint(directory: str, net: nn.Module, optimizer, state: dict) -> None:
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, os.path.join(directory, MODEL_FILE))
    torch.save(optimizer.original_optimizer.state_dict(), os.path.join(directory, OPTIMIZER_FILE))
    with open(os.path.join(directory, STATE_FILE), "w", encoding="utf-8") as f:
        json.dump(state, f, indent=1, sort_keys=True)


def load_checkpoint_dir(directory: str) -> tuple[dict, dict]:
    """(model state_dict on CPU, state) from a checkpoint directory this module wrote."""
    with open(os.path.join(directory, STATE_FILE), encoding="utf-8") as f:
        state = json.load(f)
    weights = torch.load(os.path.join(directory, MODEL_FILE), map_location="cpu", weights_only=True)
    return weights, state


def _report(metrics: dict, net, optimizer, state: dict | None) -> None:
    """Report on every rank (Ray's report is a barrier); rank 0 attaches the checkpoint."""
    import ray.train
    from ray.train import Checkpoint

    if state is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="ppmlops-ckpt-") as tmp:
        _save_checkpoint(tmp, net, optimizer, state)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point. `config` is built by ppmlops.training.launch.train_on_ray."""
    import ray.train
    import ray.train.torch

    from ppmlops.privacy.accountant import Segment, epsilon_from_rdp, segment_rdp
    from ppmlops.tuning import signals

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    job = config["job"]
    run_id, seed, delta = job["run_id"], int(job["seed"]), float(job["delta"])
    device = ray.train.torch.get_device() if job["use_gpu"] else torch.device("cpu")
    node = ray.get_runtime_context().get_node_id()

    X = _tensor(_resolve(config["X_train"]), torch.float32)
    y = _tensor(_resolve(config["y_train"]), torch.int64)
    q, steps = sample_rate_for(len(X), job["batch_size"], world)
    if q != job["sample_rate"] or steps != job["steps_per_epoch"]:
        raise TrainingError(
            f"rank {rank}: the launcher planned q={job['sample_rate']!r} with {job['steps_per_epoch']} steps "
            f"but this worker derives q={q!r} with {steps} (world size {world} vs planned {job['workers']})")

    from ppmlops.training.models import build_model

    torch.manual_seed(derived_seed("init", seed, run_id))
    net = build_model(job["model_kind"], X.shape[1], job["hidden"])
    settings = EpochSettings(job["noise_multiplier"], job["max_grad_norm"], job["learning_rate"]).checked()
    tuner: Tuner | None = config.get("tuner")
    explained: dict | None = None
    tuner_seconds = 0.0

    start_epoch, history, ledger_entries, filter_state = 1, [], [], None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        # A re-run with the same RunConfig resumes after the last reported epoch.
        with ckpt.as_directory() as d:
            weights, state = load_checkpoint_dir(d)
            opt_state = torch.load(os.path.join(d, OPTIMIZER_FILE), map_location="cpu", weights_only=False)
        net.load_state_dict(weights)
        start_epoch = int(state["epoch"]) + 1
        history, ledger_entries, filter_state = state["history"], state["ledger_entries"], state["filter"]
        if tuner is not None and state.get("tuner") is not None and hasattr(tuner, "load_state_dict"):
            tuner.load_state_dict(state["tuner"])
        if history:
            last = history[-1]
            settings = EpochSettings(last["noise_multiplier"], last["max_grad_norm"], last["learning_rate"]).checked()
        if state.get("stopped_reason", "completed") != "completed":
            start_epoch = job["epochs"] + 1  # a refusal is final; the budget did not change
    else:
        opt_state = None

    parts = make_private_ddp(net, X, y, sample_rate=q, steps=steps,
                             noise_multiplier=settings.noise_multiplier, max_grad_norm=settings.max_grad_norm,
                             learning_rate=settings.learning_rate, momentum=job["momentum"],
                             secure_mode=job["secure_rng"], device=device)
    if opt_state is not None:
        parts.optimizer.original_optimizer.load_state_dict(opt_state)

    # Rank 0 alone talks to the filter, the ledger and the held-out rows.
    filt = ledger = X_test = y_test = None
    setup_error = None
    if rank == 0:
        try:
            from ppmlops.privacy.filter import PrivacyFilter
            from ppmlops.privacy.ledger import Ledger

            budget = np.asarray(job["budget_rdp"], dtype=np.float64)
            filt = PrivacyFilter.from_state_dict(filter_state) if filter_state else PrivacyFilter(budget)
            if not np.array_equal(filt.budget, budget):
                # The filter's guarantee needs B(alpha) fixed before the first step of the run.
                raise TrainingError(f"run {run_id!r} resumes from a checkpoint whose privacy budget curve differs "
                                    "from this job's budget_rdp; a run's budget cannot change once it has started")
            ledger = Ledger(job["ledger_url"])
            _charge_unrecorded_entries(ledger, filt, job["dataset_id"], run_id, ledger_entries)
            X_test = _tensor(_resolve(config["X_test"]), torch.float32)
            y_test = np.asarray(_resolve(config["y_test"]), dtype=np.int64)
        except Exception as e:
            setup_error = f"rank 0 could not open the privacy filter and ledger: {type(e).__name__}: {e}"
    stopped_reason = "completed"

    for epoch in range(start_epoch, job["epochs"] + 1):
        t0 = time.perf_counter()
        decision: dict[str, Any] = {}
        if rank == 0:
            try:
                if setup_error:
                    raise TrainingError(setup_error)
                explained, tuner_seconds = None, 0.0
                if tuner is not None:
                    if hasattr(tuner, "observe_budget"):
                        # Tuners that lower noise must know what the filter can still afford.
                        tuner.observe_budget(remaining=filt.budget - filt.spent, sample_rate=q, steps=steps,
                                             epochs_left=job["epochs"] - epoch + 1, delta=delta)
                    tuner_t0 = time.perf_counter()
                    proposal = tuner(epoch, list(history), settings)
                    tuner_seconds = time.perf_counter() - tuner_t0
                    explained = getattr(proposal, "explanation", None)
                    settings = EpochSettings(*_settings_tuple(getattr(proposal, "settings", proposal))).checked()
                segment = Segment(settings.noise_multiplier, q, steps)
                need = segment_rdp(segment)
                if not filt.admits(need):
                    decision = {"stop": _refusal_reason(epoch, filt.spent, need, filt.budget, delta)}
                else:
                    # Tuners that follow the clipped fraction get it released jointly with the
                    # gradient, inside the same per-step noise budget (tuning.signals).
                    sigma_b = (signals.count_noise(settings.noise_multiplier)
                               if getattr(tuner, "wants_clipped_fraction", False) else None)
                    try:
                        entry = ledger.reserve(dataset_id=job["dataset_id"], run_id=run_id, segment=segment,
                                               partition="train",
                                               note=signals.train_note(epoch, settings.noise_multiplier,
                                                                       settings.max_grad_norm, sigma_b))
                    except BudgetExceeded as e:
                        # The dataset's lifetime budget (other runs included) is the binding one.
                        decision = {"stop": f"privacy ledger refused epoch {epoch}: {e}"}
                    else:
                        ledger_entries.append(int(entry))
                        filt.spend(need)
                        decision = {"settings": asdict(settings), "entry": int(entry), "count_noise": sigma_b}
            except Exception as e:  # every rank must learn of it, or the others wait forever
                decision = {"error": f"rank 0 could not start epoch {epoch}: {type(e).__name__}: {e}"}
        decision = _broadcast(decision, device)
        if "error" in decision:
            raise TrainingError(decision["error"])
        if "stop" in decision:
            stopped_reason = decision["stop"]
            if rank == 0:
                _say(f"[run {run_id}] {stopped_reason}")
            state = None
            if rank == 0:
                state = _state(job, epoch - 1, history, ledger_entries, filt, stopped_reason, q, steps, tuner)
            _report({"epoch": epoch - 1, "stopped": 1}, net, parts.optimizer, state)
            break

        settings = EpochSettings(**decision["settings"])
        sigma_b = decision["count_noise"]
        parts.optimizer.noise_multiplier = signals.gradient_noise(settings.noise_multiplier, sigma_b)
        parts.optimizer.max_grad_norm = settings.max_grad_norm
        for group in parts.optimizer.param_groups:
            group["lr"] = settings.learning_rate
        seed_epoch(parts, seed=seed, run_id=run_id, epoch=epoch, rank=rank)

        before = opacus_steps(parts.engine)
        counts = [0, 0] if sigma_b else None
        taken = train_epoch(parts, device, counts)
        counted = opacus_steps(parts.engine) - before
        seen = {
            "rank": rank, "node": node, "device": str(device), "steps": taken, "opacus_steps": counted,
            "noise_multiplier": float(parts.optimizer.noise_multiplier),
            "max_grad_norm": float(parts.optimizer.max_grad_norm),
            "learning_rate": float(parts.optimizer.param_groups[0]["lr"]),
            "sample_rate": 1.0 / len(parts.loader),
            "opacus_sample_rate": float(parts.engine.accountant.history[-1][1]),
            "divisor": float(parts.optimizer.expected_batch_size * world),
            "count_noise": sigma_b, "counts": counts,  # exact: gathered to rank 0, never released as is
        }
        all_seen = _gather(seen)
        bad = [s for s in all_seen if s["steps"] != steps or s["opacus_steps"] != steps]
        if bad:
            raise TrainingError(
                f"epoch {epoch}: planned {steps} DP-SGD steps per rank but ranks took "
                f"{[(s['rank'], s['steps'], s['opacus_steps']) for s in all_seen]}; the ledger entry stays reserved")

        state = None
        metrics: dict[str, Any] = {"epoch": epoch}
        if rank == 0:
            ledger.complete(decision["entry"])
            spent = filt.spent
            eps, _ = epsilon_from_rdp(spent, delta)
            acc, holdout_entry = _release_holdout_accuracy(job, ledger, net, X_test, y_test, epoch)
            clipped_fraction = None
            if sigma_b:
                clipped_fraction = signals.noisy_clipped_fraction(
                    sum(s["counts"][0] for s in all_seen), sum(s["counts"][1] for s in all_seen), sigma_b, steps)
            for s in all_seen:
                s.pop("counts")
            seconds = time.perf_counter() - t0
            history.append({
                "epoch": epoch, "noise_multiplier": settings.noise_multiplier,
                "max_grad_norm": settings.max_grad_norm, "learning_rate": settings.learning_rate,
                "steps": steps, "sample_rate": q, "epsilon_spent": eps, "delta": delta,
                "holdout_accuracy_noisy": acc, "holdout_entry": holdout_entry, "seconds": seconds,
                "clipped_fraction_noisy": clipped_fraction, "count_noise": sigma_b,
                "tuner_seconds": tuner_seconds,
                "ledger_entry": decision["entry"], "ranks": all_seen, **({"tuner": explained} if explained else {}),
            })
            shown = "not released" if acc is None else f"{acc:.3f}"
            _say(f"[run {run_id}] epoch {epoch}/{job['epochs']} | sigma {settings.noise_multiplier:.2f} "
                 f"clip {settings.max_grad_norm:.2f} lr {settings.learning_rate:.3g} | steps {steps} | "
                 f"eps spent {eps:.2f} (delta {delta:g}) | noisy holdout acc {shown} | {seconds:.1f}s"
                 + (f" | tuner: {explained['why']}" if explained else ""))
            metrics.update(epsilon_spent=eps, noise_multiplier=settings.noise_multiplier,
                           max_grad_norm=settings.max_grad_norm, learning_rate=settings.learning_rate,
                           **({} if acc is None else {"holdout_accuracy_noisy": acc}))
            state = _state(job, epoch, history, ledger_entries, filt, "completed", q, steps, tuner)
        _report(metrics, net, parts.optimizer, state)


def _release_holdout_accuracy(job: dict, ledger, net, X_test, y_test, epoch: int) -> tuple[float | None, int | None]:
    """Noisy accuracy on the held-out partition, its cost written to the ledger before it is computed.

    None when the plan granted no holdout budget or the dataset cannot afford it any more: the
    run goes on without the signal rather than release an unaccounted number.
    """
    from ppmlops.training.models import predict_proba
    from ppmlops.tuning import signals

    sigma = job.get("holdout_noise")
    if not sigma or y_test is None or not len(y_test):
        return None, None
    try:
        entry = ledger.reserve(dataset_id=job["dataset_id"], run_id=job["run_id"],
                               segment=signals.release_segment(sigma), partition=signals.PARTITION,
                               note=signals.entry_note(epoch, job.get("split", "")))
    except BudgetExceeded as e:
        _say(f"[run {job['run_id']}] no holdout accuracy for epoch {epoch}: {e}")
        return None, None
    correct = int(((predict_proba(net, X_test).numpy() >= 0.5).astype(np.int64) == y_test).sum())
    acc = signals.noisy_accuracy(correct, len(y_test), sigma)
    ledger.complete(entry)
    return acc, int(entry)


def _charge_unrecorded_entries(ledger, filt, dataset_id: str, run_id: str, recorded: list[int]) -> None:
    """Charge the filter for this run's training entries that the checkpoint does not know.

    An epoch is reserved in the ledger and spent in the filter before it runs, but the filter
    state only reaches storage with the checkpoint after the epoch; a crash in between leaves
    a reserved entry the resumed filter has not paid for. Charging it again here keeps the
    filter at least as strict as the ledger (the epoch's partial steps were released).
    """
    for e in ledger.entries(dataset_id=dataset_id, run_id=run_id):
        if e.partition == "train" and e.id not in recorded:
            filt.spend(e.rdp)
            recorded.append(int(e.id))


def _settings_tuple(s) -> tuple[float, float, float]:
    if isinstance(s, EpochSettings):
        return s.noise_multiplier, s.max_grad_norm, s.learning_rate
    if isinstance(s, dict):
        return s["noise_multiplier"], s["max_grad_norm"], s["learning_rate"]
    raise TrainingError(f"the tuner must return EpochSettings or a dict, got {type(s).__name__}")


def _state(job: dict, epoch: int, history: list, ledger_entries: list, filt, stopped_reason: str,
           q: float, steps: int, tuner=None) -> dict:
    return {
        "run_id": job["run_id"], "epoch": epoch, "history": history, "ledger_entries": ledger_entries,
        "filter": _jsonable(filt.state_dict()), "rdp_spent": _curve_list(filt.spent),
        "stopped_reason": stopped_reason, "sample_rate": q, "steps_per_epoch": steps,
        "tuner": _jsonable(tuner.state_dict()) if hasattr(tuner, "state_dict") else None,
    }


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj
