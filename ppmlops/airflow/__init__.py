"""What ties ppmlops to a running Airflow, beyond the DAG file: settings read at task start."""
