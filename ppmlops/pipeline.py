"""One retraining run, stage by stage, without Airflow.

Each stage reads what earlier stages wrote in the run directory, writes its own JSON record
there and returns a small JSON-safe dict (Airflow passes it on as XCom). The DAG file only
wires these functions; `run_all` chains them the same way for the CLI and the tests.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ppmlops import settings as settings_mod
from ppmlops.errors import PolicyRefused, PpmlopsError
from ppmlops.spec import PipelineSpec

STAGES = ("ingest", "validate", "assess", "plan", "train", "evaluate", "gate", "deploy")


@dataclass(frozen=True)
class RunParams:
    """What a person may change for one manual run or backfill (the Airflow trigger form)."""

    epsilon_cap: float
    epochs: int
    workers: int
    seed: int
    environment: str = "development"
    tuner: str = ""  # "" follows the spec's training.tuner
    use_gpu: bool = False

    @classmethod
    def defaults(cls, spec: PipelineSpec) -> "RunParams":
        return cls(
            epsilon_cap=spec.privacy.run_epsilon,
            epochs=spec.training.epochs,
            workers=spec.ray.workers,
            seed=spec.training.seed,
            use_gpu=spec.ray.use_gpu,
        )

    @classmethod
    def from_mapping(cls, spec: PipelineSpec, values: dict[str, Any] | None) -> "RunParams":
        base = asdict(cls.defaults(spec))
        for key, value in (values or {}).items():
            if key in base and value is not None:
                if isinstance(base[key], bool) and isinstance(value, str):
                    # `bool("false")` is True: a --conf or API caller may send strings
                    value = value.strip().lower() in {"1", "true", "yes", "on"}
                base[key] = type(base[key])(value)
        return cls(**base)


@dataclass
class RunContext:
    spec: PipelineSpec
    run_id: str
    params: RunParams
    settings: settings_mod.Settings = field(default_factory=settings_mod.load)

    @property
    def run_dir(self) -> Path:
        # Airflow run ids carry ':' and '+', which some filesystems and shells handle badly.
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.run_id)
        path = self.settings.runs_dir / self.spec.name / safe
        path.mkdir(parents=True, exist_ok=True)
        return path

    def write(self, name: str, record: dict[str, Any]) -> dict[str, Any]:
        tmp = self.run_dir / f".{name}.json.tmp"
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
        tmp.replace(self.run_dir / f"{name}.json")
        return record

    def read(self, name: str) -> dict[str, Any]:
        path = self.run_dir / f"{name}.json"
        if not path.exists():
            raise PpmlopsError(f"stage '{name}' has not run for {self.run_id} (no {path})")
        return json.loads(path.read_text())


def _timed(fn):
    """Record each stage's wall time in its own record, for the benchmark and the summary."""

    def wrapper(ctx: RunContext, *args, **kwargs):
        start = time.perf_counter()
        record = fn(ctx, *args, **kwargs)
        record["seconds"] = round(time.perf_counter() - start, 3)
        return ctx.write(fn.__name__, record)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


# --------------------------------------------------------------------------- stages


@_timed
def ingest(ctx: RunContext) -> dict[str, Any]:
    """Consent filter, quarantine with reasons, content-hashed snapshot."""
    from ppmlops.data.ingest import ingest as run_ingest

    result = run_ingest(ctx.spec, ctx.run_dir)
    return result.to_dict()


@_timed
def validate(ctx: RunContext) -> dict[str, Any]:
    """The dataset's Great Expectations suite on the staged snapshot; failure stops the run."""
    from ppmlops.data.validate import validate as run_validate

    staged = ctx.read("ingest")
    suite = ctx.spec.suite_path(ctx.settings.project_root)
    return run_validate([staged["snapshot_train"], staged["snapshot_test"]], suite, ctx.run_dir)


@_timed
def assess(ctx: RunContext) -> dict[str, Any]:
    """PRAM: a risk score with itemized reasons."""
    from ppmlops.data.ingest import IngestResult
    from ppmlops.risk.assess import assess as run_assess

    from ppmlops.risk.report import IdentifierInFeatures

    report = run_assess(ctx.spec, IngestResult(**_fields_of(IngestResult, ctx.read("ingest"))))
    (ctx.run_dir / "risk.txt").write_text(report.summary())
    record = report.to_dict()
    try:
        report.raise_if_identifiers_in_features()
    except IdentifierInFeatures as e:
        # The officer needs the report of a stopped run as much as of a finished one.
        ctx.write("assess", record)
        ctx.write("refused", {"stage": "assess", "reasons": [str(e)], "columns": e.columns})
        raise
    return record


