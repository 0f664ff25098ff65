"""Training: model builders, the DP-SGD worker loop (Opacus) and its Ray Train launcher."""

from ppmlops.training.launch import TrainJob, TrainResult, sample_rate_for, shutdown_local_ray, train_on_ray
from ppmlops.training.dp_worker import EpochSettings
from ppmlops.training.metrics import accuracy, roc_auc
from ppmlops.training.models import build_model, predict_proba

__all__ = [
    "EpochSettings", "TrainJob", "TrainResult", "accuracy", "build_model", "predict_proba", "roc_auc",
    "sample_rate_for", "shutdown_local_ray", "train_on_ray",
]
