"""Fine-tuning (issue 29, item 2): model.init's file is read and matched to the model tensor by
tensor, model.trainable freezes the rest, every clipping path clips only what trains, and a bad
file or prefix is refused at assess, before anything is charged."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from ppmlops.errors import ModelError
from ppmlops.privacy.ledger import Ledger
from ppmlops.stages import assess, ingest
from ppmlops.training.clipping import probe_norms
from ppmlops.training.factory import pretrained
from ppmlops.training.models import build_model
from ppmlops.training.tasks import loss_sum

from plans import demo_table_run



def _saved(tmp_path, net: nn.Module, name="w.pt", wrap=False) -> str:
    state = {k: v.clone() for k, v in net.state_dict().items()}
    path = tmp_path / name
    torch.save({"state_dict": state} if wrap else state, path)
    return str(path)


def test_the_file_sets_every_tensor_it_holds_and_the_prefixes_freeze_the_rest(tmp_path):
    torch.manual_seed(1)
    source = build_model("mlp", 6, [8])
    path = _saved(tmp_path, source, wrap=True)  # a ppmlops model file: weights under state_dict
    torch.manual_seed(2)
    net = build_model("mlp", 6, [8])
    done = pretrained(net, path, ["2"])
    for k, v in source.state_dict().items():
        assert torch.equal(net.state_dict()[k], v)
    assert done["trainable"] == ["2.weight", "2.bias"] and done["frozen"] == ["0.weight", "0.bias"]
    assert [p.requires_grad for p in net.parameters()] == [False, False, True, True]
    assert done["trainable_parameters"] == 8 * 2 + 2 and done["kept"] == [] and len(done["sha256"]) == 64


def test_a_widened_canary_layer_takes_the_file_in_its_real_columns(tmp_path):
    source = build_model("mlp", 6, [8])
    net = build_model("mlp", 6 + 4, [8])  # four canary columns
    before = net.state_dict()["0.weight"][:, 6:].clone()
    pretrained(net, _saved(tmp_path, source), None, widened={"0.weight": 6})
    assert torch.equal(net.state_dict()["0.weight"][:, :6], source.state_dict()["0.weight"])
    assert torch.equal(net.state_dict()["0.weight"][:, 6:], before)  # the canary columns keep their start


@pytest.mark.parametrize("make,message", [
    (lambda tmp: str(tmp / "missing.pt"), "pretrained weights file not found"),
    (lambda tmp: (tmp / "junk.pt").write_text("not torch") and str(tmp / "junk.pt"), "weights_only=True"),
    (lambda tmp: _saved(tmp, build_model("mlp", 6, [16])), "tensor '0.weight' has shape (16, 6)"),
    (lambda tmp: _saved(tmp, nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2), nn.Linear(2, 2))),
     "2 tensor(s) the model does not have, e.g. ['3.bias', '3.weight']"),
])
def test_a_file_that_does_not_fit_the_model_is_named(tmp_path, make, message):
    with pytest.raises(ModelError, match="model.init") as err:
        pretrained(build_model("mlp", 6, [8]), make(tmp_path), None)
    assert message in str(err.value)


def test_a_prefix_that_names_no_parameter_is_refused():
    with pytest.raises(ModelError, match=r"model.trainable: \['head'\] name\(s\) no parameter"):
        pretrained(build_model("mlp", 6, [8]), None, ["head"])


@pytest.mark.parametrize("mode", ["linear", "ghost", "hooks"])
def test_every_clipping_path_clips_only_the_trainable_parameters(mode):
    torch.manual_seed(3)
    net = build_model("mlp", 5, [7])
    pretrained(net, None, ["2"])
    X, y = torch.randn(6, 5), torch.tensor([0, 1, 1, 0, 1, 0])
    want = []
    for i in range(len(y)):  # autograd, row by row, over the trainable parameters only
        grads = torch.autograd.grad(loss_sum("binary", net(X[i:i + 1]), y[i:i + 1]),
                                    [p for p in net.parameters() if p.requires_grad])
        want.append(torch.sqrt(sum(g.pow(2).sum() for g in grads)))
    got = probe_norms(copy.deepcopy(net), mode, X, y)
    assert torch.allclose(got, torch.stack(want), rtol=1e-4, atol=1e-6)


def test_a_frozen_layer_does_not_move_in_a_private_step(gloo_world_of_one):
    from ppmlops.training.private_model import make_private_model

    torch.manual_seed(4)
    net = build_model("mlp", 5, [7])
    pretrained(net, None, ["2"])
    frozen = net[0].weight.detach().clone()
    head = net[2].weight.detach().clone()
    model = make_private_model(net, noise_multiplier=1.0, max_grad_norm=1.0, learning_rate=0.5, momentum=0.0,
                               divisor=8.0, device=torch.device("cpu"), clipping="linear")
    from ppmlops.privacy.randomness import Randomness

    model.set_epoch(noise_multiplier=1.0, max_grad_norm=1.0, learning_rate=0.5,
                    noise_source=Randomness.reproducible(4, "frozen").source("noise", 1))
    model.step(torch.randn(8, 5), torch.randint(0, 2, (8,)))
    assert torch.equal(model.net[0].weight.detach(), frozen)
    assert not torch.equal(model.net[2].weight.detach(), head)


def test_a_bad_pretrained_file_stops_the_run_at_assess_before_any_charge(tmp_path, monkeypatch):
    torch.save({"0.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
    ctx = demo_table_run(tmp_path, monkeypatch, "bad-init", 600,
                         model={"kind": "mlp", "hidden": [32], "init": str(tmp_path / "other.pt"), "trainable": ["2"]})
    spec = ctx.spec
    ingest.run(ctx)
    with pytest.raises(ModelError, match=r"model.init .*other.pt: tensor '0.weight' has shape \(3, 3\)"):
        assess.run(ctx)
    assert Ledger(ctx.settings.db_url).entries(spec.dataset.id) == []
