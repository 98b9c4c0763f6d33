"""`ansible-playbook stage2.yml --tags dryrun` on the pristine lab: the report's dry-run and
classification, read from the database through SSH and docker exec, with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from tests.conftest import REPO, lab_playbook

SCHEMA = json.loads((REPO / "docs" / "schema" / "summary.schema.json").read_text())

# What the report says (the lab reproduces it; the playbooks must compute it).
REPORT_DELTAS = {
    "dot_domain_rules": 67,
    "apr_approvals": 42,
    "normative_relations": 18,
    "apr_action_types": 6,
    "field_type_equivalences": 4,
}
NEEDS_OWNER = {
    "apr_request_types": "no_id_no_arg_trigger",
    "binding_registry": "no_id_no_arg_trigger",
    "nrm_doc_type_config": "no_id_no_arg_trigger",
    "nrm_approval_rules": "composite_key",
}


def stage_footprint(lab_sql) -> tuple:
    """What Stage 2 would have written, if it had written anything."""
    return (
        lab_sql(
            "SELECT count(*) FROM collection_registry "
            "WHERE birth_code_source = 'inferred_from_existing_trigger'"
        ),
        lab_sql("SELECT count(*) FROM birth_backfill_ledger WHERE plan_code = 'QT-001'"),
        lab_sql("SELECT count(*) FROM pg_class WHERE relname LIKE 'v_birth_%'"),
        lab_sql("SELECT count(*) FROM birth_registry"),
    )


@pytest.fixture(scope="module")
def dryrun(request):
    lab_playbook("playbooks/lab.yml", "-e", "lab_action=reset")
    proc = lab_playbook("stage2.yml", "--tags", "dryrun")
    summary = json.loads((REPO / "reports" / "latest" / "summary.json").read_text())
    return proc, summary


def test_dryrun_summary_matches_the_schema(dryrun):
    _, summary = dryrun
    jsonschema.validate(summary, SCHEMA)
    assert summary["phases"] == ["preflight", "dryrun"]
    # Phases that did not run leave their keys null.
    for key in ("rehearsal", "decision", "apply", "guards"):
        assert summary[key] is None, key


def test_dryrun_reproduces_the_report(dryrun):
    _, s = dryrun
    nonzero = {
        c: v["expected_delta"] for c, v in s["dryrun"]["collections"].items() if v["expected_delta"]
    }
    assert nonzero == REPORT_DELTAS
    assert s["dryrun"]["total_delta"] == 137
    assert s["dryrun"]["scope"] == 39
    assert s["dryrun"]["zero_or_empty"] == 34
    assert s["dryrun"]["duplicate_risk"] == 0
    for c, v in s["dryrun"]["collections"].items():
        assert v["register_check"] == v["expected_delta"], c
        assert v["no_go"] is None, c


def test_dryrun_shows_the_classification_it_would_make(dryrun):
    _, s = dryrun
    ident = s["identity"]
    kinds = [v["kind"] for v in ident["classified"].values()]
    assert (len(kinds), kinds.count("column"), kinds.count("synthetic_id")) == (39, 7, 32)
    assert ident["needs_owner"] == NEEDS_OWNER
    assert ident["no_table_required"] == ["iu_staging_payload", "iu_staging_record"]
    assert (ident["required_with_table"], ident["resolvable_before"]) == (74, 31)
    assert (ident["resolvable_after"], ident["blockers"]) == (70, 43)
    assert ident["applied"] is False


def test_dryrun_prints_a_summary_table(dryrun):
    proc, _ = dryrun
    out = proc.stdout
    assert "137 expected new births in 5 collections" in out
    for c in REPORT_DELTAS:
        assert c in out
    assert "NEEDS_OWNER 4" in out
    assert "no-table REQUIRED 2: iu_staging_payload, iu_staging_record" in out


def test_dryrun_writes_nothing(dryrun, lab_sql):
    _, s = dryrun
    assert s["births"]["before"] == s["births"]["after"] == 1_210_868
    assert stage_footprint(lab_sql) == ([("0",)], [("0",)], [("0",)], [("1210868",)])


def test_dryrun_figures_are_the_same_after_classify(dryrun, lab_sql):
    """The scope is what QT-001 classified or would classify: classifying changes no figure."""
    _, before = dryrun
    lab_playbook("stage2.yml", "--tags", "classify")
    lab_playbook("stage2.yml", "--tags", "dryrun")
    after = json.loads((REPO / "reports" / "latest" / "summary.json").read_text())
    strip = lambda d: {c: {k: v[k] for k in v if k != "births"} for c, v in d.items()}  # noqa: E731
    assert strip(after["dryrun"]["collections"]) == strip(before["dryrun"]["collections"])
    assert after["evidence"]["sha256"] == before["evidence"]["sha256"]
    assert after["identity"]["applied"] is True
    assert after["identity"]["resolvable_after"] == before["identity"]["resolvable_after"]
    lab_playbook("playbooks/lab.yml", "-e", "lab_action=reset")


def test_report_dir_is_per_run(dryrun):
    _, s = dryrun
    assert Path(REPO / "reports" / s["run_id"] / "summary.json").exists()
