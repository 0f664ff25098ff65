"""The dashboard's charts, its spend replay, its access rules and its HTTP hygiene, on a home
built by the stages' record classes, the real ledger, audit log, policy and registry."""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from fastapi import Request
from fastapi.testclient import TestClient

from ppmlops import settings
from ppmlops.dashboard import access, charts, create_app
from ppmlops.dashboard.access import Reader
from ppmlops.dashboard.html_base import esc
from ppmlops.dashboard.spend import spend_steps
from ppmlops.privacy.block_view import percent
from ppmlops.privacy.ledger import Ledger, counted

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
import dashboard_data  # noqa: E402

VIEWER = Reader("viewer", compliance=False)
OFFICER = Reader("officer", compliance=True)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One home for the module: building it (ledger, audit log, MLflow registry) was most of these
    tests' time. The tests only read it; the one that writes a record puts it back."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PPMLOPS_HOME", str(tmp_path_factory.mktemp("views") / "home"))
        mp.delenv("PPMLOPS_DB_URL", raising=False)
        yield dashboard_data.build(settings.load())


def client_as(reader: Reader) -> TestClient:
    def as_reader(request: Request) -> None:
        request.state.ppmlops_reader = reader
    from fastapi import Depends

    return TestClient(create_app(dependencies=[Depends(as_reader)]))


def run_url(run_id: str) -> str:
    return f"/runs/{dashboard_data.PIPELINE}/{quote(run_id, safe='')}"


# -- charts -----------------------------------------------------------------------------------

def test_nice_ticks_cover_the_range_with_round_steps():
    assert charts.nice_ticks(0, 3.0) == [0, 1, 2, 3]
    ticks = charts.nice_ticks(0.013, 0.87)
    assert ticks[0] <= 0.013 and ticks[-1] >= 0.87 and len(ticks) <= 7
    assert charts.nice_ticks(2, 2) == [2, 2.5, 3, 3.5, 4]  # a flat series still gets an axis


def test_svg_plots_points_references_and_markers_and_escapes_text():
    chart = charts.Chart("<b>ε</b> & co", "epoch", "σ", (charts.Series("noise <x>", (
        charts.Point(1, 1.0), charts.Point(2, 0.5), charts.Point(3, float("nan"))), 1),),
        (charts.Reference(1.2, "cap"),), (charts.Marker(2, "tuner", "noise ↓"),), x_kind="integer")
    out = charts.svg(chart)
    assert "<b>" not in out and "&lt;b&gt;ε&lt;/b&gt; &amp; co" in out and "noise &lt;x&gt;" in out
    assert out.count("<circle") == 2  # the NaN point is left out, not drawn at 0
    assert 'class="ref"' in out and "noise ↓" in out and "http" not in out
    # the higher value is drawn higher (smaller y)
    ys = [float(y) for y in re.findall(r'cy="([0-9.]+)"', out)]
    assert ys[0] < ys[1]
    assert "Nothing to plot yet" in charts.svg(dataclasses.replace(chart, series=()))


# -- the spend replay -------------------------------------------------------------------------

def test_spend_replay_ends_where_the_ledger_is_and_shows_grants_closing(built):
    ledger = Ledger(built.settings.db_url)
    budget = ledger.budget(dashboard_data.DATASET)
    steps = spend_steps(ledger.entries(dashboard_data.DATASET), budget)
    assert [s.timestamp for s in steps] == sorted(s.timestamp for s in steps)
    # the last step is today's figure: the worst (block, split)'s share, as the ledger says
    shares = ledger.block_shares(dashboard_data.DATASET)
    assert steps[-1].share["train"] == pytest.approx(max(s["train"] for s in shares.values()), rel=1e-12)
    assert steps[-1].worst[2] == pytest.approx(ledger.summary(dashboard_data.DATASET)["datasets"][0]["share_used"])
    events = [s.event for s in steps]
    assert events.count("grant") == 4 and events.count("trimmed") == 2 and events.count("released") == 2
    # reserving a grant raises the share; trimming it to the usage brings it down again
    i = next(i for i, s in enumerate(steps) if s.event == "grant" and s.partition == "train")
    before = steps[i - 1].share.get("train", 0.0)
    trim = next(s for s in steps[i:] if s.event == "trimmed")
    assert steps[i].share["train"] > trim.share["train"] > before
    # released unused: the holdout grant stops counting
    assert next(s for s in steps if s.event == "released").share.get("holdout", 0.0) == 0.0
    assert counted(ledger.entries(dashboard_data.DATASET))  # the rule the replay applies


