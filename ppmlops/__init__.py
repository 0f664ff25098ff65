"""ppmlops: privacy-preserving retraining on Airflow and Ray.

The library holds all logic; `dags/` only wires it into Airflow.
"""

__version__ = "0.1.0"
