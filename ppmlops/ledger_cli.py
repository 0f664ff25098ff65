"""`ppmlops privacy ...` and `ppmlops ledger ...`: the accountant and the ledger from a shell.

Arguments are read as text and checked here rather than by argparse `type=` so that a bad value
gives one line naming the argument (argparse would add a usage block) and exit code 2.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
from typing import Any

from ppmlops.cli_guard import USAGE_ERROR, BadArgument, guarded, whole_number
from ppmlops.errors import PpmlopsError


def _guarded_usage(func, prog):
    # Every privacy/ledger failure is about what the caller asked for: a usage error.
    return guarded(func, prog, data_error=USAGE_ERROR, one_line=True)





def register(subparsers: Any) -> None:
    """Add the `privacy` and `ledger` commands to an argparse subparsers object."""
    privacy = subparsers.add_parser("privacy", help="privacy accounting (RDP)",
                                    description="Renyi DP accounting for DP-SGD (Poisson-subsampled Gaussian).")
    psub = privacy.add_subparsers(dest="privacy_command", required=True)

    p = psub.add_parser("epsilon", help="epsilon of a schedule of DP-SGD segments",
                        description="Compose segments of DP-SGD steps and convert to (epsilon, delta).")
    p.add_argument("--segment", action="append", required=True, metavar="SIGMA,Q,STEPS",
                   help="noise multiplier, Poisson sampling rate and step count; repeat for more segments")
    p.add_argument("--delta", required=True, metavar="D")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=_guarded_usage(_epsilon, "ppmlops privacy epsilon"))

    p = psub.add_parser("calibrate", help="smallest noise multiplier for a target epsilon",
                        description="Find the smallest noise multiplier whose epsilon is within the target.")
    p.add_argument("--epsilon", required=True, metavar="E")
    p.add_argument("--delta", required=True, metavar="D")
    p.add_argument("--sample-rate", required=True, metavar="Q")
    p.add_argument("--steps", required=True, metavar="T")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=_guarded_usage(_calibrate, "ppmlops privacy calibrate"))

    ledger = subparsers.add_parser("ledger", help="the privacy ledger",
                                   description="Per-dataset privacy spend recorded by training runs.")
    lsub = ledger.add_subparsers(dest="ledger_command", required=True)
    p = lsub.add_parser("show", help="entries and total epsilon per dataset")
    p.add_argument("--dataset", metavar="ID")
    p.add_argument("--db-url", metavar="URL", help="SQLAlchemy URL (default: PPMLOPS_DB_URL or the home's SQLite file)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=_guarded_usage(_ledger_show, "ppmlops ledger show"))

    p = lsub.add_parser("set-budget", help="change a dataset's lifetime budget (recorded in the audit log)",
                        description="A lifetime budget is fixed when the dataset is registered; this is the one "
                                    "way to change it, and the change is appended to the hash-chained audit log.")
    p.add_argument("dataset", metavar="ID")
    p.add_argument("--epsilon", required=True, metavar="E")
    p.add_argument("--delta", metavar="D", help="default: keep the registered delta")
    p.add_argument("--reason", required=True, help="why (kept in the audit log)")
    p.add_argument("--by", default=None, help="who (default: $USER)")
    p.add_argument("--db-url", metavar="URL")
    p.set_defaults(func=_guarded_usage(_ledger_set_budget, "ppmlops ledger set-budget"))

    p = lsub.add_parser("link", help="approve a new dataset id over rows another id covers (audited)",
                        description="A dataset id whose source another id already covers is refused at assess: "
                                    "a new id would give the same rows a second, fresh lifetime budget. This "
                                    "records an officer's approval of a separate budget for NEW over OLD's rows "
                                    "(their privacy loss then adds up) in the hash-chained audit log.")
    p.add_argument("dataset", metavar="NEW")
    p.add_argument("--to", required=True, metavar="OLD", help="the dataset id that already covers the source")
    p.add_argument("--approve-new-budget", action="store_true",
                   help="required: NEW gets its own lifetime budget over OLD's rows (to share OLD's budget "
                        "instead, use OLD's id in the spec)")
    p.add_argument("--reason", required=True, help="why (kept in the audit log)")
    p.add_argument("--by", default=None, help="who (default: $USER)")
    p.add_argument("--db-url", metavar="URL")
    p.set_defaults(func=_guarded_usage(_ledger_link, "ppmlops ledger link"))

    p = lsub.add_parser("close", help="end a run's grant (released when the run used none of it)")
    p.add_argument("dataset", metavar="ID")
    p.add_argument("run", metavar="RUN_ID")
    p.add_argument("--db-url", metavar="URL")
    p.set_defaults(func=_guarded_usage(_ledger_close, "ppmlops ledger close"))




# -- argument parsing --------------------------------------------------------------------------

def _number(text: str, argument: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise BadArgument(argument, f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise BadArgument(argument, f"{text!r} is not a finite number")
    return value


def _positive(text: str, argument: str) -> float:
    value = _number(text, argument)
    if value <= 0:
        raise BadArgument(argument, f"must be > 0, got {text}")
    return value


def _sample_rate(text: str, argument: str) -> float:
    value = _number(text, argument)
    if not 0 < value <= 1:
        raise BadArgument(argument, f"sampling rate must be in (0, 1], got {text}")
    return value


def _delta(text: str, argument: str = "--delta") -> float:
    value = _number(text, argument)
    if not 0 < value < 1:
        raise BadArgument(argument, f"delta must be in (0, 1), got {text}")
    return value


def _segment(text: str):
    from ppmlops.privacy.accountant import Segment

    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3:
        raise BadArgument("--segment", f"expected SIGMA,Q,STEPS (three comma-separated values), got {text!r}")
    sigma = _positive(parts[0], f"--segment {text!r}: SIGMA")
    q = _sample_rate(parts[1], f"--segment {text!r}: Q")
    steps = whole_number(parts[2], f"--segment {text!r}: STEPS", 0)
    return Segment(sigma, q, steps)


# -- output ------------------------------------------------------------------------------------

def _json_safe(value: Any) -> Any:
    """Strict JSON: infinite epsilons (no finite bound at any order) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _print_json(doc: Any) -> None:
    print(json.dumps(_json_safe(doc), indent=2, allow_nan=False))


