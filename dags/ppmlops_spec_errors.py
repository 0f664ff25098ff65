"""Airflow's Import Errors list for the pipeline specs (ppmlops.airflow.dag_factory.report_spec_errors).

This file builds no DAG. When a spec in dags/pipelines/ is invalid it raises, naming each bad file
and what is wrong, so the error shows in Airflow's Import Errors; ppmlops_retrain.py, which builds
the pipelines, never raises, so one bad spec does not take the other pipelines off the scheduler.
"""
from ppmlops.airflow import report_spec_errors

report_spec_errors()
