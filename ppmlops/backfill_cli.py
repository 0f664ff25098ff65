"""`ppmlops backfill cost PIPELINE --from DATE --to DATE`: what a backfill will spend, before it starts
(ppmlops.backfill_cost; the dashboard's backfill page shows the same)."""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path

from ppmlops import settings as settings_mod
from ppmlops.errors import PpmlopsError


def pipeline_spec(name_or_file: str):
    """A spec file's spec, or the spec named `name_or_file` in the pipelines folder."""
    from ppmlops.spec import load_each, load_spec, pipelines_folder

    if name_or_file.endswith((".yaml", ".yml")) or Path(name_or_file).is_file():
        return load_spec(name_or_file)
    folder = pipelines_folder()
    found = [r.spec for r in load_each(sorted(folder.glob("*.yaml"))) if r.spec is not None and r.spec.name == name_or_file]
    if not found:
        raise PpmlopsError(f"no valid pipeline spec named {name_or_file!r} in {folder} (`ppmlops spec check` lists them)")
    return found[0]


def _date(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)  # naive: UTC (backfill_cost.intervals)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date or time (YYYY-MM-DD or ISO 8601)") from None


def _cost(args: argparse.Namespace) -> int:
    from ppmlops.backfill_cost import estimate, intervals
    from ppmlops.privacy.ledger import Ledger, sqlite_file_missing

    spec = pipeline_spec(args.pipeline)
    url = settings_mod.load().db_url
    # Reading creates nothing: before the first run there may be no ledger file, and nothing charged.
    cost = estimate(spec, None if sqlite_file_missing(url) else Ledger.reading(url), intervals(spec, args.start, args.end))
    if args.json:
        print(json.dumps(cost.model_dump(mode="json") | {"verdict": cost.verdict()}, indent=2))
        return 0
    print(f"backfill of {spec.dag_id} ({spec.schedule}) over dataset {spec.dataset.id}: {len(cost.runs)} run(s), "
          f"each spending at most epsilon {cost.run_epsilon:g}")
    print(f"each run priced at {cost.basis}")
    for r in cost.runs:
        print(f"  [{r.interval_start:%Y-%m-%d %H:%M}, {r.interval_end:%Y-%m-%d %H:%M})  blocks {', '.join(r.blocks)}  "
              + ("fits" if r.fits else "does not fit: sized down or refused when it plans"))
    for b in cost.blocks:
        holds = "any number (a run costs nothing there)" if b.runs_it_holds is None else str(b.runs_it_holds)
        print(f"  block {b.block}: {b.share_used:.1%} of its budget used; read by {b.runs_reading} run(s); "
              f"holds {holds} more")
    print(cost.verdict())
    return 0


def register(sub) -> None:
    backfill = sub.add_parser("backfill", help="backfills").add_subparsers(dest="backfill_command", required=True)
    p = backfill.add_parser("cost", help="what a backfill of a date range will spend, before it starts")
    p.add_argument("pipeline", help="a pipeline's name (its spec in the pipelines folder) or a spec file")
    p.add_argument("--from", dest="start", type=_date, required=True, help="first date, as for `airflow backfill create`")
    p.add_argument("--to", dest="end", type=_date, required=True, help="last date")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cost)
