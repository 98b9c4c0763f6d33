"""The birth invariant guard: snapshot SQL, compare, messages, and the birth_guard module."""

from __future__ import annotations

import pytest
from ansible.module_utils.birth_stage2_guard import (
    DEFAULT_OBJECTS,
    FIX_HINT,
    TOTAL,
    compare,
    deltas,
    format_violations,
    resolve_objects,
    snapshot_sql,
)
from ansible.module_utils.birth_stage2_psql import check_script


def snap(total=None, **per):
    """A snapshot with the given per-collection births (total = their sum unless given)."""
    return {"total": sum(per.values()) if total is None else total, "per_collection": per}


# ----------------------------------------------------------------------------- snapshot SQL


def test_snapshot_sql_defaults():
    sql = snapshot_sql()
    assert 'FROM "birth_registry"' in sql
    assert 'FROM "apr_approvals"' in sql
    assert 'FROM "governance_permits"' in sql
    assert 'FROM "birth_backfill_ledger"' in sql
    assert "scope = 'birth-stage2-qt001-apply'" in sql
    assert "status = 'open' AND expires_at > now()" in sql
    assert "plan_code = 'QT-001'" in sql
    assert "pg_get_serial_sequence('\"birth_registry\"'," in sql
    for key in ("'total'", "'per_collection'", "'identity_seq'", "'counters'", "'taken_at'"):
        assert key in sql
    for key in ("'births'", "'apr_approvals'", "'open_permits'", "'ledger'"):
        assert key in sql
    check_script(sql, "rollback")  # one terminated statement, no transaction control


def test_snapshot_sql_quotes_every_name():
    sql = snapshot_sql(
        {
            "birth_registry": "ops.birth registry",
            "apr_approvals": 'apr"x',
            "permit_scope": "it's",
            "plan_code": "QT-9",
        }
    )
    assert 'FROM "ops"."birth registry"' in sql
    assert 'FROM "apr""x"' in sql
    assert "scope = 'it''s'" in sql
    assert "plan_code = 'QT-9'" in sql
    assert 'pg_get_serial_sequence(\'"ops"."birth registry"\',' in sql
    check_script(sql, "rollback")


@pytest.mark.parametrize(
    ("objects", "named"),
    [
        ({"birth_registry": "a\x00b"}, "NUL"),
        ({"birth_registry": ""}, "objects.birth_registry"),
        ({"birth_regisrty": "x"}, "'birth_regisrty'"),
        ({"plan_code": 7}, "objects.plan_code"),
        ({"birth_registry": ".x"}, "'.x'"),
    ],
)
def test_snapshot_sql_rejects(objects, named):
    with pytest.raises(ValueError) as err:
        snapshot_sql(objects)
    assert named in str(err.value)


def test_resolve_objects_overlays_defaults():
    merged = resolve_objects({"plan_code": "QT-002"})
    assert merged == dict(DEFAULT_OBJECTS, plan_code="QT-002", schema=None)


def test_snapshot_sql_schema_qualifies_bare_names():
    sql = snapshot_sql({"schema": "Ops", "apr_approvals": "other.approvals"})
    assert 'FROM "Ops"."birth_registry"' in sql
    assert 'FROM "Ops"."governance_permits"' in sql
    assert 'FROM "other"."approvals"' in sql  # an explicit qualification wins
    assert 'pg_get_serial_sequence(\'"Ops"."birth_registry"\',' in sql
    assert snapshot_sql({"schema": None}) == snapshot_sql()


# ----------------------------------------------------------------------------- compare


def keyed(violations):
    return {(v["collection"], v["expected"], v["seen"]) for v in violations}


