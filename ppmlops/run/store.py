"""A run's folder: the one place that knows where a run's records, model and private files live.

    <runs dir>/<pipeline>/<run folder>/           public records (plan.json, train.json, ...)
                                      manifest.json  the deploy gate's input (public)
                                      train_request.json  what a Ray job rebuilds the run from
                                      progress.log, epochs.jsonl  rank 0's lines while training
                                      model.pt    the DP-trained model (public, post-processing)
                                      private/    exact counts, the exact risk report, snapshots,
                                                  the quarantine file, the canaries' coins, and
                                      private/ray/  Ray Train's storage (checkpoints, Ray's own run
                                                  snapshot; a private search's progress)

`private/` and `private/ray/` are created mode 0700 and private records are written mode 0600:
the run folder's top is readable by others (the dashboard, an auditor), what is under private/
is the run owner's only. On a cluster PPMLOPS_HOME is shared storage: its operator must keep
it (and so every run's private/) out of reach of anyone but the Airflow and Ray service users.

Run folders are named after the run id with every character other than letters, digits, '_',
'.' and '-' replaced (Airflow run ids carry ':' and '+'). Records are written atomically.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError

from ppmlops.errors import PpmlopsError
from ppmlops.run.records import PUBLIC_RECORDS, Record

R = TypeVar("R", bound=Record)

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def is_safe_name(name: str) -> bool:
    """Whether `name` may be one path segment of the runs folder or the registry (a pipeline, a
    run folder, a model): letters, digits, _ . - only, not starting with . or - (no '..', no '/')."""
    return bool(_SAFE_NAME.match(name or ""))

MODEL_FILE = "model.pt"
MANIFEST_FILE = "manifest.json"
REQUEST_FILE = "train_request.json"
# Rank 0's progress lines and, beside them, one JSON line per finished epoch (public values only:
# ppmlops.training.progress writes them, the dashboard and the driver follow them).
PROGRESS_FILE = "progress.log"
EPOCHS_FILE = "epochs.jsonl"
# Public JSON files of a run that are documents rather than stage records.
DOCUMENTS = (MANIFEST_FILE, REQUEST_FILE)
RAY_STORAGE = "ray"
PRIVATE_MODE = 0o700


def private_folder(path: Path) -> Path:
    """`path` as a folder only its owner can enter. One that exists already (a run folder made
    before this rule, a retried task's) is tightened when it is ours; never migrated."""
    path = Path(path)
    path.mkdir(mode=PRIVATE_MODE, parents=True, exist_ok=True)  # parents keep the default mode
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise PpmlopsError(f"{path} must be a folder of this run, not a link or a file")
    if stat.S_IMODE(st.st_mode) & 0o077 and st.st_uid == os.getuid():
        path.chmod(PRIVATE_MODE)
    return path


def run_folder_name(run_id: str) -> str:
    return _UNSAFE.sub("_", run_id)


class RunStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    @classmethod
    def of(cls, runs_dir: Path, pipeline: str, run_id: str) -> "RunStore":
        return cls(Path(runs_dir) / pipeline / run_folder_name(run_id))

    @classmethod
    def of_pipeline(cls, runs_dir: Path, pipeline: str) -> list["RunStore"]:
        """Every run folder of a pipeline, oldest first."""
        root = Path(runs_dir) / pipeline
        folders = [p for p in root.iterdir() if p.is_dir() and _SAFE_NAME.match(p.name)] if root.is_dir() else []
        return [cls(p) for p in sorted(folders, key=lambda p: p.stat().st_mtime)]

    @classmethod
    def existing(cls, runs_dir: Path, pipeline: str, folder: str) -> "RunStore":
        """A run folder named by a caller (the dashboard's URL): refuse anything but a plain name."""
        for what, name in (("pipeline", pipeline), ("run", folder)):
            if not _SAFE_NAME.match(name or ""):
                raise PpmlopsError(f"{what} name {name!r} is not a run folder name")
        store = cls(Path(runs_dir) / pipeline / folder)
        if not store.root.is_dir():
            raise FileNotFoundError(f"no run {pipeline}/{folder}")
        return store

    # -- paths ----------------------------------------------------------------------------------
    @property
    def private_dir(self) -> Path:
        return self.root / "private"

    def ensure(self) -> "RunStore":
        private_folder(self.private_dir)
        return self

    def ray_storage(self) -> Path:
        """Ray Train's storage for this run (RunConfig.storage_path): under private/, because what
        Ray keeps there (checkpoints, their count, its run snapshot) may tell a private search's
        trial count. The same path on every attempt, so a retried task resumes from its checkpoint."""
        self.ensure()
        return private_folder(self.private_dir / RAY_STORAGE)

    @property
    def model_path(self) -> Path:
        return self.root / MODEL_FILE

    def path_of(self, cls: type[Record]) -> Path:
        return (self.private_dir if cls.PRIVATE else self.root) / cls.FILE

    def private_path(self, name: str) -> Path:
        """A private file of the run (a report, a log, the worker's initial weights), its folder
        made owner-only first. A plain name: nothing outside private/."""
        if not _SAFE_NAME.match(name):
            raise PpmlopsError(f"{name!r} is not a file name of a run's private folder")
        return self.ensure().private_dir / name

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST_FILE

    @property
    def request_path(self) -> Path:
        return self.root / REQUEST_FILE

    @property
    def progress_path(self) -> Path:
        return self.root / PROGRESS_FILE

    @property
    def epochs_path(self) -> Path:
        return self.root / EPOCHS_FILE

    # -- records --------------------------------------------------------------------------------
    def write(self, record: R) -> R:
        path = self.path_of(type(record))
        if record.PRIVATE:
            private_folder(path.parent)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        _atomic(path, record.model_dump_json(indent=2), record.PRIVATE)
        return record

    def write_private_text(self, name: str, text: str) -> Path:
        path = self.private_path(name)
        _atomic(path, text, private=True)
        return path

    def write_document(self, name: str, doc: dict) -> Path:
        """A public JSON document that is not a stage record (DOCUMENTS): the deploy manifest
        (a DeployManifest's document()), the Ray job's request. Written as json.dumps(indent=2)
        has always written them."""
        if name not in DOCUMENTS:
            raise PpmlopsError(f"{name} is not a public document of a run (one of {', '.join(DOCUMENTS)})")
        self.root.mkdir(parents=True, exist_ok=True)
        _atomic(self.root / name, json.dumps(doc, indent=2, default=str), private=False)
        return self.root / name

    def read(self, cls: type[R]) -> R:
        record = self.read_optional(cls)
        if record is None:
            raise PpmlopsError(f"{cls.FILE} is missing in {self.root}: the stage that writes it has not run")
        return record

    def read_optional(self, cls: type[R]) -> R | None:
        path = self.path_of(cls)
        if not path.exists():
            return None
        try:
            return cls.model_validate_json(path.read_text())
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(top level)"
            raise PpmlopsError(f"{path} is not a valid {cls.__name__} record ({where}: {first['msg']}); "
                               "it was written by another ppmlops version or edited by hand") from None

    def public_records(self, *, unreadable: str = "raise") -> dict[str, Record | PpmlopsError]:
        """Every public record present, by file stem, in PUBLIC_RECORDS' order (what the dashboard
        and the summary read); nothing under private/ is opened. With unreadable="keep" a record
        that does not validate (another ppmlops version's, edited by hand) is its error instead, so
        one bad file does not hide the others' pages."""
        out: dict[str, Record | PpmlopsError] = {}
        for cls in PUBLIC_RECORDS:
            try:
                rec = self.read_optional(cls)
            except (PpmlopsError, OSError, ValueError) as err:
                if unreadable != "keep":
                    raise
                rec = err if isinstance(err, PpmlopsError) else PpmlopsError(f"{cls.FILE} could not be read: {err}")
            if rec is not None:
                out[cls.FILE.removesuffix(".json")] = rec
        return out

    def read_document(self, name: str) -> dict | None:
        """A public JSON document (DOCUMENTS) as written; None when absent."""
        if name not in DOCUMENTS:
            raise PpmlopsError(f"{name} is not a public document of a run (one of {', '.join(DOCUMENTS)})")
        path = self.root / name
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None

    def public_files(self) -> list[Path]:
        """The public JSON files present (records and documents), never a half-written temporary
        (dot files) and nothing under private/."""
        known = {cls.FILE for cls in PUBLIC_RECORDS} | set(DOCUMENTS)
        return [self.root / name for name in sorted(known) if (self.root / name).is_file()]

    def last_written(self) -> float:
        """The newest public file's modification time (POSIX seconds; 0 for none): its records,
        documents and the lines training appends. Private files are not looked at, not even their
        modification time."""
        files = [*self.public_files(), self.progress_path, self.epochs_path]
        return max((p.stat().st_mtime for p in files if p.is_file()), default=0.0)

    def epoch_lines(self) -> list[dict]:
        """The epoch lines rank 0 has appended (ppmlops.training.progress), in file order; a line
        being written is skipped."""
        try:
            text = self.epochs_path.read_text(encoding="utf-8")
        except OSError:
            return []
        rows = []
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
        return rows

    @classmethod
    def every(cls, runs_dir: Path) -> list["RunStore"]:
        """Every run folder under runs_dir that has published a file, by pipeline and name."""
        root = Path(runs_dir)
        out = []
        for pipe in sorted(root.iterdir()) if root.is_dir() else []:
            if pipe.is_dir() and _SAFE_NAME.match(pipe.name):
                out += [store for run in sorted(pipe.iterdir()) if run.is_dir() and _SAFE_NAME.match(run.name)
                        for store in [cls(run)] if store.public_files()]
        return out

def _atomic(path: Path, text: str, private: bool) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)  # a crashed write's leftover: os.open's mode applies to new files only
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    tmp.replace(path)
