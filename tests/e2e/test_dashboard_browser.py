"""The dashboard in a real browser inside a real Airflow: Debian's Chromium (driven by Playwright
over the DevTools protocol, no browser download) against `airflow api-server` on loopback, with
the plugin loaded, two users (an admin = compliance officer, a viewer) and a home holding two
finished runs and a refused one (tests/dashboard_data.py). It logs in through Airflow's login
page, visits every page, checks what each shows and that the console stays clean, and saves
screenshots under .screenshots/ (gitignored). The trigger form's limits are checked through the
REST API the form posts to, and in the form itself.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from airflow_proc import Airflow, stop, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / ".screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
USERS = {"officer": ("admin", "officer-pw"), "viewer": ("viewer", "viewer-pw")}
DAG = "ppmlops_demo_churn"
IN_FLIGHT = "manual__2026-03-23T09:00:00+00:00"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from conftest import free_port

    root = tmp_path_factory.mktemp("dashboard-browser")
    port = free_port()
    passwords = root / "passwords.json"
    passwords.write_text(json.dumps({u: pw for u, (_, pw) in USERS.items()}))
    env = {**os.environ, "AIRFLOW_HOME": str(root / "airflow"), "PPMLOPS_HOME": str(root / "ppmlops"),
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{root / 'airflow.db'}",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, (r, _) in USERS.items()),
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
           "AIRFLOW__API_AUTH__JWT_SECRET": "browser-test-secret", "AIRFLOW__API__PORT": str(port)}
    af = Airflow(None, f"http://127.0.0.1:{port}", env, root)  # process set below
    af.cli("db", "migrate")
    af.cli("dags", "reserialize")  # the DAGs in the metadata DB, without a DAG processor
    log = open(root / "airflow-ui.log", "wb")
    af.process = subprocess.Popen([str(REPO / ".venv" / "bin" / "airflow"), "api-server", "--host", "127.0.0.1",
                                   "--port", str(port), "--workers", "1", "--apps", "core"],
                                  env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for("the API server", lambda: _up(af.url), 120, af, every_s=1)
        token = httpx.post(f"{af.url}/auth/token", json={"username": "officer", "password": "officer-pw"},
                           timeout=30).json()["access_token"]
        af.client = httpx.Client(base_url=af.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        # A real DAG run (queued: no scheduler here) whose folder the dashboard data fills in.
        run_id = af.ok("POST", f"/api/v2/dags/{DAG}/dagRuns", json={"logical_date": None})["dag_run_id"]
        sys.path.insert(0, str(REPO / "tests"))
        import dashboard_data
        from ppmlops import settings as settings_mod

        os.environ["PPMLOPS_HOME"], saved = env["PPMLOPS_HOME"], os.environ["PPMLOPS_HOME"]
        try:
            built = dashboard_data.build(settings_mod.load(), good_run=run_id)
            dashboard_data.in_flight_run(settings_mod.load(), IN_FLIGHT, epochs_done=2)  # still training
        finally:
            os.environ["PPMLOPS_HOME"] = saved
        yield af, built
    finally:
        stop(af.process, grace_s=20)
        log.close()


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/api/v2/version", timeout=3).status_code in (200, 401)
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("no Chromium at /usr/bin/chromium: ./dev test and ./dev setup install Debian's chromium")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


class Session:
    """A logged-in browser tab that fails the test on any console error or failed page load."""

    def __init__(self, browser, url: str, user: str, scheme: str = "light"):
        self.url, self.errors = url, []
        self.page = browser.new_page(viewport={"width": 1280, "height": 900}, color_scheme=scheme)
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.user = user

    def login_from(self, path: str) -> None:
        """Open a dashboard page without a session: its 401 page leads to Airflow's login and back."""
        first = self.page.goto(self.url + path)
        assert first.status == 401 and "Log in to Airflow" in self.page.inner_text("body")
        self.page.click("a.login")
        self.page.wait_for_selector("input[name=username]")
        self.page.fill("input[name=username]", self.user)
        self.page.fill("input[name=password]", USERS[self.user][1])
        self.page.keyboard.press("Enter")
        self.page.wait_for_url(re.compile(re.escape(path) + "$"), timeout=30_000)
        self.errors.clear()  # the 401 itself is logged by the browser as a failed load

    def visit(self, path: str, shot: str) -> str:
        reply = self.page.goto(self.url + path)
        assert reply.status == 200, f"{path}: {reply.status}"
        self.page.screenshot(path=str(SHOTS / f"{shot}.png"), full_page=True)
        assert not self.errors, f"{path}: console errors {self.errors}"
        return self.page.inner_text("body")


