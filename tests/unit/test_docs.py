"""The docs a person reads: the README stays short and keeps its two commands, every relative link
and picture in README.md and docs/*.md leads somewhere (a `#anchor` to a heading of its target,
by GitHub's slug rules), every benchmark script a page names exists, every page is listed in the
docs index, and the glossary holds the dashboard's own definitions word for word.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = REPO / "docs"
MAX_README_LINES = 250
# The README's two commands, exactly as the README has always given them (dev and .ci/run rely on
# them; the README's own text points to them).
COMMANDS = (
    "./dev demo    # set up .venv + Airflow (SQLite), run the retraining DAG end to end, print a summary",
    "./dev test    # set up if needed, run the test suite (CI runs this through .ci/run)",
)

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# [text](target) and ![alt](target); the text may hold one level of brackets ([`a`](b) is common).
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_BENCHMARK = re.compile(r"\bbenchmarks/[\w./-]+?\.py\b")


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def prose_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the lines outside fenced code blocks."""
    out, fenced = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text (code spans, links and emphasis as their
    text), lower-cased, with everything but letters, digits, '_', '-' and spaces removed, and
    spaces turned into hyphens."""
    text = _CODE_SPAN.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"(\*\*|__|\*|_(?=\S)|(?<=\S)_\b)", "", text)
    text = re.sub(r"<[^>]+>", "", text)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose_lines(path):
        m = _HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[tuple[int, str]]:
    found = []
    for number, line in prose_lines(path):
        for m in _LINK.finditer(_CODE_SPAN.sub("", line)):
            found.append((number, m.group(1)))
    return found


def _name(path: Path) -> str:
    return path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else str(path)


def broken_links(files: list[Path]) -> list[str]:
    problems = []
    for page in files:
        for number, target in links(page):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:, ...
                continue
            where = f"{_name(page)}:{number}: {target}"
            path_part, _, anchor = target.partition("#")
            dest = (page.parent / path_part).resolve() if path_part else page
            if not dest.exists():
                problems.append(f"{where}: {_name(dest)} does not exist")
            elif anchor and dest.suffix != ".md":
                problems.append(f"{where}: an anchor into a file that is not Markdown")
            elif anchor and anchor not in anchors(dest):
                problems.append(f"{where}: no heading of {_name(dest)} has the anchor #{anchor} "
                                f"(its anchors: {', '.join(sorted(anchors(dest)))})")
    return problems


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < MAX_README_LINES, (
        f"README.md has {len(lines)} lines; keep it under {MAX_README_LINES} and move detail into docs/")


def test_readme_keeps_its_two_commands() -> None:
    text = README.read_text(encoding="utf-8").splitlines()
    for command in COMMANDS:
        assert command in text, f"README.md lost its command line {command!r}"


def test_readme_is_the_packages_readme() -> None:
    """pyproject's `readme` (the wheel's long description, tests/integration/test_wheel_install.py)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert (REPO / project["readme"]).resolve() == README.resolve()


def test_docs_pages_exist() -> None:
    assert (DOCS / "index.md").is_file()
    assert len(pages()) > 10


def test_every_relative_link_and_picture_resolves() -> None:
    problems = broken_links(pages())
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_every_docs_page_is_in_the_index() -> None:
    linked = {(DOCS / target.partition("#")[0]).resolve() for _, target in links(DOCS / "index.md")}
    missing = [p.name for p in DOCS.glob("*.md") if p.name != "index.md" and p.resolve() not in linked]
    assert not missing, f"docs/index.md does not list: {', '.join(sorted(missing))}"


def test_readme_links_the_docs_index() -> None:
    assert any(target == "docs/index.md" for _, target in links(README))


def test_every_benchmark_script_named_exists() -> None:
    named: dict[str, list[str]] = {}
    for page in pages():
        for m in _BENCHMARK.finditer(page.read_text(encoding="utf-8")):
            named.setdefault(m.group(0), []).append(page.relative_to(REPO).as_posix())
    assert named, "no page names a benchmark script"
    missing = [f"{script} (named in {', '.join(sorted(set(where)))})"
               for script, where in sorted(named.items()) if not (REPO / script).is_file()]
    assert not missing, "benchmark scripts that do not exist:\n" + "\n".join(missing)


def _dashboard_glossary() -> tuple[tuple[str, str], ...]:
    import ppmlops.dashboard as dashboard

    for info in pkgutil.iter_modules(dashboard.__path__, dashboard.__name__ + "."):
        glossary = getattr(importlib.import_module(info.name), "GLOSSARY", None)
        if glossary:
            return tuple(glossary)
    pytest.fail("no GLOSSARY in ppmlops.dashboard: the dashboard's definitions moved; point this test at them")


def test_glossary_holds_the_dashboards_definitions() -> None:
    text = (DOCS / "glossary.md").read_text(encoding="utf-8")
    missing = [term for term, words in _dashboard_glossary() if f"- **{term}**: {words}" not in text]
    assert not missing, ("docs/glossary.md does not hold the dashboard's definition (word for word) of: "
                         + ", ".join(missing))


def test_glossary_spells_out_the_modules() -> None:
    text = (DOCS / "glossary.md").read_text(encoding="utf-8")
    for name in ("PRAM", "ANOM", "CMFM"):
        assert f"- **{name}**:" in text, f"docs/glossary.md does not say what {name} is"


@pytest.mark.parametrize(("heading", "anchor"), [
    ("The demo's summary", "the-demos-summary"),
    ("Privacy blocks: budgets that last as long as the pipeline",
     "privacy-blocks-budgets-that-last-as-long-as-the-pipeline"),
    ("Model registry and run tracking (MLflow)", "model-registry-and-run-tracking-mlflow"),
    ("`ppmlops init` and the `dags/` folder", "ppmlops-init-and-the-dags-folder"),
    ("Set-up, tests and the development machine", "set-up-tests-and-the-development-machine"),
    ("ε of a charge", "ε-of-a-charge"),
])
def test_slug_follows_github(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor


def test_a_broken_link_is_caught(tmp_path: Path) -> None:
    """The checker itself: a missing file and a missing anchor are reported; a link in code is not."""
    (tmp_path / "there.md").write_text("# There\n\n## A heading\n", encoding="utf-8")
    bad = tmp_path / "bad.md"
    bad.write_text("# Title\n\n[gone](nowhere.md) [self](#title) [no](#nope) [ok](there.md#a-heading)\n"
                   "[wrong](there.md#b-heading) `[code](ignored.md)`\n```\n[fenced](ignored.md)\n```\n",
                   encoding="utf-8")
    problems = broken_links([bad])
    assert len(problems) == 3, problems
    assert "nowhere.md does not exist" in problems[0]
    assert "#nope" in problems[1] and "#b-heading" in problems[2]
