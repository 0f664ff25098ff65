"""What a person sees when triggering a ppmlops DAG: Params with titles, descriptions and the
spec's limits as JSON-schema bounds (Airflow refuses a value outside them, with the message of
`Param`'s schema check, instead of the run quietly using another), and the DAG's docs.

The bounds sit in an `allOf` rather than at the schema's top: the Airflow 3.3 trigger form reads a
top-level minimum / maximum into its number field, which then clamps what a person types (5 became
1) without a word. Under `allOf` the form leaves the value as typed and the server's Param check
refuses it with jsonschema's message ("5 is greater than the maximum of 1.0"), which the form shows.

What is left of the dataset's budget is not in the form or the docs: Airflow makes a new DAG
version whenever the serialised DAG changes, descriptions included, so a figure read from the ledger
at parse time made a new version after every run that moved it. The form and the docs state the
spec's fixed terms and link to the dashboard's dataset page, which shows the figure as it is now.
"""

from __future__ import annotations

import math
from typing import Any, get_args

from ppmlops.spec import Environment, PipelineSpec
from ppmlops.run.context import RunParams
from ppmlops.spec import TUNER_NAMES

MAX_EPOCHS, MAX_WORKERS = 1000, 256


def cap_minimum(spec: PipelineSpec, min_epsilon: float | None = None) -> tuple[float, str]:
    """The least epsilon cap that could train, from public facts, and why: what the run's noisy
    counts cost (every run releases them at assess, before training) plus the policy's minimum run
    epsilon for the dataset's regulation (read from the policy; left out when it cannot be read).
    A smaller cap is refused by the form instead of spending the counts and failing at plan.
    Rounded DOWN to 4 decimals: the form must never refuse a cap that could train."""
    from ppmlops.run.context import count_release_floor
    from ppmlops.stages.precheck import policy_minimum

    floor = count_release_floor(spec)
    minimum = policy_minimum(spec.dataset.regulation) if min_epsilon is None else min_epsilon
    why = f"the run's noisy counts cost epsilon {floor:.4g}"
    if minimum:
        why += f", and the policy's {spec.dataset.regulation} minimum for training is {minimum:g}"
    least = math.floor((floor + (minimum or 0.0)) * 1e4) / 1e4
    if least > spec.privacy.run_epsilon:
        # The spec itself cannot train (its run_epsilon is below what a run needs): the form keeps
        # its default valid, and the assess pre-check refuses the run before its counts.
        return spec.privacy.run_epsilon, why + f"; this spec's run_epsilon {spec.privacy.run_epsilon:g} is below that"
    return least, why


def budget_words(spec: PipelineSpec) -> str:
    """The dataset's fixed budget terms and where to see what is left (never a figure from the
    ledger: see the module docstring)."""
    lifetime = f"lifetime budget ε {spec.privacy.epsilon:g} at δ {spec.privacy.delta:g}"
    per = " per block of event time" if spec.privacy.blocks is not None else ""
    blocks = (" A block whose budget is spent is retired from a run's window; new blocks start with the full budget."
              if per else "")
    from ppmlops.dashboard.links import backfill_page_path, dataset_page_path

    return (f"Dataset {spec.dataset.id}: {lifetime}{per}. What is left is on the dashboard's dataset page "
            f"({dataset_page_path(spec.dataset.id)}); what a backfill of a date range will spend, on its backfill "
            f"page ({backfill_page_path(spec.name)}).{blocks}")


