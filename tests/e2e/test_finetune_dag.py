"""DP fine-tuning end to end (issue 29, items 2 and 7): `python -m ppmlops.examples.pretrain`
pretrains the Adult MLP without DP on the public half of train.csv, and the shipped
dags/pipelines/demo_finetune.yaml fine-tunes only its last layer with DP-SGD on the private half
(model.init, model.trainable) through Airflow's dag.test(). The frozen layer leaves the run exactly
as the file gave it; the card names the file, its sha256 and what trained."""

from __future__ import annotations

import hashlib

import pytest

from ppmlops import pipeline, settings
from ppmlops.data.features import feature_names
from ppmlops.examples.pretrain import PRIVATE, WEIGHTS, write_halves
from ppmlops.run.records import EvaluationRecord, Pretrained, TrainRecord

from dag_run import REPO, run_dag

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def tuned_run(airflow_db, adult_dir):
    out = settings.load().home / "demo"
    write_halves(adult_dir, out)
    return run_dag("demo_finetune.yaml", {}) + (out,)


def test_only_the_last_layer_trains_from_the_pretrained_weights(tuned_run):
    import torch

    run, spec, ctx, out = tuned_run
    assert str(run.state) == "success", pipeline.format_summary(pipeline.summary(ctx))
    start = torch.load(out / WEIGHTS, weights_only=True)
    trained = torch.load(ctx.store.read(TrainRecord).model_path, weights_only=True)["state_dict"]
    assert torch.equal(trained["0.weight"], start["0.weight"]) and torch.equal(trained["0.bias"], start["0.bias"])
    assert not torch.equal(trained["2.weight"], start["2.weight"])  # the head was fine-tuned


def test_the_card_names_the_pretrained_file_and_what_trained(tuned_run):
    from ppmlops.registry.store import Registry

    _, spec, ctx, out = tuned_run
    card = Registry(settings.load().registry_dir).card(spec.deploy.model_name, pipeline.summary(ctx)["model_version"])
    tuned = card["model"]["fine_tuning"]
    n = len(feature_names(spec))
    assert tuned["init"] == "${PPMLOPS_HOME}/demo/adult_pretrained.pt"
    assert tuned["sha256"] == hashlib.sha256((out / WEIGHTS).read_bytes()).hexdigest()
    assert tuned["trainable"] == ["2.weight", "2.bias"] and tuned["trainable_parameters"] == 64 * 2 + 2
    assert tuned["frozen_parameters"] == 64 * n + 64 and "public by declaration" in tuned["note"]
    # The canaries would live on the frozen first layer: none, and the card says why.
    assert ctx.store.read(EvaluationRecord).audit.canaries == 0 and "frozen" in tuned["canaries"]
    # The plan's learnability counted the trainable parameters only.
    assert ctx.store.read(Pretrained).trainable_parameters == 130
    assert pipeline.summary(ctx)  # readable
    assert (out / PRIVATE).exists() and REPO.exists()
