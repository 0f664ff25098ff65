"""Run folders as the dashboard reads them: which runs exist, under which real run id, and what
each recorded. Read-only; only public records (private/ is never opened).

A run's id is Airflow's (`manual__2026-01-01T00:00:00+00:00`); its folder name is sanitised.
Pages spell runs by the real id, read from run.json (written before a run's first stage), or
from plan.json for runs from before run.json; a folder with neither shows its folder name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ppmlops.dashboard.errors import NotFound
from ppmlops.run.store import run_folder_name
from ppmlops.settings import Settings

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

    def __init__(self, refs: list[RunRef]):
        self._by: dict[tuple[str, str | None], RunRef] = {}
        for r in refs:
            self._by[(r.folder, r.dataset_id)] = r
            self._by.setdefault((r.folder, None), r)

    def find(self, run_id: Any, dataset_id: str | None = None) -> RunRef | None:
        if not run_id:
            return None
        folder = run_folder_name(str(run_id))
        return self._by.get((folder, dataset_id)) or self._by.get((folder, None))


def index(settings: Settings) -> RunIndex:
    return RunIndex([ref(f) for f in folders(settings)])


def listing(settings: Settings, limit: int = 50) -> dict:
    """Run folders, most recently written first: records present, the gate's outcome."""
    found = sorted(((max(p.stat().st_mtime for p in record_files(f)), f) for f in folders(settings)),
                   key=lambda t: t[0], reverse=True)
    out = []
    for mtime, folder in found[:limit]:
        gate = load(folder / "gate.json") if (folder / "gate.json").exists() else {}
        refused = (folder / "refused.json").exists()
        out.append({**ref(folder).as_dict(), "records": sorted(p.stem for p in record_files(folder)),
                    "modified": mtime, "refused": refused,
                    "outcome": gate.get("outcome") if isinstance(gate, dict) else None})
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
    return {**ref(folder).as_dict(), "run": folder.name, "run_dir": str(folder), "records": records,
            "epochs": history if isinstance(history, list) else []}


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
