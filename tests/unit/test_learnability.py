"""A run that cannot learn is refused at plan, before its grant, with what would help (issue 29,
item 5): the estimate's arithmetic, and the plan stage on a small demo table with the shipped policy."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ppmlops.errors import PolicyRefused
from ppmlops.privacy.ledger import Ledger
from ppmlops.run.records import PlanRecord, Refusal
from ppmlops.stages import assess, ingest, plan
from ppmlops.run.context import RunContext
from ppmlops.training.learnability import builtin_parameters, estimate

from plans import demo_table_run



@pytest.mark.parametrize("kind,hidden,outputs", [("logistic", [], 2), ("mlp", [32], 2), ("mlp", [64, 16], 10),
                                                 ("mlp", [8], 1)])
def test_builtin_parameters_count_what_the_model_has(kind, hidden, outputs):
    import torch

    from ppmlops.training.models import build_model

    net = build_model(kind, 17, hidden or (1,), n_outputs=outputs)
    assert isinstance(net, torch.nn.Module)
    assert builtin_parameters(kind, 17, hidden, outputs) == sum(p.numel() for p in net.parameters())


def test_the_estimate_is_the_documented_arithmetic():
    e = estimate(rows=12_000, parameters=6_850, steps=235, epochs=5, expected_batch=256, noise_multiplier=1.6,
                 learning_rate=0.5, max_grad_norm=2.0, epsilon=1.0)
    assert e.signal_to_noise == pytest.approx(math.sqrt(235) * 256 / (1.6 * math.sqrt(6_850)))
    assert e.update_reach == pytest.approx(0.5 * 235 * 2.0)
    # doubling the rows at the same batch and epochs doubles the steps: reach doubles
    assert estimate(**{**e.model_dump(exclude={"signal_to_noise", "update_reach"}), "steps": 470}).update_reach \
        == pytest.approx(2 * e.update_reach)
    assert estimate(rows=1, parameters=10, steps=1, epochs=1, expected_batch=1, noise_multiplier=math.inf,
                    learning_rate=1, max_grad_norm=1, epsilon=1).signal_to_noise == 0.0


def _ctx(tmp_path, monkeypatch, run_id: str, epochs: int) -> RunContext:
    return demo_table_run(tmp_path, monkeypatch, run_id, 3000, training={"epochs": epochs})


def test_a_small_table_with_the_demos_epochs_is_refused_at_plan_before_its_grant(tmp_path, monkeypatch):
    # 3,000 rows (about 2,100 trained on) at the demo's 4 epochs of batch 256: some 33 steps at
    # learning rate 0.5 cannot move the weights far enough (benchmarks/learnability.py).
    ctx = _ctx(tmp_path, monkeypatch, "small", epochs=4)
    ingest.run(ctx)
    assess.run(ctx)
    with pytest.raises(PolicyRefused, match="the run cannot learn: its .* steps") as err:
        plan.run(ctx)
    assert "raise training.epochs to about" in str(err.value)
    refusal = ctx.store.read(Refusal)
    assert refusal.stage == "plan" and any("cannot learn" in r for r in refusal.reasons)
    # Nothing but the noisy counts was charged: no grant.
    kinds = {e.kind for e in Ledger(ctx.settings.db_url).entries(ctx.spec.dataset.id)}
    assert kinds == {"release"}

    # As advised, more epochs: the same table plans (a new run on a fresh home and ledger).
    epochs = int(str(err.value).split("raise training.epochs to about ")[1].split()[0])
    later = _ctx(tmp_path / "again", monkeypatch, "more-epochs", epochs=epochs + 2)
    ingest.run(later)
    assess.run(later)
    record = plan.run(later)
    assert isinstance(record, PlanRecord)
    learn = record.policy_input["learnability"]
    assert learn["update_reach"] >= 60 and learn["signal_to_noise"] >= 2.4
    assert "grant" in {e.kind for e in Ledger(later.settings.db_url).entries(later.spec.dataset.id)}
