"""One retraining DAG per pipeline spec in dags/pipelines/*.yaml (ppmlops.airflow.dag_factory).

Run one DAG in-process with `python dags/ppmlops_retrain.py demo_churn`: Airflow's dag.test() on
the configured metadata database (SQLite by default).
"""
if __name__ == "__main__":  # the whole run in this process: see ppmlops.airflow.run_one.prepare_process
    from ppmlops.airflow import gc_tuning

    gc_tuning.tune()  # before the imports below, which allocate a million objects

from ppmlops.airflow import pipeline_dags  # noqa: E402

globals().update(pipeline_dags())

if __name__ == "__main__":
    from ppmlops.airflow import run_one

    run_one.main(globals())
