"""One retraining DAG per pipeline spec in dags/pipelines/*.yaml (ppmlops.airflow.dag_factory).

Run one DAG in-process with `python dags/ppmlops_retrain.py demo_churn`: Airflow's dag.test() on
the configured metadata database (SQLite by default).
"""
from ppmlops.airflow import pipeline_dags

globals().update(pipeline_dags())

if __name__ == "__main__":
    from ppmlops.airflow import run_one

    run_one.main(globals())