def test_dataset_page_tells_how_the_budget_was_spent(built):
    page = client_as(VIEWER).get(f"/datasets/{dashboard_data.DATASET}").text
    assert "share of the lifetime budget used over time" in page and "lifetime budget (100%)" in page
    assert "grant trimmed: the run ended, only what it used still counts" in page
    assert "grant released unused: it stops counting" in page
    assert f'href="../{run_url(built.good_run)[1:]}"' in page  # run ids link to run pages
    # each pipeline's runs and dominant share, as the ledger sums them, and what that means
    [d] = Ledger(built.settings.db_url).summary(dashboard_data.DATASET)["datasets"]
    share = d["pipelines"][dashboard_data.PIPELINE]["dominant_share"]
    assert share > 0
    row = (f'<td>{dashboard_data.PIPELINE}</td><td class="num">{len(d["pipelines"][dashboard_data.PIPELINE]["runs"])}'
           f'</td><td class="num">{percent(share)}</td>')
    assert "<h2>Pipelines</h2>" in page and row in page and "<dt>dominant share</dt>" in page


def test_the_ledger_tables_page_shows_each_table_as_the_database_holds_it(built):
    page = client_as(VIEWER).get("/ledger").text
    ledger = Ledger(built.settings.db_url)
    budget = ledger.budget(dashboard_data.DATASET)
    assert "<h2>Datasets (privacy_datasets)</h2>" in page and f">{dashboard_data.DATASET}</a>" in page
    assert f'<td class="num">{budget.order:.4g}' in page or f"{budget.order:g}" in page
    assert f"<td>{dashboard_data.DATASET}</td><td>{dashboard_data.PIPELINE}</td>" in page  # a registered run
    entries = ledger.entries(dashboard_data.DATASET)
    assert page.count("<tr>") - 3 == len(entries) + len(ledger.pipeline_runs(dashboard_data.DATASET)) + 1
    api = client_as(VIEWER).get("/api/ledger").json()
    assert [e["id"] for e in api["entries"]] == [e.id for e in entries] and "note" not in api["entries"][0]
    assert 'href="./ledger"' in client_as(VIEWER).get("/").text


# -- the run page -----------------------------------------------------------------------------

def test_run_page_opens_with_the_summary_and_every_gate_check(built):
    page = client_as(OFFICER).get(run_url(built.denied_run)).text
    summary = page.index('class="summary"')
    assert summary < page.index("Deploy gate") < page.index("Training, epoch by epoch") < page.index("Stage records")
    assert "0.98" in page[summary:summary + 2000] and "ε ≥ 0.12" in page
    # every check of the policy's own list, matched by id: two failed, the others passed
    assert page.count('class="badge b-deny">failed</span>') == 2
    policy = (Path(__file__).resolve().parents[2] / "policies.rego").read_text()
    listed = policy[policy.index("deploy_checks := ["):].split("\n]", 1)[0].count('"effect":')
    assert page.count('class="badge b-ok">passed</span>') == listed - 2
    assert "accuracy 0.41 is below the required 0.60" in page and "1/250000" in page
    # the epoch table in natural units, the tuner's words, and what changed
    assert "clip norm ↑ 0.45 → 2" in page and "learning rate ↓ 0.5 → 0.35" in page
    assert "log_lr" not in page.split("Stage records")[0]
    assert page.index("<details>") > page.index("Stage records")  # raw JSON folded, at the end


