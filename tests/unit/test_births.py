"""Stage 2's own births: summed per run (filter) and judged apart from others' (guard)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.unit.test_guard_logic import SNAPSHOT

SPEC = importlib.util.spec_from_file_location(
    "births", Path(__file__).parents[2] / "roles" / "birth_stage2" / "filter_plugins" / "births.py"
)
births = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(births)

from ansible.module_utils import birth_stage2_guard as guard  # noqa: E402


def step(transaction, counted, skipped=False):
    return {"transaction": transaction, "births": counted, "skipped": skipped}


@pytest.mark.parametrize(
    ("total", "result", "expected"),
    [
        ({}, step("commit", {}), {}),
        ({}, step("commit", None), {}),
        ({}, step("commit", {"kd": 1}), {"kd": 1}),
        ({"kd": 1}, step("commit", {"kd": -1, "x": 2}), {"x": 2}),
        # A rolled-back transaction made nothing that lasts, whatever it counted.
        ({"kd": 1}, step("rollback", {"kd": 5}), {"kd": 1}),
        ({}, step("commit", {"kd": 1}, skipped=True), {}),
        # Bare births (an apply's batches) add as they are.
        ({"a": 1}, {"a": 2}, {"a": 3}),
        (None, None, {}),
    ],
)
def test_add_births(total, result, expected):
    assert births.add_births(total, result) == expected


@pytest.mark.parametrize("bad", [[1], {"a": "1"}, {"a": True}])
def test_add_births_rejects(bad):
    with pytest.raises(ValueError):
        births.add_births({}, bad)


def test_applied_births_are_what_the_batches_moved():
    before = [{"collection": "a", "applied": 0}, {"collection": "b", "applied": 5}]
    after = [
        {"collection": "a", "applied": 67},
        {"collection": "b", "applied": 5},
        {"collection": "c", "applied": 2},
    ]
    # c was not one of this apply's collections (an earlier apply finished it): not counted.
    assert births.applied_births(before, after) == {"a": 67}
    with pytest.raises(ValueError):
        births.applied_births({}, [])


def test_attributed_births_are_judged_alone():
    zero, ours = guard.as_attributed({"kd": 1})
    assert guard.compare(zero, ours, "birth_neutral", allowed={"kd": 1}) == []
    (violation,) = guard.compare(zero, ours, "birth_neutral")
    assert (violation["collection"], violation["seen_delta"]) == ("kd", 1)
    zero, ours = guard.as_attributed({"a": 5, "b": -5})
    assert {v["collection"] for v in guard.compare(zero, ours, "birth_neutral")} == {"a", "b"}
    assert guard.compare(zero, ours, "macro_net_zero") == []
    zero, ours = guard.as_attributed({"a": 3})
    assert guard.compare(zero, ours, "apply_growth", expected_growth={"a": 3}) == []


def test_births_by_others_are_the_rest_of_the_movement():
    assert guard.births_by_others({"kd": 12, "a": 3}, {"a": 3}) == {"kd": 12}
    assert guard.births_by_others({}, {"a": 1}) == {"a": -1}
    assert guard.births_by_others({"a": 1}, {"a": 1}) == {}


def test_module_asserts_attributed_births_without_the_database(run_module):
    out = run_module(
        "birth_guard",
        {
            "container": "pg",
            "db_name": "d",
            "db_user": "u",
            "action": "assert",
            "invariant": "birth_neutral",
            "attributed": {"kd": 1},
            "allowed": {"kd": 1},
            "label": "upload",
        },
    )
    assert out["ok"] and out["attributed"] == {"kd": 1} and "births_by_others" not in out
    out = run_module(
        "birth_guard",
        {
            "container": "pg",
            "db_name": "d",
            "db_user": "u",
            "action": "assert",
            "invariant": "birth_neutral",
            "attributed": {"kd": 1},
            "label": "classify",
        },
    )
    assert out["failed"]
    assert "birth_neutral broken: kd expected 0 seen 1" in out["msg"]
    assert "committed by Stage 2's own transactions" in out["msg"]


def test_module_reports_others_births_and_never_fails_on_them(run_module, fake_docker):
    after = dict(SNAPSHOT, per_collection=dict(SNAPSHOT["per_collection"]))
    first = next(iter(after["per_collection"]))
    after["per_collection"][first] += 7
    after["total"] += 7
    fake_docker.answer_json(after)
    out = run_module(
        "birth_guard",
        {
            "container": "pg",
            "db_name": "d",
            "db_user": "u",
            "action": "assert",
            "invariant": "birth_neutral",
            "attributed": {},
            "before": SNAPSHOT,
            "label": "run",
        },
    )
    assert out["ok"], out
    assert out["births_by_others"] == {first: 7}
    assert "births by others during the run: +7" in out["msg"]


def _guard_action():
    from tests.unit.conftest import load_action

    return load_action("birth_guard")


@pytest.mark.parametrize(
    ("attributed", "allowed", "label"),
    [({"kd": 1}, {"kd": 1}, "upload"), ({"kd": 1}, None, "classify"), ({}, None, "views")],
)
def test_the_action_judges_own_births_in_the_worker_as_the_module_does(
    run_module, attributed, allowed, label
):
    """The phase asserts (own births, no snapshot) are judged by the action in Ansible's
    worker with the module's own function: same verdict, message and figures."""
    args = {"action": "assert", "invariant": "birth_neutral", "attributed": attributed}
    args.update({"label": label}, **({"allowed": allowed} if allowed else {}))
    action = _guard_action()
    assert action.judged_here(args)
    ok, msg, judged = guard.judge_attributed(
        label, "birth_neutral", attributed, None, allowed or {}, None
    )
    out = run_module("birth_guard", {"container": "pg", "db_name": "d", "db_user": "u", **args})
    assert ok is not bool(out.get("failed")) and msg == out["msg"]
    assert {k: out[k] for k in judged} == judged


@pytest.mark.parametrize(
    "args",
    [
        {"action": "snapshot"},
        {"action": "assert", "invariant": "birth_neutral", "attributed": {}, "before": SNAPSHOT},
        {"action": "assert", "invariant": "birth_neutral", "attributed": "{'kd': 1}"},
        {"action": "assert", "invariant": "no_such", "attributed": {}},
        {"action": "assert", "invariant": "apply_growth", "attributed": {}, "expected_growth": 3},
    ],
)
def test_the_action_leaves_snapshots_and_odd_input_to_the_module(args):
    assert not _guard_action().judged_here(args)
