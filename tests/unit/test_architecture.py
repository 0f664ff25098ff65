"""The house rules a new engineer can rely on: what the Airflow side imports, no import cycles
inside ppmlops, and functions short enough to read."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "ppmlops"
MAX_FUNCTION_LINES = 80

AIRFLOW_SIDE = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("ppmlops_retrain", "dags/ppmlops_retrain.py")
spec.loader.exec_module(importlib.util.module_from_spec(spec))
import ppmlops.pipeline, ppmlops.airflow.ray_job, ppmlops.airflow.tasks, ppmlops.training.jobs
import ppmlops.airflow.hooks, ppmlops.airflow.provider_info, ppmlops.airflow.approval
import ppmlops.stages.ingest, ppmlops.stages.validate, ppmlops.stages.assess, ppmlops.stages.plan
import ppmlops.stages.train, ppmlops.stages.evaluate, ppmlops.stages.gate, ppmlops.stages.deploy
import ray.job_submission
print(json.dumps(sorted(sys.modules)))
"""


def test_the_airflow_side_loads_neither_torch_opacus_nor_ray_train():
    """What an Airflow worker runs (the DAG file, the stages, the Ray job submission path, the
    provider's hooks that ProvidersManager imports), in a fresh interpreter: docs/cluster.md promises
    such a worker needs none of them."""
    out = subprocess.run([sys.executable, "-c", AIRFLOW_SIDE], cwd=REPO, capture_output=True, text=True,
                         check=True, timeout=300)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    heavy = [m for m in loaded if m.split(".")[0] in ("torch", "opacus") or m == "ray.train"
             or m.startswith("ray.train.")]
    assert "ppmlops.airflow.ray_job" in loaded and heavy == []


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


class _Imports(ast.NodeVisitor):
    """Every ppmlops module a module imports, at any depth (deferred imports count: they cycle
    too), except under `if TYPE_CHECKING:`."""

    def __init__(self, name: str, is_package: bool, modules: dict[str, Path]):
        self.package = name if is_package else name.rpartition(".")[0]
        self.modules, self.found = modules, set()

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if getattr(test, "id", None) == "TYPE_CHECKING" or getattr(test, "attr", None) == "TYPE_CHECKING":
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found.update(a.name for a in node.names if a.name in self.modules)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")[: len(self.package.split(".")) - node.level + 1]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        if source not in self.modules:
            return
        submodules = {f"{source}.{a.name}" for a in node.names} & set(self.modules)
        self.found.update(submodules)
        if len(submodules) < len(node.names):  # a name defined in `source` itself
            self.found.add(source)


def _import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        visitor = _Imports(name, path.name == "__init__.py", modules)
        visitor.visit(ast.parse(path.read_text(), str(path)))
        graph[name] = visitor.found - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_in_ppmlops():
    assert _cycles(_import_graph()) == []


def test_no_cycles_between_ppmlops_packages():
    """Layers, not a web: e.g. stages use training and tuning, never the other way round."""
    def package(module: str) -> str:
        return ".".join(module.split(".")[:2])

    between: dict[str, set[str]] = defaultdict(set)
    for module, imported in _import_graph().items():
        between[package(module)].update(package(m) for m in imported if package(m) != package(module))
    assert _cycles(between) == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_function_over_80_lines():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []


# ----------------------------------------------------------------------------- the layer table
# docs/architecture.md's table "Packages, in layers" is this test's input: a row per layer, top
# to bottom, its packages (backticked, outside parentheses) and what they may import. Terms in
# "may import": `a layer` (all its packages), `package` or `package.module`, "each other" (the
# row's packages), "each other downward" (those after it in the row), "every layer below".
LAYER_DOC = REPO / "docs" / "architecture.md"
LAYER_HEADING = "## Packages, in layers"


def _outside_parentheses(text: str) -> str:
    out, depth = [], 0
    for ch in text:
        depth += ch == "("
        if depth == 0:
            out.append(ch)
        depth -= ch == ")" and depth > 0
    return "".join(out)


def _backticked(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", _outside_parentheses(text))


def _layer_rows(doc: str) -> list[tuple[str, list[str], str]]:
    """(layer, packages, may import) per row of the table under LAYER_HEADING."""
    section = doc.split(LAYER_HEADING, 1)[1]
    rows = []
    for line in section.splitlines()[1:]:
        if line.startswith("#"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) != 3 or cells[0] in ("layer", "---"):
            continue
        rows.append((cells[0], _backticked(cells[1]), cells[2]))
    return rows


def _layer_rules(doc: str) -> dict[str, set[str]]:
    """package -> the packages and modules (dotted, without `ppmlops.`) it may import."""
    rows = _layer_rows(doc)
    by_layer = {layer: packages for layer, packages, _ in rows}
    allowed: dict[str, set[str]] = {}
    for i, (layer, packages, may) in enumerate(rows):
        below = {p for _, lower, _ in rows[i + 1:] for p in lower}
        terms = _outside_parentheses(may)
        for j, package in enumerate(packages):
            ok = set()
            if "every layer below" in terms:
                ok |= below
            if "each other downward" in terms:
                ok |= set(packages[j + 1:])
            elif "each other" in terms:
                ok |= set(packages)
            for name in _backticked(may):
                ok |= set(by_layer.get(name, [name]))
            allowed[package] = ok
    return allowed


def _layer_breaches(graph: dict[str, set[str]], allowed: dict[str, set[str]]) -> list[str]:
    def package(module: str) -> str:
        return module.split(".")[1] if "." in module else module

    def may(importer: str, module: str) -> bool:
        rel = module.split(".", 1)[1] if "." in module else module
        own = allowed.get(package(importer), set())
        return (package(module) in (package(importer), "ppmlops")  # its own package; __version__
                or any(rel == a or rel.startswith(a + ".") for a in own))

    out = [f"{m} is in no row of the layer table" for m in sorted(graph) if m != "ppmlops" and package(m) not in allowed]
    out += [f"{m} imports {i}" for m in sorted(graph) for i in sorted(graph[m]) if package(m) in allowed and not may(m, i)]
    return out


def test_each_package_imports_only_what_the_layer_table_allows():
    """docs/architecture.md's layer table is the rule, read from the doc: a package in no row, or an
    import (at any depth) the table does not allow, is listed."""
    assert _layer_breaches(_import_graph(), _layer_rules(LAYER_DOC.read_text())) == []


def test_the_layer_check_finds_a_breach():
    doc = f"""{LAYER_HEADING}
| layer | packages | may import |
| --- | --- | --- |
| top | `a` (not `z`), `b` | each other downward, every layer below |
| low | `c`, `d` | `e.x` (one module) |
| base | `e` | |
"""
    allowed = _layer_rules(doc)
    assert allowed == {"a": {"b", "c", "d", "e"}, "b": {"c", "d", "e"}, "c": {"e.x"}, "d": {"e.x"}, "e": set()}
    graph = {"ppmlops.a.m": {"ppmlops.b", "ppmlops.e.y", "ppmlops"}, "ppmlops.b": {"ppmlops.a.m"},
             "ppmlops.c": {"ppmlops.e.x.deep", "ppmlops.e.y"}, "ppmlops.z": set()}
    assert _layer_breaches(graph, allowed) == ["ppmlops.z is in no row of the layer table",
                                               "ppmlops.b imports ppmlops.a.m", "ppmlops.c imports ppmlops.e.y"]