def _policy_dataset(ctx: RunContext, staged: dict[str, Any]) -> dict[str, Any]:
    ds = ctx.spec.dataset
    return {
        "id": ds.id,
        "regulation": ds.regulation,
        "rows": staged["rows_train"],
        "epsilon_budget": ctx.spec.privacy.epsilon,
        "delta": ctx.spec.privacy.delta,
        "public": ds.public,
    }


@_timed
def plan(ctx: RunContext) -> dict[str, Any]:
    """Policy sets the run's (epsilon, delta) from risk, regulation and the ledger; noise is calibrated to it."""
    from ppmlops.privacy.accountant import Segment, calibrate_noise, epsilon_from_rdp
    from ppmlops.privacy.filter import plan_budget
    from ppmlops.privacy.ledger import Ledger
    from ppmlops.training.launch import sample_rate_for

    spec, p = ctx.spec, ctx.params
    staged, risk = ctx.read("ingest"), ctx.read("assess")
    ledger = Ledger(ctx.settings.db_url)
    ledger.register_dataset(spec.dataset.id, epsilon_budget=spec.privacy.epsilon, delta=spec.privacy.delta)
    spent = ledger.epsilon_spent(spec.dataset.id)
    refused = staged["quarantine_reasons"].get("no consent", 0)
    policy_input = {
        "dataset": _policy_dataset(ctx, staged),
        "ledger": {"epsilon_spent": spent, "epsilon_remaining": max(0.0, spec.privacy.epsilon - spent)},
        "risk": {
            "score": risk["score"],
            "level": risk["level"],
            "direct_identifiers_in_features": sorted(
                {f["column"] for f in risk["findings"] if f["category"] == "direct_identifier" and f["in_features"]}
            ),
        },
        "consent": {
            "rows_in": staged["rows_in"],
            "rows_refused": refused,
            "coverage": 1.0 - refused / staged["rows_in"] if staged["rows_in"] else 0.0,
        },
        "request": {"run_epsilon": spec.privacy.run_epsilon, "epsilon_cap": p.epsilon_cap},
    }
    train_decision = _decide(ctx, "data.ppmlops.train", policy_input, stage="plan")
    if not train_decision.allowed:
        ctx.write("refused", {"stage": "plan", "reasons": train_decision.reasons, "decision_id": train_decision.id})
        raise PolicyRefused("train", train_decision.reasons)
    budget = _decide(ctx, "data.ppmlops.budget", policy_input, stage="plan")
    if not budget.allowed or not isinstance(budget.result, dict) or "epsilon" not in budget.result:
        raise PolicyRefused("set a budget", budget.reasons or ["budget decision undefined"])
    run_epsilon = float(budget.result["epsilon"])
    delta = float(budget.result.get("delta", spec.privacy.delta))

    holdout_noise = _plan_holdout(ctx, ledger, staged, delta)
    q, steps_per_epoch = sample_rate_for(staged["rows_train"], spec.training.batch_size, p.workers)
    total_steps = steps_per_epoch * p.epochs
    # The run alone must stay within its grant, and the dataset's composed total within its
    # lifetime budget: take the larger of the two noise levels.
    prior = ledger.rdp_spent(spec.dataset.id, partition="train")
    sigma = max(
        calibrate_noise(run_epsilon, delta, q, total_steps),
        calibrate_noise(spec.privacy.epsilon, delta, q, total_steps, prior_rdp=prior),
    )
    schedule = [Segment(sigma, q, steps_per_epoch)] * p.epochs
    budget_curve = plan_budget(schedule)
    projected, _ = epsilon_from_rdp(prior + budget_curve, delta)
    return {
        "run_epsilon": run_epsilon,
        "run_epsilon_calibrated": epsilon_from_rdp(budget_curve, delta)[0],
        "delta": delta,
        "dataset_epsilon_spent_before": spent,
        "dataset_epsilon_projected": projected,
        "noise_multiplier": sigma,
        "sample_rate": q,
        "steps_per_epoch": steps_per_epoch,
        "epochs": p.epochs,
        "budget_rdp": [float(x) for x in budget_curve],
        "holdout_noise": holdout_noise,
        "tuner": p.tuner or spec.training.tuner,
        "reasons": budget.reasons,
        "decisions": [train_decision.id, budget.id],
        "policy_input": policy_input,
    }


