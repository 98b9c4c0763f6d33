"""After the full Stage 2 run (converge, idempotence, check): the VPS and its database."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

PROJECT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).parents[3]))
CONTAINER = "birth-lab-pg"
STAGED = [
    "01_classify.sql",
    "02_views.sql",
    "02b_fix_guard_aliases.sql",
    "03_apply_rehearsal.sql",
    "10_dryrun_numbers.sql",
    "99_rollback_stage2.sql",
]


def sql(host, query: str) -> str:
    """Run SQL on the VPS exactly as the playbooks do: docker exec -i ... psql."""
    psql = f"docker exec -i {CONTAINER} psql -X -q -A -t -v ON_ERROR_STOP=1 -d birth_lab"
    cmd = host.run(f"printf '%s' {_shq(query)} | {psql}")
    assert cmd.rc == 0, cmd.stderr
    return cmd.stdout.strip()


def _shq(s: str) -> str:
    return "'" + s.replace("'", "'\"'\"'") + "'"


@pytest.fixture(scope="module")
def summary():
    return json.loads((PROJECT / "reports" / "latest" / "summary.json").read_text())


def test_sql_is_staged_with_the_reports_names(host, summary):
    staging = host.file(summary["staging_dir"])
    assert staging.is_directory
    for name in STAGED:
        f = host.file(f"{summary['staging_dir']}/{name}")
        assert f.is_file, name
        assert f.mode == 0o640, name
        assert f.user == "root"


def test_classification_written(host):
    assert (
        sql(
            host,
            "SELECT count(*) FROM collection_registry "
            "WHERE birth_code_source = 'inferred_from_existing_trigger'",
        )
        == "39"
    )
    assert (
        sql(
            host,
            "SELECT count(*) FROM collection_registry WHERE identity_required "
            "AND birth_code_kind IS NOT NULL",
        )
        == "70"
    )


def test_five_plan_rows(host):
    rows = sql(
        host,
        "SELECT string_agg(collection_name || '=' || expected_delta, ',' ORDER BY collection_name) "
        "FROM birth_backfill_ledger WHERE plan_code = 'QT-001' AND status = 'planned' AND dry_run",
    )
    assert rows == (
        "apr_action_types=6,apr_approvals=42,dot_domain_rules=67,"
        "field_type_equivalences=4,normative_relations=18"
    )


def test_births_unchanged(host):
    assert sql(host, "SELECT count(*) FROM birth_registry") == "1210868"


def test_every_guard_green(host):
    red = sql(
        host,
        "SELECT coalesce(string_agg(view_name || '.' || check_name, ', '), '') "
        "FROM v_birth_stage2_guard_catalogue WHERE NOT ok AND role = 'safety'",
    )
    assert red == ""


def test_summary_of_the_last_run(summary):
    assert summary["births"]["before"] == summary["births"]["after"] == 1210868
    assert summary["identity"]["resolvable_after"] == 70
    assert sorted(summary["plan"].values()) == [4, 6, 18, 42, 67]
    assert summary["rehearsal"]["pass1"] == 137
    assert summary["rehearsal"]["pass2"] == 0
    assert summary["rehearsal"]["births_after_rollback"] == 1210868
    assert summary["decision"]["status"] == "NOT_READY"
    reasons = " ".join(summary["decision"]["reasons"])
    assert "review" in reasons
    assert "permit" in reasons
    for view, g in summary["guards"].items():
        if "no_go" not in view and "rerun" not in view:
            assert g["passed"] == g["total"], view
