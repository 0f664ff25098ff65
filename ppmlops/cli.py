"""The `ppmlops` command: what operators and compliance officers run outside Airflow."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ppmlops import settings as settings_mod
from ppmlops.errors import PpmlopsError


def _print(doc: object, as_json: bool, text: str) -> None:
    print(json.dumps(doc, indent=2, default=str) if as_json else text)


def _spec_check(args: argparse.Namespace) -> int:
    """Every file is checked, each reported; the exit status is 1 if any is invalid."""
    from ppmlops.spec import load_each

    results = load_each(args.files)
    seen: dict[str, str] = {}
    bad = 0
    for r in results:
        if r.spec is not None and r.spec.dag_id in seen:
            print(f"{r.path}: invalid: pipeline name {r.spec.name!r} is already used by {seen[r.spec.dag_id]} "
                  f"(each spec needs its own name: it is the DAG id)")
            bad += 1
        elif r.spec is not None:
            seen[r.spec.dag_id] = str(r.path)
            print(f"{r.path}: ok ({r.spec.dag_id}, dataset {r.spec.dataset.id}, {len(r.spec.dataset.features)} features)")
        else:
            print(str(r.error) if str(r.error).startswith(str(r.path)) else f"{r.path}: {r.error}")
            bad += 1
    if len(results) > 1 or bad:
        print(f"{len(results) - bad} ok, {bad} invalid")
    return 1 if bad else 0


def _demo_data(args: argparse.Namespace) -> int:
    from ppmlops.data.synthetic import write_demo

    path = write_demo(Path(args.out), args.rows, args.seed)
    print(f"wrote {args.rows} rows to {path}")
    return 0


def _lineage_fingerprint(args: argparse.Namespace) -> int:
    import re

    from ppmlops import settings
    from ppmlops.data.lineage import fingerprint

    if not re.fullmatch(r"[0-9a-f]{64}", args.sha256):
        print("ppmlops lineage fingerprint: expected a 64-character lowercase hex SHA-256", file=sys.stderr)
        return 2
    print(fingerprint(settings.load().home, args.sha256))
    return 0


def _policy_eval(args: argparse.Namespace) -> int:
    from ppmlops.compliance.engine import evaluate

    try:
        doc = json.loads(Path(args.input).read_text()) if args.input != "-" else json.load(sys.stdin)
    except (OSError, json.JSONDecodeError) as err:
        raise PpmlopsError(f"cannot read policy input {args.input}: {err}") from None
    decision = evaluate(args.query, doc, policy_path=Path(args.policy) if args.policy else None)
    _print(decision.to_dict(), args.json,
           f"{decision.query}: {decision.outcome}" + "".join(f"\n  - {r}" for r in decision.reasons))
    return 0 if decision.allowed else 1


def _policy_test(args: argparse.Namespace) -> int:
    from ppmlops.compliance.policy_tests import run_policy_tests, run_policy_tests_opa

    s = settings_mod.load()
    policy = Path(args.policy) if args.policy else s.policy_path
    want_coverage = args.coverage or args.coverage_json is not None
    if s.opa_url:
        if want_coverage:
            raise PpmlopsError("--coverage needs the embedded OPA engine: OPA's REST API reports no coverage. "
                               "Unset PPMLOPS_OPA_URL for this command (the embedded engine is OPA's too).")
        print(f"evaluating through the OPA server at {s.opa_url}")
        report = run_policy_tests_opa(s.opa_url, policy, Path(args.tests), timeout_s=s.opa_timeout_s)
    else:
        report = run_policy_tests(policy, Path(args.tests), coverage=want_coverage)
    for name, passed, message in report.results:
        print(f"{'PASS' if passed else 'FAIL'}: {name}" + (f"  ({message})" if message and not passed else ""))
    print("-" * 40)
    print(f"{len(report.results) - len(report.failed)} passed, {len(report.failed)} failed")
    if report.coverage is not None:
        _print_coverage(report.coverage, args.coverage)
        if args.coverage_json:
            Path(args.coverage_json).write_text(json.dumps(report.coverage.opa_json, indent=2) + "\n")
            print(f"coverage report (the JSON `opa test --coverage` prints) written to {args.coverage_json}")
    return 1 if report.failed or not report.results else 0


def _print_coverage(coverage, with_lines: bool) -> None:
    from ppmlops.compliance.coverage import row_spans
    from ppmlops.terminal import print_table

    def shown(path: str) -> str:
        try:
            return str(Path(path).resolve().relative_to(Path.cwd()))
        except ValueError:
            return path

    rows = [[shown(f.path), f.covered_lines, f.not_covered_lines, f"{f.percent:.1f}%"]
            + ([row_spans(f.not_covered_rows)] if with_lines else []) for f in coverage.files]
    total = ["total", coverage.covered_lines, coverage.not_covered_lines, f"{coverage.percent:.1f}%"]
    print("coverage (OPA's cover tracer, in lines):")
    print_table(["file", "covered", "not covered", "coverage"] + (["lines not covered"] if with_lines else []),
                rows + [total + ([""] if with_lines else [])], sections=[len(rows) - 1])


def _audit_log(args: argparse.Namespace):
    from ppmlops.audit.log import AuditLog

    return AuditLog(args.db_url or settings_mod.load().db_url)


def _read_anchor(text: str):
    from ppmlops.audit.log import ChainHead

    path = Path(text)
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise PpmlopsError(f"--anchor {path}: cannot read the file ({err})") from None
    return ChainHead.parse(text)


def _audit_verify(args: argparse.Namespace) -> int:
    anchor = _read_anchor(args.anchor) if args.anchor else None
    log = _audit_log(args)
    try:
        problems = log.verify(anchor=anchor, allow_empty=args.allow_empty)
    except PpmlopsError as err:
        print(f"audit log NOT verified: {err}")
        return 1
    for p in problems:
        print(p)
    if problems:
        print(f"audit log NOT intact: {len(problems)} problem(s) in {log.url}")
        return 1
    head = log.chain_head()
    if head is None:
        print(f"audit log in {log.url} is empty (accepted: --allow-empty)")
    else:
        print(f"audit log intact: {head.count} record(s), head {head}"
              + (f", matches the anchor {anchor}" if anchor else " (no anchor given: a cut-off tail cannot show)"))
    return _verify_cards(log)


def _verify_cards(log) -> int:
    """Every registered version's card as MLflow holds it now, against the hash recorded at deploy."""
    from ppmlops.registry.card_check import card_problems, recorded
    from ppmlops.registry.store import Registry

    records = log.records() if log.chain_head() is not None else []
    if not recorded(records):
        return 0
    registry = Registry(settings_mod.load().registry_dir)
    problems = card_problems(records, registry)
    for p in problems:
        print(p)
    if problems:
        print(f"model cards NOT intact: {len(problems)} of {len(recorded(records))} in {registry.location}")
        return 1
    print(f"model cards intact: {len(recorded(records))} version(s) in {registry.location} match the audit log")
    return 0