def _fmt_eps(value: float | None) -> str:
    if value is None:
        return "-"
    return "inf" if math.isinf(value) else f"{value:.4f}"


# -- commands ----------------------------------------------------------------------------------

def _epsilon(args: argparse.Namespace) -> int:
    from ppmlops.privacy.accountant import epsilon_from_rdp, rdp_curve

    segments = [_segment(s) for s in args.segment]
    delta = _delta(args.delta)
    eps, order = epsilon_from_rdp(rdp_curve(segments), delta)
    if args.json:
        _print_json({
            "epsilon": eps, "order": order, "delta": delta, "accountant": "rdp",
            "segments": [{"noise_multiplier": s.noise_multiplier, "sample_rate": s.sample_rate, "steps": s.steps}
                         for s in segments],
        })
        return 0
    from ppmlops.terminal import print_table

    print_table(["segment", "noise_multiplier", "sample_rate", "steps"],
                [[i + 1, f"{s.noise_multiplier:g}", f"{s.sample_rate:g}", s.steps] for i, s in enumerate(segments)])
    print(f"\nepsilon = {_fmt_eps(eps)} at delta = {delta:g} (RDP, optimal order {order:g})")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from ppmlops.privacy.accountant import calibrate_noise, epsilon_from_rdp, step_rdp

    target = _positive(args.epsilon, "--epsilon")
    delta = _delta(args.delta)
    q = _sample_rate(args.sample_rate, "--sample-rate")
    steps = whole_number(args.steps, "--steps", 1)
    sigma = calibrate_noise(target, delta, q, steps)
    achieved, order = epsilon_from_rdp(steps * step_rdp(sigma, q), delta)
    if args.json:
        _print_json({"noise_multiplier": sigma, "epsilon": achieved, "order": order, "target_epsilon": target,
                     "delta": delta, "sample_rate": q, "steps": steps})
        return 0
    from ppmlops.terminal import print_table

    print_table(["target_epsilon", "delta", "sample_rate", "steps", "noise_multiplier", "epsilon"],
                [[f"{target:g}", f"{delta:g}", f"{q:g}", steps, f"{sigma:.6g}", _fmt_eps(achieved)]])
    return 0


