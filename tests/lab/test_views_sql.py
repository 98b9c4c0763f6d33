"""Stage 2 guard views (02_views, 02b_fix_guard_aliases) on a scratch copy of the pristine lab.

The role's templates are rendered with playbooks/render_sql.yml, then 01_classify, 02_views,
02b_fix_guard_aliases and 11_plan_ledger run on a database copied from the pristine template
(each file in BEGIN/COMMIT, as the playbooks run them). The tests read the views back, break
things inside transactions that are rolled back to see the guards go red, and end by running
the two revert files, which must leave the schema exactly as it was before 02_views.

Names (views, objects, plan code, permit scope, review subject) come from the role's defaults;
the only figures typed here are the lab fixture's known dry-run figures (contract section 5).
"""

# The SQL of these tests is built from constants and from names read from the role's defaults,
# always quoted with ident() / lit(); nothing comes from outside the repository.
# ruff: noqa: S608

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, lab_playbook, run_psql

DEFAULTS = yaml.safe_load((REPO / "roles/birth_stage2/defaults/main.yml").read_text())
SCHEMA = DEFAULTS["birth_stage2_schema"]
VIEWS: dict[str, str] = DEFAULTS["birth_stage2_views"]
OBJECTS: dict[str, str] = DEFAULTS["birth_stage2_objects"]
BASELINE = DEFAULTS["birth_stage2_baseline_table"]
PLAN = DEFAULTS["birth_stage2_plan_code"]
SCOPE = DEFAULTS["birth_stage2_permit_scope"]
SUBJECT = DEFAULTS["birth_stage2_review_subject"]
FROZEN = DEFAULTS["birth_stage2_frozen_tools"]
READINESS = set(DEFAULTS["birth_stage2_readiness_views"])
PRISTINE = os.environ.get("BIRTH_LAB_PRISTINE", "birth_lab_pristine")

PRE_EXISTING_GUARDS = ["stage0_guard", "gateway_no_go", "gateway_contract"]
# Stage 2 guard views and their number of checks (docs/guard-views.md); None = one per object.
STAGE2_GUARDS = {
    "dependency_guard": 6,
    "no_worse_guard": 6,
    "metadata_no_go": 5,
    "required_no_go": 5,
    "qt001_no_go": None,
    "dryrun_no_go": 4,
    "rerun_delta_guard": None,
    "cross_layer_guard": 7,
    "object_truth_guard": 4,
}
# The lab fixture's dry-run (contract section 5).
LAB_TOTAL_DELTA, LAB_NONZERO, LAB_ZERO, LAB_SCOPE = 137, 5, 34, 39

MARK = "R"


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def q(name: str) -> str:
    return f"{ident(SCHEMA)}.{ident(name)}"


V = {key: q(name) for key, name in VIEWS.items()}
OBJ = {key: q(name) for key, name in OBJECTS.items()}

# A fingerprint of everything schema public holds: relations, columns, functions, triggers.
SCHEMA_FINGERPRINT = f"""
SELECT {lit(MARK)}, md5(string_agg(x, E'\\n' ORDER BY x)) FROM (
  SELECT 'class ' || c.relname || ' ' || c.relkind::text || ' ' || c.relnatts || ' '
         || coalesce(pg_get_viewdef(c.oid), '') AS x
    FROM pg_class c WHERE c.relnamespace = {lit(SCHEMA)}::regnamespace
  UNION ALL
  SELECT 'att ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
         || ' ' || a.attnotnull || ' ' || a.attnum
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
   WHERE c.relnamespace = {lit(SCHEMA)}::regnamespace AND NOT a.attisdropped
  UNION ALL
  SELECT 'proc ' || p.oid::regprocedure || ' ' || md5(p.prosrc)
    FROM pg_proc p WHERE p.pronamespace = {lit(SCHEMA)}::regnamespace
  UNION ALL
  SELECT 'trig ' || pg_get_triggerdef(t.oid)
    FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
   WHERE c.relnamespace = {lit(SCHEMA)}::regnamespace
) f;
"""


