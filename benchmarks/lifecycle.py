"""A pipeline that retrains every week for a year: one pot against privacy blocks (issue 27).

    .venv/bin/python benchmarks/lifecycle.py            # 52 weeks, 4 epochs (the demo's)
    .venv/bin/python benchmarks/lifecycle.py --quick    # 12 weeks, 2 epochs
    .venv/bin/python benchmarks/lifecycle.py --chart docs/images/lifecycle_blocks.html  # and its picture

A generated event stream: every week about ROWS rows of the demo generator (ppmlops.data.synthetic),
with event times inside the week, drifting (each week's rows are drawn from the generator with
weights that favour short tenure more as the year goes on, so the churn rate and the feature mix
move; the label's dependence on the features stays the generator's). Each week a run reads the
8-week lookback of the demo spec, through the product's ledger (SQLite) and planner: its noisy
counts charged (one Gaussian release per partition at the spec's stats_epsilon), its epsilon the
policy's rule on public inputs (the smaller of the spec's run_epsilon and what the ledger leaves,
refused below MIN_EPSILON), its plan from ppmlops.privacy.planning with the blocks' rooms (DPF
unlocking, pipelines sharing), its grant reserved, then the product's worker loop in this process
(ppmlops.training.loop.run_worker, a gloo group of one, reproducible randomness: a benchmark).
A block whose lifetime budget cannot hold another run of the spec's size is retired for the run
(as ingest does). Grants are left counted in full (never trimmed): the conservative reading.

Three ways: "one pot" (no blocks: the dataset's one lifetime budget), "blocks" (weekly blocks,
one pipeline), "two pipelines" (weekly blocks; two pipelines, churn and upsell, on the dataset,
both asking every week, churn first; they share by DPF's dominant-share rule, see
ppmlops.privacy.ledger.BlockRoom) and "one modest" (the same, upsell asking only MODEST a run:
what it leaves of its part goes to churn). Accuracy is on exact test rows generated for the week after
each run (the week the model serves); a week whose run was refused keeps the last model (the
majority class before any model). The worst block's epsilon is the ledger's (RDP at the dataset's
order, converted) and is recomputed with Google's dp-accounting from the ledger's entries.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

ROWS = 1500  # per week
TEST_ROWS = 1000
LOOKBACK_WEEKS = 8
HOLDOUT = 0.2
DRIFT = 1.5  # how strongly the last week's draw favours short tenure (0: no drift)
MODEST = 0.4  # the run epsilon of the pipeline that asks for less in the "one modest" way
MIN_EPSILON = 0.05  # below this the policy refuses a run (GDPR profile's minimum)
WEEK = timedelta(days=7)
START = datetime(2025, 1, 6, tzinfo=timezone.utc)  # a Monday: weekly blocks from the default origin align


@dataclasses.dataclass
class Week:
    X: np.ndarray
    y: np.ndarray
    holdout: np.ndarray  # bool per row: the held-out partition
    blocks: list[str]  # per row, the privacy block of its event time


def _clean(df, spec):
    """Rows the generator broke on purpose (what ingest quarantines) and refused consent, dropped."""
    import pandas as pd

    keep = df["consent"] == "yes"
    for f in spec.dataset.features:
        if hasattr(f, "range"):
            v = pd.to_numeric(df[f.name], errors="coerce")
            keep &= v.between(*f.range)
        else:
            keep &= df[f.name].isin(f.categories)
    keep &= df[spec.dataset.label.column].isin(["yes", "no"])
    return df[keep].reset_index(drop=True)


def generate_week(spec, w: int, weeks: int, n: int, seed: int, calendar=None) -> Week:
    import pandas as pd

    from ppmlops.data.features import encode
    from ppmlops.data.synthetic import generate

    rng = np.random.default_rng([seed, w])
    pool = _clean(generate(3 * n, seed=seed * 1000 + w), spec)
    tenure = pd.to_numeric(pool["tenure_months"]).to_numpy(float)
    weight = np.exp(-DRIFT * (w / max(1, weeks - 1)) * tenure / 40.0)
    rows = pool.iloc[rng.choice(len(pool), n, replace=False, p=weight / weight.sum())].reset_index(drop=True)
    start = START + w * WEEK
    times = [start + timedelta(seconds=int(s)) for s in rng.integers(0, 7 * 86400, n)]
    X, y, _ = encode(rows, spec)
    blocks = [calendar.block_of(t) for t in times] if calendar is not None else []
    return Week(X, y, rng.random(n) < HOLDOUT, blocks)


@dataclasses.dataclass
class Way:
    name: str
    blocked: bool
    pipelines: tuple[str, ...]
    asks: dict[str, float] = dataclasses.field(default_factory=dict)  # run epsilon per pipeline (else the spec's)


def _dp_accounting_epsilon(entries, delta: float, order: float) -> float:
    """The worst (block, partition)'s epsilon as Google's dp-accounting computes it from the
    entries' mechanisms, at the dataset's fixed order."""
    import dp_accounting
    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    acc = rdp.RdpAccountant(orders=[order])
    for e in entries:
        if e.mechanism == "gaussian":
            event = dp_accounting.GaussianDpEvent(e.noise_multiplier)
        else:
            event = dp_accounting.PoissonSampledDpEvent(e.sample_rate, dp_accounting.GaussianDpEvent(e.noise_multiplier))
        acc.compose(dp_accounting.SelfComposedDpEvent(event, e.steps))
    return acc.get_epsilon(delta)


def write_chart(ledger, ds: str, path: Path) -> None:
    """The dashboard's block chart of `ds` (the same query and drawing code as its dataset page),
    as a standalone HTML page with the dashboard's stylesheet, and a PNG of it when a headless
    Chromium is installed (the picture in docs/privacy-model.md)."""
    import shutil
    import subprocess

    from ppmlops.dashboard import charts, html
    from ppmlops.dashboard.queries import _block_row, _budget
    from ppmlops.privacy.block_view import block_rows

    [d] = ledger.summary(ds)["datasets"]
    view = {**_budget(d), "block_rows": [_block_row(r) for r in block_rows(d)], "retired": {},
            "run_spend": [{"run_id": r} for r in d["runs"]], "block_length_seconds": d.get("block_length_seconds"),
            "block_origin": d.get("block_origin")}
    css = (REPO / "ppmlops" / "dashboard" / "static" / "dashboard.css").read_text()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<!doctype html><meta charset=utf-8><style>{css} body{{margin:12px;max-width:960px}}</style>"
                    f"{charts.block_svg(html.block_chart(view))}")
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser:
        png = path.with_suffix(".png")
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--screenshot={png}", "--window-size=990,840", path.resolve().as_uri()],
                       check=True, capture_output=True, timeout=120)
        print(f"block chart: {path} and {png}")
    else:
        print(f"block chart: {path} (no headless Chromium for a PNG)")


def simulate(way: Way, spec, data, tests, weeks: int, epochs: int, work: Path, chart: Path | None = None) -> dict:
    import torch

    from ppmlops.errors import BudgetExceeded
    from ppmlops.privacy.accountant import Segment, calibrate_noise
    from ppmlops.privacy.blocks import BlockCalendar, unlock_horizon
    from ppmlops.privacy.ledger import HOLDOUT as HO, TRAIN, Charge, Ledger, _applies, charge_curves, counted
    from ppmlops.privacy.lifetime import epsilon_at, typical_run_curve
    from ppmlops.privacy.planning import EpochShape, Room, RunRequest, affordable, plan_run, released
    from ppmlops.privacy.session import reserve
    from ppmlops.run.grant import charge_records, grant_of
    from ppmlops.run.records import PrivacyPlan
    from ppmlops.training.worker_job import WorkerJob
    from ppmlops.training.loop import Arrays, Comm, DirectoryCheckpoints, read_checkpoint, run_worker
    from ppmlops.training.metrics import evaluate
    from ppmlops.training.models import build_model
    from ppmlops.tuning.registry import make_tuner

    p = spec.privacy
    calendar = BlockCalendar(WEEK) if way.blocked else BlockCalendar()
    url = f"sqlite:///{work / (way.name.replace(' ', '_') + '.db')}"
    ledger = Ledger(url)
    ds = "stream"
    budget = ledger.register_dataset(ds, epsilon_budget=p.epsilon, delta=p.delta, calendar=calendar,
                                     run_curve=typical_run_curve(p.run_epsilon, p.delta, ROWS * LOOKBACK_WEEKS,
                                                                 spec.training.batch_size, epochs))
    lookback = LOOKBACK_WEEKS * WEEK
    horizon = unlock_horizon(calendar, lookback)
    count_sigma = calibrate_noise(p.stats_epsilon, p.delta, 1.0, 1)
    need = float(typical_run_curve(p.run_epsilon, p.delta, ROWS * LOOKBACK_WEEKS, spec.training.batch_size,
                                   epochs)[budget.index])
    rng = np.random.default_rng(7)
    cpu = torch.device("cpu")
    out = {name: {"trained": 0, "acc": [], "model": None, "eps": []} for name in way.pipelines}
    for k in range(weeks):
        end = START + (k + 1) * WEEK
        in_window = range(max(0, k - LOOKBACK_WEEKS + 1), k + 1)
        touched = list(calendar.touching(end - lookback, end)) if way.blocked else ["all"]
        per_block = ledger.block_curves(ds, touched)
        # Retired (as ingest does): a block whose lifetime budget cannot hold another run of this size.
        kept = [b for b in touched
                if all(float(c[budget.index]) + need <= budget.rdp for c in per_block[b].values())]
        for name in way.pipelines:
            ledger.register_run(ds, f"{name}-{k}", name, end)
        for name in way.pipelines:
            state, run_id = out[name], f"{name}-{k}"
            model = state["model"]
            if kept:
                rows = [(data[w], m) for w in in_window
                        for m in [np.isin(np.array(data[w].blocks), kept) if way.blocked else np.ones(len(data[w].y), bool)]]
                Xa = np.concatenate([d.X[m & ~d.holdout] for d, m in rows])
                ya = np.concatenate([d.y[m & ~d.holdout] for d, m in rows])
                Xh = np.concatenate([d.X[m & d.holdout] for d, m in rows])
                yh = np.concatenate([d.y[m & d.holdout] for d, m in rows])
                counts = [Charge(q, Segment(count_sigma, 1.0, 1), "gaussian", "noisy row counts") for q in (TRAIN, HO)]
                try:
                    ledger.charge(dataset_id=ds, run_id=run_id, charges=counts, kind="release", key="counts",
                                  randomness="reproducible", blocks=kept)
                    noisy_n = max(1.0, len(ya) + rng.normal(0, count_sigma))
                    shape = EpochShape.of(noisy_n, 0, spec.training.batch_size)
                    req = RunRequest(ds, p.delta, epochs, shape, False, p.holdout_epsilon, charge_curves(counts), "split")
                    rooms = ledger.block_rooms(ds, kept, pipeline=name, end=end, horizon=horizon)
                    room, charged = Room.of_blocks(budget, rooms), ledger.charged_curves(ds, blocks=kept)
                    eps = min(way.asks.get(name, p.run_epsilon), affordable(budget, charged, req, room)[TRAIN])
                    if eps - released(req)[TRAIN] < MIN_EPSILON:
                        raise BudgetExceeded(f"run epsilon {eps:.3g} is below the minimum")
                    planned = plan_run(budget, charged, req, eps, room)
                except BudgetExceeded:
                    planned = None
                if planned is not None:
                    plan = PrivacyPlan(
                        dataset_id=ds, run_id=run_id, delta=p.delta, randomness="reproducible",
                        accounting_order=budget.order, run_epsilon=eps, epsilon=planned.epsilon,
                        epsilon_by_partition=planned.epsilon_by_partition, noise_multiplier=planned.noise_multiplier,
                        sample_rate=shape.sample_rate, steps_per_epoch=shape.steps, epochs=epochs,
                        divisor=shape.divisor, rows_estimate=noisy_n, canaries=0, holdout_sigma=None,
                        evaluation_sigma=planned.evaluation_sigma, grant=charge_records(planned.charges),
                        dataset_share_before=0.0, dataset_share_after=0.0, blocks=kept, pipeline=name)
                    reserve(ledger, grant_of(plan))
                    job = WorkerJob(plan=plan, ledger_url=url, model_kind="mlp", hidden=tuple(spec.model.hidden),
                                    learning_rate=spec.training.learning_rate, momentum=0.0,
                                    max_grad_norm=spec.training.max_grad_norm, tuner="fixed", seed=k, workers=1,
                                    storage_path=str(work / "ray"))
                    with tempfile.TemporaryDirectory(prefix="ppmlops-life-") as root:
                        ckpt = DirectoryCheckpoints(root)
                        tuner = make_tuner("fixed", seed=k, learning_rate=job.learning_rate,
                                           max_grad_norm=job.max_grad_norm)
                        run_worker(job, Arrays(Xa, ya, Xh, yh), Comm(cpu), ckpt, cpu, tuner=tuner, echo=lambda line: None)
                        restored = read_checkpoint(os.path.join(root, "latest"))
                    model = build_model("mlp", Xa.shape[1], list(spec.model.hidden))
                    model.load_state_dict(restored.weights)
                    state["model"], state["trained"] = model, state["trained"] + 1
                    state["eps"].append(planned.epsilon)
            Xt, yt = tests[k]
            acc = (evaluate(model, Xt, yt)["accuracy"] if model is not None
                   else max(float(yt.mean()), 1 - float(yt.mean())))
            state["acc"].append(acc)
    # The worst (block, partition): the ledger's figure and dp-accounting's from the same entries.
    entries = ledger.entries(ds)
    per_block = ledger.block_curves(ds)
    worst = max(((b, q, float(c[budget.index])) for b, cs in per_block.items() for q, c in cs.items()),
                key=lambda t: t[2])
    block, part, rdp_value = worst
    mine = [e for e in counted(entries) if e.partition == part and _applies(e, block, calendar)]
    result = {"way": way.name, "budget": p.epsilon, "order": budget.order, "worst_block": block,
              "worst_epsilon": epsilon_at(rdp_value, p.delta, budget.order),
              "dp_accounting": _dp_accounting_epsilon(mine, p.delta, budget.order),
              "pipelines": {n: {k2: v for k2, v in s.items() if k2 != "model"} for n, s in out.items()},
              "dominant": {n: v["dominant_share"] for n, v in ledger.summary(ds)["datasets"][0]["pipelines"].items()}}
    if chart is not None:
        write_chart(ledger, ds, chart)
    ledger.close()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="12 weeks, 2 epochs")
    ap.add_argument("--weeks", type=int, default=None)
    ap.add_argument("--chart", type=Path, default=None,
                    help="write the blocks way's block chart (the dashboard's) to this .html, and a .png beside it")
    args = ap.parse_args()
    weeks = args.weeks or (12 if args.quick else 52)
    import torch
    import torch.distributed as dist

    from conftest import free_port
    from ppmlops.privacy.blocks import BlockCalendar
    from ppmlops.spec import load_spec

    spec = load_spec(REPO / "dags" / "pipelines" / "demo.yaml")
    epochs = 2 if args.quick else spec.training.epochs
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(free_port())
    dist.init_process_group("gloo", rank=0, world_size=1)
    started = time.perf_counter()
    calendar = BlockCalendar(WEEK)
    data = [generate_week(spec, w, weeks, ROWS, seed=1, calendar=calendar) for w in range(weeks)]
    tests = []
    for w in range(weeks):  # the week after each run: what its model serves
        t = generate_week(spec, min(w + 1, weeks - 1), weeks, TEST_ROWS, seed=2)
        tests.append((t.X, t.y))
    work = Path(tempfile.mkdtemp(prefix="ppmlops-lifecycle-"))
    p = spec.privacy
    print(f"demo spec: lifetime epsilon {p.epsilon:g} at delta {p.delta:g}, run_epsilon {p.run_epsilon:g}, "
          f"{epochs} epochs, batch {spec.training.batch_size}; {weeks} weekly retrains, {LOOKBACK_WEEKS}-week "
          f"lookback, {ROWS} rows a week (drift {DRIFT:g}), {TEST_ROWS} exact test rows a week")
    majority = [max(float(y.mean()), 1 - float(y.mean())) for _, y in tests]
    print(f"majority class baseline (always guess the commoner label) on the same test rows: mean "
          f"{statistics.mean(majority):.4f}, last {len(majority[-10:])} weeks {statistics.mean(majority[-10:]):.4f}, "
          f"first {len(majority[:10])} weeks {statistics.mean(majority[:10]):.4f}")
    results = {}
    for way in (Way("one pot", False, ("churn",)), Way("blocks", True, ("churn",)),
                Way("two pipelines", True, ("churn", "upsell")),
                Way("one modest", True, ("churn", "upsell"), {"upsell": MODEST})):
        t0 = time.perf_counter()
        r = simulate(way, spec, data, tests, weeks, epochs, work, args.chart if way.name == "blocks" else None)
        results[way.name] = r
        for name, s in r["pipelines"].items():
            last = s["acc"][-10:]
            print(f"{way.name:<14} {name:<7} weeks trained {s['trained']:>2} of {weeks}; test accuracy mean "
                  f"{statistics.mean(s['acc']):.4f}, last {len(last)} weeks {statistics.mean(last):.4f}, first "
                  f"{len(s['acc'][:10])} weeks {statistics.mean(s['acc'][:10]):.4f}; run epsilon mean "
                  f"{statistics.mean(s['eps']) if s['eps'] else 0:.3f}; dominant share "
                  f"{r['dominant'].get(name, 0):.1%}")
        print(f"{way.name:<14} worst block {r['worst_block']}: epsilon {r['worst_epsilon']:.4f} of budget "
              f"{r['budget']:g} at order {r['order']:g} (dp-accounting {r['dp_accounting']:.4f}); "
              f"{time.perf_counter() - t0:.0f} s")
    dist.destroy_process_group()
    b = results["blocks"]
    s = b["pipelines"]["churn"]
    print(f"total {time.perf_counter() - started:.0f} s")
    print(f"weeks trained: {s['trained']} of {weeks}; worst block epsilon: {b['worst_epsilon']:.4f} of budget "
          f"{b['budget']:g} (dp-accounting {b['dp_accounting']:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
