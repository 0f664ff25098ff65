"""What the dashboard shows, read from the ledger, the audit log, the registry and run folders.

Plain functions of Settings that return JSON-safe dicts: app.py serves them as JSON and html.py
renders them. Nothing here writes; a missing SQLite database is reported, not created (opening
a Ledger on a missing file would create an empty one and show "no datasets", which is wrong).
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Any, Iterator

from sqlalchemy.exc import SQLAlchemyError

from ppmlops.dashboard import runs as run_folders
from ppmlops.dashboard.errors import NotFound, Unavailable
from ppmlops.errors import PpmlopsError
from ppmlops.run.store import is_safe_name
from ppmlops.settings import Settings

__all__ = ["NotFound", "Unavailable"]





def jsonable(value: Any) -> Any:
    """A copy that strict JSON accepts: non-finite floats become "inf"/"nan" strings (an unbounded
    epsilon is information, null would hide it), numpy scalars become Python ones."""
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


# -- the database -----------------------------------------------------------------------------

def safe_url(db_url: str) -> str:
    from ppmlops.db import redact

    return redact(db_url)


@functools.lru_cache(maxsize=8)
def _open(db_url: str):
    # One engine pool per URL rather than per request; settings are still read per request, so a
    # changed PPMLOPS_DB_URL simply opens (and caches) the other database.
    from ppmlops.audit.log import AuditLog
    from ppmlops.privacy.ledger import Ledger

    return Ledger(db_url), AuditLog(db_url)


def ledger_or_none(settings: Settings):
    """The ledger, or None before any pipeline ran (no database yet: nothing charged)."""
    from ppmlops.privacy.ledger import sqlite_file_missing

    return None if sqlite_file_missing(settings.db_url) else stores(settings)[0]


def stores(settings: Settings):
    """(Ledger, AuditLog) on settings.db_url, or Unavailable with a message a person can act on."""
    from ppmlops.privacy.ledger import sqlite_file_missing

    url = settings.db_url
    try:
        missing = sqlite_file_missing(url)
    except Exception:  # noqa: BLE001 - an invalid URL: Ledger() below says what is wrong with it
        missing = False
    if missing:
        raise Unavailable(
            f"no ppmlops database at {safe_url(url)}: no pipeline has run with this PPMLOPS_HOME "
            f"({settings.home}) yet, or PPMLOPS_HOME / PPMLOPS_DB_URL point somewhere else")
    try:
        return _open(url)
    except (PpmlopsError, SQLAlchemyError, ImportError, OSError) as err:
        raise Unavailable(f"cannot open the ppmlops database at {safe_url(url)}: {_first_line(err)}") from None


@contextlib.contextmanager
def _reading(settings: Settings) -> Iterator[None]:
    try:
        yield
    except SQLAlchemyError as err:  # e.g. the server went away after the engine was cached
        raise Unavailable(f"reading the ppmlops database at {safe_url(settings.db_url)} failed: "
                          f"{_first_line(err)}") from None


def _first_line(err: BaseException) -> str:
    text = str(getattr(err, "orig", None) or err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# -- privacy budgets --------------------------------------------------------------------------

def budgets(settings: Settings) -> dict:
    """Every dataset in the ledger: budget, spend, what is left, per partition."""
    ledger, _ = stores(settings)
    with _reading(settings):
        summary = ledger.summary()
    return jsonable({"accountant": summary["accountant"], "datasets": [_budget(d) for d in summary["datasets"]]})


def _budget(d: dict) -> dict:
    from ppmlops.privacy.block_view import use_of

    use = use_of(d)
    return {
        "dataset_id": d["dataset_id"],
        "epsilon_budget": d["epsilon_budget"],
        "delta": d["delta"],
        "epsilon_spent": d["epsilon_spent"],
        "epsilon_remaining": d["epsilon_remaining"],
        # The one figure of a dataset's use (ppmlops.privacy.block_view): the worst (block, split)'s
        # share of the lifetime RDP budget, what admission checks, with its block named.
        "share_used": use.share if use else None,
        "use": use.as_dict() if use else None,
        "partitions": d["partitions"],
        "runs": d["runs"],
        "entry_count": len(d["entries"]),
        # Reserved entries count in the totals (write-ahead); many of them mean crashed runs.
        "reserved_count": sum(e["status"] == "reserved" for e in d["entries"]),
        # Entries drawn with replayable randomness: their noise can be subtracted by anyone who knows
        # the seed and run id, so they are not a spend under a guarantee and are shown apart.
        "replayable_count": sum(e.get("randomness", "secure") != "secure" for e in d["entries"]),
    }


def dataset(settings: Settings, dataset_id: str) -> dict:
    """One dataset's budget, what each run spent per partition, its blocks, and every ledger entry."""
    from ppmlops.privacy.block_view import block_rows, run_share

    ledger, _ = stores(settings)
    with _reading(settings):
        try:
            [d] = ledger.summary(dataset_id)["datasets"]
        except PpmlopsError:
            raise NotFound(f"dataset {dataset_id!r} is not in the privacy ledger") from None
        runs = []
        registered = d["delta"] is not None
        for run_id in d["runs"]:
            mine = [e for e in d["entries"] if e["run_id"] == run_id]
            # A run's own epsilon: its entries composed on their own, at the dataset's delta.
            by_partition = ledger.epsilon_by_partition(dataset_id, run_id=run_id) if registered else {}
            runs.append({
                "run_id": run_id,
                "epsilon": max(by_partition.values(), default=0.0) if registered else None,
                "epsilon_by_partition": by_partition,
                # What the run adds to each block it read (share of a block's lifetime budget).
                "share": run_share(ledger, dataset_id, run_id) if registered else None,
                "blocks": next((e["blocks"] for e in mine if e["kind"] in ("release", "grant")), None),
                "entries": len(mine),
                "steps": sum(e["steps"] for e in mine),
                "statuses": sorted({e["status"] for e in mine}),
                "replayable_entries": sum(e.get("randomness", "secure") != "secure" for e in mine),
            })
        steps = _spend_steps(ledger, dataset_id)
    retired = run_folders.retirements(settings, dataset_id)
    return jsonable({**_budget(d), "run_spend": runs, "entries": d["entries"], "spend_steps": steps,
                     "block_length_seconds": d.get("block_length_seconds"), "block_origin": d.get("block_origin"),
                     "block_rows": [_block_row(r) for r in block_rows(d)], "retired": retired,
                     "pipelines": {name: {"runs": p["runs"], "dominant_share": p["dominant_share"]}
                                   for name, p in d["pipelines"].items()}})


