"""A model of the spec's own (issue 29, item 1): `model.factory` names a callable that builds the
nn.Module; it is checked on public inputs before the run spends anything, and every refusal
names the factory and the layer at fault.

The factories here live in a real module written to a folder on sys.path, as a user's would.
"""

from __future__ import annotations

import hashlib
import sys
import textwrap

import pytest
import torch
from torch import nn

from ppmlops.errors import ModelError, SpecError, TrainingError
from ppmlops.privacy.ledger import Ledger
from ppmlops.run.records import CountsRelease, ModelCheck, Refusal, TrainRecord
from ppmlops.spec import FactoryRef, parse_spec
from ppmlops.stages import assess, ingest
from ppmlops.run.context import RunContext, RunParams
from ppmlops.training.factory import build_net, rebuild, saved_model
from ppmlops.training.model_check import check

USER_MODELS = '''
import torch
from torch import nn


def plain(n_features, n_outputs, width=8):
    return nn.Sequential(nn.Linear(n_features, width), nn.ReLU(), nn.Linear(width, n_outputs))


def bare(n_features, n_outputs):
    return nn.Linear(n_features, n_outputs)


def batchnorm(n_features, n_outputs):
    return nn.Sequential(nn.Linear(n_features, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, n_outputs))


def conv(n_features, n_outputs, norm=False):
    layers = [nn.Unflatten(1, (1, n_features)), nn.Conv1d(1, 4, 3)]
    layers += [nn.BatchNorm1d(4)] if norm else []
    return nn.Sequential(*layers, nn.ReLU(), nn.Flatten(), nn.Linear(4 * (n_features - 2), n_outputs))


def normed_input(n_features, n_outputs):
    return nn.Sequential(nn.LayerNorm(n_features), nn.Linear(n_features, n_outputs))


def three_outputs(n_features, n_outputs):
    return nn.Linear(n_features, n_outputs + 1)


def raises(n_features, n_outputs, width=8):
    raise ValueError(f"width {width} is too small")


def lstm(n_features, n_outputs):
    return nn.Sequential(nn.Unflatten(1, (1, n_features)), nn.LSTM(n_features, 4))


class Centred(nn.Module):
    """Subtracts the batch mean: no layer of its own mixes rows, its forward does."""

    def __init__(self, n_features, n_outputs):
        super().__init__()
        self.a, self.b = nn.Linear(n_features, 8), nn.Linear(8, n_outputs)

    def forward(self, x):
        h = self.a(x)
        return self.b(h - h.mean(0))


def centred(n_features, n_outputs):
    return Centred(n_features, n_outputs)


def not_a_module(n_features, n_outputs):
    return "a model"
'''


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    """`user_models`, importable from a folder on sys.path (a user's own package would be installed)."""
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "user_models.py").write_text(textwrap.dedent(USER_MODELS))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "user_models", raising=False)
    yield folder / "user_models.py"
    sys.modules.pop("user_models", None)


def _spec(tmp_path, model: dict):
    src = tmp_path / "train.csv"
    if not src.exists():
        src.write_text("age,plan,y\n" + "\n".join(f"{20 + i % 50},{('basic', 'pro')[i % 2]},{'yes' if i % 3 else 'no'}"
                                                  for i in range(300)) + "\n")
    return parse_spec({
        "name": "own",
        "dataset": {"id": "own", "source": {"path": str(src)},
                    "label": {"column": "y", "positive": "yes", "values": ["yes", "no"]},
                    "features": [{"name": "age", "type": "numeric", "range": [18, 90]},
                                 {"name": "plan", "type": "categorical", "categories": ["basic", "pro", "gold"]}]},
        "privacy": {"epsilon": 3.0, "delta": 1e-5, "run_epsilon": 1.0},
        "model": model,
        "deploy": {"model_name": "own"},
    })


def _context(tmp_path, monkeypatch, spec) -> RunContext:
    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path / "home"))
    return RunContext(spec=spec, run_id="run-1", params=RunParams.defaults(spec))


# ------------------------------------------------------------------------- refused before any spend

