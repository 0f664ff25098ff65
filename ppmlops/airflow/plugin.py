"""Airflow plugin: mounts the ppmlops compliance dashboard in the Airflow 3 API server.

A project's plugins/ppmlops_dashboard.py (the repo's, or what `ppmlops init` writes) imports it
from here; the provider's info lists it too. It is not also an `airflow.plugins` entry point:
Airflow would then load it twice beside the plugins folder (the second one an import error).

The dashboard (privacy budgets and how they were spent, policy decisions with the audit chain's
status, deployed models, each run's summary and tuner history) is served at <api-server>/ppmlops/,
JSON under /ppmlops/api/. It appears in the Airflow UI under Browse, and as a "Privacy" tab on
every DAG run of a ppmlops DAG.

Access: a valid Airflow login (the UI's cookie or a bearer token). Users with the compliance
permission also see the policy's inputs, reasons that quote dataset sizes, stage records and
server paths. With Airflow's simple auth manager that is the admin role; with another auth
manager, the permission to GET the custom view "ppmlops compliance" (in FAB: a role with
"can read on ppmlops compliance").
"""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from airflow.plugins_manager import AirflowPlugin
from ppmlops.dashboard import create_app
from ppmlops.dashboard.access import Reader

URL_PREFIX = "/ppmlops"
COMPLIANCE_VIEW = "ppmlops compliance"
_bearer = HTTPBearer(auto_error=False)


def is_compliance_officer(user) -> bool:
    """Whether Airflow's auth manager gives `user` the compliance permission."""
    from airflow.api_fastapi.app import get_auth_manager

    manager = get_auth_manager()
    if type(manager).__name__ == "SimpleAuthManager":
        # Its custom views are open to every role: its admin role stands for the permission.
        return str(getattr(user, "role", "") or "").upper() == "ADMIN"
    return bool(manager.is_authorized_custom_view(method="GET", resource_name=COMPLIANCE_VIEW, user=user))


async def airflow_reader(request: Request) -> None:
    """Refuse requests without a valid Airflow login; note who reads and with which access.

    Apps mounted by plugins are outside Airflow's auth, and this one shows audit records and
    budgets. Airflow's own resolver is imported here rather than at module level: every Airflow
    process loads plugins, and only the API server has an auth manager to ask.
    """
    from airflow.api_fastapi.core_api.security import get_user

    user = await get_user(request, _oauth_token=None, bearer_credentials=await _bearer(request))
    request.state.ppmlops_reader = Reader(str(user.get_name()), is_compliance_officer(user))


class TrailingSlash:
    """`/ppmlops` to `/ppmlops/`: the mount only matches below its prefix, and the Airflow UI
    would answer the bare prefix with its own 404 page."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("path") == URL_PREFIX:
            from starlette.responses import RedirectResponse

            query = scope.get("query_string", b"").decode("latin-1")
            await RedirectResponse(URL_PREFIX + "/" + (f"?{query}" if query else ""), status_code=308)(
                scope, receive, send)
            return
        await self.app(scope, receive, send)


class PpmlopsDashboardPlugin(AirflowPlugin):
    name = "ppmlops_dashboard"
    fastapi_apps = [{
        "app": create_app(dependencies=[Depends(airflow_reader)]),
        "url_prefix": URL_PREFIX,
        "name": "ppmlops dashboard",
    }]
    fastapi_root_middlewares = [{"middleware": TrailingSlash, "args": [], "kwargs": {},
                                 "name": "ppmlops dashboard trailing slash"}]
    # Shown inside the Airflow UI (iframes). hrefs are relative: the UI resolves them against its
    # base URL, so a proxy sub-path still works; it fills {DAG_ID} and {RUN_ID} for dag_run views.
    external_views = [
        {"name": "Privacy & compliance", "href": URL_PREFIX.lstrip("/") + "/", "url_route": "ppmlops",
         "destination": "nav", "category": "browse"},
        {"name": "Privacy", "href": URL_PREFIX.lstrip("/") + "/dag-runs/{DAG_ID}/{RUN_ID}",
         "url_route": "ppmlops_run", "destination": "dag_run"},
    ]
