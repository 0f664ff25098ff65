"""The deployed model as an MLflow pyfunc: raw rows in, the label's task's prediction out:
binary      `probability` of the spec's positive label and `positive` (it is the likelier one)
multiclass  `label` (the likeliest declared class) and its `probability`
regression  `prediction` in the label's units, inside the declared range

It is saved with a signature (the declared feature columns and their types, the task's outputs)
and an input example built from the spec's public declarations alone (each numeric feature at its
declared low and high, each categorical at its first and last declared category): no real row
is ever written into the model. A tensor feature (ppmlops.spec.TensorFeature) makes the input a
tensor: the signature's input is TensorSpec(dtype, (-1, *shape)) with the declared dtype and
shape, `predict` takes an array of shape (n, *shape) (or (n, prod(shape))), and the example is
two arrays, every value at the declared low, then at the declared high.

It carries its feature encoding (the spec's declared ranges and categories, ppmlops.data.features)
so that `mlflow.pyfunc.load_model("models:/<name>@production").predict(rows)` needs nothing from
the run, except, for a model of the spec's own (model.factory), its factory's module: the weights
file names the factory, its args and the module's version, and the factory builds the model again,
so the module must be installed wherever the model is served. torch is imported when the model is
loaded, never when it is logged: the deploy stage runs in an Airflow worker, which does not import
torch.
"""

from __future__ import annotations

import json
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

WEIGHTS = "weights"  # artifact keys inside the MLflow model
ENCODING = "encoding"


class TabularModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        import torch
        from pydantic import TypeAdapter

        from ppmlops.data.features import columns_of
        from ppmlops.spec import Feature, Label
        from ppmlops.training.factory import rebuild

        saved = torch.load(context.artifacts[WEIGHTS], weights_only=True)
        with open(context.artifacts[ENCODING], encoding="utf-8") as fh:
            encoding = json.load(fh)
        self.features = TypeAdapter(list[Feature]).validate_python(encoding["features"])
        # An encoding saved before label.task is a binary model's, as it always was.
        self.label = Label.model_validate(encoding["label"]) if "label" in encoding else None
        names = columns_of(self.features)
        if names != list(saved["features"]):
            raise ValueError(f"the encoding's columns {names} are not the ones the weights were trained on")
        # A model.factory model is built by its factory again (recorded with the weights), so its
        # module must be importable here too: installed where the model is served.
        self.net = rebuild(saved, len(names))
        self.net.eval()

    # A DataFrame hint: MLflow then infers no schema from it (the signature is given when saving).
    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from ppmlops.data.features import encode_features, unscale
        from ppmlops.training.tasks import predict

        X = self._encoded(model_input)
        task = self.label.task if self.label is not None else "binary"
        if task == "binary":
            p = predict(self.net, X, task)  # P(class 1)
            # `positive`: the label the spec calls positive (label.positive) is the likelier one.
            return pd.DataFrame({"probability": p, "positive": p >= 0.5})
        if task == "multiclass":
            import torch

            with torch.no_grad():
                probs = torch.softmax(self.net(torch.as_tensor(X, dtype=torch.float32)), dim=1).numpy()
            best = probs.argmax(axis=1)
            return pd.DataFrame({"label": [self.label.classes[i] for i in best],
                                 "probability": probs[np.arange(len(best)), best].astype(np.float64)})
        return pd.DataFrame({"prediction": unscale(predict(self.net, X, task), self.label)})


    def _encoded(self, model_input) -> np.ndarray:
        from ppmlops.data import tensors
        from ppmlops.data.features import encode_features
        from ppmlops.spec import tensor_of

        tensor = tensor_of(self.features)
        if tensor is not None and not isinstance(model_input, pd.DataFrame):
            if isinstance(model_input, dict):  # a named tensor: {"pixels": array}
                model_input = model_input[tensor.name]
            return tensors.encode(np.asarray(model_input), tensor)
        rows = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        return encode_features(rows, self.features)


def _declared(encoding: dict):
    from pydantic import TypeAdapter

    from ppmlops.spec import Feature, Label

    return (TypeAdapter(list[Feature]).validate_python(encoding["features"]),
            Label.model_validate(encoding["label"]))


def signature_for(encoding: dict):
    """The MLflow signature: the declared features in order and the task's output columns. A
    categorical is a string; a numeric feature is Any, because the model takes raw rows as they
    come (integers, floats or their text, coerced by ppmlops.data.features, which names a value
    that is not a number): MLflow's "double" would refuse an integer column outright."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, Schema

    from ppmlops.spec import NumericFeature, tensor_of

    features, label = _declared(encoding)
    tensor = tensor_of(features)
    inputs = (Schema([tensor_spec(tensor)]) if tensor is not None else
              Schema([ColSpec(AnyType() if isinstance(f, NumericFeature) else "string", f.name) for f in features]))
    outputs = {"binary": [ColSpec("double", "probability"), ColSpec("boolean", "positive")],
               "multiclass": [ColSpec("string", "label"), ColSpec("double", "probability")],
               "regression": [ColSpec("double", "prediction")]}[label.task]
    return ModelSignature(inputs=inputs, outputs=Schema(outputs))


def tensor_spec(tensor):
    """A tensor feature's MLflow TensorSpec: the declared dtype, (-1, *shape), its name."""
    from mlflow.types.schema import TensorSpec

    return TensorSpec(np.dtype(tensor.dtype), (-1, *tensor.shape), tensor.name)


def input_example_for(encoding: dict) -> pd.DataFrame | np.ndarray:
    """Two rows from the declarations alone (public): each numeric feature at its declared low,
    then its high; each categorical at its first declared category, then its last; a tensor's
    every value at its declared low, then its high."""
    from ppmlops.spec import NumericFeature, tensor_of

    features, _ = _declared(encoding)
    tensor = tensor_of(features)
    if tensor is not None:
        lo, hi = tensor.range
        return np.stack([np.full(tensor.shape, lo), np.full(tensor.shape, hi)]).astype(tensor.dtype)
    return pd.DataFrame({f.name: ([float(f.range[0]), float(f.range[1])] if isinstance(f, NumericFeature)
                                  else [f.categories[0], f.categories[-1]]) for f in features})