class Scratch:
    """A scratch database of the lab and the rendered SQL files."""

    def __init__(self, name: str, sql_dir: Path):
        self.name = name
        self.sql_dir = sql_dir

    def file(self, name: str) -> str:
        return (self.sql_dir / name).read_text()

    def rows(self, sql: str, mark: str = MARK) -> list[tuple[str, ...]]:
        """Rows tagged with `mark` (the first column), without the tag."""
        out = run_psql(sql, db=self.name).stdout
        return [
            tuple(line.split("\t")[1:]) for line in out.splitlines() if line.split("\t")[0] == mark
        ]

    def run_file(self, name: str, transaction: bool = True) -> dict:
        """Run a rendered file (in BEGIN/COMMIT) and return its closing JSON document."""
        sql = self.file(name)
        if transaction:
            sql = f"BEGIN;\n{sql}\nCOMMIT;\n"
        out = run_psql(sql, db=self.name).stdout
        return json.loads([line for line in out.splitlines() if line.strip()][-1])

    def rolled_back(self, setup: str, query: str) -> list[tuple[str, ...]]:
        """Rows of `query` (MARK-tagged) after `setup`, in a transaction rolled back."""
        return self.rows(f"BEGIN;\n{setup}\n{query}\nROLLBACK;\n")


@pytest.fixture(scope="module")
def db(lab_sql, tmp_path_factory):
    assert lab_sql("SELECT 1") == [("1",)]  # the lab is up
    sql_dir = tmp_path_factory.mktemp("sql")
    lab_playbook("playbooks/render_sql.yml", "-e", f"birth_stage2_render_dir={sql_dir}")
    name = f"views_test_{os.getpid()}"
    run_psql(
        f"DROP DATABASE IF EXISTS {ident(name)} WITH (FORCE);\n"
        f"CREATE DATABASE {ident(name)} TEMPLATE {ident(PRISTINE)} STRATEGY FILE_COPY;\n",
        db="postgres",
    )
    scratch = Scratch(name, sql_dir)
    try:
        scratch.classify = scratch.run_file("01_classify.sql")
        scratch.fingerprint_before = scratch.rows(SCHEMA_FINGERPRINT)
        scratch.views = scratch.run_file("02_views.sql")
        scratch.catalogue = scratch.run_file("02b_fix_guard_aliases.sql")
        scratch.plan = scratch.run_file("11_plan_ledger.sql")
        yield scratch
    finally:
        run_psql(f"DROP DATABASE IF EXISTS {ident(name)} WITH (FORCE);\n", db="postgres")


CATALOGUE_SQL = (
    f"SELECT {lit(MARK)}, view_name, role, check_name, ok, detail FROM {V['guard_catalogue']};"
)
DECISION_SQL = f"SELECT 'D', status, to_json(reasons), evidence_sha256 FROM {V['apply_decision']};"


def catalogue(db: Scratch, setup: str = "") -> list[tuple[str, str, str, bool, str]]:
    rows = db.rolled_back(setup, CATALOGUE_SQL)
    return [(v, r, c, ok == "t", d) for v, r, c, ok, d in rows]


def red(rows) -> set[tuple[str, str]]:
    return {(v, c) for v, _, c, ok, _ in rows if not ok}


def decision(db: Scratch, setup: str = "") -> tuple[str, list[str], str]:
    (row,) = db.rows(f"BEGIN;\n{setup}\n{DECISION_SQL}\nROLLBACK;\n", mark="D")
    return row[0], json.loads(row[1]), row[2]


def guards_and_decision(db: Scratch, setup: str):
    """The catalogue and the decision after `setup`, read in one rolled-back transaction."""
    out = run_psql(f"BEGIN;\n{setup}\n{CATALOGUE_SQL}\n{DECISION_SQL}\nROLLBACK;\n", db=db.name)
    lines = [line.split("\t") for line in out.stdout.splitlines()]
    rows = [(v, r, c, ok == "t", d) for m, v, r, c, ok, d in (x for x in lines if x[0] == MARK)]
    ((status, reasons, sha),) = [x[1:] for x in lines if x[0] == "D"]
    return rows, (status, json.loads(reasons), sha)


