-- Airflow's metadata lives in database "airflow" (POSTGRES_DB); the privacy ledger and the
-- audit log, and MLflow, get databases of their own so that no one's migrations touch another's.
CREATE DATABASE ppmlops;
-- MLflow's tracking and registry store (the mlflow service migrates it on start).
CREATE DATABASE mlflow;