def _plan_holdout(ctx: RunContext, ledger, staged: dict[str, Any], delta: float) -> float | None:
    """Noise for the per-epoch noisy holdout accuracy: within the spec's holdout grant for this
    run, and the holdout partition's composed total within the dataset's lifetime budget."""
    from ppmlops.errors import BudgetExceeded
    from ppmlops.tuning import signals

    spec, epochs = ctx.spec, ctx.params.epochs
    conflict = signals.split_conflict(ledger.entries(spec.dataset.id), staged["split"])
    if conflict:
        ctx.write("refused", {"stage": "plan", "reasons": [conflict]})
        raise PolicyRefused("train", [conflict])
    if spec.privacy.holdout_epsilon <= 0 or not staged["rows_test"]:
        return None
    prior = ledger.rdp_spent(spec.dataset.id, partition=signals.PARTITION)
    try:
        return max(signals.holdout_noise(spec.privacy.holdout_epsilon, delta, epochs),
                   signals.holdout_noise(spec.privacy.epsilon, delta, epochs, prior_rdp=prior))
    except BudgetExceeded:
        return None  # nothing left for the held-out rows: the tuner works without the signal


@_timed
def train(ctx: RunContext) -> dict[str, Any]:
    """Opacus DP-SGD on Ray Train workers under the plan's privacy filter.

    With PPMLOPS_RAY_JOBS_URL set the stage runs as a Ray job (`python -m ppmlops.training`)
    and this process only follows it; otherwise this process is the Ray driver.
    """
    if ctx.settings.ray_jobs_url:
        from ppmlops.training.jobs import train_as_ray_job

        return train_as_ray_job(ctx)
    return train_here(ctx)


def train_here(ctx: RunContext) -> dict[str, Any]:
    import torch

    from ppmlops.data.features import encode
    from ppmlops.privacy.ledger import Ledger
    from ppmlops.training.launch import TrainJob, train_on_ray
    from ppmlops.tuning.tuners import make_tuner

    spec, p = ctx.spec, ctx.params
    staged, planned = ctx.read("ingest"), ctx.read("plan")
    X_train, y_train, names = encode(_read_parquet(staged["snapshot_train"]), spec)
    X_test, y_test, _ = encode(_read_parquet(staged["snapshot_test"]), spec)
    secure = spec.training.secure_rng if ctx.settings.secure_rng is None else ctx.settings.secure_rng
    job = TrainJob(
        run_id=ctx.run_id,
        dataset_id=spec.dataset.id,
        ledger_url=ctx.settings.db_url,
        delta=planned["delta"],
        X_train=X_train,
        y_train=y_train,
        X_test=X_test,
        y_test=y_test,
        model_kind=spec.model.kind,
        hidden=list(spec.model.hidden),
        epochs=planned["epochs"],
        batch_size=spec.training.batch_size,
        learning_rate=spec.training.learning_rate,
        momentum=spec.training.momentum,
        max_grad_norm=spec.training.max_grad_norm,
        noise_multiplier=planned["noise_multiplier"],
        budget_rdp=planned["budget_rdp"],
        secure_rng=secure,
        seed=p.seed,
        workers=p.workers,
        use_gpu=p.use_gpu,
        cpus_per_worker=spec.ray.cpus_per_worker,
        storage_path=str(ctx.run_dir / "ray"),
        ray_address=ctx.settings.ray_address,
        tuner=make_tuner(planned["tuner"], seed=p.seed, learning_rate=spec.training.learning_rate,
                         max_grad_norm=spec.training.max_grad_norm),
        holdout_noise=planned["holdout_noise"],
        split=staged["split"],
        max_failures=spec.ray.max_failures,
    )
    result = train_on_ray(job)
    model_path = ctx.run_dir / "model.pt"
    torch.save({"state_dict": result.state_dict, "kind": spec.model.kind, "hidden": list(spec.model.hidden),
                "features": names}, model_path)
    # Reported numbers come from the ledger, the record of what was actually spent.
    ledger = Ledger(ctx.settings.db_url)
    return {
        "model_path": str(model_path),
        "n_features": len(names),
        "epochs_completed": result.epochs_completed,
        "steps": result.steps,
        "sample_rate": result.sample_rate,
        "noise_multiplier": result.noise_multiplier,
        "secure_rng": secure,
        "stopped_reason": result.stopped_reason,
        "history": result.history,
        "ledger_entries": result.ledger_entries,
        "tuner": planned["tuner"],
        "epsilon_by_partition": ledger.epsilon_by_partition(spec.dataset.id, run_id=ctx.run_id),
        "run_epsilon_spent": ledger.epsilon_spent(spec.dataset.id, run_id=ctx.run_id),
        "dataset_epsilon_total": ledger.epsilon_spent(spec.dataset.id),
        "delta": planned["delta"],
    }