def _ledger_show(args: argparse.Namespace) -> int:
    from ppmlops import settings
    from ppmlops.privacy.accountant import ORDERS
    from ppmlops.privacy.ledger import Ledger, sqlite_file_missing

    db_url = args.db_url or settings.load().db_url
    if sqlite_file_missing(db_url):
        # Reading must not create a database as a side effect.
        if args.dataset is not None:
            raise PpmlopsError(f"dataset {args.dataset!r} is not in the privacy ledger (no database at {db_url})")
        doc = {"datasets": [], "accountant": "rdp", "orders": list(ORDERS)}
    else:
        ledger = Ledger(db_url)
        try:
            doc = ledger.summary(args.dataset)
        finally:
            ledger.close()
    from ppmlops.privacy.block_view import use_of

    # The dashboard's and the run pages' figure (ppmlops.privacy.block_view), named block and all.
    uses = {ds["dataset_id"]: use_of(ds) for ds in doc["datasets"]}
    if args.json:
        _print_json({**doc, "datasets": [{**ds, "use": u.as_dict() if (u := uses[ds["dataset_id"]]) else None}
                                         for ds in doc["datasets"]]})
        return 0
    if not doc["datasets"]:
        print("privacy ledger is empty")
        return 0
    from ppmlops.terminal import print_table

    for i, ds in enumerate(doc["datasets"]):
        use = uses[ds["dataset_id"]]
        if i:
            print()
        print(f"dataset {ds['dataset_id']}: {use.text()} (Renyi filter at order {use.order:g})" if use else
              f"dataset {ds['dataset_id']}: not registered (no lifetime budget); its entries are listed below")
        parts = ", ".join(f"{name} {_fmt_eps(eps)}" for name, eps in ds["partitions"].items())
        if parts:
            print(f"  epsilon at that order by partition (information): {parts}")
        rows = [[e["id"], e["run_id"], e["partition"], e["kind"], f"{e['noise_multiplier']:g}", f"{e['sample_rate']:g}",
                 e["steps"], e["status"], e["randomness"], e["created_at"], e["note"]] for e in ds["entries"]]
        print_table(["id", "run", "partition", "kind", "sigma", "q", "steps", "status", "randomness", "created_at",
                     "note"], rows)
    return 0


def _open_ledger(db_url: str | None):
    from ppmlops import settings
    from ppmlops.privacy.ledger import Ledger, sqlite_file_missing

    url = db_url or settings.load().db_url
    if sqlite_file_missing(url):
        raise PpmlopsError(f"there is no privacy ledger at {url}")
    return Ledger(url)


def _officer_record(query: str, change: dict, who: str, reason: str, engine: str) -> dict:
    """An officer's change as an audit-log decision record (allowed: a person made it)."""
    import uuid
    from datetime import datetime, timezone

    return {"id": uuid.uuid4().hex, "time": datetime.now(timezone.utc).isoformat(), "query": query,
            "input": change, "result": change, "outcome": "allow", "allowed": True, "reasons": [f"{who}: {reason}"],
            "engine": engine, "policy_hash": "", "error": None}


def _ledger_set_budget(args: argparse.Namespace) -> int:
    import getpass

    from ppmlops.audit.log import append_in

    epsilon = _positive(args.epsilon, "--epsilon")
    delta = None if args.delta is None else _delta(args.delta)
    ledger = _open_ledger(args.db_url)
    who = args.by or getpass.getuser()

    def audit(conn, before, after) -> None:
        # Written on the ledger's own connection, inside the change's transaction: a crash or a
        # failed append between the two can neither leave an unaudited budget change nor an
        # audit record of a change that did not happen. The audit log lives in the ledger's
        # database (settings.db_url), so one transaction covers both.
        change = {"dataset_id": args.dataset, "before": {"epsilon": before.epsilon, "delta": before.delta},
                  "after": {"epsilon": after.epsilon, "delta": after.delta}, "reason": args.reason, "by": who}
        append_in(conn, _officer_record("change of a lifetime privacy budget", change, who, args.reason,
                                        "ppmlops ledger set-budget"), run_id="-", dataset_id=args.dataset,
                  stage="ledger")

    try:
        before, after = ledger.set_budget(args.dataset, epsilon_budget=epsilon, delta=delta, on_change=audit)
    finally:
        ledger.close()
    print(f"dataset {args.dataset}: lifetime budget epsilon {before.epsilon:g} at delta {before.delta:g} -> "
          f"epsilon {after.epsilon:g} at delta {after.delta:g} (recorded in the audit log)")
    return 0


