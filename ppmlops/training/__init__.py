"""Training: models, Poisson sampling, the DP-SGD step with CSPRNG noise, the epoch loop, and its
Ray Train launcher (job, sampling, private_model, loop, ray_worker, launch), plus the Ray Jobs
submission path (jobs, torch-free).

Nothing is imported here on purpose: the Airflow side imports ppmlops.training.jobs and must
not load torch.
"""
