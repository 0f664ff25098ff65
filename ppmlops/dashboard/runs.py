"""Run folders as the dashboard reads them: which runs exist, under which real run id, and what
each recorded. Read-only; only public records (private/ is never opened).

A run's id is Airflow's (`manual__2026-01-01T00:00:00+00:00`); its folder name is sanitised.
Pages spell runs by the real id, read from run.json (written before a run's first stage), or
from plan.json for runs from before run.json; a folder with neither shows its folder name.

A run's state (`state_of`) comes from which public stage records exist and, while it trains,
from epochs.jsonl (the epoch lines rank 0 appends as epochs finish, ppmlops.training.progress).
No record says a task failed (Airflow knows that, not the run folder), so a run with no end
record that has written nothing for `Settings.run_stale_after_s` reads "stalled", not "running".
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from ppmlops.dashboard.errors import NotFound
from ppmlops.run.store import run_folder_name
from ppmlops.settings import Settings
from ppmlops.training.progress import EPOCHS_FILE, PROGRESS_FILE

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class RunRef:
    pipeline: str
    folder: str
    run_id: str  # Airflow's run id, or the folder name when no record names it
    dag_id: str
    dataset_id: str | None
    id_known: bool

    def as_dict(self) -> dict[str, Any]:
        return {"pipeline": self.pipeline, "run_id": self.run_id, "dag_id": self.dag_id,
                "dataset_id": self.dataset_id, "id_known": self.id_known}


def record_files(folder: Path) -> list[Path]:
    # Dot files are the stages' half-written temporaries.
    return [p for p in folder.glob("*.json") if p.is_file() and not p.name.startswith(".")]


def load(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return {"error": f"{path.name} could not be read: {err}"}


def ref(folder: Path) -> RunRef:
    pipeline = folder.parent.name
    ident = load(folder / "run.json") if (folder / "run.json").exists() else {}
    if isinstance(ident, dict) and ident.get("run_id"):
        return RunRef(pipeline, folder.name, str(ident["run_id"]), str(ident.get("dag_id") or f"ppmlops_{pipeline}"),
                      ident.get("dataset_id"), True)
    plan = load(folder / "plan.json") if (folder / "plan.json").exists() else {}
    privacy = plan.get("privacy") if isinstance(plan, dict) else None
    if isinstance(privacy, dict) and privacy.get("run_id"):
        return RunRef(pipeline, folder.name, str(privacy["run_id"]), f"ppmlops_{pipeline}",
                      privacy.get("dataset_id"), True)
    return RunRef(pipeline, folder.name, folder.name, f"ppmlops_{pipeline}", None, False)


# Each stage with the public record written when it ends, in pipeline order. Private records
# (private/) are never looked at, not even for their modification time.
STAGE_DONE = (("ingest", "staged.json"), ("validate", "validated.json"), ("assess", "risk.json"),
              ("plan", "plan.json"), ("train", "train.json"), ("evaluate", "evaluate.json"),
              ("gate", "gate.json"), ("deploy", "deploy.json"))
# Public files a run appends to while a stage runs (the train stage's progress and epoch lines).
LIVE_FILES = (PROGRESS_FILE, EPOCHS_FILE)
IN_FLIGHT = ("running", "waiting")

State = Literal["running", "waiting", "stalled", "deployed", "refused", "denied", "rejected"]


@dataclass(frozen=True)
class RunState:
    """Where a run is. Every field is public: which public records exist, the plan's epoch count,
    and how many epochs rank 0 has announced (epoch numbers are in train.json's history too)."""

    state: State
    stage: str  # the stage running, waiting or stalled; for an ended run the stage it ended at
    words: str  # the state as a person reads it: "training: epoch 3 of 5"
    last_written: float  # newest public file of the run (POSIX seconds)
    epoch: int | None = None  # the epoch running (while training; None in a private search)
    epochs: int | None = None  # the plan's number of epochs
    epochs_done: int | None = None

    @property
    def in_flight(self) -> bool:
        return self.state in IN_FLIGHT

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "in_flight": self.in_flight}


def live_epochs(folder: Path) -> list[dict]:
    """The epoch lines written so far (one per finished epoch; a retried attempt may repeat one,
    the newest line of each epoch wins). Only the public keys the lines are made of."""
    path = folder / EPOCHS_FILE
    by_epoch: dict[int, dict] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # the line being written
        if isinstance(row, dict) and isinstance(row.get("epoch"), int):
            by_epoch[row["epoch"]] = row
    return [by_epoch[k] for k in sorted(by_epoch)]