def _audit_head(args: argparse.Namespace) -> int:
    log = _audit_log(args)
    problems = log.verify()
    if problems:
        for p in problems:
            print(p, file=sys.stderr)
        raise PpmlopsError(f"the audit log in {log.url} does not verify; a head of it would anchor the damage")
    head = log.chain_head()
    _print(head.to_dict() | {"database": log.url}, args.json,
           f"{head}\n(keep this outside the database; check with: ppmlops audit verify --anchor {head})")
    return 0


def _audit_show(args: argparse.Namespace) -> int:
    from ppmlops.audit.log import AuditLog

    records = AuditLog(args.db_url or settings_mod.load().db_url).records(run_id=args.run, dataset_id=args.dataset)
    if args.json or not records:
        _print(records, args.json, "no decisions recorded")
        return 0
    from ppmlops.terminal import print_table

    print_table(["seq", "recorded", "run", "stage", "query", "outcome", "reasons"],
                [[r["seq"], r["recorded_at"], r["run_id"], r["stage"], r["decision"]["query"], r["decision"]["outcome"],
                  "; ".join(r["decision"]["reasons"])] for r in records])
    return 0


def _registry_show(args: argparse.Namespace) -> int:
    from ppmlops.registry.store import Registry

    reg = Registry(settings_mod.load().registry_dir)
    reg.require(args.model)
    doc = {"model": args.model, "registry": reg.location, "versions": reg.versions(args.model),
           "production": reg.alias(args.model, "production")}
    if args.version:
        doc["card"] = reg.card(args.model, args.version)
        doc["model_uri"] = reg.model_uri(args.model, args.version)
    _print(doc, args.json, json.dumps(doc, indent=2, default=str))
    return 0


