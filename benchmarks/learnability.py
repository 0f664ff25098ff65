"""Where DP-SGD starts to learn: the plan's signal-to-noise estimate against test accuracy on Adult.

    .venv/bin/python benchmarks/learnability.py            # 22 cells x 3 seeds (about 3 minutes)
    .venv/bin/python benchmarks/learnability.py --quick    # 4 cells x 2 seeds

Each cell trains the Adult MLP (ppmlops.training.loop.run_worker in this process, the product's
planner and grant, secure noise, expected batch 256, learning rate 0.5, clip 1) on a random subset
of train.csv (80% trained on) for some epochs, and scores it on test.csv against always guessing
the majority class, and against the same steps without DP. The plan's estimate
(ppmlops.training.learnability: signal-to-noise and update reach) is printed next to it with what
the policy's floors (policies.rego: utility.min_signal_to_noise, utility.min_update_reach) decide;
the last line counts the cells they judge wrongly (refused yet learned by more than a point, or
allowed yet within a point of the majority class).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adult import REPO, adult_job, load  # noqa: E402
from anom_utility import _train  # noqa: E402

EPOCHS = 5
HIDDEN = [64]


def floors_of_policy() -> dict[str, float]:
    import re

    text = (REPO / "policies.rego").read_text()
    out = {}
    for name in ("min_signal_to_noise", "min_update_reach"):
        found = re.search(rf'"{name}":\s*([0-9.]+)', text)
        out[name] = float(found.group(1)) if found else float("nan")
    return out


def cell(n: int, epsilon: float, epochs: int, seed: int, work: Path):
    """(test accuracy, majority baseline on test, the plan's Learnability)."""
    from ppmlops.training.learnability import builtin_parameters, estimate
    from ppmlops.training.metrics import evaluate
    from ppmlops.training.models import build_model

    arrays, Xt, yt = load(n, seed)
    job = adult_job(work, arrays, run_id=f"n{n}-e{epsilon}-E{epochs}-s{seed}", epsilon=epsilon, epochs=epochs,
                    seed=seed, hidden=tuple(HIDDEN), holdout_epsilon=1.0)
    plan = job.plan
    est = estimate(rows=plan.rows_estimate, parameters=builtin_parameters("mlp", arrays.X.shape[1], HIDDEN, 2),
                   steps=plan.steps_per_epoch * plan.epochs, epochs=plan.epochs,
                   expected_batch=plan.sample_rate * plan.rows_estimate, noise_multiplier=plan.noise_multiplier,
                   learning_rate=job.learning_rate, max_grad_norm=job.max_grad_norm, epsilon=epsilon)
    restored = _train(job, arrays)
    model = build_model("mlp", arrays.X.shape[1], HIDDEN)
    model.load_state_dict(restored.weights)
    majority = max(float(yt.mean()), 1 - float(yt.mean()))
    return evaluate(model, Xt, yt)["accuracy"], majority, est


def non_private(n: int, epochs: int, seed: int) -> float:
    """The same model, epochs, batch and learning rate without clipping or noise: what the step
    count alone allows."""
    import torch
    import torch.nn.functional as F

    from ppmlops.training.metrics import evaluate
    from ppmlops.training.models import build_model

    arrays, Xt, yt = load(n, seed)
    torch.manual_seed(seed)
    model = build_model("mlp", arrays.X.shape[1], HIDDEN)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    Xs, ys = torch.from_numpy(arrays.X), torch.from_numpy(arrays.y)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(Xs), generator=g).split(256):
            opt.zero_grad()
            F.cross_entropy(model(Xs[idx]), ys[idx]).backward()
            opt.step()
    return evaluate(model, Xt, yt)["accuracy"]


# (rows, epsilon, epochs): the spec's 5 epochs over sizes and epsilons, then the remedies the
# refusal names for the small sizes (more epochs), which is where the floors are decided.
DEFAULT_GRID = [(n, eps, EPOCHS) for n in (1000, 3000, 6000, 12000, 32000) for eps in (0.25, 1.0, 4.0)]
REMEDIES = [(6000, 1.0, 20), (3000, 1.0, 40), (3000, 4.0, 20), (2000, 0.5, 60), (1000, 1.0, 60),
            (3000, 0.25, 40), (1000, 0.25, 60)]
QUICK = [(3000, 1.0, EPOCHS), (12000, 1.0, EPOCHS), (3000, 1.0, 40), (3000, 0.25, 40)]


def main() -> int:
    import os

    import torch
    import torch.distributed as dist

    from conftest import free_port

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(free_port())
    dist.init_process_group("gloo", rank=0, world_size=1)  # the worker loop's group, of one
    grid = QUICK if args.quick else DEFAULT_GRID + REMEDIES
    seeds = range(2 if args.quick else 3)
    floors = floors_of_policy()
    started = time.perf_counter()
    print(f"Adult MLP {HIDDEN}, expected batch 256, learning rate 0.5, clip 1, secure noise, {len(seeds)} seeds; "
          f"policy floors: signal-to-noise {floors['min_signal_to_noise']:g}, update reach "
          f"{floors['min_update_reach']:g}")
    print(f"{'rows':>6} {'epsilon':>7} {'epochs':>6} {'snr':>6} {'reach':>6} {'accuracy':>9} {'gain':>7} {'plain':>7}  plan")
    wrong = []
    with tempfile.TemporaryDirectory(prefix="ppmlops-learn-") as tmp:
        for n, eps, epochs in grid:
            runs = [cell(n, eps, epochs, s, Path(tmp)) for s in seeds]
            acc = statistics.mean(r[0] for r in runs)
            majority, est = runs[0][1], runs[0][2]
            plain = statistics.mean(non_private(n, epochs, s) for s in seeds)
            gain = acc - majority
            refused = (est.signal_to_noise < floors["min_signal_to_noise"]
                       or est.update_reach < floors["min_update_reach"])
            learned = gain > 0.01
            print(f"{n:>6} {eps:>7g} {epochs:>6} {est.signal_to_noise:>6.1f} {est.update_reach:>6.0f} {acc:>9.4f} "
                  f"{gain:>+7.4f} {plain:>7.4f}  {'refused' if refused else 'allowed'}", flush=True)
            if refused == learned:
                wrong.append((n, eps, epochs))
    dist.destroy_process_group()
    print(f"majority class on test.csv {majority:.4f}; gain = accuracy - majority; plain = the same steps without DP; "
          f"total {time.perf_counter() - started:.0f} s")
    print(f"cells the floors judge wrongly (refused yet learned by more than a point, or allowed yet not): "
          f"{len(wrong)} of {len(grid)} {wrong if wrong else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