def current_hash(db: Scratch) -> str:
    if not hasattr(db, "sha"):
        (row,) = db.rows(f"SELECT {lit(MARK)}, evidence_sha256 FROM {V['dryrun_summary']};")
        db.sha = row[0]
    return db.sha


# ---- deploy -------------------------------------------------------------------------------------


def test_deploy_reports_what_it_did(db):
    assert db.classify["changed"] is True
    assert db.views == {**db.views, "changed": True, "views": len(VIEWS) - 1}
    assert db.catalogue == {**db.catalogue, "changed": True, "views": len(VIEWS), "guard_views": 12}
    assert db.plan["changed"] is True


def test_every_view_exists(db):
    rows = db.rows(
        f"SELECT {lit(MARK)}, c.relname FROM pg_class c "
        f"WHERE c.relnamespace = {lit(SCHEMA)}::regnamespace AND c.relkind = 'v' "
        f"AND c.relname IN ({', '.join(lit(v) for v in VIEWS.values())});"
    )
    assert {r[0] for r in rows} == set(VIEWS.values())


def test_verify_scripts_pass(db):
    assert db.run_file("02_views.verify.sql")["verified"] == "02_views"
    assert db.run_file("02b_fix_guard_aliases.verify.sql")["verified"] == "02b_fix_guard_aliases"


def test_catalogue_has_every_guard_view_with_its_checks(db):
    rows = catalogue(db)
    by_view: dict[str, list] = {}
    for view, role, check, _, _ in rows:
        by_view.setdefault(view, []).append((role, check))
    expected = {OBJECTS[k]: "safety" for k in PRE_EXISTING_GUARDS}
    expected |= {VIEWS[k]: "readiness" if k in READINESS else "safety" for k in STAGE2_GUARDS}
    assert set(by_view) == set(expected)
    for view, role in expected.items():
        assert {r for r, _ in by_view[view]} == {role}, view
    for key, n in STAGE2_GUARDS.items():
        checks = [c for _, c in by_view[VIEWS[key]]]
        assert len(checks) == len(set(checks)), key  # check names are unique per view
        if n is not None:
            assert len(checks) == n, key


def test_every_guard_is_green_after_deploy_and_plan(db):
    rows = catalogue(db)
    assert red(rows) == {
        (VIEWS["qt001_no_go"], "approved_independent_review"),
        (VIEWS["qt001_no_go"], "open_permit"),
    }


# ---- dry-run ------------------------------------------------------------------------------------


def test_dryrun_views_equal_the_dryrun_numbers(db):
    numbers = db.run_file("10_dryrun_numbers.sql", transaction=False)
    dry = numbers["dryrun"]
    (summary,) = db.rows(
        f"SELECT {lit(MARK)}, row_to_json(s) FROM {V['dryrun_summary']} s;",
    )
    summary = json.loads(summary[0])
    for key in ("scope", "nonzero", "zero_or_empty", "total_delta", "duplicate_risk"):
        assert summary[key] == dry[key], key
    for key in ("unbirthable", "orphan_births"):
        assert summary[key] == dry[key], key
    assert summary["evidence_sha256"] == numbers["evidence_sha256"]
    # the lab fixture's figures
    assert (summary["total_delta"], summary["nonzero"]) == (LAB_TOTAL_DELTA, LAB_NONZERO)
    assert (summary["zero_or_empty"], summary["scope"]) == (LAB_ZERO, LAB_SCOPE)

    result = db.rows(
        f"SELECT {lit(MARK)}, collection, n_rows, expected_delta, register_check, "
        f"coalesce(no_go, '') FROM {V['dryrun_result']};"
    )
    assert {r[0]: (int(r[1]), int(r[2]), int(r[3]), r[4] or None) for r in result} == {
        c: (v["rows"], v["expected_delta"], v["register_check"], v["no_go"])
        for c, v in dry["collections"].items()
    }


