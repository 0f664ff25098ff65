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
