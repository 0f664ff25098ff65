"""The house rules a new engineer can rely on: what the Airflow side imports, no import cycles
inside ppmlops, and functions short enough to read."""

from __future__ import annotations

import ast
import json
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
