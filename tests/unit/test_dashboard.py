"""The compliance dashboard: JSON equals what the ledger / audit log / registry say, HTML escapes
what people wrote, failures read as messages, and the Airflow plugin mounts it."""

from __future__ import annotations

import importlib.util
import sqlite3
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from ppmlops import settings
from ppmlops.audit import AuditLog
from ppmlops.compliance.engine import evaluate
from ppmlops.dashboard import create_app
from ppmlops.privacy.accountant import Segment
from ppmlops.privacy.ledger import Charge, Ledger
from ppmlops.registry import Registry
from ppmlops.run import records as rec
from ppmlops.run.store import RunStore

REPO = Path(__file__).resolve().parents[2]
DS = "demo_customers"
ODD = 'ward<7>/"night"'  # a dataset id with markup, quotes and a slash
XSS = "<script>alert('x')</script> epsilon 9 is over the cap"


def decision(n: int, outcome: str, reasons: list[str]) -> dict:
    return {"id": f"{n:032x}", "time": "2026-01-01T00:00:00+00:00", "query": "data.ppmlops.deploy",
            "input": {"run": {"id": f"run-{n}"}}, "result": {"outcome": outcome, "reasons": reasons},
            "outcome": outcome, "allowed": outcome == "allow", "reasons": reasons,
            "engine": "embedded-regorus", "policy_hash": "ab" * 32, "error": None}


def charge(ledger, dataset, run, segment, *, partition="train", key="k", complete=True):
    [entry] = ledger.charge(dataset_id=dataset, run_id=run, charges=[Charge(partition, segment)], kind="release",
                            key=key, randomness="secure")
    if complete:
        ledger.complete(entry)


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PPMLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PPMLOPS_DB_URL", raising=False)
    return settings.load()


@pytest.fixture()
def filled(home, tmp_path):
    ledger = Ledger(home.db_url)
    ledger.register_dataset(DS, epsilon_budget=3.0, delta=1e-5)
    ledger.register_dataset(ODD, epsilon_budget=1.0, delta=1e-6)
    charge(ledger, DS, "run-1", Segment(1.1, 0.01, 500))
    charge(ledger, DS, "run-1", Segment(1.5, 0.05, 20), partition="validation", key="v")
    charge(ledger, DS, "run-2", Segment(1.3, 0.01, 300), complete=False)  # never completed
    charge(ledger, ODD, "run-9", Segment(2.0, 0.02, 100))

    log = AuditLog(home.db_url)
    # A real policy decision: the deploy rule on an incomplete manifest denies with reasons.
    log.record(evaluate("data.ppmlops.deploy", {"environment": "production"}),
               run_id="run-1", dataset_id=DS, stage="gate")
    log.record(decision(2, "needs_approval", ["risk 0.41 needs a person"]), run_id="run-2", dataset_id=DS,
               stage="gate")
    log.record(decision(3, "deny", [XSS]), run_id="run-9", dataset_id=ODD, stage="gate")
    log.record(decision(4, "allow", []), run_id="manual__2026-01-01T00:00:00+00:00", dataset_id=DS, stage="plan")

    weights = tmp_path / "model.pt"
    weights.write_bytes(b"weights")
    reg = Registry(home.registry_dir)
    for eps, acc in ((0.8, 0.79), (0.95, 0.83)):
        reg.register("churn", weights, {"dataset_id": DS, "run_id": "run-1", "epsilon": eps, "delta": 1e-5,
                                        "metrics": {"accuracy": acc, "auc": 0.88},
                                        "policy_decision": {"outcome": "allow"},
                                        "approval": {"outcome": "approved", "by": "officer",
                                                     "at": "2026-01-02T09:00:00+00:00"}})
    reg.set_alias("churn", "production", 1)
    reg.set_alias("churn", "production", 2)
    reg.set_alias("churn", "staging", 1)

    # The run folder as the stages leave it: their own record classes, written by RunStore (a
    # template reading a field the records lack then shows on a page these tests read).
    raw_id = "manual__2026-01-01T00:00:00+00:00"
    store = RunStore.of(home.runs_dir, "demo", raw_id).ensure()
    history = [rec.EpochRecord(epoch=e, noise_multiplier=1.1 - 0.1 * e, max_grad_norm=1.0, learning_rate=0.1,
                               steps=20, sample_rate=0.02, epsilon_used=0.3 * e,
                               holdout_accuracy_noisy=float("nan") if e == 1 else 0.8,
                               tuner=rec.TunerNote(tuner="rule", why="<b>utility plateau</b>",
                                                   details={"proposal": "lower noise"}))
               for e in (1, 2)]
    store.write(rec.TrainRecord(model_path="model.pt", n_features=4, epochs_completed=2, stopped_reason="",
                                history=history, usage_entries=[], tuner="rule", randomness="secure",
                                epsilon_used={"train": 0.6}))
    store.write(rec.GateRecord(outcome="needs_approval", allowed=False, reasons=["risk 0.93 needs a person"],
                               decision_id="0" * 32, policy_hash="ab" * 32, engine="embedded-regorus"))
    (store.root / ".deploy.json.tmp").write_text("{half written")  # a crashed write's leftover
    return {"ledger": ledger, "log": log, "registry": reg, "history": history}


