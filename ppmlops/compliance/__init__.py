"""Compliance gates (CMFM: compliance monitoring and filtering module).

Rego policy in policies.rego decides a run's budget, whether it may train and whether its
model may deploy; `evaluate` asks it and fails closed.
"""

from ppmlops.compliance.engine import ENGINE_EMBEDDED, ENGINE_OPA, Decision, evaluate

__all__ = ["Decision", "evaluate", "ENGINE_EMBEDDED", "ENGINE_OPA"]
