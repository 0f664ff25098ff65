"""Settings an operator changes without restarting Airflow: the Variable `ppmlops_settings`.

Tasks inherit their environment from the scheduler's executor, so a changed `PPMLOPS_*`
variable reaches them only after a restart. Each task therefore also reads this Airflow Variable
when it starts (Admin -> Variables, `airflow variables set`, the REST API, or a secrets backend):
a JSON object of setting names to values, applied over the environment for that task only.

Only operational settings may be set this way. What decides where budgets and decisions live or
which policy applies (`PPMLOPS_DB_URL`, `PPMLOPS_HOME`, `PPMLOPS_POLICY`, `PPMLOPS_OPA_URL`) and
what weakens a run (`PPMLOPS_RANDOMNESS`) stays with the deployment's environment: anyone who may
edit Variables could otherwise point a run at an empty ledger.
"""

from __future__ import annotations

import json
import os

from ppmlops.errors import AirflowConfigError

VARIABLE = "ppmlops_settings"
ADJUSTABLE = ("PPMLOPS_OPA_TIMEOUT_S", "PPMLOPS_QUARANTINE_RETENTION_DAYS", "PPMLOPS_VERBOSE")


def parse(raw: str | None) -> dict[str, str]:
    """The Variable's settings, or an AirflowConfigError that names what is wrong (never its values)."""
    if raw is None or not raw.strip():
        return {}
    try:
        values = json.loads(raw)
    except ValueError:
        raise AirflowConfigError(f"Airflow Variable {VARIABLE} is not JSON: it must be an object such as "
                        '{"PPMLOPS_OPA_TIMEOUT_S": "10"}') from None
    if not isinstance(values, dict):
        raise AirflowConfigError(f"Airflow Variable {VARIABLE} must be a JSON object of setting names to values")
    unknown = sorted(set(values) - set(ADJUSTABLE))
    if unknown:
        raise AirflowConfigError(f"Airflow Variable {VARIABLE} sets {unknown}; only {list(ADJUSTABLE)} may be set there "
                        "(the others belong in the deployment's environment)")
    bad = sorted(k for k, v in values.items() if not isinstance(v, (str, int, float)) or isinstance(v, bool))
    if bad:
        raise AirflowConfigError(f"Airflow Variable {VARIABLE}: {bad} must be strings or numbers")
    return {k: str(v) for k, v in values.items()}


def apply_at_task_start() -> dict[str, str]:
    """Read the Variable through the task's Airflow API and apply it to this task's environment."""
    from airflow.sdk import Variable

    values = parse(Variable.get(VARIABLE, default=None))
    os.environ.update(values)
    return values
