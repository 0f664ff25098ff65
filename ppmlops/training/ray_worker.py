"""The Ray Train entry point: Ray's process group and checkpoint storage around the epoch loop."""

from __future__ import annotations

from ppmlops.training.loop import Arrays, Comm, Restored, read_checkpoint, run_worker


class RayCheckpoints:
    """Ray Train V2's checkpoints: the latest one on (re)start, one reported per epoch."""

    def restore(self) -> Restored | None:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            return read_checkpoint(d)

    def save(self, metrics: dict, directory: str | None) -> None:
        import ray.train
        from ray.train import Checkpoint

        if directory is None:
            ray.train.report(metrics)
        else:
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(directory))


def _resolve(value):
    import ray

    return ray.get(value) if isinstance(value, ray.ObjectRef) else value


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point; `config` is built by ppmlops.training.launch.train_on_ray."""
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from ppmlops.tuning.registry import make_tuner

    job = config["job"]
    device = ray.train.torch.get_device() if job.use_gpu else torch.device("cpu")
    rank = ray.train.get_context().get_world_rank()
    arrays = Arrays(*(_resolve(config[k]) for k in ("X", "y", "X_holdout", "y_holdout")))
    tuner = None
    if rank == 0:
        tuner = config.get("tuner") or make_tuner(job.tuner, seed=job.seed, learning_rate=job.learning_rate,
                                                  max_grad_norm=job.max_grad_norm)
    run_worker(job, arrays, Comm(device), RayCheckpoints(), device, tuner=tuner,
               node=ray.get_runtime_context().get_node_id())