def test_plan_readiness_matches_the_ledger(db):
    rows = db.rows(
        f"SELECT {lit(MARK)}, collection, readiness, plan_matches FROM {V['qt001_plan_readiness']} "
        f"WHERE readiness <> 'nothing_to_do';"
    )
    assert {r[1] for r in rows} == {"planned"}
    assert {r[2] for r in rows} == {"t"}
    assert len(rows) == LAB_NONZERO


# ---- the apply decision -------------------------------------------------------------------------

REVIEWS = OBJ["reviews"]
PERMITS = OBJ["permits"]


def review(author: str, reviewer: str, sha: str, verdict: str = "approved") -> str:
    return (
        f"INSERT INTO {REVIEWS} (subject, author, reviewer, verdict, evidence_sha256) "
        f"VALUES ({lit(SUBJECT)}, {lit(author)}, {lit(reviewer)}, {lit(verdict)}, {lit(sha)});"
    )


def permit(expires: str = "now() + interval '1 day'", status: str = "open") -> str:
    return (
        f"INSERT INTO {PERMITS} (scope, status, issued_by, expires_at) "
        f"VALUES ({lit(SCOPE)}, {lit(status)}, 'owner', {expires});"
    )


def test_decision_is_not_ready_for_the_review_and_the_permit_only(db):
    status, reasons, sha = decision(db)
    assert status == "NOT_READY"
    assert sha == current_hash(db)
    assert len(reasons) == 2, reasons
    review_reason, permit_reason = sorted(reasons)
    assert review_reason.startswith("approved_independent_review:")
    assert SUBJECT in review_reason and sha in review_reason
    assert permit_reason.startswith("open_permit:")
    assert SCOPE in permit_reason


def test_independent_review_and_open_permit_make_it_ready(db):
    sha = current_hash(db)
    status, reasons, _ = decision(db, review("alice", "bob", sha) + permit())
    assert (status, reasons) == ("ACTION_READY", [])


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("self_review", "approved_independent_review:"),
        ("stale_hash", "approved_independent_review:"),
        ("later_rejection", "approved_independent_review:"),
        ("open_but_expired_permit", "open_permit:"),
        ("other_subject_scope", "approved_independent_review:"),
    ],
)
def test_what_does_not_count(db, case, reason):
    sha = current_hash(db)
    setup = {
        "self_review": review("alice", "alice", sha) + permit(),
        "stale_hash": review("alice", "bob", "0" * 64) + permit(),
        "later_rejection": review("alice", "bob", sha)
        + review("alice", "carol", sha, "rejected")
        + permit(),
        "open_but_expired_permit": review("alice", "bob", sha)
        + permit(expires="now() - interval '1 hour'"),
        "other_subject_scope": review("alice", "bob", sha).replace(lit(SUBJECT), "'other'")
        + permit(),
    }[case]
    status, reasons, _ = decision(db, setup)
    assert status == "NOT_READY"
    assert [r for r in reasons if r.startswith(reason)], reasons
    assert len(reasons) == 1, reasons


# ---- the guards are computed --------------------------------------------------------------------

