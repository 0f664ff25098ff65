"""Model registry and run tracking, on MLflow: versioned models with model cards, aliases that
deploys move (store), each run as an MLflow run of its released values (tracking), the pre-MLflow
file registry's migration (migrate). mlflow is imported only when one of them is used."""

from ppmlops.registry.store import Registry, RegistryError

__all__ = ["Registry", "RegistryError"]