@pytest.fixture()
def client():
    return TestClient(create_app())


def test_budget_json_equals_the_ledger(filled, client):
    ledger = filled["ledger"]
    body = client.get("/api/datasets").json()
    by_id = {d["dataset_id"]: d for d in body["datasets"]}
    assert set(by_id) == {DS, ODD}
    d = by_id[DS]
    assert d["epsilon_spent"] == ledger.spent(DS) > 0
    assert d["partitions"] == ledger.epsilon_by_partition(DS)
    assert set(d["partitions"]) == {"train", "validation"}
    assert d["epsilon_budget"] == 3.0 and d["delta"] == 1e-5
    assert d["epsilon_remaining"] == pytest.approx(3.0 - ledger.spent(DS))
    assert d["entry_count"] == 3 and d["reserved_count"] == 1
    assert d["runs"] == ["run-1", "run-2"]

    detail = client.get(f"/api/datasets/{DS}").json()
    assert [e["id"] for e in detail["entries"]] == [e.id for e in ledger.entries(DS)]
    spend = {r["run_id"]: r for r in detail["run_spend"]}
    for run_id in ("run-1", "run-2"):
        assert spend[run_id]["epsilon"] == max(ledger.epsilon_by_partition(DS, run_id=run_id).values())
        assert spend[run_id]["epsilon_by_partition"] == ledger.epsilon_by_partition(DS, run_id=run_id)
    assert spend["run-1"]["steps"] == 520 and spend["run-2"]["statuses"] == ["reserved"]
    # Composition across runs: the dataset total is below the sum of the runs' own epsilons.
    assert detail["epsilon_spent"] < sum(r["epsilon"] for r in spend.values())

    odd = client.get("/api/datasets/" + quote(ODD, safe="")).json()
    assert odd["dataset_id"] == ODD and odd["epsilon_spent"] == ledger.spent(ODD)


def test_decisions_json_newest_first_with_filters_and_chain(filled, client):
    body = client.get("/api/decisions").json()
    assert body["total"] == 4 and [r["seq"] for r in body["records"]] == [4, 3, 2, 1]
    assert body["chain"] == {"intact": True, "problems": [], "records": 4,
                             "head": filled["log"].head(), "anchored": False}
    real = body["records"][-1]["decision"]
    assert real["outcome"] == "deny" and real["reasons"] and len(real["policy_hash"]) == 64

    only = client.get("/api/decisions", params={"dataset_id": DS, "limit": 2}).json()
    assert only["total"] == 3 and [r["seq"] for r in only["records"]] == [4, 2]
    run2 = client.get("/api/decisions", params={"run_id": "run-2"}).json()
    assert [r["decision"]["outcome"] for r in run2["records"]] == ["needs_approval"]