TOOLS = OBJ["dot_tools"]
REGISTRY = OBJ["collection_registry"]
BIRTHS = OBJ["birth_registry"]
LEDGER = OBJ["ledger"]
PLANNED = f"plan_code = {lit(PLAN)} AND status = 'planned'"
STAGE_COLUMN_ROW = (
    f"(SELECT collection_name FROM {REGISTRY} WHERE birth_code_kind = 'column' "
    f"AND birth_code_source = {lit(DEFAULTS['birth_stage2_classification_source'])} "
    "ORDER BY collection_name LIMIT 1)"
)
BREAKAGES = {
    "frozen_tool_activated": (
        f"UPDATE {TOOLS} SET status = 'active' WHERE code = {lit(FROZEN[0])};",
        {("no_worse_guard", "frozen_tools_still_frozen")},
    ),
    # A birth written by hand as if by the backfill: the guard judges the backfill's births
    # against the baseline plus what the plan applied, so it is red (a gateway birth is the
    # application's, reported: tests/lab/test_live_traffic.py).
    "backfill_birth_by_hand": (
        f"INSERT INTO {BIRTHS} (collection_name, entity_code, birth_source) "
        "VALUES ('apr_action_types', 'apr_action_types::by-hand', 'backfill');",
        {("cross_layer_guard", "counts_match_snapshot")},
    ),
    "birth_deleted": (
        f"DELETE FROM {BIRTHS} WHERE id = (SELECT min(id) FROM {BIRTHS});",
        {("no_worse_guard", "births_not_fewer"), ("cross_layer_guard", "counts_match_snapshot")},
    ),
    "classification_broken": (
        f"UPDATE {REGISTRY} SET birth_code_column = 'no_such_column' "
        f"WHERE collection_name = {STAGE_COLUMN_ROW};",
        {
            ("metadata_no_go", "classifications_match_triggers"),
            ("metadata_no_go", "column_kinds_name_existing_columns"),
            ("cross_layer_guard", "classifications_match_triggers"),
            ("object_truth_guard", "classified_columns_exist"),
        },
    ),
    "permit_consumed_outside_apply": (
        permit(status="consumed"),
        {("no_worse_guard", "no_permit_opened_or_consumed_except_by_apply")},
    ),
    "stage0_guard_red": (
        f"CREATE OR REPLACE VIEW {OBJ['stage0_guard']} AS "
        "SELECT 'broken'::text AS check_name, false AS ok, "
        "'made red by the test'::text COLLATE \"C\" AS detail;",  # same columns, collation
        {("stage0_guard", "broken"), ("dependency_guard", "stage0_guard_all_ok")},
    ),
    "required_flag_dropped": (
        f"UPDATE {REGISTRY} SET identity_required = false WHERE collection_name = "
        f"(SELECT min(collection_name) FROM {REGISTRY} r WHERE r.identity_required "
        f"AND to_regclass(quote_ident({lit(SCHEMA)}) || '.' || quote_ident(r.collection_name)) "
        "IS NULL);",
        # The required guard catches the dropped flag (against the baseline); the row that
        # is left, not identity-required and without a table, is a legal state that the
        # object-truth guard reports but never turns red on (docs/guard-views.md).
        {("required_no_go", "no_required_collection_dropped")},
    ),
    "gap_becomes_a_view": (
        f"DO $$ BEGIN EXECUTE format('CREATE VIEW %I.%I AS SELECT 1 AS id', {lit(SCHEMA)}, "
        f"(SELECT min(collection_name) FROM {REGISTRY} r WHERE r.identity_required "
        f"AND to_regclass(quote_ident({lit(SCHEMA)}) || '.' || quote_ident(r.collection_name)) "
        "IS NULL)); END $$;",
        {
            ("required_no_go", "gap_rows_reported_not_created"),
            ("object_truth_guard", "no_registry_row_on_view_or_foreign_table"),
        },
    ),
    "plan_row_tampered": (
        f"UPDATE {LEDGER} SET expected_delta = expected_delta + 1 WHERE {PLANNED} "
        f"AND collection_name = (SELECT min(collection_name) FROM {LEDGER} WHERE {PLANNED});",
        {
            ("cross_layer_guard", "plan_deltas_equal_dryrun"),
            ("dryrun_no_go", "plan_rows_equal_nonzero_deltas"),
        },
    ),
}


