"""Spec fields added for the risk assessment: source encoding and delimiter, consent purposes and
expiry, pseudonymization, category declarations."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from ppmlops.errors import SpecError
from ppmlops.spec import load_specs, parse_spec

REPO = Path(__file__).resolve().parents[2]
DEMO = yaml.safe_load((REPO / "dags" / "pipelines" / "demo.yaml").read_text())


def doc(**dataset) -> dict:
    d = copy.deepcopy(DEMO)
    d["dataset"].update(dataset)
    return d


def test_existing_specs_get_the_defaults():
    for path, spec in load_specs(REPO / "dags" / "pipelines"):
        ds = spec.dataset
        assert ds.source.encoding == "utf-8" and ds.source.delimiter is None
        assert ds.pseudonymize == [] and ds.pseudonym_key_env == "PPMLOPS_PSEUDONYM_KEY"
        assert ds.quasi_identifiers == ds.special_categories == ds.not_sensitive == []
        if ds.consent is not None:
            assert ds.consent.purposes_column is None and ds.consent.expiry_column is None
            assert ds.consent.purpose == "training" and ds.consent.columns() == [ds.consent.column]
    e2e = yaml.safe_load((REPO / "tests" / "e2e" / "e2e_small.yaml").read_text())
    assert parse_spec(e2e).dataset.source.encoding == "utf-8"


def test_new_fields_parse():
    d = doc(pseudonymize=["email", "phone"], quasi_identifiers=["postal_code"], special_categories=["sex"],
            not_sensitive=["plan"], consent={"column": "consent", "purposes_column": "purposes",
                                             "expiry_column": "consent_until", "expiry_required": True})
    d["dataset"]["source"] = {"path": "x.csv", "encoding": "latin-1", "delimiter": ";"}
    ds = parse_spec(d).dataset
    assert ds.source.encoding == "latin-1" and ds.source.delimiter == ";"
    assert ds.pseudonymize == ["email", "phone"]
    assert ds.consent.columns() == ["consent", "purposes", "consent_until"] and ds.consent.expiry_required


@pytest.mark.parametrize("change,message", [
    ({"pseudonymize": ["age"]}, r"pseudonymize lists \['age'\], which are not among identifiers"),
    ({"not_sensitive": ["email"]}, r"columns \['email'\] are declared not_sensitive and also identifiers"),
    ({"quasi_identifiers": ["region", "region"]}, r"quasi_identifiers lists \['region'\] more than once"),
    ({"consent": {"column": "consent", "purposes_column": "consent"}}, r"consent column, purposes_column and "
                                                                        r"expiry_column must differ"),
    ({"consent": {"column": "consent", "expiry_required": True}}, r"expiry_required needs an expiry_column"),
    ({"consent": {"column": "plan"}}, r"consent column\(s\) \['plan'\] are also features or the label"),
    ({"consent": {"column": "consent", "purpose": ""}}, r"dataset\.consent\.purpose"),
    ({"pseudonym_key_env": "not a var"}, r"dataset\.pseudonym_key_env"),
])
def test_inconsistent_declarations_are_named(change, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(doc(**change))


def test_pseudonym_column_may_not_clash_with_a_feature():
    d = doc(pseudonymize=["email"])
    d["dataset"]["features"].append({"name": "email_pseudonym", "type": "categorical", "categories": ["a"]})
    with pytest.raises(SpecError, match=r"pseudonym column\(s\) \['email_pseudonym'\] would clash"):
        parse_spec(d)


@pytest.mark.parametrize("source,message", [
    ({"path": "x.csv", "encoding": "utf-16"}, r"dataset\.source\.encoding"),
    ({"path": "x.csv", "delimiter": ";;"}, r"delimiter must be one character"),
    ({"path": "x.csv", "delimiter": '"'}, r"delimiter must be one character other than a quote"),
])
def test_bad_source_options_are_named(source, message):
    d = doc()
    d["dataset"]["source"] = source
    with pytest.raises(SpecError, match=message):
        parse_spec(d)
