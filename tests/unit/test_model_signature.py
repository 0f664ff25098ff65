"""Issue 29 item 3: the registered pyfunc model has a signature and an input example for every
label.task, both from the spec's public declarations (never a row), and predicts the task's output
from raw rows: a class name for multiclass, a number inside the declared range for regression."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from ppmlops.data.features import columns_of, encode_features
from ppmlops.registry import Registry
from ppmlops.spec import CategoricalFeature, NumericFeature
from ppmlops.training.factory import saved_model
from ppmlops.training.models import build_model

CARD = {"dataset_id": "d", "data_fingerprint": "ab12", "epsilon": 0.97, "delta": 1e-5, "accountant": "rdp",
        "metrics": {}, "intended_use": "tests"}
FEATURES = [NumericFeature(name="age", type="numeric", range=[18, 90]),
            CategoricalFeature(name="plan", type="categorical", categories=["basic", "plus", "pro"])]
LABELS = {"binary": {"column": "y", "positive": "yes", "values": ["no", "yes"]},
          "multiclass": {"column": "y", "task": "multiclass", "classes": ["cat", "dog", "eel"]},
          "regression": {"column": "y", "task": "regression", "range": [1, 99]}}
OUTPUTS = {"binary": 2, "multiclass": 3, "regression": 1}


def _register(tmp_path, registry_root, task):
    torch.manual_seed(0)
    net = build_model("mlp", 4, [4], n_outputs=OUTPUTS[task])
    if task == "regression":  # outputs spread over [0, 1] and beyond, to see the clipping
        with torch.no_grad():
            net[-1].weight.mul_(20.0)
    weights = tmp_path / "model.pt"
    torch.save(saved_model(net.state_dict(), "mlp", [4], columns_of(FEATURES), None, None, task, OUTPUTS[task]),
               weights)
    encoding = {"features": [f.model_dump(mode="json") for f in FEATURES], "label": LABELS[task]}
    reg = Registry(registry_root)
    version = reg.register(f"m_{task}", weights, CARD, encoding=encoding)
    return reg, version, net


def _load(reg, name, version):
    import mlflow
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with _use_tracking_uri(reg.uri):
        return mlflow.pyfunc.load_model(reg.model_uri(name, version))


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_every_task_has_a_signature_and_a_public_input_example(tmp_path, registry_root, task):
    reg, version, _ = _register(tmp_path, registry_root, task)
    model = _load(reg, f"m_{task}", version)
    signature = model.metadata.signature
    assert signature is not None
    assert signature.inputs.to_dict() == [{"type": "any", "name": "age", "required": True},
                                          {"type": "string", "name": "plan", "required": True}]
    outputs = [c.name for c in signature.outputs.inputs]
    assert outputs == {"binary": ["probability", "positive"], "multiclass": ["label", "probability"],
                       "regression": ["prediction"]}[task]
    example = model.metadata.load_input_example(str(reg.model_path(f"m_{task}", version).parents[1]))
    # the declared bounds and categories, nothing else
    assert example.to_dict("list") == {"age": [18.0, 90.0], "plan": ["basic", "pro"]}
    out = model.predict(example)
    assert list(out.columns) == outputs and len(out) == 2


def test_a_multiclass_model_answers_a_declared_class(tmp_path, registry_root):
    reg, version, net = _register(tmp_path, registry_root, "multiclass")
    rows = pd.DataFrame({"age": [20, 55, 89], "plan": ["pro", "basic", "plus"]})
    out = _load(reg, "m_multiclass", version).predict(rows)
    with torch.no_grad():
        probs = torch.softmax(net(torch.as_tensor(encode_features(rows, FEATURES))), dim=1).numpy()
    assert out["label"].tolist() == [["cat", "dog", "eel"][i] for i in probs.argmax(axis=1)]
    assert out["probability"].tolist() == pytest.approx(probs.max(axis=1).tolist(), abs=1e-6)


def test_a_regression_model_answers_in_the_labels_units_inside_its_range(tmp_path, registry_root):
    reg, version, net = _register(tmp_path, registry_root, "regression")
    rows = pd.DataFrame({"age": np.linspace(18, 90, 40), "plan": ["basic", "plus", "pro", "pro"] * 10})
    out = _load(reg, "m_regression", version).predict(rows)["prediction"].to_numpy()
    with torch.no_grad():
        raw = net(torch.as_tensor(encode_features(rows, FEATURES)))[:, 0].numpy()
    assert out == pytest.approx(1 + np.clip(raw, 0, 1) * 98, abs=1e-4)
    assert out.min() >= 1 and out.max() <= 99
    assert (raw > 1).any() or (raw < 0).any()  # the clipping was exercised