def test_trigger_refuses_out_of_range_values_with_a_message(server):
    af, _ = server
    for conf, words in (({"epsilon_cap": 5}, "epsilon_cap: 5 is greater than the maximum of 1.0"),
                        ({"epochs": 0}, "epochs: 0 is less than the minimum of 1")):
        r = af.api("POST", f"/api/v2/dags/{DAG}/dagRuns", json={"logical_date": None, "conf": conf})
        assert r.status_code == 400 and words in r.json()["detail"], r.text
    params = af.ok("GET", f"/api/v2/dags/{DAG}/details")["params"]
    for name, p in params.items():
        assert p["schema"].get("title") and p.get("description"), name
    # The least cap that can train: what the run's noisy counts cost plus the policy's minimum.
    [bounds] = params["epsilon_cap"]["schema"]["allOf"]
    assert bounds["maximum"] == 1.0 and 0 < bounds["minimum"] < 1.0, bounds
    r = af.api("POST", f"/api/v2/dags/{DAG}/dagRuns", json={"logical_date": None, "conf": {"epsilon_cap": 0.01}})
    assert r.status_code == 400 and "epsilon_cap: 0.01 is less than the minimum of" in r.json()["detail"], r.text
    assert "demo_customers" in params["epsilon_cap"]["description"]


def test_officer_sees_every_page_with_charts_checks_and_inputs(server, browser):
    af, built = server
    s = Session(browser, af.url, "officer")
    s.login_from("/ppmlops/")
    text = s.visit("/ppmlops/", "overview")
    assert "Privacy budgets" in text and "demo_customers" in text and "chain intact" in text
    assert s.page.locator("figure.chart svg").count() >= 3  # spend, accuracy, audit
    text = s.visit("/ppmlops/datasets/demo_customers", "dataset")
    assert "grant trimmed: the run ended, only what it used still counts" in text
    run = f"/ppmlops/runs/demo_churn/{quote(built.denied_run, safe='')}"
    text = s.visit(run, "run-denied")
    assert text.index("ε charged") < text.index("Deploy gate") < text.index("Training, epoch by epoch")
    assert "accuracy 0.41 is below the required 0.60" in text and "1/250000" in text
    assert s.page.locator("details").count() >= 5 and not s.page.locator("details[open]").count()
    text = s.visit(f"/ppmlops/runs/demo_churn/{quote(built.refused_run, safe='')}", "run-refused")
    assert "Refused at plan" in text
    text = s.visit("/ppmlops/decisions/4", "decision")
    assert "Policy input" in text
    # links: the run ids on the overview lead to the run pages
    s.visit("/ppmlops/", "overview-again")
    s.page.locator("a", has_text=built.good_run).first.click()
    s.page.wait_for_url(re.compile("/ppmlops/runs/demo_churn/"))
    assert "Deployed: demo_churn v1" in s.page.inner_text("body") and not s.errors
    s.page.close()


def test_a_run_in_flight_reads_running_with_its_epoch(server, browser):
    af, _ = server
    s = Session(browser, af.url, "viewer")
    s.login_from("/ppmlops/")
    s.visit("/ppmlops/", "overview-in-flight")
    running = s.page.locator("h2:text('Runs in flight') + table tr", has_text=IN_FLIGHT)
    assert running.locator(".badge.b-running").inner_text() == "running"
    running.locator("a", has_text=IN_FLIGHT).first.click()
    s.page.wait_for_url(re.compile("/ppmlops/runs/demo_churn/"))
    assert "epoch 3 of 4" in s.page.locator("p.run-state").inner_text() and not s.errors
    s.page.close()


