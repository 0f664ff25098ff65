"""The run's training data as an MLflow dataset input, described without a single row.

MLflow's own datasets (`mlflow.data.from_pandas`, ...) hash and profile the rows they are given:
a digest or a profile of private rows would be an exact statistic of them. This one is MLflow's
meta dataset (`mlflow.data.meta_dataset.MetaDataset`, metadata only) built from public records:

  name     the spec's dataset id
  digest   the snapshot's keyed fingerprint (an HMAC under the deployment's lineage key, already
           public in staged.json and on the card), cut to MLflow's 36-character digest column;
           the whole fingerprint is in the source and an input tag
  source   where the rows came from as staged.json names them (a file's path, `sql:<connection>`
           with any password masked), the data window and the privacy blocks read
  schema   the spec's declared features (a numeric one as double, a categorical one as string)

No row count is logged with it: the only counts that leave a run are the noisy ones released at
assess, logged as metrics by ppmlops.registry.tracking.
"""

from __future__ import annotations

from typing import Any

from ppmlops.registry import backend
from ppmlops.run.records import Staged
from ppmlops.spec import NumericFeature, PipelineSpec

SOURCE_TYPE = "ppmlops"  # MLflow's column for it holds 36 characters
DIGEST_CHARS = 36
CONTEXT_TAG = "mlflow.data.context"  # MLflow's UI shows it as the dataset's role in the run


def _source_class():
    from mlflow.data.dataset_source import DatasetSource

    class PipelineSource(DatasetSource):
        """Where a run's rows came from. It cannot be loaded through MLflow: the rows are private
        and stay in the run's private/ folder."""

        def __init__(self, description: dict[str, Any]):
            self.description = description

        @staticmethod
        def _get_source_type() -> str:
            return SOURCE_TYPE

        def load(self, **kwargs):
            raise NotImplementedError("a ppmlops dataset's rows are private: MLflow holds only their description")

        @staticmethod
        def _can_resolve(raw_source: Any) -> bool:
            return False

        @classmethod
        def _resolve(cls, raw_source: Any):
            raise NotImplementedError

        def to_dict(self) -> dict[str, Any]:
            return self.description

        @classmethod
        def from_dict(cls, source_dict: dict[str, Any]):
            return cls(source_dict)

    return PipelineSource


def digest_of(fingerprint: str) -> str:
    """The fingerprint's MAC (hmac-sha256:<key id>:<mac>), to MLflow's digest width."""
    return fingerprint.rsplit(":", 1)[-1][:DIGEST_CHARS]


def describe(spec: PipelineSpec, staged: Staged) -> dict[str, Any]:
    """The source as public records name it (scrubbed again: a URL's password never goes out)."""
    return {"dataset_id": spec.dataset.id, "sources": [backend.scrub(s) for s in staged.sources],
            "window": staged.window.text(), "blocks": list(staged.blocks), "split": staged.split,
            "fingerprint": staged.data_fingerprint, "consent_as_of": staged.consent_as_of}


def schema_of(spec: PipelineSpec):
    from mlflow.types import ColSpec, Schema

    from ppmlops.spec import tensor_of

    tensor = tensor_of(spec.dataset.features)
    if tensor is not None:  # the declared dtype and shape, as the served model's signature has it
        import numpy as np
        from mlflow.types.schema import TensorSpec

        return Schema([TensorSpec(np.dtype(tensor.dtype), (-1, *tensor.shape), tensor.name)])

    return Schema([ColSpec("double" if isinstance(f, NumericFeature) else "string", f.name)
                   for f in spec.dataset.features])


def dataset_input(spec: PipelineSpec, staged: Staged):
    """The MLflow DatasetInput of the run's training data (no rows, no exact count)."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    described = describe(spec, staged)
    dataset = MetaDataset(_source_class()(described), name=spec.dataset.id,
                          digest=digest_of(staged.data_fingerprint), schema=schema_of(spec))
    tags = {CONTEXT_TAG: "training", "ppmlops.window": described["window"],
            "ppmlops.fingerprint": staged.data_fingerprint, "ppmlops.blocks": ",".join(staged.blocks)}
    return DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(k, v) for k, v in tags.items()])


def log_dataset(client, run_id: str, spec: PipelineSpec, staged: Staged) -> None:
    client.log_inputs(run_id, datasets=[dataset_input(spec, staged)])
