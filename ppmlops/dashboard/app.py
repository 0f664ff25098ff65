"""The dashboard's FastAPI app: JSON under /api, HTML pages elsewhere, two static files.

Settings are loaded on every request, so one app object (made once, when Airflow loads the
plugin) follows PPMLOPS_HOME / PPMLOPS_DB_URL as they are when the request comes. Handlers are
plain `def`: FastAPI runs them in its thread pool, so database and file reads never block the
Airflow API server's event loop.

Who reads: the dependencies the plugin passes authenticate the request and put a
`access.Reader` on `request.state.ppmlops_reader`; without them (the app on its own) the reader
is `access.LOCAL`. No OpenAPI or docs: the schema would be readable without a login.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ppmlops import settings as settings_mod
from ppmlops.errors import PpmlopsError
from ppmlops.dashboard import access, html, queries, run_page as run_view, runs as run_folders
from ppmlops.dashboard.queries import NotFound, Unavailable
from ppmlops.spec import pipeline_of

STATIC = Path(__file__).parent / "static"
STATIC_TYPES = {"dashboard.css": "text/css; charset=utf-8", "theme.js": "text/javascript; charset=utf-8"}
# Nothing inline, nothing from elsewhere; framed only by the Airflow UI (same origin).
CSP = ("default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'self'")
HEADERS = {"Cache-Control": "no-store", "Content-Security-Policy": CSP, "X-Frame-Options": "SAMEORIGIN",
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"}
GET_HEAD = ["GET", "HEAD"]


def reader_of(request: Request) -> access.Reader:
    return getattr(request.state, "ppmlops_reader", None) or access.LOCAL


def view(request: Request, up: str, runs: Any = None) -> html.View:
    return html.View(reader_of(request), up, runs)


def create_app(dependencies: Sequence[Any] = ()) -> FastAPI:
    """The dashboard app. `dependencies` guard every page and API route (not the two static
    files, which the login page needs): apps mounted by plugins are outside Airflow's auth."""
    app = FastAPI(title="ppmlops compliance dashboard", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def hygiene(request: Request, call_next):
        response = await call_next(request)
        for k, val in HEADERS.items():
            response.headers.setdefault(k, val)
        return response

    @app.api_route("/static/{name}", methods=GET_HEAD, include_in_schema=False)
    def static(name: str) -> Response:
        if name not in STATIC_TYPES:
            raise NotFound(f"no static file {name!r}")
        return Response((STATIC / name).read_bytes(), media_type=STATIC_TYPES[name])

    router = APIRouter(dependencies=list(dependencies))
    _api_routes(router)
    _page_routes(router)
    app.include_router(router)
    _add_error_handlers(app)
    return app


def _api_routes(r: APIRouter) -> None:
    @r.api_route("/api/datasets", methods=GET_HEAD)
    def api_datasets() -> JSONResponse:
        """Every dataset's budget, spend and remaining epsilon, per partition."""
        return JSONResponse(queries.budgets(settings_mod.load()))

    @r.api_route("/api/datasets/{dataset_id:path}", methods=GET_HEAD)
    def api_dataset(request: Request, dataset_id: str) -> JSONResponse:
        """One dataset: budget, each run's spend, how the spend changed, every ledger entry."""
        data = queries.dataset(settings_mod.load(), dataset_id)
        if not reader_of(request).compliance:
            data["entries"] = [{**e, "note": ""} for e in data["entries"]]
        return JSONResponse(data)

    @r.api_route("/api/ledger", methods=GET_HEAD)
    def api_ledger() -> JSONResponse:
        """The ledger's tables: registered datasets, runs by pipeline, entries."""
        return JSONResponse(queries.ledger_tables(settings_mod.load()))

    @r.api_route("/api/decisions", methods=GET_HEAD)
    def api_decisions(request: Request, run_id: str | None = None, dataset_id: str | None = None,
                      limit: int = Query(200, ge=1, le=100_000)) -> JSONResponse:
        """Audit records, newest first, and whether the hash chain verifies."""
        data = queries.decisions(settings_mod.load(), run_id or None, dataset_id or None, limit)
        data["records"] = [access.redact_record(reader_of(request), rec) for rec in data["records"]]
        return JSONResponse(data)

    @r.api_route("/api/models", methods=GET_HEAD)
    def api_models(request: Request) -> JSONResponse:
        """Registered models: versions with their model cards, aliases and their history."""
        data = queries.models(settings_mod.load())
        if not reader_of(request).compliance:
            data.pop("registry_dir", None)
        return JSONResponse(data)

    @r.api_route("/api/runs", methods=GET_HEAD)
    def api_runs(request: Request, limit: int = Query(50, ge=1, le=10_000)) -> JSONResponse:
        data = queries.runs(settings_mod.load(), limit)
        if not reader_of(request).compliance:
            data.pop("runs_dir", None)
        return JSONResponse(data)

    @r.api_route("/api/runs/{pipeline}/{run_id}", methods=GET_HEAD)
    def api_run(request: Request, pipeline: str, run_id: str) -> JSONResponse:
        """One run's public stage records and its per-epoch history (compliance officers)."""
        if not reader_of(request).compliance:
            raise StarletteHTTPException(403, "a run's raw records are shown to compliance officers only")
        return JSONResponse(queries.run(settings_mod.load(), pipeline, run_id))


def _page_routes(r: APIRouter) -> None:
    @r.api_route("/", methods=GET_HEAD, response_class=HTMLResponse)
    def index(request: Request) -> HTMLResponse:
        s = settings_mod.load()
        # Each section fails on its own: no database still shows the registry and the runs.
        budgets, decisions = _try(queries.budgets, s), _try(queries.decisions, s, limit=50)
        steps = {} if isinstance(budgets, Exception) else _try(queries.spend_steps_all, s)
        body = html.overview(view(request, "./", run_folders.index(s)),
                             {"PPMLOPS_HOME": s.home, "database": queries.safe_url(s.db_url)}, budgets,
                             decisions, _try(queries.models, s), _try(queries.runs, s),
                             steps if isinstance(steps, dict) else {})
        unavailable = isinstance(budgets, Unavailable) or isinstance(decisions, Unavailable)
        return HTMLResponse(body, status_code=503 if unavailable else 200)

    @r.api_route("/ledger", methods=GET_HEAD, response_class=HTMLResponse)
    def ledger_page(request: Request) -> HTMLResponse:
        s = settings_mod.load()
        return HTMLResponse(html.ledger_page(view(request, "./", run_folders.index(s)), queries.ledger_tables(s)))

    @r.api_route("/datasets/{dataset_id:path}", methods=GET_HEAD, response_class=HTMLResponse)
    def dataset_page(request: Request, dataset_id: str) -> HTMLResponse:
        s = settings_mod.load()
        data = queries.dataset(s, dataset_id)
        up = "../" * (1 + _slashes(request))
        return HTMLResponse(html.dataset_page(view(request, up, run_folders.index(s)), data,
                                              _try(queries.decisions, s, dataset_id=dataset_id)))

    @r.api_route("/decisions/{seq}", methods=GET_HEAD, response_class=HTMLResponse)
    def decision_page(request: Request, seq: int) -> HTMLResponse:
        s = settings_mod.load()
        return HTMLResponse(html.decision_page(view(request, "../", run_folders.index(s)), queries.decision(s, seq)))

    @r.api_route("/runs/{pipeline}/{run_id}", methods=GET_HEAD, response_class=HTMLResponse)
    def run_page(request: Request, pipeline: str, run_id: str) -> HTMLResponse:
        s = settings_mod.load()
        data = queries.run(s, pipeline, run_id)
        decisions = _try(queries.run_decisions, s, data["run_id"], data.get("dataset_id"))
        return HTMLResponse(run_view.run_page(view(request, "../../", run_folders.index(s)), data, decisions))

    @r.api_route("/pipelines/{pipeline}/backfill", methods=GET_HEAD, response_class=HTMLResponse)
    def backfill_page(request: Request, pipeline: str, start: str = "", end: str = "") -> HTMLResponse:
        """What a backfill will cost; the DAG's docs link here from beside Airflow's backfill form."""
        v = view(request, "../../", run_folders.index(settings_mod.load()))
        try:
            spec, cost = backfill_estimate(pipeline, start, end)
        except PpmlopsError as err:
            return HTMLResponse(html.backfill_page(v, pipeline, start=start, end=end, error=str(err)), status_code=404)
        except ValueError as err:
            return HTMLResponse(html.backfill_page(v, pipeline, start=start, end=end, error=str(err)), status_code=400)
        return HTMLResponse(html.backfill_page(v, pipeline, spec=spec, start=start, end=end, cost=cost))

    @r.api_route("/dag-runs/{dag_id}/{run_id}", methods=GET_HEAD)
    def from_airflow(dag_id: str, run_id: str) -> RedirectResponse:
        """Where the "Privacy" tab of an Airflow DAG run points: that run's page."""
        pipeline = pipeline_of(dag_id)
        return RedirectResponse(f"../../runs/{quote(pipeline, safe='')}/{quote(run_id, safe='')}", status_code=307)


def backfill_estimate(pipeline: str, start: str, end: str):
    """(the pipeline's spec, the cost of backfilling [start, end] or None when no range is given)."""
    from datetime import datetime

    from ppmlops.backfill_cli import pipeline_spec
    from ppmlops.backfill_cost import estimate, intervals

    spec = pipeline_spec(pipeline)
    if not start or not end:
        return spec, None
    try:
        first, last = (datetime.fromisoformat(t) for t in (start, end))  # naive: UTC (intervals)
    except ValueError:
        raise ValueError(f"dates must read YYYY-MM-DD: got {start!r} and {end!r}") from None
    s = settings_mod.load()
    return spec, estimate(spec, queries.ledger_or_none(s), intervals(spec, first, last))


def _slashes(request: Request) -> int:
    """Encoded '/' in a dataset id are not path separators for the browser: count the raw ones."""
    raw = (request.scope.get("raw_path") or b"").decode("latin-1")
    root = request.scope.get("root_path", "")
    tail = raw[len(root):] if raw.startswith(root) else raw
    return max(0, tail.count("/") - 2)


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
    raw = request.scope.get("raw_path") or request.scope.get("path", "").encode()
    depth = raw.decode("latin-1").count("/") - request.scope.get("root_path", "").count("/") - 1
    return "../" * max(0, depth) or "./"


def login_url(request: Request) -> str:
    """Airflow's login page, coming back to this page after (the dashboard is at <root>/ppmlops/)."""
    here = request.scope.get("raw_path", b"").decode("latin-1") or request.url.path
    if request.url.query:
        here += "?" + request.url.query
    return _up(request) + "../api/v2/auth/login?next=" + quote(here, safe="")


def _error(request: Request, status: int, title: str, message: str, hint: str = "") -> Any:
    if _is_api(request):
        return JSONResponse({"error": message, **({"hint": hint} if hint else {})}, status_code=status)
    login = login_url(request) if status == 401 else ""  # a browser goes on to the login page by itself
    return HTMLResponse(html.error_page(title, message, hint=hint, up=_up(request), login=login), status_code=status)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Unavailable)
    def unavailable(request: Request, err: Unavailable) -> Any:
        return _error(request, 503, "Database unavailable", str(err),
                      "Check PPMLOPS_HOME / PPMLOPS_DB_URL in the Airflow API server's environment.")

    @app.exception_handler(NotFound)
    def not_found(request: Request, err: NotFound) -> Any:
        return _error(request, 404, "Not found", str(err))

    @app.exception_handler(RequestValidationError)
    def invalid(request: Request, err: RequestValidationError) -> Any:
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', [])[1:])}: {e.get('msg')}" for e in err.errors())
        return _error(request, 422, "Invalid request", problems or "the request's parameters are invalid")

    @app.exception_handler(StarletteHTTPException)
    def http_error(request: Request, err: StarletteHTTPException) -> Any:
        hint = {401: "Log in to Airflow, then reload this page.",
                403: "Your Airflow login is not valid here, or your role may not see this."}.get(err.status_code, "")
        response = _error(request, err.status_code, f"Error {err.status_code}", str(err.detail), hint)
        response.headers.update(err.headers or {})
        return response

    @app.exception_handler(Exception)
    def unexpected(request: Request, err: Exception) -> Any:
        # Starlette re-raises after this, so the server log still gets the traceback; the
        # browser gets a message instead of a bare "Internal Server Error".
        return _error(request, 500, "Dashboard error", f"{type(err).__name__}: {err}")
