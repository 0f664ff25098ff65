"""MLflow "model from code": the file MLflow runs to build the deployed model (no pickle)."""

from mlflow.models import set_model

from ppmlops.registry.serving import TabularModel

set_model(TabularModel())
