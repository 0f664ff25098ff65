"""The dashboard's Jinja2 templates: autoescaped, markup marked safe in one place only (the SVG
charts, which escape their own text), every template shipped as package data."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

from markupsafe import Markup

from ppmlops.dashboard import charts, templating

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "ppmlops" / "dashboard"


def test_every_template_loads_and_escapes_what_it_prints():
    env = templating.environment()
    assert env.autoescape is True
    names = sorted(p.name for p in (PACKAGE / "templates").glob("*.html"))
    assert {"base.html", "overview.html", "dataset.html", "ledger.html", "decision.html", "run.html",
            "error.html"} <= set(names)
    for name in names:
        env.get_template(name)  # parses
    # Values are escaped the way the pages always spelled entities (html.escape's), markup is kept.
    page = templating.render("error.html", title="<b>t</b>", message="a 'quoted' \"x\" <script>", hint="",
                             login="", up="./", who="", now="now")
    assert "&lt;b&gt;t&lt;/b&gt;" in page and "a &#x27;quoted&#x27; &quot;x&quot; &lt;script&gt;" in page
    assert "<script>" not in page.replace('<script src="./static/theme.js">', "")


def test_only_the_charts_are_marked_safe():
    # No template turns escaping off; Python marks markup safe in templating.py only, and there
    # only the charts' SVG (charts.py escapes every text it writes into it).
    for path in (PACKAGE / "templates").glob("*.html"):
        text = path.read_text()
        assert not re.search(r"\|\s*safe\b|autoescape\s+false", text), path.name
    for path in PACKAGE.glob("*.py"):
        if path.name != "templating.py":
            assert "Markup(" not in path.read_text(), path.name
    chart = charts.Chart("<b>ε</b>", "x", "y", ())
    svg = templating.safe_svg(chart)
    assert isinstance(svg, Markup) and "<b>" not in svg and "&lt;b&gt;" in svg


def test_the_templates_are_package_data():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["ppmlops.dashboard"]
    for path in (PACKAGE / "templates").iterdir():
        rel = path.relative_to(PACKAGE).as_posix()
        assert any(fnmatch.fnmatch(rel, g) for g in globs), rel


# -- the run page's pieces on typed records ------------------------------------------------------
# The run page reads record fields through run_page.Fields (a name the record lacks raises); these
# render the branches dashboard_data's runs do not reach (a regression and a multiclass evaluation,
# a finished private search started from earlier runs' results) from the record classes themselves.

def _audit():
    from ppmlops.run.records import CanaryAudit

    return CanaryAudit(canaries=64, guesses=20, correct=14, epsilon_lower_bound=0.12, confidence=0.95, delta=1e-5)


def test_the_evaluation_card_reads_each_tasks_record_fields():
    from ppmlops.dashboard import run_page
    from ppmlops.run.records import EvaluationRecord

    common = dict(rows=880, sigma=4.0, ledger_entry=1, audit=_audit())
    regression = EvaluationRecord(task="regression", accuracy=None, auc=None, majority_baseline=None, mae=1.25,
                                  rmse=2.5, baseline_mean=10.0, baseline_rmse=3.75, label_range=(0.0, 20.0), **common)
    multiclass = EvaluationRecord(task="multiclass", accuracy=0.625, auc=None, majority_baseline=0.375,
                                  macro_f1=0.5, classes=["a", "b", "c"], **common)
    binary = EvaluationRecord(accuracy=0.75, auc=0.8125, majority_baseline=0.5, **common)
    card = {r.task: str(run_page.evaluation_card(run_page.fields(r.model_dump(mode="json"))))
            for r in (regression, multiclass, binary)}
    assert "noisy held-out RMSE" in card["regression"] and ">2.5<" in card["regression"]
    assert "MAE 1.25" in card["regression"] and "noisy mean 10 scores RMSE 3.75" in card["regression"]
    assert ">0.625<" in card["multiclass"] and "majority baseline 0.375" in card["multiclass"]
    assert "macro-F1 0.500 over 3 classes" in card["multiclass"]
    assert ">0.750<" in card["binary"] and "majority baseline 0.500; AUC 0.812" in card["binary"]


def test_where_tuning_started_reads_the_search_and_warm_start_records():
    from ppmlops.dashboard import run_page
    from ppmlops.run.records import KnownResult, SearchPlan, SearchResult

    search = SearchPlan(trials_mean=4.0, trials_shape=1.0, distribution="truncated negative binomial",
                        learning_rate=(0.01, 1.0), max_grad_norm=(0.1, 4.0), score_sigma=8.0)
    chosen = SearchResult(noise_multiplier=2.25, learning_rate=0.375, max_grad_norm=1.5, holdout_accuracy_noisy=0.6875)
    warm = [KnownResult(run_id="earlier-run", learning_rate=0.25, max_grad_norm=0.75, progress=1.0,
                        accuracy_noisy=0.7125, what="evaluation")]
    data = {"records": {"plan": {"privacy": {"search": search.model_dump(mode="json")},
                                 "warm_start": [w.model_dump(mode="json") for w in warm]},
                        "train": {"search": chosen.model_dump(mode="json")}}}
    facts = run_page.tuning_facts(data)
    html = str(templating.macro("_run.html", "tuning_start")(facts))
    assert "truncated negative binomial distribution" in html and "(0.688)" in html
    assert "learning rate 0.375, clip norm 1.5, noise σ 2.25" in html
    assert "Started from 1 results" in html
    assert "learning rate 0.25, clip norm 0.75 (noisy accuracy 0.713, run earlier-run, evaluation)" in html
    assert "<td>earlier-run</td><td>evaluation</td>" in html and '<td class="num">0.713</td>' in html


def test_a_refusal_without_its_audit_record_shows_the_records_own_reasons():
    from ppmlops.dashboard import run_page
    from ppmlops.run.records import Refusal

    data = {"records": {"refused": Refusal(stage="plan", reasons=["nothing left to train with"],
                                           decision_id="f" * 32).model_dump(mode="json")}}
    facts = run_page.gate_facts(None, data, {"records": []})
    assert facts.refused["stage"] == "plan" and facts.decision == {"reasons": ["nothing left to train with"]}
