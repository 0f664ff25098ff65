"""Example policy inputs, in the shapes ppmlops.stages.plan and ppmlops.stages.card build them
(valid ppmlops.compliance.documents models: tests/unit/test_policy_documents.py checks).

For people writing policy (`ppmlops policy eval --input`), the engine tests and the latency
benchmark: one copy of each document.
"""

from __future__ import annotations

DATASET = {"id": "demo_customers", "regulation": "gdpr", "rows": 4700, "epsilon_budget": 3.0, "delta": 1e-5,
           "public": False}

TRAIN_INPUT = {
    "dataset": DATASET,
    "ledger": {"epsilon_spent": 0.0, "share_used": 0.0, "epsilon_remaining": 3.0, "epsilon_released": 0.0,
               "holdout_epsilon_remaining": 0.5,
               "accounting_order": 7.0},
    "risk": {"score": 0.42, "level": "medium", "direct_identifiers_in_features": []},
    "consent": {"rows_in": 6000, "rows_refused": 300, "coverage": 0.95},
    "request": {"run_epsilon": 1.0, "epsilon_cap": 1.0, "environment": "development", "randomness": "secure",
                "trigger": {"kind": "manual", "late_s": 0.0, "grace_s": 300.0, "cleared": False}},
    "classes": {"label": "churned", "sigma": 40.2, "confidence": 0.95,
                "train": {"positive": 1490, "negative": 3210, "smallest": 1490},
                "holdout": {"positive": 372, "negative": 801, "smallest": 372}},
}

# A model card as ppmlops.stages.card.model_card writes it (ppmlops.compliance.documents.ModelCard).
MODEL_CARD = {
    "model_name": "demo_customers_mlp", "pipeline": "demo", "run_id": "manual__2026-01-01T00:00:00",
    "dataset_id": "demo_customers", "data_fingerprint": "hmac-sha256:ab12",
    "data_window": {"mode": "all", "start": None, "end": None}, "data_queries": [],
    "rows_train": 4700, "rows_holdout": 1173, "rows_note": "noisy counts (discrete Gaussian, sigma 8.57), charged at assess",
    "model": {"kind": "mlp", "hidden": [32], "n_features": 18},
    "epsilon": 1.0, "delta": 1e-5, "epsilon_by_partition": {"train": 1.0, "holdout": 0.6},
    "epsilon_note": "the run's fixed RDP budget curve (the privacy filter's guarantee), its count release included",
    "epsilon_used": {"train": 0.97}, "run_epsilon_granted": 1.0, "dataset_share_used": 0.4,
    "accounting_order": 7.0, "privacy_blocks": ["all"], "retired_blocks": [],
    "blocks_note": "one block: the whole dataset shares one lifetime budget",
    "privacy_unit": "unit: one row", "unit_note": "neighbouring datasets differ by one row",
    "accountant": "rdp", "privacy_filter": True, "sampling": "poisson", "randomness": "secure",
    "noise_multiplier": 1.1, "sample_rate": 0.05, "steps": 20, "epochs": 4, "stopped_reason": "",
    "epoch_settings": [{"epoch": 1, "noise_multiplier": 1.1, "max_grad_norm": 1.0, "learning_rate": 0.5}],
    "tuner": "rule", "search": None, "metrics": {"accuracy": 0.81, "auc": 0.86, "majority_baseline": 0.68, "rows": 1173},
    "metrics_note": "noisy releases on the held-out partition, charged to the ledger",
    "privacy_audit": {"canaries": 256, "guesses": 102, "correct": 53, "epsilon_lower_bound": 0.0, "confidence": 0.95,
                      "delta": 1e-5},
    "intended_use": "demo churn scoring",
}

DEPLOY_INPUT = {
    "run": {"id": "manual__2026-01-01T00:00:00", "environment": "development"},
    "dataset": DATASET,
    "risk": {"score": 0.42, "level": "medium"},
    "privacy": {"accountant": "rdp", "filter": True, "randomness": "secure", "epsilon": 1.0, "epsilon_granted": 1.0,
                "epsilon_used": 0.97, "delta": 1e-5, "dataset_share_used": 0.4, "noise_multiplier": 1.1,
                "sample_rate": 0.05, "steps": 80},
    "metrics": {"accuracy": 0.81, "auc": 0.86, "min_accuracy": 0.6, "majority_baseline": 0.68, "min_margin": None,
                "advantage_lower": 0.09, "confidence": 0.95, "rows": 1173, "rows_lower": 1128.2,
                "positives": 372, "negatives": 801, "class_rows_lower": 340.5},
    "audit": {"canaries": 256, "guesses": 102, "correct": 53, "epsilon_lower_bound": 0.0, "confidence": 0.95,
              "delta": 1e-5},
    "model_card": MODEL_CARD,
}