def state_of(folder: Path, stale_after_s: float, now: float | None = None) -> RunState:
    """The run's state from its public records (see the module's docstring)."""
    records = {p.name: p for p in record_files(folder)}
    live = [folder / n for n in LIVE_FILES if (folder / n).is_file()]
    last = max((p.stat().st_mtime for p in [*records.values(), *live]), default=0.0)

    def rec(name: str) -> dict:
        found = load(records[name]) if name in records else {}
        return found if isinstance(found, dict) else {}

    if "refused.json" in records:
        stage = str(rec("refused.json").get("stage") or "?")
        return RunState("refused", stage, f"refused at {stage}", last)
    if "deploy.json" in records:
        return RunState("deployed", "deploy", "deployed", last)
    gate, approval = rec("gate.json"), rec("approval.json")
    if gate.get("outcome") == "deny":
        return RunState("denied", "gate", "denied at the deploy gate", last)
    if approval.get("outcome") == "rejected":
        return RunState("rejected", "gate", "rejected by a person at the deploy gate", last)
    if gate.get("outcome") == "needs_approval" and not approval:
        return RunState("waiting", "gate", "waiting for a person's approval", last)
    # The stage after the furthest one whose record exists (a folder from before a record existed
    # may lack an earlier stage's record; it is not sent back to that stage).
    reached = max((i for i, (_, done) in enumerate(STAGE_DONE) if done in records), default=-1)
    stage = STAGE_DONE[min(reached + 1, len(STAGE_DONE) - 1)][0]
    epoch = epochs = done = None
    words = f"{stage} running"
    if stage == "train":
        privacy = rec("plan.json").get("privacy") or {}
        epochs = privacy.get("epochs") if isinstance(privacy.get("epochs"), int) else None
        if privacy.get("search"):
            # A private search announces no epoch or trial (how many trials ran is secret).
            words = "training: a private search (its progress is not shown: how many trials ran is secret)"
        else:
            done = max((e["epoch"] for e in live_epochs(folder)), default=0)
            epoch = done + 1 if epochs is None or done < epochs else done
            words = (f"training: epoch {epoch} of {epochs if epochs is not None else '?'}"
                     + (f" ({done} finished)" if done and done < (epochs or done + 1) else "")
                     + ("; finishing" if epochs is not None and done >= epochs else ""))
    now = time.time() if now is None else now
    if now - last > stale_after_s:
        quiet = _duration(now - last)
        return RunState("stalled", stage, f"stalled at {stage}: no end record and nothing written for {quiet} "
                        "(the DAG run in Airflow says whether its task failed)", last, epoch, epochs, done)
    return RunState("running", stage, words, last, epoch, epochs, done)


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 120:
        return f"{minutes} min"
    hours = minutes // 60
    return f"{hours} h" if hours < 48 else f"{hours // 24} days"


def folders(settings: Settings) -> list[Path]:
    root = settings.runs_dir
    out = []
    for pipe in sorted(root.iterdir()) if root.is_dir() else []:
        if pipe.is_dir() and _SAFE_NAME.match(pipe.name):
            out += [run for run in pipe.iterdir()
                    if run.is_dir() and _SAFE_NAME.match(run.name) and record_files(run)]
    return out


class RunIndex:
    """Finds a run's pipeline from its id (and dataset, as two DAGs may share a run id)."""

    def __init__(self, refs: list[RunRef], states: dict[tuple[str, str], RunState] | None = None):
        self._by: dict[tuple[str, str | None], RunRef] = {}
        self._states = states or {}
        for r in refs:
            self._by[(r.folder, r.dataset_id)] = r
            self._by.setdefault((r.folder, None), r)

    def state(self, ref: RunRef) -> RunState | None:
        return self._states.get((ref.pipeline, ref.folder))

    def in_flight(self, dataset_id: str | None = None) -> list[tuple[RunRef, RunState]]:
        """Runs in flight (running or waiting for a person), of one dataset or all, newest first."""
        found = {(r.pipeline, r.folder): r for r in self._by.values()}
        out = [(r, self._states[k]) for k, r in found.items() if k in self._states and self._states[k].in_flight
               and (dataset_id is None or r.dataset_id == dataset_id)]
        return sorted(out, key=lambda t: t[1].last_written, reverse=True)

    def find(self, run_id: Any, dataset_id: str | None = None) -> RunRef | None:
        if not run_id:
            return None
        folder = run_folder_name(str(run_id))
        return self._by.get((folder, dataset_id)) or self._by.get((folder, None))


