"""The dashboard's FastAPI app: JSON under /api, HTML pages elsewhere.

Settings are loaded on every request, so one app object (made once, when Airflow loads the
plugin) follows PPMLOPS_HOME / PPMLOPS_DB_URL as they are when the request comes. Handlers are
plain `def`: FastAPI runs them in its thread pool, so database and file reads never block the
Airflow API server's event loop.
"""

from __future__ import annotations

from typing import Any, Sequence

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ppmlops import settings as settings_mod
from ppmlops.dashboard import html, queries
from ppmlops.dashboard.queries import NotFound, Unavailable


def create_app(dependencies: Sequence[Any] = ()) -> FastAPI:
    """The dashboard app. `dependencies` apply to every route: the Airflow plugin passes one that
    requires an Airflow login, because apps mounted by plugins are not behind Airflow's auth."""
    # No /docs: Swagger UI loads its assets from a CDN, and the host may be offline.
    app = FastAPI(title="ppmlops compliance dashboard", docs_url=None, redoc_url=None,
                  dependencies=list(dependencies))
    _add_error_handlers(app)

    # -- JSON -------------------------------------------------------------------------------
    @app.get("/api/datasets")
    def api_datasets() -> JSONResponse:
        """Every dataset's budget, spend and remaining epsilon, per partition."""
        return JSONResponse(queries.budgets(settings_mod.load()))

    @app.get("/api/datasets/{dataset_id:path}")
    def api_dataset(dataset_id: str) -> JSONResponse:
        """One dataset: budget, each run's spend per partition, every ledger entry."""
        return JSONResponse(queries.dataset(settings_mod.load(), dataset_id))

    @app.get("/api/decisions")
    def api_decisions(run_id: str | None = None, dataset_id: str | None = None,
                      limit: int = Query(200, ge=1, le=100_000)) -> JSONResponse:
        """Audit records, newest first, and whether the hash chain verifies."""
        return JSONResponse(queries.decisions(settings_mod.load(), run_id or None, dataset_id or None, limit))

    @app.get("/api/models")
    def api_models() -> JSONResponse:
        """Registered models: versions with their model cards, aliases and their history."""
        return JSONResponse(queries.models(settings_mod.load()))

    @app.get("/api/runs")
    def api_runs(limit: int = Query(50, ge=1, le=10_000)) -> JSONResponse:
        return JSONResponse(queries.runs(settings_mod.load(), limit))

    @app.get("/api/runs/{pipeline}/{run_id}")
    def api_run(pipeline: str, run_id: str) -> JSONResponse:
        """One run's stage records and train's per-epoch history (tuner explanations included)."""
        return JSONResponse(queries.run(settings_mod.load(), pipeline, run_id))

    # -- HTML -------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        s = settings_mod.load()
        # Each section fails on its own: no database still shows the registry and the runs.
        budgets, decisions = _try(queries.budgets, s), _try(queries.decisions, s, limit=50)
        body = html.overview({"PPMLOPS_HOME": s.home, "database": queries.safe_url(s.db_url)}, budgets,
                             decisions, _try(queries.models, s), _try(queries.runs, s))
        unavailable = isinstance(budgets, Unavailable) or isinstance(decisions, Unavailable)
        return HTMLResponse(body, status_code=503 if unavailable else 200)

    @app.get("/datasets/{dataset_id:path}", response_class=HTMLResponse)
    def dataset_page(dataset_id: str) -> HTMLResponse:
        s = settings_mod.load()
        data = queries.dataset(s, dataset_id)
        return HTMLResponse(html.dataset_page(data, _try(queries.decisions, s, dataset_id=dataset_id)))

    @app.get("/decisions/{seq}", response_class=HTMLResponse)
    def decision_page(seq: int) -> HTMLResponse:
        return HTMLResponse(html.decision_page(queries.decision(settings_mod.load(), seq)))

    @app.get("/runs/{pipeline}/{run_id}", response_class=HTMLResponse)
    def run_page(pipeline: str, run_id: str) -> HTMLResponse:
        s = settings_mod.load()
        data = queries.run(s, pipeline, run_id)
        return HTMLResponse(html.run_page(data, _try(queries.run_decisions, s, data["run"])))

    return app


def _try(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except (Unavailable, NotFound) as err:
        return err


def _is_api(request: Request) -> bool:
    # scope["path"] includes the prefix the app is mounted at; root_path is that prefix.
    path, root = request.scope.get("path", ""), request.scope.get("root_path", "")
    return path.removeprefix(root).startswith("/api/")


def _up(request: Request) -> str:
    """Relative way back to the dashboard root from the page that failed."""
    # The raw path, as the browser resolves relative links: an encoded '/' in a dataset id is
    # not a path separator there.
    raw = request.scope.get("raw_path") or request.scope.get("path", "").encode()
    depth = raw.decode("latin-1").count("/") - request.scope.get("root_path", "").count("/") - 1
    return "../" * max(0, depth) or "./"


def _error(request: Request, status: int, title: str, message: str, hint: str = "") -> Any:
    if _is_api(request):
        return JSONResponse({"error": message, **({"hint": hint} if hint else {})}, status_code=status)
    return HTMLResponse(html.error_page(title, message, hint=hint, up=_up(request)), status_code=status)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Unavailable)
    def unavailable(request: Request, err: Unavailable) -> Any:
        return _error(request, 503, "Database unavailable", str(err),
                      "Check PPMLOPS_HOME / PPMLOPS_DB_URL in the Airflow API server's environment.")

    @app.exception_handler(NotFound)
    def not_found(request: Request, err: NotFound) -> Any:
        return _error(request, 404, "Not found", str(err))

    @app.exception_handler(StarletteHTTPException)
    def http_error(request: Request, err: StarletteHTTPException) -> Any:
        hint = "Log in to Airflow, then reload this page." if err.status_code in (401, 403) else ""
        response = _error(request, err.status_code, f"Error {err.status_code}", str(err.detail), hint)
        response.headers.update(err.headers or {})
        return response

    @app.exception_handler(Exception)
    def unexpected(request: Request, err: Exception) -> Any:
        # Starlette re-raises after this, so the server log still gets the traceback; the
        # browser gets a message instead of a bare "Internal Server Error".
        return _error(request, 500, "Dashboard error", f"{type(err).__name__}: {err}")