def test_models_json(filled, client):
    [m] = client.get("/api/models").json()["models"]
    assert m["model_name"] == "churn" and m["production"] == 2
    assert m["aliases"] == {"production": 2, "staging": 1}
    assert [v["version"] for v in m["versions"]] == [2, 1]
    assert m["versions"][0]["card"] == filled["registry"].card("churn", 2)
    assert len(m["alias_history"]) == 3


def test_overview_page_shows_budgets_decisions_models_and_escapes(filled, client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert DS in page and "chain intact" in page
    assert "ward&lt;7&gt;/&quot;night&quot;" in page and "ward<7>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; epsilon 9 is over the cap" in page
    # one script of its own, served by the app (the theme), and none got in
    assert page.count("<script") == 1 and '<script src="./static/theme.js"></script>' in page
    assert 'class="outcome-deny"' in page and 'class="outcome-needs_approval"' in page
    assert "production: v2" in page
    assert f'href="./datasets/{quote(ODD, safe="")}"' in page  # the slash stays inside one segment
    assert "http://" not in page and "https://" not in page  # nothing fetched from elsewhere


def test_detail_pages(filled, client):
    page = client.get("/datasets/" + quote(ODD, safe="")).text
    assert "run-9" in page and "&lt;script&gt;" in page and 'href="../"' in page
    page = client.get("/decisions/3").text
    assert "&lt;script&gt;" in page and "ab" * 32 in page
    assert client.get("/decisions/99").status_code == 404


def test_run_json_and_tuner_history(filled, client):
    raw_id = "manual__2026-01-01T00:00:00+00:00"  # Airflow's run id; the folder has it sanitised
    body = client.get(f"/api/runs/demo/{quote(raw_id, safe='')}").json()
    assert sorted(body["records"]) == ["gate", "train"]  # the half-written temporary is skipped
    assert [e["tuner"] for e in body["epochs"]] == [h.tuner.model_dump() for h in filled["history"]]
    assert body["epochs"][0]["holdout_accuracy_noisy"] == "nan"  # strict JSON, still visible
    listed = client.get("/api/runs").json()["runs"]
    assert [(r["pipeline"], r["outcome"]) for r in listed] == [("demo", "needs_approval")]

    page = client.get(f"/runs/demo/{quote(raw_id, safe='')}").text
    assert "&lt;b&gt;utility plateau&lt;/b&gt;" in page  # the tuner's reason, escaped
    assert "noise σ ↓ 1 → 0.9" in page  # what it changed, in natural units
    # Each epoch's row from the record's fields: epsilon used so far, steps at q, noisy accuracy.
    assert '<td class="num">0.3</td>' in page and '<td class="num">0.6</td>' in page
    assert '<td class="num">20 at q 0.02</td>' in page and '<td class="num">0.800</td>' in page
    assert "the epochs used 0.6" in page  # the summary's epsilon used, from train.json's epsilon_used
    assert 'class="outcome-allow"' in page  # the run's decision, found by its sanitised id
    # The audit log has no gate decision of this run: the page shows gate.json's own reasons.
    assert "<li>risk 0.93 needs a person</li>" in page
    for bad in ("/api/runs/demo/%2E%2E", "/api/runs/%2E%2E/demo", "/api/runs/..%2F..%2Fetc/passwd",
                "/api/runs/demo/nope"):
        assert client.get(bad).status_code == 404


def test_tampered_audit_log_shows_broken(filled, client, home):
    with sqlite3.connect(home.home / "ppmlops.db") as conn:
        conn.execute("UPDATE audit_log SET outcome = 'allow' WHERE seq = 3")
    chain = client.get("/api/decisions").json()["chain"]
    assert chain["intact"] is False
    assert any("seq 3" in p and "column outcome" in p for p in chain["problems"])
    page = client.get("/").text
    assert "chain BROKEN" in page and "seq 3" in page and "chain intact" not in page


def test_missing_database_is_a_message_and_is_not_created(home, client):
    r = client.get("/")
    assert r.status_code == 503
    assert "no ppmlops database at" in r.text and "Traceback" not in r.text
    assert "No model in the registry" in r.text  # the other sections still render
    api = client.get("/api/datasets")
    assert api.status_code == 503 and "no ppmlops database" in api.json()["error"]
    assert not (home.home / "ppmlops.db").exists()


def test_unreadable_database_is_a_message(home, client, monkeypatch):
    home.home.mkdir(parents=True)
    (home.home / "ppmlops.db").write_bytes(b"this is not an sqlite file" * 100)
    r = client.get("/api/decisions")
    assert r.status_code == 503 and "cannot open the ppmlops database" in r.json()["error"]

    monkeypatch.setenv("PPMLOPS_DB_URL", "postgresql://officer:s3cret@db.invalid:5432/ppmlops")
    r = client.get("/")
    assert r.status_code == 503 and "cannot open the ppmlops database" in r.text
    assert "s3cret" not in r.text


def test_settings_are_read_per_request(filled, client, tmp_path, monkeypatch):
    assert client.get("/api/datasets").status_code == 200
    other = tmp_path / "other"
    Ledger(f"sqlite:///{other / 'ppmlops.db'}").register_dataset("elsewhere", epsilon_budget=2, delta=1e-5)
    monkeypatch.setenv("PPMLOPS_HOME", str(other))
    assert [d["dataset_id"] for d in client.get("/api/datasets").json()["datasets"]] == ["elsewhere"]


def test_not_found(filled, client):
    r = client.get("/api/datasets/nope")
    assert r.status_code == 404 and "nope" in r.json()["error"]
    r = client.get("/datasets/nope")
    assert r.status_code == 404 and "not in the privacy ledger" in r.text and 'href="../"' in r.text


# -- the Airflow plugin -----------------------------------------------------------------------

def test_plugin_module_defines_the_plugin():
    from airflow.plugins_manager import AirflowPlugin

    path = REPO / "plugins" / "ppmlops_dashboard.py"
    spec = importlib.util.spec_from_file_location("ppmlops_dashboard_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    plugin = module.PpmlopsDashboardPlugin
    assert issubclass(plugin, AirflowPlugin) and plugin.name == "ppmlops_dashboard"
    [app] = plugin.fastapi_apps
    assert app["url_prefix"] == "/ppmlops" and isinstance(app["app"], FastAPI)
    nav, tab = plugin.external_views
    assert nav["href"] == "ppmlops/" and nav["destination"] == "nav"
    # Airflow 3's UI fills {DAG_ID} and {RUN_ID} in hrefs of dag_run views
    assert tab["destination"] == "dag_run" and tab["href"] == "ppmlops/dag-runs/{DAG_ID}/{RUN_ID}"


def test_airflow_api_server_mounts_the_dashboard_behind_login(filled, monkeypatch):
    """The real Airflow 3 app, plugins loaded from AIRFLOW__CORE__PLUGINS_FOLDER (conftest)."""
    from airflow import plugins_manager
    from airflow.api_fastapi.app import create_app as airflow_app, get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.models.revoked_token import RevokedToken

    assert Path(plugins_manager.settings.PLUGINS_FOLDER) == REPO / "plugins"
    # Token checks look up revoked tokens in Airflow's metadata DB, which unit tests do not migrate.
    monkeypatch.setattr(RevokedToken, "is_revoked", classmethod(lambda cls, jti, **kw: False))
    client = TestClient(airflow_app("core"))

    r = client.get("/ppmlops/api/datasets")
    assert r.status_code == 401 and "Log in to Airflow" in r.json()["hint"]
    assert client.get("/ppmlops/", headers={"Authorization": "Bearer forged"}).status_code == 403

    token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="officer", role="admin"))
    body = client.get("/ppmlops/api/datasets", headers={"Authorization": f"Bearer {token}"}).json()
    assert {d["dataset_id"] for d in body["datasets"]} == {DS, ODD}
    client.cookies.set("_token", token)  # how the Airflow UI's iframe authenticates
    page = client.get("/ppmlops/")
    assert page.status_code == 200 and DS in page.text

    plugins = client.get("/api/v2/plugins").json()["plugins"]
    [ours] = [p for p in plugins if p["name"] == "ppmlops_dashboard"]
    assert ours["external_views"][0]["url_route"] == "ppmlops"
