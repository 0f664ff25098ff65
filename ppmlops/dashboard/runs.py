"""Run folders as the dashboard reads them: which runs exist, under which real run id, and what
each recorded. Read-only, and only through RunStore (the one reader of a run folder): its typed
public records (`RunStore.public_records`), never a file of private/.

A run's id is Airflow's (`manual__2026-01-01T00:00:00+00:00`); its folder name is sanitised.
Pages spell runs by the real id, read from run.json (written before a run's first stage), or
from plan.json for runs from before run.json; a folder with neither shows its folder name.

A run's state (`state_of`) comes from which public stage records exist and, while it trains,
from epochs.jsonl (the epoch lines rank 0 appends as epochs finish, ppmlops.training.progress).
No record says a task failed (Airflow knows that, not the run folder), so a run with no end
record that has written nothing for `Settings.run_stale_after_s` reads "stalled", not "running".
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from ppmlops.dashboard.errors import NotFound
from ppmlops.errors import PpmlopsError
from ppmlops.run.records import (
    ApprovalRecord, GateRecord, PlanRecord, Record, Refusal, RunIdentity, Staged,
)
from ppmlops.run.store import MANIFEST_FILE, RunStore, run_folder_name
from ppmlops.spec import dag_id_of
from ppmlops.settings import Settings


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


def _store(run: RunStore | Path) -> RunStore:
    return run if isinstance(run, RunStore) else RunStore(run)


def _optional(store: RunStore, cls: type[Record]) -> Any:
    """A record, or None when it is absent or unreadable (a page then shows what the others say)."""
    try:
        return store.read_optional(cls)
    except (PpmlopsError, OSError):
        return None


def ref(run: RunStore | Path) -> RunRef:
    store = _store(run)
    folder, pipeline = store.root.name, store.root.parent.name
    ident = _optional(store, RunIdentity)
    if ident is not None:
        return RunRef(pipeline, folder, ident.run_id, ident.dag_id or dag_id_of(pipeline), ident.dataset_id, True)
    plan = _optional(store, PlanRecord)
    if plan is not None and plan.privacy.run_id:
        return RunRef(pipeline, folder, plan.privacy.run_id, dag_id_of(pipeline), plan.privacy.dataset_id, True)
    return RunRef(pipeline, folder, folder, dag_id_of(pipeline), None, False)


# Each stage with the public record written when it ends, in pipeline order. Private records
# (private/) are never looked at, not even for their modification time.
STAGE_DONE = (("ingest", "staged.json"), ("validate", "validated.json"), ("assess", "risk.json"),
              ("plan", "plan.json"), ("train", "train.json"), ("evaluate", "evaluate.json"),
              ("gate", "gate.json"), ("deploy", "deploy.json"))
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


def live_epochs(run: RunStore | Path) -> list[dict]:
    """The epoch lines written so far (one per finished epoch; a retried attempt may repeat one,
    the newest line of each epoch wins). Only the public keys the lines are made of."""
    by_epoch = {row["epoch"]: row for row in _store(run).epoch_lines() if isinstance(row.get("epoch"), int)}
    return [by_epoch[k] for k in sorted(by_epoch)]


def state_of(run: RunStore | Path, stale_after_s: float, now: float | None = None) -> RunState:
    """The run's state from its public records (see the module's docstring)."""
    store = _store(run)
    present = {p.name for p in store.public_files()}
    last = store.last_written()

    if Refusal.FILE in present:
        refused = _optional(store, Refusal)
        stage = refused.stage if refused is not None else "?"
        return RunState("refused", stage, f"refused at {stage}", last)
    if "deploy.json" in present:
        return RunState("deployed", "deploy", "deployed", last)
    gate, approval = _optional(store, GateRecord), _optional(store, ApprovalRecord)
    if gate is not None and gate.outcome == "deny":
        return RunState("denied", "gate", "denied at the deploy gate", last)
    if approval is not None and approval.outcome == "rejected":
        return RunState("rejected", "gate", "rejected by a person at the deploy gate", last)
    if gate is not None and gate.outcome == "needs_approval" and approval is None:
        return RunState("waiting", "gate", "waiting for a person's approval", last)
    # The stage after the furthest one whose record exists (a folder from before a record existed
    # may lack an earlier stage's record; it is not sent back to that stage).
    reached = max((i for i, (_, done) in enumerate(STAGE_DONE) if done in present), default=-1)
    stage = STAGE_DONE[min(reached + 1, len(STAGE_DONE) - 1)][0]
    epoch = epochs = done = None
    words = f"{stage} running"
    if stage == "train":
        plan = _optional(store, PlanRecord)
        epochs = plan.privacy.epochs if plan is not None else None
        if plan is not None and plan.privacy.search is not None:
            # A private search announces no epoch or trial (how many trials ran is secret).
            words = "training: a private search (its progress is not shown: how many trials ran is secret)"
        else:
            done = max((e["epoch"] for e in live_epochs(store)), default=0)
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


def folders(settings: Settings) -> list[RunStore]:
    """Every run that has published a file (RunStore.every)."""
    return RunStore.every(settings.runs_dir)


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
                    {(f.root.parent.name, f.root.name): state_of(f, settings.run_stale_after_s, now) for f in found})


def listing(settings: Settings, limit: int = 50) -> dict:
    """Run folders, most recently written first: records present, the gate's outcome."""
    found = sorted(((max(p.stat().st_mtime for p in f.public_files()), f) for f in folders(settings)),
                   key=lambda t: t[0], reverse=True)
    out = []
    for mtime, store in found[:limit]:
        gate, approval = _optional(store, GateRecord), _optional(store, ApprovalRecord)
        out.append({**ref(store).as_dict(), "records": sorted(p.stem for p in store.public_files()),
                    "modified": mtime, "refused": store.path_of(Refusal).is_file(),
                    "outcome": gate.outcome if gate is not None else None,
                    # a person's answer to a needs-approval gate: the gate's state once given
                    "answered": approval.outcome if approval is not None else None,
                    "state": state_of(store, settings.run_stale_after_s).as_dict()})
    return {"runs_dir": str(settings.runs_dir), "runs": out}