def ledger_tables(settings: Settings) -> dict:
    """The privacy ledger's tables as they stand, for the officer: each registered dataset's fixed
    terms (budget, delta, accounting order, blocks, unit of privacy), the runs registered by
    pipeline, and every entry (all public: the ledger holds no row data)."""
    ledger, _ = stores(settings)
    datasets, runs, entries = [], [], []
    with _reading(settings):
        for ds in ledger.datasets():
            budget, unit = ledger.budget(ds), ledger.unit(ds)
            cal = budget.calendar if budget is not None else None
            datasets.append({
                "dataset_id": ds, "epsilon_budget": budget.epsilon if budget else None,
                "delta": budget.delta if budget else None, "accounting_order": budget.order if budget else None,
                "block_seconds": cal.seconds if cal is not None and cal.blocked else None,
                "block_origin": cal.origin.isoformat() if cal is not None and cal.blocked else None,
                "unit": unit.describe() if unit is not None else None})
            runs += [{"dataset_id": ds, "run_id": r.run_id, "pipeline": r.pipeline,
                      "window_end": r.window_end.isoformat() if r.window_end else None}
                     for r in ledger.pipeline_runs(ds)]
            # An entry's note can quote a run's settings: the dataset page shows it to officers only.
            entries += [{k: v for k, v in e.to_dict().items() if k != "note"} for e in ledger.entries(ds)]
    return jsonable({"datasets": datasets, "runs": runs, "entries": entries})


def _block_row(r: Any) -> dict:
    return {"block": r.block, "start": r.start.isoformat() if r.start else None,
            "end": r.end.isoformat() if r.end else None, "shares": r.shares, "worst": r.worst, "runs": list(r.runs)}


def spend_steps_all(settings: Settings) -> dict[str, list[dict]]:
    """Every dataset's spend over time (the overview's charts)."""
    ledger, _ = stores(settings)
    with _reading(settings):
        return jsonable({ds: _spend_steps(ledger, ds) for ds in ledger.datasets()})


def _spend_steps(ledger: Any, dataset_id: str) -> list[dict]:
    from ppmlops.dashboard.spend import spend_steps

    budget = ledger.budget(dataset_id)
    if budget is None:
        return []
    return [{"at": s.at, "run_id": s.run_id, "event": s.event, "words": s.words, "partition": s.partition,
             "share": s.share, "block": s.block, "charge_epsilon": s.charge_epsilon}
            for s in spend_steps(ledger.entries(dataset_id), budget)]


# -- decisions --------------------------------------------------------------------------------

def decisions(settings: Settings, run_id: str | None = None, dataset_id: str | None = None,
              limit: int | None = 200) -> dict:
    """Audit records matching the filter, newest first (at most `limit`), and the chain's state."""
    _, log = stores(settings)
    with _reading(settings):
        records = log.records(run_id=run_id, dataset_id=dataset_id)
        chain = chain_status(log)
    shown = records[-limit:] if limit else records
    return jsonable({
        "filter": {"run_id": run_id, "dataset_id": dataset_id},
        "total": len(records),
        "records": list(reversed(shown)),
        "chain": chain,
    })


def chain_status(log: Any) -> dict:
    problems = log.verify()
    head = log.head()
    return {
        "intact": not problems,
        "problems": problems,
        "records": head["seq"] if head else 0,
        "head": head,
        # Checked without an anchor kept elsewhere: cutting off the newest records, or rewriting
        # the whole chain with fresh hashes, cannot show here (see AuditLog.verify).
        "anchored": False,
    }


