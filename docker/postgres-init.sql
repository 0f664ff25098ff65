-- Airflow's metadata lives in database "airflow" (POSTGRES_DB); the privacy ledger and the
-- audit log get their own database so that Airflow migrations never touch them.
CREATE DATABASE ppmlops;