def params(spec: PipelineSpec) -> dict[str, Any]:
    from airflow.sdk import Param

    d = RunParams.defaults(spec)
    cap = spec.privacy.run_epsilon
    least, why = cap_minimum(spec)
    return {
        "epsilon_cap": Param(
            d.epsilon_cap, type="number", allOf=[{"minimum": least, "maximum": cap}],
            title="Epsilon cap for this run",
            description=f"The most epsilon this run may spend: at least {least:g} ({why}), at most {cap:g} (the "
                        f"spec's run_epsilon). The policy may grant less (risk, what is left). "
                        f"{budget_words(spec)}"),
        "epochs": Param(d.epochs, type="integer", allOf=[{"minimum": 1, "maximum": MAX_EPOCHS}], title="Epochs",
                        description=f"Passes of DP-SGD over the training rows: 1 to {MAX_EPOCHS} (spec: {d.epochs}). "
                                    "More epochs spend the same grant in smaller steps (more noise each)."),
        "workers": Param(d.workers, type="integer", allOf=[{"minimum": 1, "maximum": MAX_WORKERS}],
                         title="Ray Train workers",
                         description=f"Data-parallel workers: 1 to {MAX_WORKERS} (spec: {d.workers}). Does not "
                                     "change the privacy cost."),
        "use_gpu": Param(d.use_gpu, type="boolean", title="Use GPUs",
                         description="One GPU per Ray Train worker (NCCL); the Ray cluster needs GPU nodes."),
        "seed": Param(d.seed, type="integer", allOf=[{"minimum": 0}], title="Seed",
                      description="Seeds the tuner's exploration (0 or more). Noise, sampling and the initial "
                                  "weights come from the OS's CSPRNG whatever the seed, unless the spec asks for "
                                  "reproducible randomness, where this seed keys every draw (such models never "
                                  "deploy to production)."),
        "environment": Param(d.environment, type="string", enum=list(get_args(Environment)), title="Deploy to",
                             description="Where an allowed model goes: production moves the production alias "
                                         "(and may need a person's approval); the others move their own alias."),
        "tuner": Param(spec.training.tuner, type="string", enum=list(TUNER_NAMES), title="Tuner (ANOM)",
                       description="How noise, clip norm and learning rate change between epochs, inside the "
                                   "run's fixed privacy budget."),
        "search": Param(False, type="boolean", title="Private hyperparameter search",
                        description=f"Train about {spec.search.trials:g} trials (the number is random and secret) with "
                                    "learning rate and clip norm drawn from the spec's search ranges, and keep the "
                                    "one with the best noisy held-out accuracy. The whole search is charged "
                                    "(Papernot & Steinke 2022): about one run's epsilon plus a constant, not one "
                                    "per trial. Trials train at fixed settings (the tuner is not used)."),
    }


def doc_md(spec: PipelineSpec) -> str:
    ds, p = spec.dataset, spec.privacy
    return f"""### {spec.name}: differentially private retraining

{spec.description or ''}

**Dataset** `{ds.id}` ({ds.regulation.upper()}). {budget_words(spec)}
Each run may spend at most ε {p.run_epsilon:g}; the ledger never lets runs together exceed the lifetime budget.

**What a run does**: ingest (consent filter, identifiers dropped) → validate → assess (noisy counts and a
privacy risk score, charged) → plan (the policy grants the run's budget) → train (DP-SGD on Ray, the tuner
adapting inside the grant) → evaluate (noisy held-out accuracy and a canary audit) → gate → deploy.

**Gates**: the compliance policy decides at plan (may it train, with how much ε) and at deploy: allow, deny
(for instance accuracy below {spec.deploy.min_accuracy:g}, or the audit finding more leakage than claimed), or
*needs approval*, when a person answers in Airflow's approval task. Every decision is in the audit log.

**Schedule** `{spec.schedule}`: each run reads its data interval. Unpausing the DAG starts the schedule, and every
run spends budget; catchup is off, so unpausing does not run the missed intervals.

**Backfill** missed intervals deliberately (each interval is a run and spends its own budget):

    ./dev airflow backfill create --dag-id {spec.dag_id} --from-date 2026-01-01 --to-date 2026-01-31 --max-active-runs 2

**Where to look**: the *Privacy* tab of a DAG run, or Browse → Privacy & compliance.
"""
