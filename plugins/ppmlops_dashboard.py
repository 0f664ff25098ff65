"""Airflow plugin: mounts the ppmlops compliance dashboard in the Airflow 3 API server.

The dashboard (privacy budgets, policy decisions with the audit chain's status, deployed
models, per-epoch tuner history) is served at <api-server>/ppmlops/, JSON under
/ppmlops/api/, and appears in the Airflow UI under Browse as an embedded page.
"""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from airflow.plugins_manager import AirflowPlugin
from ppmlops.dashboard import create_app

URL_PREFIX = "/ppmlops"
_bearer = HTTPBearer(auto_error=False)


async def airflow_user(request: Request) -> None:
    """Refuse requests without a valid Airflow login (the UI's cookie or a bearer token).

    Apps mounted by plugins are outside Airflow's auth, and this one shows audit records and
    budgets. Airflow's own resolver is imported here rather than at module level: every Airflow
    process loads plugins, and only the API server has an auth manager to ask.
    """
    from airflow.api_fastapi.core_api.security import get_user

    await get_user(request, _oauth_token=None, bearer_credentials=await _bearer(request))


class PpmlopsDashboardPlugin(AirflowPlugin):
    name = "ppmlops_dashboard"
    fastapi_apps = [{
        "app": create_app(dependencies=[Depends(airflow_user)]),
        "url_prefix": URL_PREFIX,
        "name": "ppmlops dashboard",
    }]
    # A nav entry that shows the dashboard inside the Airflow UI (an iframe at /plugin/ppmlops).
    # href is relative: the UI resolves it against its base URL, so a proxy sub-path still works.
    external_views = [{
        "name": "Privacy & compliance",
        "href": URL_PREFIX.lstrip("/") + "/",
        "url_route": "ppmlops",
        "destination": "nav",
        "category": "browse",
    }]