def test_run_page_shows_the_approval_and_the_deploy(built):
    page = client_as(VIEWER).get(run_url(built.good_run)).text
    assert "needs_approval" in page and "approved</span> officer" in page
    assert "via airflow-hitl</span>: &ldquo;margin over the baseline &lt;holds&gt;&rdquo;" in page  # the comment, escaped
    # Approved and deployed: the gate's state is the answer, and the check that asked for a person
    # says it was not met and that a person approved (not a standing "needs approval").
    header = page[page.index("<h2>Deploy gate: "):].split("</h2>", 1)[0]
    assert 'badge b-allow">approved</span>' in header and "needs a person&#x27;s approval, approved" in header
    assert "not met: approved by a person" in page and ">needs approval</span>" not in page
    assert "Deployed: <b>demo_churn v1</b>" in page
    assert 'href="../../../dags/ppmlops_demo_churn/runs/' + quote(built.good_run, safe="") + '" target="_top"' in page


def test_a_refused_run_has_its_real_id_and_reasons(built):
    page = client_as(OFFICER).get(run_url(built.refused_run)).text
    assert f"Run {built.refused_run}" in page  # not the sanitised folder name
    assert "Refused at plan" in page and "3000 of 6000 source rows refused" in page


def test_the_privacy_tab_redirects_to_the_run_page(built):
    r = client_as(VIEWER).get(f"/dag-runs/ppmlops_demo_churn/{quote(built.good_run, safe='')}",
                              follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "../../" + run_url(built.good_run)[1:]


# -- access -----------------------------------------------------------------------------------

def test_a_viewer_sees_outcomes_not_sizes_inputs_or_paths(built):
    viewer = client_as(VIEWER)
    for path in ("/", run_url(built.denied_run), run_url(built.refused_run), "/decisions/4", "/decisions/5"):
        page = viewer.get(path).text
        assert "250000" not in page and "6000" not in page, path  # sizes quoted in reasons
        assert str(built.settings.home) not in page, path  # server paths
        assert "Policy input" not in page and "<details>" not in page, path
    assert esc(access.SIZED) in viewer.get(run_url(built.denied_run)).text
    assert "accuracy 0.41 is below the required 0.60" in viewer.get(run_url(built.denied_run)).text
    records = viewer.get("/api/decisions").json()["records"]
    assert all("input" not in r["decision"] for r in records)
    assert "250000" not in str(records) and "6000" not in str(records)
    assert viewer.get(f"/api/runs/demo_churn/{quote(built.good_run, safe='')}").status_code == 403
    assert "runs_dir" not in viewer.get("/api/runs").json()

    officer = client_as(OFFICER)
    assert "1/250000" in officer.get("/decisions/4").text and "Policy input" in officer.get("/decisions/4").text


def test_reasons_are_matched_to_the_policys_marks_exactly():
    decision = {"query": "data.ppmlops.deploy", "reasons": ["a", "rows 9"], "result": {"sized_reasons": ["rows 9"]}}
    assert access.reasons(VIEWER, decision) == ["a", access.SIZED]
    assert access.reasons(OFFICER, decision) == ["a", "rows 9"]
    # a record from before the policy marked them: hidden, unless its rule never quotes sizes
    assert access.reasons(VIEWER, {"query": "data.ppmlops.train", "reasons": ["x"]}) == [access.UNMARKED]
    assert access.reasons(VIEWER, {"query": "data.ppmlops.budget", "reasons": ["x"]}) == ["x"]


# -- HTTP hygiene -----------------------------------------------------------------------------

def test_headers_head_openapi_and_styled_errors(built):
    c = client_as(VIEWER)
    r = c.get("/")
    assert r.headers["cache-control"] == "no-store" and "frame-ancestors 'self'" in r.headers["content-security-policy"]
    assert "'unsafe-inline'" not in r.headers["content-security-policy"]
    head = c.head("/")
    assert head.status_code == 200 and head.content == b""
    assert c.head(run_url(built.good_run)).status_code == 200
    for closed in ("/openapi.json", "/docs", "/redoc"):
        assert c.get(closed).status_code == 404
    for bad, status in (("/decisions/abc", 422), ("/nope", 404), ("/runs/demo_churn/nope", 404)):
        r = c.get(bad)
        assert r.status_code == status and r.headers["content-type"].startswith("text/html"), bad
        assert "static/dashboard.css" in r.text and '"detail"' not in r.text
    assert c.get("/api/decisions?limit=0").json()["error"].startswith("limit")
    assert c.get("/static/dashboard.css").headers["content-type"].startswith("text/css")
    assert c.get("/static/..%2Fapp.py").status_code == 404


def test_airflow_mount_login_redirect_trailing_slash_and_roles(built, monkeypatch):
    """The real Airflow 3 API server app with the plugin (conftest's plugins folder)."""
    from airflow.api_fastapi.app import create_app as airflow_app, get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.models.revoked_token import RevokedToken

    monkeypatch.setattr(RevokedToken, "is_revoked", classmethod(lambda cls, jti, **kw: False))
    c = TestClient(airflow_app("core"))
    r = c.get("/ppmlops", follow_redirects=False)
    assert r.status_code == 308 and r.headers["location"] == "/ppmlops/"
    page = c.get("/ppmlops/datasets/demo_customers", follow_redirects=False)
    login = "../../api/v2/auth/login?next=" + quote("/ppmlops/datasets/demo_customers", safe="")
    assert page.status_code == 401 and f'href="{login}"' in page.text and "Log in to Airflow" in page.text
    assert c.get("/ppmlops/openapi.json").status_code in (401, 404)

    def as_role(role: str) -> TestClient:
        token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username=role, role=role))
        return TestClient(airflow_app("core"), headers={"Authorization": f"Bearer {token}"})

    denied = run_url(built.denied_run)
    assert "1/250000" in as_role("admin").get("/ppmlops" + denied).text
    viewer = as_role("viewer").get("/ppmlops" + denied).text
    assert "1/250000" not in viewer and esc(access.SIZED) in viewer and "viewer (viewer: budgets and outcomes)" in viewer