CASES = [
    # (id, before, after, invariant, expected_growth, allowed, violations as (coll, exp, seen))
    ("neutral ok", snap(a=10, b=5), snap(a=10, b=5), "birth_neutral", None, None, set()),
    ("neutral leak", snap(a=10, b=0), snap(a=10, b=42), "birth_neutral", None, None,
     {("b", 0, 42)}),
    ("neutral loss", snap(a=10), snap(a=9), "birth_neutral", None, None, {("a", 10, 9)}),
    ("neutral new collection", snap(a=10), snap(a=10, c=3), "birth_neutral", None, None,
     {("c", 0, 3)}),
    ("neutral vanished collection", snap(a=10, c=3), snap(a=10), "birth_neutral", None, None,
     {("c", 3, 0)}),
    ("neutral moves that net zero", snap(a=10, b=5), snap(a=11, b=4), "birth_neutral", None,
     None, {("a", 10, 11), ("b", 5, 4)}),
    ("neutral allowed exactly", snap(a=10, k=2), snap(a=10, k=3), "birth_neutral", None,
     {"k": 1}, set()),
    ("neutral allowed not happened", snap(a=10, k=2), snap(a=10, k=2), "birth_neutral", None,
     {"k": 1}, {("k", 3, 2)}),
    ("neutral allowed new collection", snap(a=1), snap(a=1, k=1), "birth_neutral", None,
     {"k": 1}, set()),
    ("neutral allowed twice", snap(k=2), snap(k=4), "birth_neutral", None, {"k": 1},
     {("k", 3, 4)}),
    ("macro ok", snap(a=10, b=5), snap(a=10, b=5), "macro_net_zero", None, None, set()),
    ("macro moves net zero", snap(a=10, b=5), snap(a=11, b=4), "macro_net_zero", None, None,
     set()),
    ("macro broken", snap(a=10), snap(a=12), "macro_net_zero", None, None, {(TOTAL, 10, 12)}),
    ("macro allowed", snap(a=10, k=0), snap(a=10, k=1), "macro_net_zero", None, {"k": 1},
     set()),
    ("macro allowed not happened", snap(a=10), snap(a=10), "macro_net_zero", None, {"k": 1},
     {(TOTAL, 11, 10)}),
    ("growth ok", snap(a=10, b=0, c=7), snap(a=77, b=42, c=7), "apply_growth",
     {"a": 67, "b": 42}, None, set()),
    ("growth short", snap(a=10, b=0), snap(a=77, b=40), "apply_growth", {"a": 67, "b": 42},
     None, {("b", 42, 40), (TOTAL, 119, 117)}),
    ("growth elsewhere", snap(a=10, c=7), snap(a=77, c=8), "apply_growth", {"a": 67}, None,
     {("c", 7, 8), (TOTAL, 84, 85)}),
    ("growth with allowed", snap(a=10, k=0), snap(a=12, k=1), "apply_growth", {"a": 2},
     {"k": 1}, set()),
    ("growth zero planned", snap(a=10), snap(a=10), "apply_growth", {"a": 0}, None, set()),
    ("growth total only wrong", snap(total=20, a=10), snap(total=25, a=12), "apply_growth",
     {"a": 2}, None, {(TOTAL, 22, 25)}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("before", "after", "invariant", "growth", "allowed", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_compare(before, after, invariant, growth, allowed, expected):
    violations = compare(before, after, invariant, expected_growth=growth, allowed=allowed)
    assert keyed(violations) == expected
    for v in violations:
        assert v["invariant"] == invariant
        assert v["expected"] == v["before"] + v["expected_delta"]
        assert v["seen"] == v["before"] + v["seen_delta"]


def test_compare_accepts_a_registered_snapshot_result():
    registered = {"changed": False, "snapshot": snap(a=1)}
    assert compare(registered, snap(a=1), "birth_neutral") == []


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ((snap(a=1), snap(a=1), "neutral"), "'neutral'"),
        ((snap(a=1), snap(a=1), "apply_growth"), "expected_growth"),
        (({"total": 1}, snap(a=1), "birth_neutral"), "before has no per_collection"),
        ((snap(a=1), {"per_collection": {"a": 1}, "total": "1"}, "birth_neutral"), "after.total"),
        ((snap(a=1), {"per_collection": {"a": "1"}, "total": 1}, "birth_neutral"), "'a'"),
        ((snap(a=1), [], "birth_neutral"), "after must be a snapshot"),
    ],
)
def test_compare_rejects(args, named):
    with pytest.raises(ValueError) as err:
        compare(*args)
    assert named in str(err.value)


def test_compare_rejects_bad_allowed_and_stray_growth():
    with pytest.raises(ValueError, match="allowed"):
        compare(snap(a=1), snap(a=1), "birth_neutral", allowed={"a": "1"})
    with pytest.raises(ValueError, match="only applies to apply_growth"):
        compare(snap(a=1), snap(a=1), "birth_neutral", expected_growth={"a": 1})


def test_deltas():
    assert deltas(snap(a=1, b=2, c=3), snap(a=1, b=5, d=1)) == {"b": 3, "c": -3, "d": 1}


# ----------------------------------------------------------------------------- messages


def test_format_violations():
    violations = compare(snap(apr_approvals=0, x=5), snap(apr_approvals=42, x=4), "birth_neutral")
    msg = format_violations("classify", violations)
    lines = msg.splitlines()
    assert lines[0] == "birth guard FAILED after 'classify': 2 violation(s)"
    assert lines[1].startswith(
        "  birth_neutral broken: apr_approvals expected 0 seen 42 (+42; before 0"
    )
    assert lines[2].startswith("  birth_neutral broken: x expected 5 seen 4 (-1;")
    assert lines[-1] == f"  {FIX_HINT}"
    assert "docs/RUNBOOK.md#birth-leak" in msg


def test_format_violations_total_and_ok():
    violations = compare(snap(a=10), snap(a=12), "macro_net_zero")
    assert "macro_net_zero broken: *total* expected 10 seen 12 (+2;" in format_violations(
        "run", violations
    )
    assert format_violations("views", []) == "birth guard ok after 'views'"
    assert format_violations("", violations, hint="h").endswith("\n  h")


# ----------------------------------------------------------------------------- the module

SNAPSHOT = {
    "total": 15,
    "per_collection": {"apr_approvals": 0, "dot_domain_rules": 10, "knowledge_documents": 5},
    "identity_seq": 20,
    "counters": {"births": 15, "apr_approvals": 7, "open_permits": 0, "ledger": {"planned": 2}},
    "taken_at": "2025-11-26T02:41:07.123456+00:00",
}


def test_module_snapshot_is_read_only_and_lockless(run_module, fake_docker, connection):
    fake_docker.answer_json(SNAPSHOT)
    for check_mode in (False, True):
        out = run_module("birth_guard", dict(connection, action="snapshot"), check_mode)
        assert out["changed"] is False
        assert out["snapshot"] == SNAPSHOT
        lines = fake_docker.stdin.splitlines()
        assert (
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;" in lines
            and "ROLLBACK;" in lines
            and "COMMIT;" not in lines
        )
        assert "pg_try_advisory_lock" not in fake_docker.stdin
        assert "SET application_name = 'birth_stage2_guard';" in lines


def test_module_snapshot_uses_objects(run_module, fake_docker, connection):
    fake_docker.answer_json(SNAPSHOT)
    objects = {"birth_registry": "ops.births", "schema": "public"}
    out = run_module("birth_guard", dict(connection, action="snapshot", objects=objects))
    assert out["snapshot"] == SNAPSHOT
    assert 'FROM "ops"."births"' in fake_docker.stdin
    # The other names keep their default, qualified by the schema given.
    assert 'FROM "public"."apr_approvals"' in fake_docker.stdin


def test_module_assert_violation(run_module, fake_docker, connection):
    after = dict(SNAPSHOT, total=57, per_collection=dict(SNAPSHOT["per_collection"]))
    after["per_collection"]["apr_approvals"] = 42
    fake_docker.answer_json(after)
    args = dict(
        connection, action="assert", invariant="birth_neutral", before=SNAPSHOT, label="classify"
    )
    for check_mode in (False, True):
        out = run_module("birth_guard", args, check_mode)
        assert out["failed"] is True
        assert out["msg"].startswith("birth guard FAILED after 'classify': 1 violation(s)\n")
        assert "birth_neutral broken: apr_approvals expected 0 seen 42 (+42;" in out["msg"]
        assert out["violations"] == [
            {
                "invariant": "birth_neutral",
                "collection": "apr_approvals",
                "expected": 0,
                "seen": 42,
                "before": 0,
                "expected_delta": 0,
                "seen_delta": 42,
            }
        ]
        assert out["ok"] is False
        assert (out["before_total"], out["after_total"]) == (15, 57)
        assert out["after"] == after
        assert out["deltas"] == {"apr_approvals": 42}


def test_module_assert_with_given_after_reads_nothing(run_module, fake_docker, connection):
    after = dict(SNAPSHOT, total=16, per_collection=dict(SNAPSHOT["per_collection"]))
    after["per_collection"]["knowledge_documents"] = 6
    args = dict(
        connection,
        action="assert",
        invariant="macro_net_zero",
        before={"changed": False, "snapshot": SNAPSHOT},
        after=after,
        allowed={"knowledge_documents": 1},
        label="report",
    )
    out = run_module("birth_guard", args)
    assert out.get("failed") is not True
    assert out["ok"] is True and out["violations"] == []
    assert out["changed"] is False
    assert out["msg"] == "birth guard ok after 'report': macro_net_zero holds"
    assert not fake_docker.called


def test_module_assert_requires_before(run_module, fake_docker, connection):
    out = run_module("birth_guard", dict(connection, action="assert", invariant="birth_neutral"))
    assert out["failed"] is True and "before" in out["msg"]


def test_module_snapshot_error_is_explained(run_module, fake_docker, connection):
    fake_docker.fail_on('FROM "birth_registry"', 'relation "birth_registry" does not exist')
    out = run_module("birth_guard", dict(connection, action="snapshot"))
    assert out["failed"] is True
    assert out["msg"].startswith("birth guard snapshot line ")
    assert 'ERROR: relation "birth_registry" does not exist' in out["msg"]