def run_decisions(settings: Settings, run_id: str, dataset_id: str | None) -> dict:
    """Decisions of one run, oldest first: found by its id (and dataset, as two DAGs may share
    a run id); a folder name works too, for runs whose records do not name their id."""
    from ppmlops.run.store import run_folder_name

    _, log = stores(settings)
    folder = run_folder_name(run_id)
    with _reading(settings):
        records = [r for r in log.records() if r.get("run_id") and run_folder_name(r["run_id"]) == folder
                   and (dataset_id is None or r.get("dataset_id") == dataset_id)]
        chain = chain_status(log)
    return jsonable({"filter": {"run_id": run_id, "dataset_id": dataset_id},
                     "total": len(records), "records": list(reversed(records)), "chain": chain})


def decision(settings: Settings, seq: int) -> dict:
    _, log = stores(settings)
    with _reading(settings):
        found = [r for r in log.records() if r["seq"] == seq]
        chain = chain_status(log)
    if not found:
        raise NotFound(f"the audit log has no record with seq {seq}")
    return jsonable({"record": found[0], "chain": chain})


# -- models -----------------------------------------------------------------------------------

def models(settings: Settings) -> dict:
    """Every model in the registry: versions newest first with their cards, and aliases."""
    from ppmlops.registry.store import Registry, RegistryError

    registry = Registry(settings.registry_dir)
    deployed = _deployed_cards(settings)
    out = []
    try:
        names = registry.model_names()
    except RegistryError as err:  # the registry cannot be read: say so rather than show no models
        return jsonable({"registry_dir": registry.location, "models": [], "error": str(err)})
    for name in names:
        if not is_safe_name(name):
            continue
        try:
            history = registry.alias_history(name)
            aliases = {a: registry.alias(name, a) for a in dict.fromkeys(h["alias"] for h in history)}
            error = None
        except RegistryError as err:  # a damaged aliases.json: show it, keep the versions
            history, aliases, error = [], {}, str(err)
        versions = []
        for version in reversed(registry.versions(name)):
            try:
                versions.append({"version": version, "card": registry.card(name, version),
                                 "card_check": _card_check(registry, deployed, name, version)})
            except RegistryError as err:
                versions.append({"version": version, "card": None, "error": str(err)})
        if versions or aliases or error:
            out.append({"model_name": name, "aliases": aliases, "production": aliases.get("production"),
                        "versions": versions, "alias_history": history, "error": error})
    return jsonable({"registry_dir": registry.location, "models": out})


def _deployed_cards(settings: Settings) -> dict | None:
    """(model, version) -> (card sha256, audit seq) as deploy recorded them; None: no audit log to read."""
    from ppmlops.registry.card_check import recorded

    try:
        _, log = stores(settings)
        with _reading(settings):
            return recorded(log.records())
    except (Unavailable, PpmlopsError, SQLAlchemyError):
        return None


def _card_check(registry: Any, deployed: dict | None, name: str, version: int) -> dict:
    """Whether the version's card in MLflow is still the one deploy hashed into the audit log (a
    card's tags can be edited in MLflow's UI): "intact", "changed" with why, or "not recorded"."""
    from ppmlops.registry.card_check import version_problem

    if deployed is None or (name, version) not in deployed:
        return {"state": "not recorded", "why": "no registration record in the audit log (deployed before "
                                                "cards were hashed, or the log cannot be read)"}
    sha, seq = deployed[(name, version)]
    problem = version_problem(registry, name, version, sha, seq)
    return {"state": "changed", "why": problem} if problem else {"state": "intact", "why": f"matches audit record {seq}"}


# -- runs -------------------------------------------------------------------------------------

def runs(settings: Settings, limit: int = 50) -> dict:
    return jsonable(run_folders.listing(settings, limit))


def run(settings: Settings, pipeline: str, run_id: str) -> dict:
    """The run's public records, and its dataset's figure now (the same as the overview's)."""
    data = run_folders.detail(settings, pipeline, run_id)
    return jsonable({**data, "dataset_use": _run_dataset_use(settings, data)})


def _run_dataset_use(settings: Settings, data: dict) -> dict:
    """The dataset's use now and this run's part of it; {"error": ...} when the ledger cannot say
    (the page then shows why instead of a figure of its own)."""
    from ppmlops.privacy.block_view import dataset_use, run_share

    # runs.ref read it from the typed run.json, else the typed plan's privacy (runs from before run.json).
    dataset_id = data.get("dataset_id")
    if not dataset_id:
        return {"error": "this run's records do not name its dataset"}
    try:
        ledger, _ = stores(settings)
        with _reading(settings):
            use = dataset_use(ledger, dataset_id)
            mine = run_share(ledger, dataset_id, data["run_id"])
    except (Unavailable, PpmlopsError) as err:
        return {"error": f"dataset {dataset_id!r}: {_first_line(err)}"}
    return {**use.as_dict(), "dataset_id": dataset_id, "run_share": mine}