def test_plugin_is_compliance_officer_follows_the_simple_auth_managers_admin_role():
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    from ppmlops.airflow import plugin as module

    assert module.is_compliance_officer(SimpleAuthManagerUser(username="a", role="admin"))
    for role in ("viewer", "user", "op"):
        assert not module.is_compliance_officer(SimpleAuthManagerUser(username="b", role=role))


def test_clip_norms_on_the_model_table_are_the_epochs_own(built):
    page = client_as(VIEWER).get("/").text
    assert "1, 0.45, 2, 0.15" in page  # not the spec's max_grad_norm
    assert "accuracy against ε, every version" in page and "audit lower bound against claimed ε" in page
    np.testing.assert_equal(len(re.findall("<svg ", page)) >= 3, True)


def test_approval_requests_link_to_the_run_page(monkeypatch):
    from ppmlops.dashboard.links import run_page_path

    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://airflow.internal/airflow/")
    assert run_page_path("demo_churn", "manual__2026-01-01T00:00:00+00:00") == \
        "/airflow/ppmlops/runs/demo_churn/manual__2026-01-01T00%3A00%3A00%2B00%3A00"
    monkeypatch.delenv("AIRFLOW__API__BASE_URL")
    assert run_page_path("p", "r").startswith("/ppmlops/runs/p/r")


def test_the_run_page_says_where_tuning_started(built):
    """The next run's warm start is what earlier runs released (ppmlops.run.known), and its page says so."""
    from ppmlops.run.known import best_known, known_results
    from ppmlops.run.records import PlanRecord
    from ppmlops.run.store import RunStore

    s = settings.load()
    warm = known_results(s.runs_dir, dashboard_data.PIPELINE, exclude_run=built.denied_run)
    assert warm and {w.run_id for w in warm} == {built.good_run}  # the refused run released no results
    assert {w.what for w in warm} >= {"evaluation"} and any(w.what.startswith("epoch") for w in warm)
    store = RunStore.of(s.runs_dir, dashboard_data.PIPELINE, built.denied_run)
    plan = store.read(PlanRecord)
    store.write(plan.model_copy(update={"warm_start": warm}))
    try:
        page = client_as(VIEWER).get(run_url(built.denied_run)).text
    finally:
        store.write(plan)  # the module's home is shared: the other tests read the plan as built
    best = best_known(warm)
    assert f"Started from {len(warm)} results released by earlier runs" in page
    assert f"noisy accuracy {best.accuracy_noisy:.3f}" in page
    assert f"{best.what})" in page and best.progress == 1.0
    assert "No earlier run of this pipeline" in client_as(VIEWER).get(run_url(built.good_run)).text