def test_the_backfill_page_says_what_a_range_will_spend(server, browser):
    """Linked from the DAG's docs beside Airflow's backfill form: a person picks a range and reads
    the runs it makes, the blocks each reads and whether each fits (issue 30, item 5)."""
    af, _ = server
    docs = af.ok("GET", f"/api/v2/dags/{DAG}/details")["doc_md"]
    assert "/ppmlops/pipelines/demo_churn/backfill" in docs
    s = Session(browser, af.url, "officer")
    s.login_from("/ppmlops/pipelines/demo_churn/backfill")
    s.page.fill("input[name=start]", "2026-11-02")
    s.page.fill("input[name=end]", "2026-11-23")
    s.page.click("button[type=submit]")
    s.page.wait_for_url(re.compile(r"start=2026-11-02"))
    text = s.page.inner_text("body")
    assert re.search(r"\d+ of the 3 runs fit|all 3 runs fit", text), text[:2000]
    assert s.page.locator("h2:text('Runs') + table tr").count() == 4 and not s.errors  # a header and 3 runs
    s.page.close()


def test_viewer_sees_budgets_and_outcomes_only(server, browser):
    af, built = server
    s = Session(browser, af.url, "viewer", scheme="dark")
    s.login_from("/ppmlops/")
    text = s.visit(f"/ppmlops/runs/demo_churn/{quote(built.denied_run, safe='')}", "run-denied-viewer-dark")
    assert "viewer (viewer: budgets and outcomes)" in text
    assert "250000" not in text and "a check on the dataset's size failed" in text
    assert "Stage records" in text and not s.page.locator("details").count()
    background = s.page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(17, 24, 39)"  # the dark theme
    assert "6000" not in s.visit("/ppmlops/", "overview-viewer-dark")
    s.page.close()


def test_the_privacy_tab_of_a_dag_run_shows_its_page(server, browser):
    af, built = server
    s = Session(browser, af.url, "officer")
    s.login_from("/ppmlops/")
    s.page.goto(f"{af.url}/dags/{DAG}/runs/{quote(built.good_run, safe='')}")
    s.page.get_by_role("tab", name="Privacy").or_(s.page.get_by_role("link", name="Privacy")).first.click()
    frame = s.page.frame_locator("iframe")
    frame.locator("h1").wait_for(timeout=30_000)
    assert built.good_run in frame.locator("h1").inner_text()
    s.page.screenshot(path=str(SHOTS / "airflow-privacy-tab.png"), full_page=True)
    # Airflow's own theme setting (kept by its UI in localStorage "theme") reaches the framed page
    s.page.evaluate("localStorage.setItem('theme', 'dark')")
    s.page.reload()
    frame.locator("h1").wait_for(timeout=30_000)
    dark = frame.locator("body").evaluate("b => getComputedStyle(b).backgroundColor")
    assert dark == "rgb(17, 24, 39)", dark
    s.page.screenshot(path=str(SHOTS / "airflow-privacy-tab-dark.png"), full_page=True)
    assert not s.errors, s.errors
    s.page.close()


def test_the_trigger_form_says_why_a_value_is_refused(server, browser):
    """The form keeps the value as typed (no clamping to the bounds) and shows the server's reason."""
    af, _ = server
    s = Session(browser, af.url, "officer")
    s.login_from("/ppmlops/")
    s.page.goto(f"{af.url}/dags/{DAG}")
    s.page.get_by_role("button", name=re.compile("Trigger")).first.click()
    form = s.page.get_by_role("dialog")
    assert "Epsilon cap for this run" in form.inner_text() and "at most 1" in form.inner_text()
    s.page.locator("input[name='element_epsilon_cap']").fill("5")
    s.page.locator("input[name='element_epochs']").click()  # leave the field: the UI clamps on blur
    assert s.page.locator("input[name='element_epsilon_cap']").input_value() == "5"
    before = len(af.runs(DAG))
    s.page.get_by_role("button", name=re.compile("^Trigger")).last.click()
    s.page.get_by_text(re.compile("epsilon_cap: 5 is greater than the maximum of 1.0")).first.wait_for(timeout=15_000)
    s.page.screenshot(path=str(SHOTS / "trigger-form-refused.png"), full_page=True)
    assert len(af.runs(DAG)) == before  # no run was created
    s.page.close()