@pytest.mark.parametrize("case", sorted(BREAKAGES))
def test_guards_go_red_when_something_breaks(db, case):
    setup, expected = BREAKAGES[case]
    rows, (status, reasons, _) = guards_and_decision(db, setup)
    got = red(rows)
    qt001 = {c for v, c in got if v == VIEWS["qt001_no_go"]}
    got = {(v, c) for v, c in got if v != VIEWS["qt001_no_go"]}
    assert got == {(VIEWS.get(k) or OBJECTS[k], c) for k, c in expected}
    # every red guard row becomes a reason of the decision
    assert status == "NOT_READY"
    if any(k not in READINESS for k, _ in expected):
        assert any(c.startswith("safety_guards_green:") for c in qt001), qt001
        assert any(r.startswith("safety_guards_green:") for r in reasons), reasons
    else:
        assert any(c.startswith("plan_matches_dryrun:") for c in qt001), qt001


APPLY = (
    f"SELECT {OBJ['register_function']}(collection_name, false) FROM {LEDGER} "
    f"WHERE {PLANNED} \\g /dev/null\n"
)
PERMIT_CONSUMED_BY_APPLY = permit() + (
    f"UPDATE {PERMITS} SET status = 'consumed', consumed_at = now(), consumed_by = 'test' "
    f"WHERE id = (SELECT max(id) FROM {PERMITS});\n"
)
MARK_DONE = (
    f"UPDATE {LEDGER} SET status = 'done', applied_delta = expected_delta, dry_run = false, "
    f"permit_id = (SELECT max(id) FROM {PERMITS}) WHERE {PLANNED};\n"
)


def test_after_a_real_apply_every_guard_stays_green(db):
    setup = APPLY + PERMIT_CONSUMED_BY_APPLY + MARK_DONE
    rows = catalogue(db, setup)
    rerun = [(c, ok, d) for v, _, c, ok, d in rows if v == VIEWS["rerun_delta_guard"]]
    assert len(rerun) == LAB_NONZERO
    assert all(ok and "dry-run delta now 0" in d for _, ok, d in rerun), rerun
    assert red(rows) <= {(VIEWS["qt001_no_go"], c) for _, _, c, _, _ in rows}
    result = db.rolled_back(
        setup,
        f"SELECT {lit(MARK)}, sum(applied_delta), bool_and(applied_as_planned) "
        f"FROM {V['apply_result']};",
    )
    assert result == [(str(LAB_TOTAL_DELTA), "t")]


def test_marking_done_without_births_turns_the_rerun_guard_red(db):
    rows = catalogue(db, MARK_DONE)
    got = red(rows)
    assert {c for v, c in got if v == VIEWS["rerun_delta_guard"]} == {
        c for v, _, c, _, _ in rows if v == VIEWS["rerun_delta_guard"]
    }
    assert (VIEWS["cross_layer_guard"], "counts_match_snapshot") in got
    assert (VIEWS["cross_layer_guard"], "plan_deltas_equal_dryrun") in got


# ---- idempotence and revert (last: it drops the views) ------------------------------------------


def test_redeploy_changes_nothing(db):
    assert db.run_file("02_views.sql")["changed"] is False
    assert db.run_file("02b_fix_guard_aliases.sql")["changed"] is False


def test_revert_restores_the_schema_exactly(db):
    # Newest first, as 99_rollback_stage2 runs them: the plan's tables (its codes and the
    # signed run records) came after the fingerprint too.
    assert db.run_file("11_plan_ledger.revert.sql")["changed"] is True
    assert db.run_file("02b_fix_guard_aliases.revert.sql")["changed"] is True
    assert db.run_file("02_views.revert.sql") == {
        "changed": True,
        "dropped_views": len(VIEWS) - 1,
        "dropped_baseline": True,
    }
    assert db.rows(SCHEMA_FINGERPRINT) == db.fingerprint_before
    names = ", ".join(lit(v) for v in [*VIEWS.values(), BASELINE])
    left = db.rows(
        f"SELECT {lit(MARK)}, relname FROM pg_class "
        f"WHERE relnamespace = {lit(SCHEMA)}::regnamespace AND relname IN ({names});"
    )
    assert left == []
    assert db.run_file("02b_fix_guard_aliases.revert.sql")["changed"] is False
    assert db.run_file("02_views.revert.sql")["changed"] is False