REFUSALS = [
    ("no_such_module_xyz:build", {}, False,
     r"model\.factory 'no_such_module_xyz:build': cannot import module 'no_such_module_xyz' \(ModuleNotFoundError: "
     r".*must be importable"),
    ("user_models:missing", {}, False, r"model\.factory 'user_models:missing': module 'user_models' has no attribute "
                                       r"'missing'"),
    ("user_models:raises", {"width": 2}, False,
     r"model\.factory 'user_models:raises' raised ValueError: width 2 is too small \(called with n_features=4, "
     r"n_outputs=2 and args \{'width': 2\}\)"),
    ("user_models:not_a_module", {}, False, r"'user_models:not_a_module' returned a str, not a torch\.nn\.Module"),
    ("user_models:three_outputs", {}, False,
     r"'user_models:three_outputs': the model maps a \(2, 4\) batch to \(2, 3\) torch\.float32; ppmlops needs \(2, 2\)"),
    ("user_models:batchnorm", {}, False,
     r"'user_models:batchnorm' cannot train with DP-SGD: layer '1' \(BatchNorm1d\) mixes rows: .*use nn\.GroupNorm "
     r"\(or nn\.LayerNorm\) instead, or set model\.fix_batchnorm: true to have it replaced by GroupNorm$"),
    ("user_models:lstm", {}, False, r"'user_models:lstm' cannot train with DP-SGD: layer '1' \(LSTM\): We do not "
                                    r"support nn\.LSTM"),
    ("user_models:centred", {}, False,
     r"'user_models:centred' cannot train with DP-SGD: row 0's output depends on the other rows of the batch, first at "
     r"the output of layer 'b' \(Linear\)"),
]


@pytest.mark.parametrize("target, args, fix, message", REFUSALS, ids=[r[0].split(":")[1] for r in REFUSALS])
def test_a_model_that_cannot_train_is_refused_at_assess_before_any_ledger_entry(
        target, args, fix, message, tmp_path, monkeypatch, user_models):
    from ppmlops.airflow.tasks import retried

    spec = _spec(tmp_path, {"factory": target, "args": args, "fix_batchnorm": fix})
    ctx = _context(tmp_path, monkeypatch, spec)
    ingest.run(ctx)
    with pytest.raises(ModelError, match=message) as refused:
        assess.run(ctx)
    ledger = Ledger(ctx.settings.db_url)
    assert ledger.entries(spec.dataset.id) == [] and ledger.budget(spec.dataset.id) is None
    assert ctx.store.read_optional(CountsRelease) is None and ctx.store.read_optional(ModelCheck) is None
    refusal = ctx.store.read(Refusal)
    assert refusal.stage == "assess" and refusal.reasons == [str(refused.value)]
    assert not retried(refused.value)  # Airflow fails the task at once: a retry builds the same model


def test_fix_batchnorm_replaces_it_with_groupnorm_and_the_card_says_so(tmp_path, monkeypatch, user_models):
    from ppmlops.stages.card import model_section

    spec = _spec(tmp_path, {"factory": "user_models:conv", "args": {"norm": True}, "fix_batchnorm": True})
    ctx = _context(tmp_path, monkeypatch, spec)
    ingest.run(ctx)
    assess.run(ctx)  # passes: the counts are charged after the check
    checked = ctx.store.read(ModelCheck)
    assert checked.replaced == ["2: BatchNorm1d -> GroupNorm"] and checked.clipping == "ghost"
    net = build_net(None, None, spec.model.own, 4)
    assert isinstance(net[2], nn.GroupNorm) and not any(isinstance(m, nn.BatchNorm1d) for m in net.modules())
    trained = TrainRecord(model_path="", n_features=4, epochs_completed=0, stopped_reason="", history=[],
                          usage_entries=[], tuner="fixed", randomness="secure", epsilon_used={})
    card = model_section(ctx, trained)
    assert card["factory"] == "user_models:conv" and card["args"] == {"norm": True}
    assert card["fix_batchnorm"]["replaced"] == ["2: BatchNorm1d -> GroupNorm"]
    assert "ModuleValidator.fix" in card["fix_batchnorm"]["note"]
    # no Linear on the raw features here: the audit has no canaries, and the card says why
    assert "no nn.Linear takes the 4 features" in card["canaries"] and "0 canaries" in card["canaries"]


def test_a_batchnorm_fix_cannot_replace_says_so(user_models):
    """Opacus's fixer skips a BatchNorm without parameters: the refusal does not suggest the fix again."""
    source = user_models.read_text().replace("nn.BatchNorm1d(8)", "nn.BatchNorm1d(8, affine=False)")
    user_models.write_text(source)
    with pytest.raises(ModelError, match=r"layer '1' \(BatchNorm1d\) mixes rows.*model\.fix_batchnorm could not "
                                         r"replace it"):
        check(FactoryRef(target="user_models:batchnorm", fix_batchnorm=True), 6)