@_timed
def evaluate(ctx: RunContext) -> dict[str, Any]:
    """Utility on the held-out partition, then the empirical privacy audit.

    The utility metrics are exact, so they are a release about the held-out rows that the
    training epsilon does not cover; the model card says so. The audit attacks the model with
    its own training rows as members and the held-out rows as non-members.
    """
    from ppmlops.audit.membership import membership_audit
    from ppmlops.data.features import encode
    from ppmlops.training.metrics import evaluate as utility, majority_rate

    staged, trained = ctx.read("ingest"), ctx.read("train")
    X, y, _ = encode(_read_parquet(staged["snapshot_test"]), ctx.spec)
    X_members, y_members, _ = encode(_read_parquet(staged["snapshot_train"]), ctx.spec)
    model = _load_model(trained["model_path"], X.shape[1])
    audit = membership_audit(model, X_members, y_members, X, y, delta=trained["delta"], seed=ctx.params.seed)
    return {
        "rows": int(len(y)),
        **utility(model, X, y),
        "majority_baseline": majority_rate(y),
        "partition": "holdout",
        "note": "exact metrics on the held-out partition; those rows are not covered by the training epsilon",
        "audit": audit.to_dict(),
    }


def _load_model(path: str, n_features: int):
    import torch

    from ppmlops.training.models import build_model

    saved = torch.load(path, weights_only=True)
    model = build_model(saved["kind"], n_features, saved["hidden"])
    model.load_state_dict(saved["state_dict"])
    model.eval()
    return model


def model_card(ctx: RunContext) -> dict[str, Any]:
    staged, trained, evaluated, planned = ctx.read("ingest"), ctx.read("train"), ctx.read("evaluate"), ctx.read("plan")
    spec = ctx.spec
    return {
        "model_name": spec.deploy.model_name,
        "pipeline": spec.name,
        "run_id": ctx.run_id,
        "dataset_id": spec.dataset.id,
        "data_sha256": staged["sha256"],
        "rows_train": staged["rows_train"],
        "rows_test": staged["rows_test"],
        "model": {"kind": spec.model.kind, "hidden": list(spec.model.hidden), "n_features": trained["n_features"]},
        "epsilon": trained["run_epsilon_spent"],
        "delta": trained["delta"],
        "dataset_epsilon_total": trained["dataset_epsilon_total"],
        "epsilon_planned": planned["run_epsilon"],
        "accountant": "rdp",
        "privacy_filter": True,
        "sampling": "poisson",
        "noise_multiplier": trained["noise_multiplier"],
        "sample_rate": trained["sample_rate"],
        "steps": trained["steps"],
        "epochs": trained["epochs_completed"],
        "max_grad_norm": spec.training.max_grad_norm,
        "secure_rng": trained["secure_rng"],
        "metrics": {k: evaluated[k] for k in ("accuracy", "auc", "majority_baseline", "rows")},
        "metrics_note": evaluated["note"],
        "privacy_audit": evaluated["audit"],
        "intended_use": spec.description or f"{spec.name} retraining",
    }


