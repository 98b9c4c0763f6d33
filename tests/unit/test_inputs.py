"""Preflight's allow-list of inputs (roles/birth_stage2/filter_plugins/inputs.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location(
    "inputs", Path(__file__).parents[2] / "roles" / "birth_stage2" / "filter_plugins" / "inputs.py"
)
inputs = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(inputs)


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("identifier", "birth_registry"),
        ("identifier", 'odd "Name" with spaces'),
        ("identifier", "x" * 63),
        ("code", "QT-001"),
        ("code", "birth-stage2-qt001-apply"),
        ("code", "inferred_from_existing_trigger"),
        ("container", "birth-lab-pg"),
        ("run_id", "20261202T152847193428Z"),
        ("date", "2026-06-06"),
        ("path", "/opt/incomex/docs/mcp-writes"),
        ("path", "/opt/incomex/docs/mcp-writes/birth-stage2-2026-06-06/"),
        ("duration", "30min"),
        ("duration", "0"),
        ("principal", "alice@example.org"),
    ],
)
def test_problem_accepts(kind, value):
    assert inputs.problem(kind, value) is None


ATTACK = "QT-001\n\\! id > /tmp/x"


@pytest.mark.parametrize(
    ("kind", "value", "why"),
    [
        ("identifier", "birth\nregistry", "control character"),
        ("identifier", "x\x00", "control character"),
        ("identifier", "x" * 64, "63 bytes"),
        ("identifier", "", "is empty"),
        ("identifier", None, "must be a string"),
        ("code", ATTACK, "want 1 to 63"),
        ("code", "QT'001", "want 1 to 63"),
        ("code", "QT 001", "want 1 to 63"),
        ("code", "QT\\001", "want 1 to 63"),
        ("code", "-QT", "want 1 to 63"),
        ("container", "pg;id", "container name"),
        ("run_id", "../x", "want 1 to 64"),
        ("run_id", "a b", "want 1 to 64"),
        ("date", "2026-06-06; x", "YYYY-MM-DD"),
        ("path", "relative/dir", "absolute path"),
        ("path", "/opt/../etc", "'..'"),
        ("path", "/opt/x\n", "absolute path"),
        ("path", "/opt/it's", "absolute path"),
        ("duration", "30 minutes; DROP", "duration"),
        ("principal", "bob\n", "want 1 to 64"),
        ("principal", 5, "must be a string"),
    ],
)
def test_problem_refuses(kind, value, why):
    assert why in inputs.problem(kind, value)


def test_a_long_bad_path_is_refused_at_once():
    # A nested "(segment/?)*" pattern backtracked for minutes on this kind of value.
    value = "/opt/incomex/docs/mcp-writes/birth-stage2-" + "a/b-" * 40 + "QT\n\\! touch /tmp/x"
    assert "absolute path" in inputs.problem("path", value)


def test_bad_inputs_names_each_variable_with_its_value_as_json():
    bad = inputs.bad_inputs(
        [
            {"name": "birth_stage2_plan_code", "kind": "code", "value": ATTACK},
            {"name": "birth_stage2_schema", "kind": "identifier", "value": "public"},
            {"name": "birth_stage2_frozen_tools", "kind": "code", "values": ["ok", "b'ad"]},
            {"name": "birth_stage2_run_id", "kind": "run_id", "value": "", "optional": True},
            {"name": "birth_stage2_break_lock", "kind": "run_id", "value": "x y", "optional": True},
        ]
    )
    assert bad == [
        'birth_stage2_plan_code="QT-001\\n\\\\! id > /tmp/x" (want 1 to 63 of A-Z a-z 0-9 . _ : + -'
        " (starting with a letter or digit))",
        'birth_stage2_frozen_tools[1]="b\'ad" (want 1 to 63 of A-Z a-z 0-9 . _ : + - (starting'
        " with a letter or digit))",
        'birth_stage2_break_lock="x y" (want 1 to 64 of A-Z a-z 0-9 . _ - (starting with a'
        " letter or digit))",
    ]


def test_name_checks_codes_identifiers_and_missing_keys():
    checks = inputs.name_checks(
        "birth_stage2_apply_objects",
        {"plan_function": "fn_x", "plan_tool_code": "dot-x"},
        ["plan_function", "apply_procedure"],
    )
    assert {
        "name": "birth_stage2_apply_objects.apply_procedure",
        "kind": "identifier",
        "missing": True,
    } in checks
    kinds = {c["name"]: c["kind"] for c in checks}
    assert kinds["birth_stage2_apply_objects.plan_tool_code"] == "code"
    assert kinds["birth_stage2_apply_objects.plan_function"] == "identifier"
    assert inputs.bad_inputs(checks) == [
        "birth_stage2_apply_objects.apply_procedure (missing: an override replaces the whole"
        " map, give every key)"
    ]


def test_name_checks_refuses_a_map_that_is_not_one():
    assert inputs.bad_inputs(inputs.name_checks("birth_stage2_objects", "x", [])) == []
    assert inputs.bad_inputs(inputs.name_checks("birth_stage2_objects", None, [])) == [
        "birth_stage2_objects=null (must be a string, got NoneType)"
    ]


# ---- the entry points' own inputs: apply_control, review, permit --------------------------------

SHA = "0" * 64


def test_good_entry_point_inputs_pass():
    assert inputs.control_problems("pause", "replica lag (db2)", "alice@ops") == []
    assert inputs.control_problems("resume", "", "bob") == []
    assert inputs.review_problems("approved", SHA, "20261206T120000000000Z-dryrun") == []
    assert inputs.permit_problems("open", SHA, "2h") == []
    assert inputs.permit_problems("open", SHA, "90 min") == []
    assert inputs.permit_problems("revoke", "", "") == []


def test_each_bad_control_input_is_named_with_what_it_got():
    assert inputs.control_problems("stop", "it's; DROP", "") == [
        'birth_stage2_apply_control must be pause, resume or abort (got "stop")',
        "birth_stage2_apply_control_reason must be up to 200 of A-Z a-z 0-9 space . , : ; _ ( ) / +"
        ' @ - (got "it\'s; DROP")',
        'birth_stage2_operator must be 1 to 64 of A-Z a-z 0-9 . _ @ + - (got "")',
    ]
    # A trailing newline is not a match of the whole value.
    assert len(inputs.control_problems("pause", "ok\n", "bob\n")) == 2
    assert len(inputs.control_problems("pause", "x" * 201, "bob")) == 1


def test_each_bad_review_input_is_named():
    got = inputs.review_problems("yes", "A" * 64, 7)
    assert [p.split(" must be")[0] for p in got] == [
        "birth_stage2_review_verdict", "birth_stage2_review_evidence", "birth_stage2_review_run",
    ]  # fmt: skip
    assert got[2].endswith("(got 7)")


def test_each_bad_permit_input_is_named_and_revoke_needs_none():
    assert inputs.permit_problems("close", SHA, "2h") == [
        'birth_stage2_permit_action must be open or revoke (got "close")'
    ]
    got = inputs.permit_problems("open", "", "0h")
    assert [p.split(" must be")[0] for p in got] == [
        "birth_stage2_permit_evidence", "birth_stage2_permit_expires_in",
    ]  # fmt: skip
    assert inputs.permit_problems("open", SHA, 3)[0].endswith("like 2h (got 3)")
