"""The deployed model as an MLflow pyfunc: raw rows in, the probability of the spec's
positive label out.

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
import pandas as pd

WEIGHTS = "weights"  # artifact keys inside the MLflow model
ENCODING = "encoding"


class TabularModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        import torch
        from pydantic import TypeAdapter

        from ppmlops.data.features import columns_of
        from ppmlops.spec import Feature
        from ppmlops.training.factory import rebuild

        saved = torch.load(context.artifacts[WEIGHTS], weights_only=True)
        with open(context.artifacts[ENCODING], encoding="utf-8") as fh:
            encoding = json.load(fh)
        self.features = TypeAdapter(list[Feature]).validate_python(encoding["features"])
        names = columns_of(self.features)
        if names != list(saved["features"]):
            raise ValueError(f"the encoding's columns {names} are not the ones the weights were trained on")
        # A model.factory model is built by its factory again (recorded with the weights), so its
        # module must be importable here too: installed where the model is served.
        self.net = rebuild(saved, len(names))
        self.net.eval()

    # A DataFrame hint: MLflow then infers no schema from it (rows are raw) and asks for no other.
    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from ppmlops.data.features import encode_features
        from ppmlops.training.models import predict_proba

        rows = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        p = predict_proba(self.net, encode_features(rows, self.features)).numpy()
        # `positive`: the label the spec calls positive (label.positive) is the likelier one.
        return pd.DataFrame({"probability": p, "positive": p >= 0.5})