def _ledger_link(args: argparse.Namespace) -> int:
    import getpass

    from ppmlops import settings
    from ppmlops.audit.log import append_in
    from ppmlops.privacy.identity import DatasetSources

    if not args.approve_new_budget:
        raise BadArgument("--approve-new-budget", f"is required: a link gives {args.dataset!r} its own lifetime "
                                                  f"budget over the rows {args.to!r} covers. To train within "
                                                  f"{args.to!r}'s budget instead, set dataset.id: {args.to} in the spec")
    url = args.db_url or settings.load().db_url
    if db_missing(url):
        raise PpmlopsError(f"there is no privacy ledger at {url}")
    who = args.by or getpass.getuser()

    def audit(conn, covered: list[str]) -> None:
        # In the approval's own transaction: no approval without its audit record, nor the reverse.
        change = {"dataset_id": args.dataset, "over": args.to, "sources": covered, "reason": args.reason, "by": who,
                  "meaning": f"{args.dataset} has its own lifetime budget over rows {args.to} also covers: "
                             "the privacy loss of those rows is the sum of both datasets' losses"}
        append_in(conn, _officer_record("approval of a separate budget over a covered source", change, who,
                                        args.reason, "ppmlops ledger link"), run_id="-", dataset_id=args.dataset,
                  stage="ledger")

    sources = DatasetSources(url)
    try:
        covered = sources.approve(args.dataset, args.to, reason=args.reason, by=who, on_approve=audit)
    finally:
        sources.close()
    print(f"dataset {args.dataset}: approved a separate lifetime budget over {', '.join(covered)} "
          f"(covered by {args.to}); recorded in the audit log")
    return 0


def db_missing(url: str) -> bool:
    from ppmlops.privacy.ledger import sqlite_file_missing

    return sqlite_file_missing(url)


def _ledger_close(args: argparse.Namespace) -> int:
    from ppmlops.privacy.ledger import LIVE, RESERVED, SEARCH

    ledger = _open_ledger(args.db_url)
    grants = ledger.entries(args.dataset, kind="grant")
    if not grants and ledger.budget(args.dataset) is None:
        raise PpmlopsError(f"dataset {args.dataset!r} is not in the privacy ledger at {ledger.safe_url()}"
                           + _known("datasets", ledger.datasets(), args.dataset))
    runs = list(dict.fromkeys(e.run_id for e in reversed(grants)))  # newest first
    if args.run not in runs:
        raise PpmlopsError(f"run {args.run!r} has no grant on dataset {args.dataset!r}, nothing was closed"
                           + _known(f"runs with grants of {args.dataset}", runs, args.run))
    # What close_grant would change: a reserved grant, or a plain one not yet trimmed or released
    # (a private search's grant is final once completed).
    live = [e for e in grants if e.run_id == args.run and e.status in LIVE
            and (e.status == RESERVED or e.mechanism != SEARCH)]
    if not live:
        # Closing twice changes nothing; say so rather than report a release that did not happen.
        ended = sorted({e.status for e in grants if e.run_id == args.run})
        print(f"run {args.run} on {args.dataset}: grant already closed ({', '.join(ended)}); nothing changed")
        return 0
    status = ledger.close_grant(dataset_id=args.dataset, run_id=args.run)
    print(f"run {args.run} on {args.dataset}: grant {status}")
    return 0


KNOWN_SHOWN = 10


def _known(what: str, names: list[str], asked: str) -> str:
    """'; <what>: a, b, c (and N more); did you mean 'x'?' for an unknown name."""
    if not names:
        return f"; there are no {what}"
    more = len(names) - KNOWN_SHOWN
    shown = ", ".join(names[:KNOWN_SHOWN]) + (f" (and {more} more)" if more > 0 else "")
    close = difflib.get_close_matches(asked, names, n=1, cutoff=0.6)
    return f"; {what}: {shown}" + (f"; did you mean {close[0]!r}?" if close else "")