def index(settings: Settings) -> RunIndex:
    found = folders(settings)
    now = time.time()
    return RunIndex([ref(f) for f in found],
                    {(f.parent.name, f.name): state_of(f, settings.run_stale_after_s, now) for f in found})


def listing(settings: Settings, limit: int = 50) -> dict:
    """Run folders, most recently written first: records present, the gate's outcome."""
    found = sorted(((max(p.stat().st_mtime for p in record_files(f)), f) for f in folders(settings)),
                   key=lambda t: t[0], reverse=True)
    out = []
    for mtime, folder in found[:limit]:
        gate = load(folder / "gate.json") if (folder / "gate.json").exists() else {}
        approval = load(folder / "approval.json") if (folder / "approval.json").exists() else {}
        refused = (folder / "refused.json").exists()
        out.append({**ref(folder).as_dict(), "records": sorted(p.stem for p in record_files(folder)),
                    "modified": mtime, "refused": refused,
                    "outcome": gate.get("outcome") if isinstance(gate, dict) else None,
                    # a person's answer to a needs-approval gate: the gate's state once given
                    "answered": approval.get("outcome") if isinstance(approval, dict) else None,
                    "state": state_of(folder, settings.run_stale_after_s).as_dict()})
    return {"runs_dir": str(settings.runs_dir), "runs": out}


def folder_of(settings: Settings, pipeline: str, run_id: str) -> Path:
    """The run's folder; Airflow's run ids and folder names both work. Names that could leave
    runs_dir are refused."""
    name = run_folder_name(run_id)
    for part in (pipeline, name):
        if not _SAFE_NAME.match(part):
            raise NotFound(f"no run {pipeline!r}/{run_id!r}: not a pipeline / run folder name")
    folder = settings.runs_dir / pipeline / name
    if not folder.is_dir() or not record_files(folder):
        raise NotFound(f"no run {run_id!r} of pipeline {pipeline!r}")
    return folder


def detail(settings: Settings, pipeline: str, run_id: str) -> dict:
    """Every public JSON record of one run, stages in pipeline order, and train's epochs."""
    from ppmlops.pipeline import STAGES

    folder = folder_of(settings, pipeline, run_id)
    order = {name: i for i, name in enumerate(["run", *STAGES])}
    files = sorted(record_files(folder), key=lambda p: (order.get(p.stem, len(order)), p.stem))
    records = {p.stem: load(p) for p in files}
    train = records.get("train")
    history = train.get("history") if isinstance(train, dict) else None
    state = state_of(folder, settings.run_stale_after_s)
    # While training, the epochs finished so far (their lines; train.json's history replaces them).
    live = train is None and state.stage == "train"
    return {**ref(folder).as_dict(), "run": folder.name, "run_dir": str(folder), "records": records,
            "epochs": history if isinstance(history, list) else (live_epochs(folder) if live else []),
            "epochs_live": live, "state": state.as_dict()}


def retirements(settings: Settings, dataset_id: str) -> dict[str, list[dict]]:
    """Per run of the dataset, the blocks of its window it retired (their budget could not afford
    it), as its public records name them: plan.json, else staged.json (a run refused after ingest).
    Block bounds come from the calendar, so these are public. Runs whose records do not name
    their dataset (from before run.json) are left out rather than guessed."""
    out: dict[str, list[dict]] = {}
    for folder in folders(settings):
        r = ref(folder)
        if r.dataset_id != dataset_id:
            continue
        plan = load(folder / "plan.json") if (folder / "plan.json").exists() else {}
        staged = load(folder / "staged.json") if (folder / "staged.json").exists() else {}
        privacy = plan.get("privacy") if isinstance(plan, dict) else None
        found = privacy if isinstance(privacy, dict) and "retired_blocks" in privacy else staged
        retired = found.get("retired_blocks") if isinstance(found, dict) else None
        retired = [x for x in retired or [] if isinstance(x, dict) and isinstance(x.get("block"), str)]
        if retired:
            out[r.run_id] = retired
    return out
