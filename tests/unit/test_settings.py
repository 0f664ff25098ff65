"""Settings from the environment (pydantic-settings): each variable under its own name, read at
call time, empty meaning unset, defaults that follow the home, and bad values as a ValueError
that names the variable."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ppmlops import settings

VARIABLES = ("PPMLOPS_HOME", "AIRFLOW_HOME", "PPMLOPS_DB_URL", "PPMLOPS_DATA", "PPMLOPS_POLICY", "PPMLOPS_OPA_URL",
             "PPMLOPS_OPA_TIMEOUT_S", "RAY_ADDRESS", "PPMLOPS_RAY_JOBS_URL", "PPMLOPS_RANDOMNESS",
             "PPMLOPS_PROJECT_ROOT", "PPMLOPS_RUN_STALE_AFTER_S")


@pytest.fixture()
def clean(monkeypatch, tmp_path):
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    return monkeypatch


def test_defaults_follow_the_home(clean, tmp_path):
    s = settings.load()
    assert s.home == tmp_path / "user" / ".ppmlops"
    assert s.db_url == f"sqlite:///{s.home / 'ppmlops.db'}" and s.runs_dir == s.home / "runs"
    assert (s.data_dir, s.opa_url, s.ray_address, s.ray_jobs_url, s.randomness) == (None,) * 5
    assert s.opa_timeout_s == 5.0 and s.run_stale_after_s == 3600.0
    assert s.policy_path == s.project_root / "policies.rego"
    clean.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    assert settings.load().home == tmp_path / "airflow" / "ppmlops"
    clean.setenv("PPMLOPS_HOME", "~/elsewhere")  # expanded, and it wins over AIRFLOW_HOME
    assert settings.load().home == tmp_path / "user" / "elsewhere"


def test_each_variable_under_its_own_name_read_per_call(clean, tmp_path):
    clean.setenv("PPMLOPS_HOME", str(tmp_path / "h"))
    clean.setenv("PPMLOPS_DB_URL", "postgresql+psycopg2://u@db/ppmlops")
    clean.setenv("PPMLOPS_DATA", str(tmp_path / "data"))
    clean.setenv("PPMLOPS_POLICY", str(tmp_path / "p.rego"))
    clean.setenv("PPMLOPS_OPA_URL", "http://opa:8181")
    clean.setenv("PPMLOPS_OPA_TIMEOUT_S", "0.5")
    clean.setenv("RAY_ADDRESS", "ray-head:6379")
    clean.setenv("PPMLOPS_RAY_JOBS_URL", "http://ray-head:8265")
    clean.setenv("PPMLOPS_RANDOMNESS", "reproducible")
    clean.setenv("PPMLOPS_PROJECT_ROOT", str(tmp_path / "project"))
    clean.setenv("PPMLOPS_RUN_STALE_AFTER_S", "60")
    s = settings.load()
    assert (s.home, s.db_url, s.data_dir, s.policy_path, s.opa_url, s.opa_timeout_s, s.ray_address, s.ray_jobs_url,
            s.randomness, s.project_root, s.run_stale_after_s) == (
        tmp_path / "h", "postgresql+psycopg2://u@db/ppmlops", tmp_path / "data", tmp_path / "p.rego",
        "http://opa:8181", 0.5, "ray-head:6379", "http://ray-head:8265", "reproducible", tmp_path / "project", 60.0)
    clean.setenv("ppmlops_home", str(tmp_path / "lower"))  # names are exact: another case is another variable
    assert settings.load().home == tmp_path / "h"
    for name in ("PPMLOPS_DB_URL", "PPMLOPS_RANDOMNESS", "PPMLOPS_OPA_TIMEOUT_S"):
        clean.setenv(name, "")  # empty is unset
    s = settings.load()
    assert s.db_url == f"sqlite:///{tmp_path / 'h' / 'ppmlops.db'}" and s.randomness is None and s.opa_timeout_s == 5
    # a dataclass still: Airflow tasks replace the endpoints their connections define
    assert dataclasses.replace(s, opa_url="http://other:8181").opa_url == "http://other:8181"


@pytest.mark.parametrize(("name", "value", "words"), [
    ("PPMLOPS_RANDOMNESS", "weak", "PPMLOPS_RANDOMNESS must be secure or reproducible, got 'weak'"),
    ("PPMLOPS_OPA_TIMEOUT_S", "soon", "PPMLOPS_OPA_TIMEOUT_S: input should be a valid number"),
    ("PPMLOPS_RUN_STALE_AFTER_S", "0", "PPMLOPS_RUN_STALE_AFTER_S: input should be greater than 0, got '0'"),
])
def test_a_bad_value_names_the_variable(clean, name, value, words):
    clean.setenv(name, value)
    with pytest.raises(ValueError) as err:
        settings.load()
    assert words in str(err.value) and "Environment" not in str(err.value)


def test_the_project_root(clean, tmp_path):
    assert settings.find_project_root() == settings.REPO_ROOT == Path(settings.__file__).resolve().parents[1]
    clean.setenv("PPMLOPS_PROJECT_ROOT", str(tmp_path / "p"))
    assert settings.find_project_root() == tmp_path / "p"