def store_of(settings: Settings, pipeline: str, run_id: str) -> RunStore:
    """The run's store; Airflow's run ids and folder names both work. Names that could leave
    runs_dir are refused."""
    try:
        store = RunStore.existing(settings.runs_dir, pipeline, run_folder_name(run_id))
    except (PpmlopsError, FileNotFoundError) as err:
        raise NotFound(f"no run {pipeline!r}/{run_id!r}: " + ("not a pipeline / run folder name"
                                                              if isinstance(err, PpmlopsError) else "no such run")) from None
    if not store.public_files():
        raise NotFound(f"no run {run_id!r} of pipeline {pipeline!r}")
    return store


def detail(settings: Settings, pipeline: str, run_id: str) -> dict:
    """Every public record of one run, stages in pipeline order, and train's epochs. Records are
    the typed ones RunStore validated, dumped whole (a field the record lacks is not there to be
    read); one that does not validate shows its error. The deploy manifest and a Ray job's
    request are documents beside them."""
    from ppmlops.pipeline import STAGES
    from ppmlops.run.store import DOCUMENTS

    store = store_of(settings, pipeline, run_id)
    found: dict[str, Any] = {}
    for name, rec in store.public_records(unreadable="keep").items():
        found[name] = {"error": str(rec)} if isinstance(rec, Exception) else rec.model_dump(mode="json")
    for name in DOCUMENTS:
        try:
            doc = store.read_document(name)
        except (OSError, ValueError) as err:
            doc = {"error": f"{name} could not be read: {err}"}
        if doc is not None and name == MANIFEST_FILE and "error" not in doc:
            doc = _typed_manifest(doc)
        if doc is not None:
            found[name.removesuffix(".json")] = doc
    order = {name: i for i, name in enumerate(["run", *STAGES])}
    records = {k: found[k] for k in sorted(found, key=lambda k: (order.get(k, len(order)), k))}
    train = records.get("train")
    history = train.get("history") if isinstance(train, dict) else None
    state = state_of(store, settings.run_stale_after_s)
    # While training, the epochs finished so far (their lines; train.json's history replaces them).
    live = train is None and state.stage == "train"
    return {**ref(store).as_dict(), "run": store.root.name, "run_dir": str(store.root), "records": records,
            "epochs": history if isinstance(history, list) else (live_epochs(store) if live else []),
            "epochs_live": live, "state": state.as_dict()}


def _typed_manifest(doc: dict) -> dict:
    """The deploy manifest read as the DeployManifest the gate validated when it wrote it; one that
    does not validate (written before manifests had a schema, or edited since) is shown as written,
    with why, rather than hidden."""
    from pydantic import ValidationError

    from ppmlops.compliance.documents import DeployManifest

    try:
        return DeployManifest.model_validate(doc).document()
    except ValidationError as err:
        return {**doc, "schema_error": f"not a valid DeployManifest ({err.error_count()} problem(s), e.g. "
                                      f"{'.'.join(map(str, err.errors()[0]['loc']))}: {err.errors()[0]['msg']}): "
                                      "written before manifests had a schema, or edited since; shown as written"}


def retirements(settings: Settings, dataset_id: str) -> dict[str, list[dict]]:
    """Per run of the dataset, the blocks of its window it retired (their budget could not afford
    it), as its public records name them: plan.json, else staged.json (a run refused after ingest).
    Block bounds come from the calendar, so these are public. Runs whose records do not name
    their dataset (from before run.json) are left out rather than guessed."""
    out: dict[str, list[dict]] = {}
    for store in folders(settings):
        r = ref(store)
        if r.dataset_id != dataset_id:
            continue
        plan, staged = _optional(store, PlanRecord), _optional(store, Staged)
        found = plan.privacy if plan is not None else staged
        retired = [b.model_dump(mode="json") for b in found.retired_blocks] if found is not None else []
        if retired:
            out[r.run_id] = retired
    return out