@_timed
def gate(ctx: RunContext) -> dict[str, Any]:
    """CMFM: the deploy policy on the manifest; every decision is recorded."""
    spec = ctx.spec
    staged, trained, evaluated, planned, risk = (
        ctx.read("ingest"), ctx.read("train"), ctx.read("evaluate"), ctx.read("plan"), ctx.read("assess"))
    card = model_card(ctx)
    manifest = {
        "run": {"id": ctx.run_id, "environment": ctx.params.environment},
        "dataset": _policy_dataset(ctx, staged),
        "risk": {"score": risk["score"], "level": risk["level"]},
        "privacy": {
            "accountant": "rdp",
            "filter": True,
            "epsilon_planned": planned["run_epsilon"],
            "epsilon_spent": trained["run_epsilon_spent"],
            "delta": trained["delta"],
            "dataset_epsilon_total": trained["dataset_epsilon_total"],
            "dataset_epsilon_budget": spec.privacy.epsilon,
            "secure_rng": trained["secure_rng"],
            "noise_multiplier": trained["noise_multiplier"],
            "sample_rate": trained["sample_rate"],
            "steps": trained["steps"],
        },
        "metrics": {"accuracy": evaluated["accuracy"], "auc": evaluated["auc"], "min_accuracy": spec.deploy.min_accuracy},
        "audit": evaluated["audit"],
        "model_card": card,
    }
    decision = _decide(ctx, "data.ppmlops.deploy", manifest, stage="gate")
    (ctx.run_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    return {
        "outcome": decision.outcome,
        "allowed": decision.allowed,
        "reasons": decision.reasons,
        "decision_id": decision.id,
        "policy_hash": decision.policy_hash,
        "engine": decision.engine,
        "error": decision.error,
    }


@_timed
def deploy(ctx: RunContext) -> dict[str, Any]:
    """Register the model with its card and move the `production` alias to it."""
    from ppmlops.registry.store import Registry

    decision = ctx.read("gate")
    approval = _read_optional(ctx, "approval")
    approved = decision["outcome"] == "needs_approval" and bool(approval and approval["approved"])
    if not (decision["allowed"] or approved):
        # The DAG branches around this stage; this guards every other caller.
        raise PolicyRefused("deploy", decision["reasons"] + (
            ["awaiting a person's approval"] if decision["outcome"] == "needs_approval" and not approval else []))
    card = model_card(ctx)
    card["policy_decision"] = {k: decision[k] for k in ("decision_id", "outcome", "reasons", "policy_hash", "engine")}
    if approved:
        card["approval"] = approval
    registry = Registry(ctx.settings.registry_dir)
    version = registry.register(ctx.spec.deploy.model_name, Path(ctx.read("train")["model_path"]), card)
    registry.set_alias(ctx.spec.deploy.model_name, "production", version)
    return {"model_name": ctx.spec.deploy.model_name, "version": version, "alias": "production",
            "path": str(registry.model_path(ctx.spec.deploy.model_name, version))}


def record_approval(ctx: RunContext, *, approved: bool, user: str, responded_at: str, channel: str) -> dict[str, Any]:
    """A person's answer to a needs-approval gate, in the run and in the hash-chained audit log.

    The record takes the shape of a policy decision so that `ppmlops audit verify|show` cover it
    like any other; its engine names the channel the answer came through.
    """
    import uuid
    from datetime import datetime, timezone

    from ppmlops.audit.log import AuditLog

    gate_record = ctx.read("gate")
    if gate_record["outcome"] != "needs_approval":
        raise PpmlopsError(f"run {ctx.run_id}: the deploy gate said {gate_record['outcome']!r}; there is nothing to approve")
    outcome = "approved" if approved else "rejected"
    record = {
        "approved": approved, "outcome": outcome, "by": user, "at": responded_at, "channel": channel,
        "gate_decision_id": gate_record["decision_id"], "gate_reasons": gate_record["reasons"],
    }
    AuditLog(ctx.settings.db_url).record({
        "id": uuid.uuid4().hex, "time": datetime.now(timezone.utc).isoformat(), "query": "human approval of deploy",
        "input": {"gate_decision_id": gate_record["decision_id"], "reasons": gate_record["reasons"]},
        "result": record, "outcome": outcome, "allowed": approved,
        "reasons": [f"{outcome} by {user} at {responded_at}"], "engine": channel,
        "policy_hash": gate_record["policy_hash"], "error": None,
    }, run_id=ctx.run_id, dataset_id=ctx.spec.dataset.id, stage="approval")
    return ctx.write("approval", record)


# --------------------------------------------------------------------------- helpers


def _read_optional(ctx: RunContext, name: str) -> dict[str, Any] | None:
    path = ctx.run_dir / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _decide(ctx: RunContext, query: str, policy_input: dict[str, Any], *, stage: str):
    from ppmlops.audit.log import AuditLog
    from ppmlops.compliance.engine import evaluate as evaluate_policy

    decision = evaluate_policy(query, policy_input, policy_path=ctx.settings.policy_path)
    AuditLog(ctx.settings.db_url).record(decision, run_id=ctx.run_id, dataset_id=ctx.spec.dataset.id, stage=stage)
    return decision


def _read_parquet(path: str):
    import pandas as pd

    return pd.read_parquet(path)


def _fields_of(cls, record: dict[str, Any]) -> dict[str, Any]:
    from dataclasses import fields

    names = {f.name for f in fields(cls)}
    return {k: v for k, v in record.items() if k in names}


def run_all(ctx: RunContext) -> dict[str, Any]:
    """Every stage in order, outside Airflow; stops at the gate when deployment is not allowed."""
    for stage in (ingest, validate, assess, plan, train, evaluate, gate):
        stage(ctx)
    if ctx.read("gate")["allowed"]:
        deploy(ctx)
    return summary(ctx)


def summary(ctx: RunContext) -> dict[str, Any]:
    """What happened in this run, from the stage records present (a failed run has fewer)."""
    records = {}
    for name in (*STAGES, "approval", "refused"):
        path = ctx.run_dir / f"{name}.json"
        if path.exists():
            records[name] = json.loads(path.read_text())
    out: dict[str, Any] = {"pipeline": ctx.spec.name, "run_id": ctx.run_id, "run_dir": str(ctx.run_dir)}
    if "ingest" in records:
        r = records["ingest"]
        out.update(rows_in=r["rows_in"], rows_staged=r["rows_staged"], rows_quarantined=r["rows_quarantined"],
                   quarantine_reasons=r["quarantine_reasons"], data_sha256=r["sha256"])
    if "assess" in records:
        out.update(risk_score=records["assess"]["score"], risk_level=records["assess"]["level"])
    if "plan" in records:
        r = records["plan"]
        out.update(epsilon_planned=r["run_epsilon"], delta=r["delta"], noise_multiplier=r["noise_multiplier"])
    if "train" in records:
        r = records["train"]
        out.update(epsilon_spent=r["run_epsilon_spent"], dataset_epsilon_total=r["dataset_epsilon_total"],
                   epochs=r["epochs_completed"], stopped_reason=r["stopped_reason"])
    if "evaluate" in records:
        r = records["evaluate"]
        out.update(accuracy=r["accuracy"], auc=r["auc"], audit_auc=r["audit"]["auc"],
                   audit_epsilon_lower_bound=r["audit"]["epsilon_lower_bound"])
    if "gate" in records:
        out.update(decision=records["gate"]["outcome"], decision_reasons=records["gate"]["reasons"])
    if "approval" in records:
        r = records["approval"]
        out.update(approval=f"{r['outcome']} by {r['by']}")
    if "deploy" in records:
        out.update(model_version=records["deploy"]["version"], model_name=records["deploy"]["model_name"])
    if "refused" in records:
        out.update(decision="refused to train", decision_reasons=records["refused"]["reasons"])
    out["stage_seconds"] = {k: v["seconds"] for k, v in records.items() if isinstance(v, dict) and "seconds" in v}
    return out


def format_summary(s: dict[str, Any]) -> str:
    def num(key: str, fmt: str = "{:.4g}") -> str:
        return fmt.format(s[key]) if key in s and s[key] is not None else "-"

    lines = [
        f"ppmlops run {s['run_id']} ({s['pipeline']})",
        f"  rows in {s.get('rows_in', '-')}, staged {s.get('rows_staged', '-')}, "
        f"quarantined {s.get('rows_quarantined', '-')} {s.get('quarantine_reasons', '')}",
        f"  risk score {num('risk_score', '{:.3f}')} ({s.get('risk_level', '-')})",
        f"  epsilon planned {num('epsilon_planned')}, spent {num('epsilon_spent')} at delta {num('delta', '{:.0e}')}; "
        f"dataset total {num('dataset_epsilon_total')}",
        f"  accuracy {num('accuracy', '{:.4f}')}, AUC {num('auc', '{:.4f}')}; membership attack AUC "
        f"{num('audit_auc', '{:.3f}')}, epsilon lower bound {num('audit_epsilon_lower_bound', '{:.3f}')}",
        f"  decision {s.get('decision', '-')}" + (f": {'; '.join(s['decision_reasons'])}" if s.get("decision_reasons") else "")
        + (f" ({s['approval']})" if "approval" in s else ""),
        f"  model version {s.get('model_name', '-')} v{s['model_version']}" if "model_version" in s else "  model not deployed",
        f"  run directory {s['run_dir']}",
    ]
    return "\n".join(lines)
