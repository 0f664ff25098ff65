"""The compliance dashboard's Airflow plugin, which lives in the package (ppmlops.airflow.plugin)."""
from ppmlops.airflow.plugin import PpmlopsDashboardPlugin  # noqa: F401