# -------------------------------------------------------------------------------- what is recorded

def test_the_example_factory_is_checked_on_public_inputs_and_its_code_recorded():
    import ppmlops.examples.models as example

    torch.manual_seed(5)
    before = torch.rand(3)
    torch.manual_seed(5)
    found = check(FactoryRef(target="ppmlops.examples.models:build", args={"width": 16, "blocks": 1}), 10)
    assert torch.equal(torch.rand(3), before)  # the caller's torch stream is untouched
    net = example.build(10, 2, width=16, blocks=1)
    assert found.parameters == sum(p.numel() for p in net.parameters())
    assert (found.clipping, found.canary_layer, found.canary_units) == ("ghost", "input", 16)  # LayerNorm: ghost
    assert found.code.sha256 == hashlib.sha256(open(example.__file__, "rb").read()).hexdigest()
    assert found.code.distribution == "ppmlops" and found.code.version


@pytest.mark.parametrize("target, layer, units, note", [
    ("user_models:plain", "0", 8, "gradient canaries on the weight of layer '0'"),
    ("user_models:bare", "", 2, "gradient canaries on the weight of layer ''"),
    ("user_models:conv", None, 0, "no nn.Linear takes the 6 features directly"),
    ("user_models:normed_input", None, 0, "layer '1' cannot carry the canaries (widening the input changes other "
                                          "parameters than its weight)"),
])
def test_the_canaries_go_on_a_linear_layer_of_the_raw_features_or_nowhere(target, layer, units, note, user_models):
    found = check(FactoryRef(target=target), 6)
    assert (found.canary_layer, found.canary_units) == (layer, units)
    assert note in found.canary_note
    assert (layer is None) == ("runs without canaries" in found.canary_note)


def test_a_saved_factory_model_is_rebuilt_by_its_factory(tmp_path, user_models):
    from ppmlops.training.canary_scores import without_canary_columns
    from ppmlops.training.models import predict_proba

    ref = FactoryRef(target="user_models:bare")
    net = build_net(None, None, ref, 6 + 3)  # trained with 3 canary columns
    state = without_canary_columns(net.state_dict(), 6, "")
    path = tmp_path / "model.pt"
    torch.save(saved_model(state, None, None, [f"f{i}" for i in range(6)], ref, None), path)
    again = rebuild(torch.load(path, weights_only=True), 6)
    X = torch.randn(5, 6)
    padded = torch.nn.functional.pad(X, (0, 3))  # the canary columns are zero on real rows
    assert torch.allclose(predict_proba(again, X), predict_proba(net, padded))


def test_a_factory_module_edited_after_the_check_stops_training(tmp_path, monkeypatch, user_models):
    from ppmlops.training.driver import _unchanged_code
    from ppmlops.training.model_check import checked

    ctx = _context(tmp_path, monkeypatch, _spec(tmp_path, {"factory": "user_models:plain"}))
    assert _unchanged_code(ctx) == checked(ctx).code
    user_models.write_text(user_models.read_text() + "\n# edited\n")
    with pytest.raises(TrainingError, match=r"module user_models changed after the run's model was checked"):
        _unchanged_code(ctx)


# ------------------------------------------------------------------------------------------ spec

@pytest.mark.parametrize("model, message", [
    ({"factory": "pkg.mod:build", "kind": "mlp"}, r"model\.factory names the whole model: remove model\.kind"),
    ({"kind": "mlp", "args": {"width": 3}}, r"model\.args and model\.fix_batchnorm go with model\.factory"),
    ({"factory": "pkg.mod:build", "args": {"n_features": 3}}, r"model\.args may not set \['n_features'\]"),
    ({"factory": "pkg/mod.py"}, r"model\.factory must be 'package\.module:callable'"),
])
def test_the_spec_names_a_factory_or_a_kind_never_both(tmp_path, model, message):
    with pytest.raises(SpecError, match=message):
        _spec(tmp_path, model)


def test_existing_model_specs_mean_what_they_meant(tmp_path):
    assert (_spec(tmp_path, {}).model.kind, _spec(tmp_path, {}).model.hidden) == ("mlp", [64])
    spec = _spec(tmp_path, {"factory": "pkg.mod:build", "args": {"width": 3}})
    assert spec.model.own == FactoryRef(target="pkg.mod:build", args={"width": 3})
    assert spec.model.kind is None and spec.model_validate(spec.model_dump(mode="json")) == spec