def _registry_migrate(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from ppmlops.registry.migrate import migrate
    from ppmlops.registry.store import Registry

    reg = Registry(settings_mod.load().registry_dir)
    done = migrate(Path(args.source), reg)
    text = "\n".join(
        f"{m.model_name}: {len(m.versions)} version(s) copied "
        + (f"({', '.join(f'v{o} -> v{n}' for o, n in m.versions.items())})" if m.versions else "")
        + (f", {len(m.already)} already there" if m.already else "")
        + f"; {m.moves_copied} alias move(s) copied; aliases {m.aliases or 'none'}" for m in done)
    _print({"registry": reg.location, "models": [asdict(m) for m in done]}, args.json,
           (text or f"no models in {args.source}") + f"\n(into {reg.location})")
    return 0


def _init(args: argparse.Namespace) -> int:
    from ppmlops import scaffold

    target = Path(args.dir)
    written = scaffold.init(target, force=args.force)
    print("\n".join(f"wrote {path}" for path in written))
    print(scaffold.next_steps(target))
    return 0


def _register_init(sub) -> None:
    p = sub.add_parser("init", help="write a project (DAG file, demo pipeline, policy, expectations) into DIR")
    p.add_argument("dir", help="the project folder, e.g. $AIRFLOW_HOME (created if missing)")
    p.add_argument("--force", action="store_true", help="overwrite files that exist")
    p.set_defaults(func=_init)


def build_parser() -> argparse.ArgumentParser:
    from ppmlops import backfill_cli, ledger_cli as privacy_cli
    from ppmlops import risk_cli

    parser = argparse.ArgumentParser(prog="ppmlops", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ppmlops {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    _register_init(sub)
    backfill_cli.register(sub)
    privacy_cli.register(sub)
    risk_cli.register(sub)

    spec = sub.add_parser("spec", help="pipeline specs").add_subparsers(dest="spec_command", required=True)
    p = spec.add_parser("check", help="validate spec files")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=_spec_check)

    demo = sub.add_parser("demo-data", help="write the synthetic demo table")
    demo.add_argument("--out", required=True)
    demo.add_argument("--rows", type=int, default=6000)
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(func=_demo_data)

    policy = sub.add_parser("policy", help="Rego policy").add_subparsers(dest="policy_command", required=True)
    p = policy.add_parser("eval", help="evaluate a query on an input document")
    p.add_argument("--query", required=True, help="e.g. data.ppmlops.deploy")
    p.add_argument("--input", required=True, help="JSON file, or - for stdin")
    p.add_argument("--policy", help="policy file (default: PPMLOPS_POLICY or policies.rego)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_policy_eval)
    p = policy.add_parser("test", help="run the policy's Rego tests, like `opa test`")
    p.add_argument("--policy")
    p.add_argument("--tests", default=str(settings_mod.find_project_root() / "tests" / "policies"))
    p.add_argument("--coverage", action="store_true",
                   help="report line coverage per file, with the lines not covered (like `opa test --coverage`)")
    p.add_argument("--coverage-json", metavar="FILE",
                   help="also write OPA's coverage report (the JSON `opa test --coverage` prints) to FILE")
    p.set_defaults(func=_policy_test)

    audit = sub.add_parser("audit", help="decision records").add_subparsers(dest="audit_command", required=True)
    p = audit.add_parser("verify", help="check the hash chain of the audit log (fails on a missing or empty log)")
    p.add_argument("--db-url")
    p.add_argument("--anchor", metavar="HEAD",
                   help="a head kept outside the database: COUNT:HASH, or a file holding `audit head --json`; "
                        "catches deleted newest records and a truncated or replaced log")
    p.add_argument("--allow-empty", action="store_true",
                   help="the log is new: no table or no records yet is not a failure")
    p.set_defaults(func=_audit_verify)
    p = audit.add_parser("head", help="print the chain head (record count and newest hash) to keep as an anchor")
    p.add_argument("--db-url")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_audit_head)
    p = audit.add_parser("show", help="list decisions")
    p.add_argument("--db-url")
    p.add_argument("--run")
    p.add_argument("--dataset")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_audit_show)

    lineage = sub.add_parser("lineage", help="data fingerprints").add_subparsers(dest="lineage_command", required=True)
    p = lineage.add_parser("fingerprint", help="the keyed fingerprint of a snapshot's content hash (as on a card)")
    p.add_argument("sha256", help="the snapshot's content hash (private/ingest.json of a run)")
    p.set_defaults(func=_lineage_fingerprint)

    registry = sub.add_parser("registry", help="model registry").add_subparsers(dest="registry_command", required=True)
    p = registry.add_parser("show", help="versions, aliases and a model card")
    p.add_argument("model")
    p.add_argument("--version", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_registry_show)
    p = registry.add_parser("migrate", help="copy a file registry (ppmlops before MLflow) into the MLflow registry")
    p.add_argument("--from", dest="source", required=True, metavar="PATH",
                   help="the old registry folder (it was $PPMLOPS_HOME/registry)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_registry_migrate)
    return parser


def _version() -> str:
    """The installed distribution's version (the package's own when it is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ppmlops")
    except PackageNotFoundError:
        from ppmlops import __version__

        return __version__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PpmlopsError as err:
        print(f"ppmlops: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
