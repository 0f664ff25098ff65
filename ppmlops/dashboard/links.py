"""Addresses of dashboard pages for text written outside the dashboard (an approval request)."""

from __future__ import annotations

from urllib.parse import quote, urlsplit

URL_PREFIX = "/ppmlops"


def base_path() -> str:
    """The path Airflow is served under ([api] base_url's path; "" at the host's root)."""
    try:
        from airflow.configuration import conf

        base = conf.get("api", "base_url", fallback="") or ""
    except Exception:  # noqa: BLE001 - outside Airflow: the host's root
        base = ""
    return urlsplit(base).path.rstrip("/")


def dataset_page_path(dataset_id: str) -> str:
    """The dataset's dashboard page, as an absolute path on the Airflow API server."""
    return f"{base_path()}{URL_PREFIX}/datasets/{quote(dataset_id, safe='')}"


def run_page_path(pipeline: str, run_id: str) -> str:
    """The run's dashboard page, as an absolute path on the Airflow API server."""
    return f"{base_path()}{URL_PREFIX}/runs/{quote(pipeline, safe='')}/{quote(run_id, safe='')}"


def backfill_page_path(pipeline: str) -> str:
    """The page saying what a backfill of the pipeline will cost, as an absolute path."""
    return f"{base_path()}{URL_PREFIX}/pipelines/{quote(pipeline, safe='')}/backfill"
