"""`ppmlops init DIR`: a project for an Airflow that has ppmlops installed.

It writes what a source checkout holds at its top level, for the demo pipeline:
dags/ppmlops_retrain.py (the DAG file: `globals().update(pipeline_dags())`), dags/ppmlops_spec_errors.py
(invalid specs in Airflow's Import Errors), dags/pipelines/demo.yaml,
plugins/ppmlops_dashboard.py (the dashboard's plugin), policies.rego with its Rego tests under
tests/policies/, and expectations/demo_customers.json. The package's copies (ppmlops/_scaffold/)
are symbolic links to the repo's own files, which the wheel stores as files: the two cannot drift.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ppmlops.errors import PpmlopsError


def _files(node, prefix: str = "") -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for child in node.iterdir():
        name = f"{prefix}{child.name}"
        if child.is_dir():
            if child.name != "__pycache__":
                out.update(_files(child, name + "/"))
        else:
            out[name] = child.read_bytes()
    return out


def scaffold_files() -> dict[str, bytes]:
    """Relative path -> content of every file `init` writes."""
    return _files(resources.files("ppmlops") / "_scaffold")


def init(target: Path, force: bool = False) -> list[Path]:
    """Write the project into `target` (created if missing); the paths written, in order.

    An existing file is never overwritten unless `force`: a project's policy or specs are someone's
    work, and all conflicts are named before anything is written.
    """
    files = scaffold_files()
    existing = sorted(rel for rel in files if (target / rel).exists())
    if existing and not force:
        raise PpmlopsError(f"ppmlops init: {target} already has {', '.join(existing)}; nothing written "
                           "(--force overwrites them)")
    written = []
    for rel, content in sorted(files.items()):
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        written.append(path)
    return written


def next_steps(target: Path) -> str:
    root = target.resolve()
    return (f"Next, with Airflow's dags and plugins folders in {root} (or point Airflow at them):\n"
            f"  export PPMLOPS_PROJECT_ROOT={root}   # unless {root} is $AIRFLOW_HOME\n"
            f"  export AIRFLOW__CORE__DAGS_FOLDER={root / 'dags'} AIRFLOW__CORE__PLUGINS_FOLDER={root / 'plugins'}\n"
            f"  python {root / 'dags' / 'ppmlops_retrain.py'} demo_churn   # one run through dag.test()\n"
            f"  ppmlops policy test                  # the policy's Rego tests\n"
            "Connections (all optional): ppmlops_ray (Ray job server), ppmlops_opa (OPA server), and the SQL\n"
            "sources your specs name (type ppmlops_source).")
