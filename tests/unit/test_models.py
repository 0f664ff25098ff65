import pytest
import torch
from opacus.validators import ModuleValidator

from ppmlops.training.models import build_model, predict_proba


@pytest.mark.parametrize("kind, hidden, n_linear", [("logistic", (64,), 1), ("mlp", (32,), 2), ("mlp", (16, 8), 3)])
def test_shapes_and_layers(kind, hidden, n_linear):
    model = build_model(kind, 10, hidden)
    out = model(torch.randn(7, 10))
    assert out.shape == (7, 2)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == n_linear
    assert linears[0].in_features == 10 and linears[-1].out_features == 2
    if kind == "mlp":
        assert [l.out_features for l in linears[:-1]] == list(hidden)


@pytest.mark.parametrize("kind", ["logistic", "mlp"])
def test_opacus_accepts_without_fixes(kind):
    model = build_model(kind, 5, (4, 3))
    assert ModuleValidator.validate(model, strict=False) == []


def test_no_bias_means_no_bias_parameters():
    model = build_model("mlp", 6, (5,), bias=False)
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Linear))


def test_empty_batch_forward():
    assert build_model("mlp", 3)(torch.empty(0, 3)).shape == (0, 2)


@pytest.mark.parametrize("kind, n, hidden, match", [
    ("cnn", 3, (4,), "model kind"),
    ("mlp", 0, (4,), "n_features"),
    ("mlp", 3, (), "at least one hidden layer"),
    ("mlp", 3, (4, 0), "positive integers"),
])
def test_bad_arguments(kind, n, hidden, match):
    with pytest.raises(ValueError, match=match):
        build_model(kind, n, hidden)


def test_predict_proba_is_softmax_class_one_and_keeps_mode():
    model = build_model("logistic", 4)
    model.train()
    X = torch.randn(20, 4)
    p = predict_proba(model, X, batch_size=7)
    assert torch.allclose(p, torch.softmax(model(X), 1)[:, 1].detach())
    assert model.training
